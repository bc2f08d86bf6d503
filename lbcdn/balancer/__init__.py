"""Target pick policies and the pure decisions around them (no sockets): which targets and
weights a pool balances over now (plan.py: health, fail-open, ejections, slow start), the
policies (round robin, least outstanding requests, weighted random, random two choices,
consistent hash; policy.build_policy), sticky sessions, and retries with their budget."""

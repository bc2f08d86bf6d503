"""Target pick policies and the pure decisions around them (no sockets): round robin, least
outstanding requests, weighted random, random two choices, consistent hash, sticky sessions,
slow start, retries and the retry budget. `policy.build_policy` builds one from config."""

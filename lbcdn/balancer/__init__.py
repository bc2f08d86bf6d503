"""Target state and pick policies (pure: no sockets)."""

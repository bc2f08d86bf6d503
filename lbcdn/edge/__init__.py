"""The HTTP listener: client connections (bytes, limits, order) and exchanges (what to answer)."""

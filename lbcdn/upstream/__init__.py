"""Connections to backends: the keep-alive pool and the HTTP/1.1 client protocol."""

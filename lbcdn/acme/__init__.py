"""ACME (RFC 8555) certificates: configuration, a small client, storage, the challenge answers
the edge serves, and the manager that issues and renews (see docs/guides/tls.md)."""

"""HTTP/1.1 heads, framing and limit rules, and serialization. No sockets here."""

"""lbcdn: load balancer, CDN edge cache, bucket origin and authoritative DNS in one daemon."""

__version__ = "0.1.0"

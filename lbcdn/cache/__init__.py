"""The edge cache (CloudFront's job): RFC 9111 policy and storage, without network I/O.

Modules, one concern each: config (YAML schema + checks), directives (header parsing),
policy (storability, freshness, age, reuse), conditional (client conditionals, ranges),
headers (stored/served fields, 304 merge, invalidation URIs, Cache-Status, X-Cache),
key (cache and variant keys), compress (gzip/brotli), entry (CachedResponse), store (memory
tier, streaming Fill), disk (disk tier), shared (the workers' one cache per machine: the
shared store and machine-wide collapsing), collapse (request collapsing), invalidation
(purges), behavior (path pattern -> origin and policy). The edge exchange drives them.
"""

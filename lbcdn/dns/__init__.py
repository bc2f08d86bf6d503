"""Authoritative DNS (the Route 53 part of lbcdn).

Pure half: config.py (the `dns:` section), names.py / rdata.py / masterfile.py (text forms),
zone.py (the zone model), policy.py (routing policies), wire.py (query parsing and cache
keys), engine.py (query bytes -> answer bytes), changes.py (change batches and their
persistence). Network half: server.py, udpbatch.py, fastpath.py, transfer.py, rrl.py.

Keep this file free of imports: lbcdn.config.schema imports lbcdn.dns.config.
"""

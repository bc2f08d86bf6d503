"""lbcdn: load balancer, CDN edge cache, bucket origin and authoritative DNS in one daemon."""

import os

__version__ = "0.1.0"

# LBCDN_NATIVE=0: the hot path runs interpreted although it is compiled (lbcdn/native.py). Only
# here is early enough: before any compiled module is imported, in every process (the workers
# too), whatever the entry point.
if os.environ.get("LBCDN_NATIVE") == "0":
    import importlib.abc
    import importlib.machinery
    import sys
    from collections.abc import Sequence
    from types import ModuleType

    class _Interpreted(importlib.abc.MetaPathFinder):
        # lbcdn.native is imported at the first lookup after it, not here: `python -m
        # lbcdn.native` must find it not yet imported (runpy warns otherwise).
        def find_spec(self, fullname: str, path: Sequence[str] | None,
                      target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
            if not fullname.startswith("lbcdn.") or fullname == "lbcdn.native":
                return None
            from lbcdn import native
            return native.source_spec(fullname)

    sys.meta_path.insert(0, _Interpreted())

"""Suite-wide guard: the compiled hot path must match its sources (lbcdn/native.py), or every
test would exercise old code while reporting on the new."""

from __future__ import annotations

import pytest

from lbcdn import native


def pytest_configure(config: pytest.Config) -> None:
    stale = native.stale()
    if stale:
        pytest.exit(f"compiled modules are older than their sources ({', '.join(stale)}): "
                    "run `make native` (or `python -m lbcdn.native clean`)", returncode=3)

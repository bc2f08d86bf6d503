"""Suite-wide guard: the compiled hot path must be what its sources and this toolchain build
(lbcdn/native.py), or every test would exercise other code while reporting on the new. Under
LBCDN_NATIVE=0 the extensions are not loaded and the suite runs interpreted."""

from __future__ import annotations

import pytest

from lbcdn import native


def pytest_configure(config: pytest.Config) -> None:
    refusal = native.refusal()
    if refusal is not None:
        pytest.exit(refusal, returncode=3)

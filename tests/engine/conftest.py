"""Make the shared float64 references (``tests/reference.py``) importable when this folder runs alone; the
``native_kernel`` fixture behind ``helpers_engine.needs_native``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture
def native_kernel():
    """The native kernel module; skips the test when the kernel is unavailable (fails it under
    ``TKN_REQUIRE_NATIVE=1``)."""
    from helpers_engine import require_native
    from tkn.engine import native

    require_native()
    return native

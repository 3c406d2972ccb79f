"""Fixtures for the tkn.data tests: a private cache folder for the whole session."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def tkn_cache(tmp_path_factory):
    """Point ``$TKN_CACHE`` at a temporary folder so the tests never write to ``~/.cache``."""
    path = tmp_path_factory.mktemp("tkn-cache")
    old = os.environ.get("TKN_CACHE")
    os.environ["TKN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TKN_CACHE", None)
    else:
        os.environ["TKN_CACHE"] = old

#!/usr/bin/env bash
# Set up (or reuse) .venv, lint, and run the test suite (tests/ and the >>> examples in tkn/).
# Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check tkn tests scripts
exec python -m pytest -q "$@"

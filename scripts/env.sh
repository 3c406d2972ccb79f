# Sourced by the other scripts: create or reuse .venv in the repo and install tkn into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
STAMP="$VENV/.tkn-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"   # tkn, pytest, ruff and the optional packages the tests use
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

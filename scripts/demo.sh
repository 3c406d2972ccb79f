#!/usr/bin/env bash
# Set up (or reuse) .venv and run the main job: `tkn demo` on the embedded data. Extra arguments go to `tkn demo`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec tkn demo "$@"

#!/usr/bin/env bash
# The GPU check, in one command from the repository root of a machine with CUDA (no tkn install needed):
#
#     OUT=/some/folder bash scripts/gpu_check.sh
#
# 1. prints the GPU, the versions, and what Triton needs at run time (a C compiler and Python.h: Triton
#    builds its launcher on first use);
# 2. runs the Triton kernel's tests compiled for the GPU (TRITON_INTERPRET=0: tests/conftest.py turns Triton's
#    CPU interpreter on unless the variable is set, and then they would run on the CPU), then the operator's
#    tests as CI runs them (their Triton test needs the interpreter on when Triton is imported: with it off,
#    triton.language's own functions are compiled-mode and the interpreter cannot call them), but for the
#    float64 gradcheck (CPU only, 10-30 s: left to CI); log: $OUT/pytest.log; a failure is reported and the
#    check goes on;
# 3. runs scripts/gpu_bench.py (log: $OUT/bench.log; results: $OUT/gpu_bench.json, rewritten after each
#    case and batch).
# Time: each test run is cut at 45 s, the benchmark starts no work after 300 s and is cut at 420 s: under
# 9 minutes in the worst case, about 5 expected on an H200.
set -u
PY="$(command -v python || command -v python3)"
OUT="${OUT:-.}"
export OUT
mkdir -p "$OUT"
start=$(date +%s)

echo "== nvidia-smi -L"
nvidia-smi -L 2>&1 || echo "(nvidia-smi failed)"

echo "== versions"
"$PY" - <<'EOF' 2>&1
import os, platform, shutil, sysconfig
print("python", platform.python_version(), platform.machine())
try:
    import torch
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available", torch.cuda.is_available(),
          "| cuDNN", torch.backends.cudnn.version())
except Exception as exc:
    print("torch: import failed:", exc)
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton: import failed:", exc)
cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")
include = sysconfig.get_paths()["include"]
print("C compiler:", cc, "| g++:", shutil.which("g++"), "| Python.h:",
      os.path.exists(os.path.join(include, "Python.h")), f"({include})")
for name in ("numpy", "yaml", "pytest"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", exc)
EOF

echo "== pytest tests/engine/test_triton_roi.py (Triton compiled for the GPU)"
TRITON_INTERPRET=0 PYTHONPATH=. timeout -k 5 45 "$PY" -m pytest -q -x -p no:cacheprovider \
    tests/engine/test_triton_roi.py 2>&1 | tee "$OUT/pytest.log"
echo "pytest exit status ${PIPESTATUS[0]} (124: cut by the timeout)" | tee -a "$OUT/pytest.log"
echo "== pytest tests/engine/test_engine_op.py"
PYTHONPATH=. timeout -k 5 45 "$PY" -m pytest -q -x -p no:cacheprovider tests/engine/test_engine_op.py \
    --deselect tests/engine/test_engine_op.py::test_operator_gradients_pass_gradcheck 2>&1 | tee -a "$OUT/pytest.log"
echo "pytest exit status ${PIPESTATUS[0]} (124: cut by the timeout)" | tee -a "$OUT/pytest.log"

echo "== benchmark"
PYTHONUNBUFFERED=1 PYTHONPATH=. TRITON_INTERPRET=0 timeout -k 10 420 "$PY" scripts/gpu_bench.py 2>&1 \
    | tee "$OUT/bench.log"
echo "benchmark exit status ${PIPESTATUS[0]} (124: cut by the timeout); check total $(( $(date +%s) - start )) s"

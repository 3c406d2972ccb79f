#!/usr/bin/env bash
# A second, short GPU run: the Triton kernel's tests compiled for the GPU (float64 references), and the frozen
# models' error against eval with cuDNN's TF32 convolutions off and on. Usage: OUT=dir bash scripts/gpu_recheck.sh
set -u
OUT="${OUT:-.}"
mkdir -p "$OUT"
TRITON_INTERPRET=0 PYTHONPATH=. timeout -k 5 150 python -m pytest -q -p no:cacheprovider \
    tests/engine/test_triton_roi.py 2>&1 | tee "$OUT/pytest_triton.log" | tail -15
TKN_NATIVE=0 TRITON_INTERPRET=0 PYTHONPATH=. timeout -k 5 120 python - <<'PY' 2>&1 | tee "$OUT/tf32.log"
import torch, tkn
from tkn.windowfile import load_windows
for tf32 in (True, False):
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    for name in ("tkn6-mnist-12.9x", "tkn6-tlmnist56-21.5x"):
        model, dims, _ = load_windows(name, seed=0)
        model = model.cuda().eval()
        x = torch.rand(64, *dims, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        frozen = tkn.freeze(model, x, backend="triton")
        with torch.no_grad():
            ref = model.double()(x.double()).float() if not tf32 else model(x)
            model.float()
            got = frozen(x)
        print(f"tf32={tf32} {name}: max |triton - eval| / max |eval| = "
              f"{float((got - ref).abs().max() / ref.abs().max()):.2e} (eval {'float32' if tf32 else 'float64'})")
PY

"""GPU measurement of the ROI engine: TKN6 56x56 with the benchmark's "paper" ROIs (FLOP ratio ~14) vs CNN6 (cuDNN).

Run from the repository root on a machine with CUDA: ``PYTHONPATH=. python scripts/gpu_bench.py``; prints one JSON
line per batch size and writes ``gpu_bench.json`` into ``$OUT`` (default: the current folder).
"""
import copy
import json
import os
import time

import torch

import tkn
from tkn.benchmark import dense_baseline, synthetic_rois_
from tkn.engine import plan_summary
from tkn.models import create_model

out = {}
dev = torch.device("cuda")
out["gpu"] = torch.cuda.get_device_name(0)
out["torch"] = torch.__version__
torch.backends.cudnn.benchmark = True
model = create_model("tkn6", input_size=56)
synthetic_rois_(model, 0, m_range=(0.25, 0.6), s_range=(0.08, 0.16))
rep = tkn.flops.count(model, (1, 56, 56))
out["flop_ratio"] = rep.dense_macs / rep.macs
dense = dense_baseline(model).to(dev).eval()
model = model.to(dev).eval()


def timeit(fn, x, reps):
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(x)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return min(ts), sorted(ts)[len(ts) // 2]


for batch in (1, 64, 512):
    x = torch.rand(batch, 1, 56, 56, device=dev)
    t0 = time.time()
    frozen = tkn.freeze(model, x)
    ft = time.time() - t0
    with torch.no_grad():
        err = ((frozen(x) - model(x)).abs().max() / model(x).abs().max()).item()
        res = {"freeze_s": ft, "max_rel_err": err}
        for name, m in (("dense_cnn6", dense), ("target_dense", model), ("frozen", frozen)):
            res[name] = timeit(m, x, 30 if batch < 512 else 10)
    res["speedup_min"] = res["dense_cnn6"][0] / res["frozen"][0]
    res["plans"] = [r["plan"] for r in plan_summary(frozen)]
    out[f"batch{batch}"] = res
    print(batch, json.dumps(res), flush=True)


# one training step, batch 64: CNN6 vs TKN6 fast path
def step_fn(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    y = torch.randint(0, 10, (64,), device=dev)

    def f(x):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return f


tm = copy.deepcopy(model).train()
for _, layer in tkn.target_layers(tm):
    layer.execution = "fast"
x = torch.rand(64, 1, 56, 56, device=dev)
out["train_step"] = {"dense_cnn6": timeit(step_fn(copy.deepcopy(dense).train()), x, 10),
                     "tkn6_fast": timeit(step_fn(tm), x, 10)}
print(json.dumps(out["train_step"]))
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "gpu_bench.json"), "w"), indent=2)

"""The ramp measurements of docs/budget.md: a plain PyTorch loop with tkn.MacBudget on mnist-5k.

Usage (repository root): ``python scripts/budget_ramp_check.py``. For each line of RUNS: seed 0, batch 64
drawn with replacement from the 4,000 training digits, SGD with Nesterov momentum 0.9, the paper's L2 off;
prints the test error on the 1,000 test digits (eval mode) and the exact speed-up reached.
"""
import torch

import tkn
from tkn.data import load
from tkn.models import create_model

#: (model, target speed-up or None for the dense baseline, ramp, steps, learning rate)
RUNS = [
    ("cnn6", None, None, 150, 0.02), ("tkn6", 4.0, 0.5, 150, 0.02), ("tkn6", 4.0, 0.25, 150, 0.02),
    ("dn10", None, None, 125, 0.1), ("tdn10", 1.7, 0.5, 125, 0.1), ("tdn10", 1.7, 0.25, 125, 0.1),
]


def main() -> None:
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    x, y = train.images.float() / 255, train.targets
    xt, yt = test.images.float() / 255, test.targets
    for name, target, ramp, steps, lr in RUNS:
        torch.manual_seed(0)
        model = create_model(name, input_size=28, l2=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        budget = tkn.MacBudget(model, (1, 28, 28), target, steps, ramp=ramp) if target else None
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if budget is not None:
                loss = loss + budget.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tkn.clip_parameters_(model)
            if budget is not None:
                budget.step()
        model.eval()
        with torch.no_grad():
            error = (model(xt).argmax(1) != yt).float().mean().item() * 100
        reached = f"{budget.speedup():.3f}" if budget is not None else "-"
        print(f"{name:6} target {target or '-'}  ramp {ramp or '-'}  {steps} steps  lr {lr}: "
              f"test error {error:.2f}%  speed-up {reached}", flush=True)


if __name__ == "__main__":
    main()

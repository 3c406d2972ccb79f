"""Property-based check of ``freeze``: random small CNNs, targetized in part, frozen, equal to ``eval()``.

Hypothesis draws a network description (convolutions of any kernel, stride, dilation, padding, groups and
padding mode; batch norms; ReLU, ReLU6 and LeakyReLU as modules, functions and methods, in place or not; max
and average pools, fusable or not; ResNet-style blocks with identity or 1x1 projection shortcuts; channel
concatenations; flatten or global-average heads with a linear layer) on odd map sizes, targetizes all or some
of its convolutions, sets random windows and batch-norm statistics, and freezes it with random options. The
frozen model must equal the model in eval mode at batch 1, at the freeze batch and at an odd batch; freezing
must never raise (a pattern the engine does not accelerate runs dense).

The CI variant runs a fixed, derandomised set of examples; the ``slow`` variant many more.
"""
from __future__ import annotations

import importlib
import operator
from contextlib import ExitStack
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tkn  # noqa: E402
from tkn.engine import FrozenTargetConv2d  # noqa: E402
from tkn.layers import TargetConv2d  # noqa: E402
from helpers_engine import FINE, random_rois_  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")]

#: ``tkn.engine.freeze`` the module (the package exports the function under the same name)
freeze_module = importlib.import_module("tkn.engine.freeze")

#: Output channel counts drawn for convolutions (16 and 32: input channels the native "reduce" lanes take).
CHANNELS = (1, 2, 3, 4, 5, 6, 8, 16, 17, 32)
#: Scale ranges of the random windows: small ROIs (native plans), mixed, and ROIs covering most of the map.
S_RANGES = ((0.02, 0.1), (0.05, 0.5), (0.3, 1.5))
#: Activation forms: (name, in place).
ACTIVATIONS = (("relu", False), ("relu_inplace", True), ("F.relu", False), ("F.relu_inplace", True),
               ("torch.relu", False), ("method.relu", False), ("method.relu_", True), ("relu6", False),
               ("F.relu6", False), ("leaky", False), ("F.leaky_relu", False), ("shared_relu", False))


def _conv_out(n: int, k: int, s: int, d: int, lo: int, hi: int) -> int:
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def _pads(padding, k: tuple[int, int], d: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` of a convolution's padding."""
    if padding == "same":
        out = []
        for kk in k:
            total = d * (kk - 1)
            out.append((total // 2, total - total // 2))
        return out[0], out[1]
    ph, pw = padding
    return (ph, ph), (pw, pw)


@st.composite
def _conv(draw, cin: int, hw: tuple[int, int], cout: int | None = None, *, keep_size: bool = False,
          stride: int | None = None, kernel: int | None = None):
    """A convolution description and its output size. ``keep_size``: odd kernel, stride ``stride`` (default
    1), padding ``(k // 2) * dilation`` (the map keeps its size up to the stride)."""
    h, w = hw
    cout = draw(st.sampled_from(CHANNELS)) if cout is None else cout
    d = draw(st.sampled_from((1, 1, 2)))
    if keep_size:
        kk = kernel if kernel is not None else draw(st.sampled_from((1, 3, 3, 5)))
        k = (kk, kk)
        s = (stride or 1, stride or 1)
        padding = ((kk // 2) * d, (kk // 2) * d)
    else:
        kh = draw(st.integers(1, 7))
        kw = kh if draw(st.integers(0, 4)) else draw(st.integers(1, 7))
        k = (kh, kw)
        s = draw(st.sampled_from(((1, 1), (1, 1), (2, 2), (1, 2), (2, 1))))
        kind = draw(st.sampled_from(("same", "zero", "int", "pair")))
        if kind == "same" and s == (1, 1):
            padding = "same"
        elif kind == "int":
            p = draw(st.integers(0, 3))
            padding = (p, p)
        elif kind == "pair":
            padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        else:
            padding = (0, 0)
    # shrink the kernel until the output is at least one pixel
    k = list(k)
    for axis, n in enumerate((h, w)):
        while k[axis] > 1:
            (lo, hi) = _pads(padding, tuple(k), d)[axis]
            if _conv_out(n, k[axis], s[axis], d, lo, hi) >= 1:
                break
            k[axis] -= 1
    k = tuple(k)
    (pt, pb), (pl, pr) = _pads(padding, k, d)
    out_hw = (_conv_out(h, k[0], s[0], d, pt, pb), _conv_out(w, k[1], s[1], d, pl, pr))
    groups = 2 if cin % 2 == 0 and cout % 2 == 0 and draw(st.booleans()) else 1
    mode = "zeros"
    if max(pt, pb) < h and max(pl, pr) < w and max(pt, pb, pl, pr) > 0 and not draw(st.integers(0, 5)):
        mode = draw(st.sampled_from(("reflect", "replicate", "circular")))
    spec = dict(cin=cin, cout=cout, k=k, stride=s, dilation=d, padding=padding, groups=groups,
                bias=draw(st.booleans()), mode=mode)
    return spec, out_hw


@st.composite
def _pool(draw, hw: tuple[int, int]):
    """A pool description and its output size (``None`` when the map is too small)."""
    h, w = hw
    kind = draw(st.sampled_from(("max", "max", "F.max", "avg", "F.avg")))
    k = draw(st.sampled_from((2, 2, 3)))
    s = draw(st.sampled_from((k, k, 1, 2)))
    p = draw(st.sampled_from((0, 0, k // 2)))
    ceil = kind == "max" and not draw(st.integers(0, 4))
    if min(h, w) + 2 * p < k:
        return None, hw

    def size(n: int) -> int:
        span = n + 2 * p - k
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= n + p:  # PyTorch drops a last window that starts in the padding
            out -= 1
        return out

    return dict(kind=kind, k=k, s=s, p=p, ceil=ceil), (size(h), size(w))


@st.composite
def _activation(draw, fresh: bool):
    """An activation form (in-place forms only on a tensor the model made itself) and a LeakyReLU slope."""
    options = [a for a, inplace in ACTIVATIONS if fresh or not inplace]
    return draw(st.sampled_from(options)), draw(st.sampled_from((0.01, 0.2)))


@st.composite
def net_specs(draw):
    """A random network: its input ``(C, H, W)`` and a list of operations (see :class:`RandomNet`)."""
    c = draw(st.sampled_from((1, 2, 3, 4, 16)))
    h, w = draw(st.integers(9, 17)), draw(st.integers(9, 17))
    shape = (c, h, w)
    ops: list[tuple] = []
    fresh = False  # whether the current tensor was made by the model (in-place operations allowed)
    after_conv = False
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("conv", "conv", "conv", "bn", "act", "pool", "res", "res", "cat", "drop")))
        if kind == "conv":
            spec, (h, w) = draw(_conv(c, (h, w)))
            c = spec["cout"]
            ops.append(("conv", spec))
            # the usual followers: batch norm, activation, pool (each optional)
            if draw(st.booleans()):
                ops.append(("bn", c))
            if draw(st.integers(0, 3)):
                ops.append(("act", *draw(_activation(True))))
            if draw(st.integers(0, 2)) == 0:
                spec, (h, w) = draw(_pool((h, w)))
                if spec is not None:
                    ops.append(("pool", spec))
            fresh, after_conv = True, True
        elif kind == "bn":
            ops.append(("bn", c))
            fresh = True
        elif kind == "act":
            ops.append(("act", *draw(_activation(fresh))))
            fresh = True
        elif kind == "pool":
            spec, (h, w) = draw(_pool((h, w)))
            if spec is not None:
                ops.append(("pool", spec))
                fresh = True
        elif kind == "drop":
            ops.append(("drop", draw(st.sampled_from(("module", "F.dropout", "F.dropout2d")))))
        elif kind == "res":
            stride = draw(st.sampled_from((1, 1, 2))) if min(h, w) > 2 else 1
            c2 = draw(st.sampled_from((c, c, *CHANNELS)))
            first, hw2 = draw(_conv(c, (h, w), c2, keep_size=True, stride=stride))
            second, _ = draw(_conv(c2, hw2, c2, keep_size=True))
            projection = None
            if stride != 1 or c2 != c or not draw(st.integers(0, 3)):
                projection, _ = draw(_conv(c, (h, w), c2, keep_size=True, stride=stride, kernel=1))
                projection["groups"] = 1
            ops.append(("res", dict(
                first=first, bn1=draw(st.booleans()), act=draw(_activation(True)), second=second,
                bn2=draw(st.integers(0, 3)) > 0, projection=projection, proj_bn=draw(st.booleans()),
                add=draw(st.sampled_from(("+", "+=", "torch.add", "swap"))),
                final=draw(st.sampled_from((None, "relu", "F.relu", "shared_relu", "relu6"))))))
            c, (h, w) = c2, hw2
            fresh = True
        elif kind == "cat":
            a, _ = draw(_conv(c, (h, w), keep_size=True))
            branch = draw(st.sampled_from(("identity", "conv", "pool")))
            b = draw(_conv(c, (h, w), keep_size=True))[0] if branch == "conv" else None
            ops.append(("cat", dict(a=a, a_act=draw(st.booleans()), branch=branch, b=b,
                                    swap=draw(st.booleans()), dim=draw(st.sampled_from((1, -3))))))
            c = a["cout"] + (b["cout"] if b is not None else c)
            fresh = True
    if not after_conv or not draw(st.integers(0, 4)):  # at least one convolution, usually last of several
        spec, (h, w) = draw(_conv(c, (h, w)))
        c = spec["cout"]
        ops.append(("conv", spec))
        if draw(st.booleans()):
            ops.append(("act", *draw(_activation(True))))
    head = draw(st.sampled_from(("none", "flatten", "flatten", "gap")))
    if head == "flatten":
        ops.append(("flatten", draw(st.sampled_from(("torch.flatten", "module", "view"))),
                    draw(st.sampled_from((None, "relu", "dropout"))), c * h * w))
    elif head == "gap":
        ops.append(("gap", c))
    return dict(input=shape, ops=ops)


_MODULE_ACTIVATIONS = ("relu", "relu_inplace", "relu6", "leaky")
_FUNCTIONAL_ACTIVATIONS = {
    "F.relu": lambda x, slope: F.relu(x), "F.relu_inplace": lambda x, slope: F.relu(x, inplace=True),
    "torch.relu": lambda x, slope: torch.relu(x), "method.relu": lambda x, slope: x.relu(),
    "method.relu_": lambda x, slope: x.relu_(), "F.relu6": lambda x, slope: F.relu6(x),
    "F.leaky_relu": lambda x, slope: F.leaky_relu(x, slope)}


def _act_module(form: str, slope: float) -> nn.Module:
    if form == "relu6":
        return nn.ReLU6()
    if form == "leaky":
        return nn.LeakyReLU(slope)
    return nn.ReLU(inplace=form == "relu_inplace")


def _conv_module(spec: dict) -> nn.Conv2d:
    return nn.Conv2d(spec["cin"], spec["cout"], spec["k"], stride=spec["stride"], padding=spec["padding"],
                     dilation=spec["dilation"], groups=spec["groups"], bias=spec["bias"], padding_mode=spec["mode"])


class RandomNet(nn.Module):
    """The network of a :func:`net_specs` description: modules in ``self.mods``, the forward a fixed chain of
    steps that name them (traceable by :mod:`torch.fx`: the Python control flow depends on the description
    only; modules are looked up at every call, so replacing one replaces what runs)."""

    def __init__(self, spec: dict, untraceable: bool = False) -> None:
        super().__init__()
        self.mods = nn.ModuleDict()
        self.untraceable = untraceable
        self.shared_relu = nn.ReLU()  # called at every "shared_relu" step (torchvision's BasicBlock style)
        self.steps = [self._step(op) for op in spec["ops"]]

    def _add(self, module: nn.Module) -> str:
        name = f"m{len(self.mods)}"
        self.mods[name] = module
        return name

    def _activation(self, form: str, slope: float = 0.01) -> tuple:
        if form in _MODULE_ACTIVATIONS:
            return ("module", self._add(_act_module(form, slope)))
        return ("shared",) if form == "shared_relu" else ("fn", form, slope)

    def _step(self, op: tuple) -> tuple:
        kind = op[0]
        if kind == "conv":
            return ("module", self._add(_conv_module(op[1])))
        if kind == "bn":
            return ("module", self._add(nn.BatchNorm2d(op[1])))
        if kind == "act":
            return ("act", self._activation(op[1], op[2]))
        if kind == "pool":
            p = op[1]
            if p["kind"] == "max":
                return ("module", self._add(nn.MaxPool2d(p["k"], p["s"], p["p"], ceil_mode=p["ceil"])))
            if p["kind"] == "avg":
                return ("module", self._add(nn.AvgPool2d(p["k"], p["s"], p["p"])))
            return ("pool", p["kind"], p["k"], p["s"], p["p"])
        if kind == "drop":
            return ("module", self._add(nn.Dropout(0.3))) if op[1] == "module" else ("drop", op[1])
        if kind == "res":
            r = op[1]
            c2 = r["second"]["cout"]
            return ("res", dict(
                conv1=self._add(_conv_module(r["first"])), bn1=self._add(nn.BatchNorm2d(c2)) if r["bn1"] else None,
                act=self._activation(*r["act"]), conv2=self._add(_conv_module(r["second"])),
                bn2=self._add(nn.BatchNorm2d(c2)) if r["bn2"] else None,
                proj=None if r["projection"] is None else self._add(_conv_module(r["projection"])),
                proj_bn=self._add(nn.BatchNorm2d(c2)) if r["projection"] is not None and r["proj_bn"] else None,
                add=r["add"], final=None if r["final"] is None else self._activation(r["final"])))
        if kind == "cat":
            r = op[1]
            return ("cat", dict(a=self._add(_conv_module(r["a"])), a_act=self._add(nn.ReLU()) if r["a_act"] else None,
                                b=self._add(_conv_module(r["b"])) if r["b"] is not None else None,
                                branch=r["branch"], swap=r["swap"], dim=r["dim"]))
        if kind == "flatten":
            _, form, between, features = op
            flat = self._add(nn.Flatten()) if form == "module" else form
            mid = None if between is None else self._add(nn.ReLU() if between == "relu" else nn.Dropout(0.5))
            return ("flatten", flat, mid, self._add(nn.Linear(features, 7)))
        if kind == "gap":
            return ("gap", self._add(nn.Linear(op[1], 5)))
        raise AssertionError(kind)

    def _act(self, a: tuple, x):
        if a[0] == "module":
            return self.mods[a[1]](x)
        if a[0] == "shared":
            return self.shared_relu(x)
        return _FUNCTIONAL_ACTIVATIONS[a[1]](x, a[2])

    def _run(self, step: tuple, x):
        kind, m = step[0], self.mods
        if kind == "module":
            return m[step[1]](x)
        if kind == "act":
            return self._act(step[1], x)
        if kind == "pool":
            _, form, k, s, p = step
            return F.max_pool2d(x, k, s, p) if form == "F.max" else F.avg_pool2d(x, k, s, p)
        if kind == "drop":
            return F.dropout(x, 0.3, False) if step[1] == "F.dropout" else F.dropout2d(x, 0.3, False)
        if kind == "res":
            r = step[1]
            out = m[r["conv1"]](x)
            out = self._act(r["act"], m[r["bn1"]](out) if r["bn1"] else out)
            out = m[r["conv2"]](out)
            if r["bn2"]:
                out = m[r["bn2"]](out)
            identity = x
            if r["proj"]:
                identity = m[r["proj"]](x)
                if r["proj_bn"]:
                    identity = m[r["proj_bn"]](identity)
            if r["add"] == "+=":
                out += identity
            elif r["add"] == "torch.add":
                out = torch.add(out, identity)
            elif r["add"] == "swap":
                out = operator.add(identity, out)
            else:
                out = out + identity
            return out if r["final"] is None else self._act(r["final"], out)
        if kind == "cat":
            r = step[1]
            ya = m[r["a"]](x)
            if r["a_act"]:
                ya = m[r["a_act"]](ya)
            if r["branch"] == "conv":
                yb = m[r["b"]](x)
            else:
                yb = F.max_pool2d(x, 3, 1, 1) if r["branch"] == "pool" else x
            return torch.cat([yb, ya] if r["swap"] else [ya, yb], dim=r["dim"])
        if kind == "flatten":
            _, flat, mid, linear = step
            if flat == "view":
                x = x.view(x.shape[0], -1)
            elif flat == "torch.flatten":
                x = torch.flatten(x, 1)
            else:
                x = m[flat](x)
            return m[linear](x if mid is None else m[mid](x))
        if kind == "gap":
            return m[step[1]](torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        raise AssertionError(kind)

    def forward(self, x):
        if self.untraceable and x.dim() != 4:  # a Python check on the input: torch.fx cannot trace this
            raise ValueError("expected a 4-D input")
        for step in self.steps:
            x = self._run(step, x)
        return x


def _sequential(spec: dict) -> nn.Sequential | None:
    """The network as an ``nn.Sequential`` when every step is a module (convolutions, norms, module activations,
    module pools, dropout); ``None`` otherwise."""
    layers: list[nn.Module] = []
    for op in spec["ops"]:
        if op[0] == "conv":
            layers.append(_conv_module(op[1]))
        elif op[0] == "bn":
            layers.append(nn.BatchNorm2d(op[1]))
        elif op[0] == "act" and op[1] in _MODULE_ACTIVATIONS:
            layers.append(_act_module(op[1], op[2]))
        elif op[0] == "pool" and op[1]["kind"] == "max":
            p = op[1]
            layers.append(nn.MaxPool2d(p["k"], p["s"], p["p"], ceil_mode=p["ceil"]))
        elif op[0] == "pool" and op[1]["kind"] == "avg":
            layers.append(nn.AvgPool2d(op[1]["k"], op[1]["s"], op[1]["p"]))
        elif op[0] == "drop" and op[1] == "module":
            layers.append(nn.Dropout(0.3))
        elif op[0] == "flatten" and op[1] == "module":
            layers += [nn.Flatten()] + ([] if op[2] is None else [nn.ReLU() if op[2] == "relu" else nn.Dropout(0.5)])
            layers.append(nn.Linear(op[3], 7))
        else:
            return None
    return nn.Sequential(*layers)


@torch.no_grad()
def _randomise_(model: nn.Module, seed: int, s_range: tuple[float, float], keep_initial: float) -> None:
    """Random windows on the target layers (a ``keep_initial`` share keep the initial whole-map windows) and
    random running statistics and affine parameters on the batch norms."""
    g = torch.Generator().manual_seed(seed)
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, TargetConv2d)):
        if float(torch.rand((), generator=g)) >= keep_initial:
            random_rois_(layer, seed + i, s_range=s_range)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.3)
        bn.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.3)


@st.composite
def cases(draw):
    """A network description with how to targetize, randomise and freeze it."""
    spec = draw(net_specs())
    return dict(
        spec=spec,
        container=draw(st.sampled_from(("graph", "graph", "graph", "sequential", "untraceable"))),
        targets=draw(st.sampled_from(("all", "all", "some"))),
        pick=draw(st.integers(0, 2 ** 16)),
        min_roi=draw(st.sampled_from((None, None, 1, 2, 4))),
        s_range=draw(st.sampled_from(S_RANGES)),
        keep_initial=draw(st.sampled_from((0.0, 0.0, 0.3))),
        seed=draw(st.integers(0, 2 ** 16)),
        batch=draw(st.sampled_from((1, 2, 3, 4, 8, 17))),
        measure=draw(st.integers(0, 4)) == 0,
        native=draw(st.sampled_from((True, True, False, False, ("groups",), ("batch",), ("reduce",)))),
        fine=draw(st.booleans()),
        force_native=draw(st.booleans()),
        graph=draw(st.integers(0, 5)) > 0,
        # freeze's other switches, usually at their defaults
        flags={name: draw(st.integers(0, 7)) > 0 for name in ("permute", "fuse", "input_sparsity")},
        channels_last=draw(st.sampled_from((None, None, None, False, True))),
    )


def _build(case: dict) -> nn.Module:
    spec = case["spec"]
    torch.manual_seed(case["seed"])
    model = _sequential(spec) if case["container"] == "sequential" else None
    if model is None:
        model = RandomNet(spec, untraceable=case["container"] == "untraceable")
    names = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    if case["targets"] == "all":
        chosen = set(names)
    else:
        g = torch.Generator().manual_seed(case["pick"])
        chosen = {n for n in names if bool(torch.rand((), generator=g) < 0.5)}
    model = tkn.targetize(model, include=lambda name, conv: name in chosen, min_roi=case["min_roi"])
    _randomise_(model, case["seed"], case["s_range"], case["keep_initial"])
    return model.eval()


def check_freeze_equals_eval(case: dict) -> None:
    """Freeze the case's network and compare it with eval at batch 1, the freeze batch and an odd batch."""
    model = _build(case)
    c, h, w = case["spec"]["input"]
    g = torch.Generator().manual_seed(case["seed"])
    batch = case["batch"]
    x = torch.randn(max(batch, 5), c, h, w, generator=g)
    with torch.no_grad():
        before = model(x)
    with ExitStack() as stack:
        if case["force_native"]:  # native plans wherever the kernel can run the layer, however much work
            stack.enter_context(mock.patch.object(freeze_module, "NATIVE_MODELLED", float("inf")))
        # the PyTorch planner: its default cost models, or one that splits into many small blocks
        planner = dict(candidates=[FINE], grids=(2, 3)) if case["fine"] else {}
        frozen = tkn.freeze(model, x[:batch], measure=case["measure"], repeats=1, native=case["native"],
                            graph=case["graph"], channels_last=case["channels_last"], **case["flags"], **planner)
    assert not any(isinstance(m, TargetConv2d) for m in frozen.modules())  # every target layer was frozen
    for m in frozen.modules():
        if isinstance(m, FrozenTargetConv2d):
            if m.groups != 1:  # the engine does not accelerate grouped convolutions
                assert m.plan.mode == "dense"
            if currently_in_test_context():  # statistics: pytest --hypothesis-show-statistics
                event(f"plan {m.plan.label}" + (" + residual" if m.residual else ""))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # freezing left the model untouched
        for n in sorted({1, batch, 5}):
            ref = model(x[:n])
            got = frozen(x[:n])
            scale = max(1.0, float(ref.abs().max()))
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda m: f"batch {n}: {m}")


_SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


@settings(max_examples=50, **_SETTINGS)
@given(case=cases())
def test_freeze_equals_eval_on_random_networks(case):
    check_freeze_equals_eval(case)


@pytest.mark.slow
@settings(max_examples=300, **_SETTINGS)
@given(case=cases())
def test_freeze_equals_eval_on_many_random_networks(case):
    check_freeze_equals_eval(case)


def test_generated_networks_cover_the_engine():
    """The networks drawn by the CI-sized run include every kind of step, grouped and 1x1 target layers, and
    residual blocks whose projection shortcut is a target layer (the plans they reach are listed by
    ``pytest --hypothesis-show-statistics``)."""
    seen: set[str] = set()

    @settings(max_examples=40, **_SETTINGS)
    @given(case=cases())
    def collect(case):
        model = _build(case)
        for m in model.modules():
            if isinstance(m, TargetConv2d) and m.kernel_size == (1, 1) and m.groups == 1:
                seen.add("target 1x1")
            if isinstance(m, TargetConv2d) and m.groups == 2:
                seen.add("target groups=2")
        for step in getattr(model, "steps", ()):
            if step[0] == "res" and step[1]["proj"] and isinstance(model.mods[step[1]["proj"]], TargetConv2d):
                seen.add("target projection")
        seen.update(op[0] for op in case["spec"]["ops"])
    collect()
    assert {"conv", "bn", "act", "pool", "drop", "res", "cat", "flatten", "gap", "target 1x1", "target groups=2",
            "target projection"} <= seen

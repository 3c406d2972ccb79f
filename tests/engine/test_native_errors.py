"""The native kernel cannot read out of bounds: the C entry points refuse bad arguments with distinct codes
(called here through ctypes directly), and NativeConv checks every tensor it hands over in Python first."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tkn.engine import native
from helpers_engine import needs_native

pytestmark = [needs_native, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
#: Positions in the ``dims`` argument of the entry points.
N, H, W, CIN, KH, KW, SY, SX, DY, DX, PT, PL, HO, WO, POOL, HP, WP, C = range(18)


def _layer(strategy: str, *, pool: int = 1, residual: bool = False) -> native.NativeConv:
    """A small valid layer: input 6x7, 5 output channels with ROIs of every kind, 3x3 kernel, pad 1."""
    g = torch.Generator().manual_seed(0)
    c_in = native.vector_width()  # the "reduce" lanes run over input channels
    w = torch.randn(5, c_in, 3, 3, generator=g)
    roi = torch.tensor([[0, 6, 0, 7], [1, 3, 2, 5], [4, 4, 0, 7], [0, 2, 5, 7], [5, 6, 0, 1]])
    window = torch.rand(5, 6, 7, generator=g)
    return native.NativeConv(w, torch.randn(5, generator=g), window, roi, conv_hw=(6, 7), input_hw=(6, 7),
                             stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1), scale=torch.rand(5, generator=g),
                             shift=torch.randn(5, generator=g), relu=True, pool=pool, residual=residual,
                             strategy=strategy)


def _arguments(entry: str, conv: native.NativeConv, batch: int = 2) -> dict:
    """Valid arguments of ``entry`` for ``conv``, by name (tensors, ints, ``None`` for null pointers); the output
    is filled with NaN, which a refusing kernel leaves as it is."""
    dims = conv.dims.clone()
    hp, wp = conv.output_hw
    h, w = int(dims[H]), int(dims[W])  # the input as the kernel reads it (a layer may pad it itself)
    c_in, c = conv.c_in, conv.c_out
    if entry == "tkn_roi_conv_batch":
        lanes = native.vector_width()
        dims[N] = lanes
        return dict(xt=torch.randn(h, w, c_in, lanes), wc=conv.weight, zoff=conv.zoff, zlist=conv.zlist,
                    soff=conv.soff, slist=conv.slist, window=conv.window, bias=conv.bias, scale=conv.scale,
                    shift=conv.shift, fill=conv.fill, out=torch.full((hp, wp, c, lanes), float("nan")), dims=dims,
                    zlen=conv.zlist.numel(), slen=conv.slist.numel(), relu=1, nthreads=1)
    dims[N] = batch
    x = torch.randn(batch, h, w, c_in)
    out = torch.full((batch, hp, wp, c), float("nan"))
    if entry == "tkn_roi_conv_reduce":
        return dict(x=x, weight=conv.weight, set_offsets=conv.set_offsets, set_channels=conv.set_channels,
                    set_boxes=conv.set_boxes, window=conv.window, bias=conv.bias, scale=conv.scale, shift=conv.shift,
                    fill=conv.fill, out=out, dims=dims, S=conv.set_boxes.shape[0], set_len=conv.set_channels.numel(),
                    relu=1, nthreads=1)
    residual = torch.randn(batch, hp, wp, c) if conv.residual else None
    return dict(x=x, weight=conv.weight, ranges=conv.ranges, window=conv.window, bias=conv.bias, scale=conv.scale,
                shift=conv.shift, index=conv.index, fill=conv.fill, support=conv.support, residual=residual, out=out,
                dims=dims, G=len(conv.groups), relu=1, nthreads=1)


def _call(entry: str, args: dict) -> int:
    values = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in args.values()]
    return getattr(native._load(), entry)(*values)


ENTRIES = {"tkn_roi_conv": "groups", "tkn_roi_conv_batch": "batch", "tkn_roi_conv_reduce": "reduce"}


def _dims(**changes):
    """Set entries of ``dims`` (a callable value is called then: the vector width is known only once the kernel
    is loaded)."""
    def change(args: dict) -> None:
        for name, value in changes.items():
            args["dims"][globals()[name]] = value() if callable(value) else value
    return change


def _set(name: str, value):
    def change(args: dict) -> None:
        args[name] = value
    return change


def _poke(name: str, index: tuple, value: int):
    def change(args: dict) -> None:
        args[name] = args[name].clone()
        args[name][index] = value
    return change


# (entry points, the change to valid arguments, the code it must return)
CASES = [
    (list(ENTRIES), _dims(H=0), -1),
    (list(ENTRIES), _dims(C=0), -1),
    (list(ENTRIES), _dims(KW=0), -1),
    (list(ENTRIES), _dims(HO=0, HP=0), -1),
    (list(ENTRIES), _dims(N=-1), -1),
    (["tkn_roi_conv"], _set("G", -1), -1),
    (["tkn_roi_conv_reduce"], _set("S", -1), -1),
    (["tkn_roi_conv"], _dims(KH=65), -1),
    (list(ENTRIES), _dims(H=2 ** 30), -2),  # H * W * C_in overflows int32 offsets
    (list(ENTRIES), _dims(SY=2 ** 30), -2),  # rows a window reaches overflow int
    (["tkn_roi_conv"], lambda a: (a.update(residual=torch.zeros(2, 3, 3, 5)), a["dims"].__setitem__(POOL, 2),
                                  a["dims"].__setitem__(HP, 3), a["dims"].__setitem__(WP, 3)), -3),
    (["tkn_roi_conv_batch"], _dims(N=lambda: native.vector_width() + 1), -4),
    (["tkn_roi_conv_batch"], _dims(N=0), -4),
    (list(ENTRIES), _dims(HP=7), -5),
    (list(ENTRIES), _dims(POOL=2), -5),  # pooled size still that of pool 1
    (["tkn_roi_conv_batch"], _dims(KH=65, KW=64), -6),
    (["tkn_roi_conv_reduce"], _dims(CIN=lambda: native.vector_width() + 1), -7),
    (list(ENTRIES), _set("out", None), -8),
    (list(ENTRIES), _set("dims", None), -8),
    (["tkn_roi_conv", "tkn_roi_conv_reduce"], _set("x", None), -8),
    (["tkn_roi_conv"], _set("index", None), -8),
    (["tkn_roi_conv_batch"], _set("zlist", None), -8),
    (["tkn_roi_conv_reduce"], _set("set_boxes", None), -8),
    (["tkn_roi_conv_reduce"], _set("set_channels", None), -8),
    (list(ENTRIES), _dims(POOL=9, HP=0, WP=0), -9),
    (list(ENTRIES), _dims(POOL=0), -9),
    (list(ENTRIES), _dims(SX=0), -10),
    (list(ENTRIES), _dims(DY=0), -10),
    (list(ENTRIES), _dims(PT=-1), -10),
    (["tkn_roi_conv"], _poke("ranges", (0, 1, 1), 8), -11),  # a column range past the conv map (7 wide)
    (["tkn_roi_conv"], _poke("ranges", (0, 1, 0), -1), -11),
    (["tkn_roi_conv_reduce"], _poke("set_boxes", (1, 1), 7), -11),  # a box below the conv map (6 rows)
    (["tkn_roi_conv_reduce"], _poke("set_boxes", (2, 2), -1), -11),
    (["tkn_roi_conv"], _poke("index", (0, 0), 5), -12),
    (["tkn_roi_conv"], _poke("index", (0, 1), -2), -12),
    (["tkn_roi_conv_batch"], _poke("slist", (0,), 5), -12),
    (["tkn_roi_conv_batch"], _poke("zlist", (3,), -1), -12),
    (["tkn_roi_conv_reduce"], _poke("set_channels", (0,), 5), -12),
    (["tkn_roi_conv_reduce"], _poke("set_channels", (1,), 0), -12),  # channel 0 in two sets
    (["tkn_roi_conv_batch"], _poke("soff", (-1,), 0), -13),  # does not end at the list's length
    (["tkn_roi_conv_batch"], _poke("zoff", (0,), 1), -13),
    (["tkn_roi_conv_batch"], _poke("soff", (3,), 10 ** 6), -13),  # decreasing after it
    (["tkn_roi_conv_batch"], lambda a: a.update(zlen=a["zlen"] + 1), -13),
    (["tkn_roi_conv_reduce"], _poke("set_offsets", (-1,), 2), -13),  # does not end at the list's length
    (["tkn_roi_conv_reduce"], _poke("set_offsets", (0,), 1), -13),
    (["tkn_roi_conv_reduce"], _poke("set_offsets", (2,), 0), -13),  # decreasing
]


def test_valid_arguments_are_accepted():
    for entry, strategy in ENTRIES.items():
        args = _arguments(entry, _layer(strategy))
        assert _call(entry, args) == 0
        assert not torch.isnan(args["out"]).any()
    args = _arguments("tkn_roi_conv", _layer("groups", residual=True))
    assert _call("tkn_roi_conv", args) == 0


@pytest.mark.parametrize("entries,change,code", CASES)
def test_entry_points_refuse_bad_arguments_with_their_code(entries, change, code):
    for entry in entries:
        conv = _layer(ENTRIES[entry])
        args = _arguments(entry, conv)
        change(args)
        assert _call(entry, args) == code, entry
        if isinstance(args["out"], torch.Tensor):  # refused before writing anything
            assert torch.isnan(args["out"]).all(), entry


def test_every_code_is_reached_and_named():
    """The codes above are exactly the kernel's (its enum) and each has a message."""
    source = (ROOT / "tkn" / "engine" / "csrc" / "roi_conv.cpp").read_text()
    enum = {int(v) for v in re.findall(r"TKN_E_\w+ = (-\d+),", source)}
    assert enum == {code for _, _, code in CASES} == set(native.ERROR_CODES)
    assert all(native.ERROR_CODES.values())
    assert native._load().tkn_abi_version() == native.ABI_VERSION


@pytest.mark.parametrize("strategy", native.STRATEGIES)
def test_a_refusal_reaches_python_with_its_message(strategy):
    """Packed data changed behind the layer's back (its Python checks ran at construction): the kernel's
    refusal becomes a RuntimeError naming the entry point, what was wrong and the code."""
    conv = _layer(strategy)
    x = torch.randn(2, conv.c_in, 6, 7)
    conv.dims[SY] = 0
    entry = {"groups": "tkn_roi_conv", "batch": "tkn_roi_conv_batch", "reduce": "tkn_roi_conv_reduce"}[strategy]
    with pytest.raises(RuntimeError, match=rf"\({entry}\) rejected its arguments: a stride or dilation below 1, "
                                           r"or a negative padding \(code -10\)"):
        conv(x)


# -- the Python checks ---------------------------------------------------------------------------------------

def _kwargs(**changes):
    g = torch.Generator().manual_seed(1)
    kwargs = dict(weight=torch.randn(5, 3, 3, 3, generator=g), bias=None, window_map=torch.rand(5, 6, 7, generator=g),
                  roi=torch.tensor([[0, 6, 0, 7]] * 5), conv_hw=(6, 7), input_hw=(6, 7), stride=(1, 1),
                  dilation=(1, 1), pad=(1, 1, 1, 1))
    kwargs.update(changes)
    return kwargs


def _build(**changes):
    kw = _kwargs(**changes)
    return native.NativeConv(kw.pop("weight"), kw.pop("bias"), kw.pop("window_map"), kw.pop("roi"), **kw)


BAD_ARGUMENTS = [
    (dict(weight=torch.randn(5, 3, 3)), r"weight must be a non-empty floating-point \(C_out, C_in, kH, kW\) tensor"),
    (dict(weight=torch.ones(5, 3, 3, 3, dtype=torch.int32)), "weight must be a non-empty floating-point"),
    (dict(weight=torch.randn(0, 3, 3, 3)), "weight must be a non-empty"),
    (dict(conv_hw=(6, 0)), r"conv_hw must be a pair of ints >= 1, got \(6, 0\)"),
    (dict(input_hw=(6.0, 7)), "input_hw must be a pair of ints >= 1"),
    (dict(stride=(0, 1)), r"stride must be a pair of ints >= 1, got \(0, 1\)"),
    (dict(dilation=(1,)), "dilation must be a pair of ints >= 1"),
    (dict(pad=(1, 1, -1, 1)), r"pad must be four ints >= 0 \(left, right, top, bottom\)"),
    (dict(pad=(1, 1, 1)), "pad must be four ints >= 0"),
    (dict(conv_hw=(5, 7)), r"conv_hw must be the convolution's output size .*: \(6, 7\), got \(5, 7\)"),
    (dict(conv_hw=(4, 7), window_map=torch.rand(5, 4, 7), stride=(2, 1)), r"conv_hw must be .*: \(3, 7\), got"),
    (dict(pool=9), r"max-pools of size 1..8, got pool=9"),
    (dict(pool=True), "max-pools of size 1..8, got pool=True"),
    (dict(pool=7), r"pool=7 is larger than the conv output \(6, 7\)"),
    (dict(bias=torch.zeros(4)), r"bias must be None or a floating-point tensor of shape \(5,\)"),
    (dict(scale=torch.zeros(5, 1)), r"scale must be None or a floating-point tensor of shape \(5,\)"),
    (dict(shift=torch.zeros(5, dtype=torch.int64)), "shift must be None or a floating-point tensor"),
    (dict(window_map=torch.rand(5, 7, 6)), r"window_map must be a floating-point tensor of shape \(5, 6, 7\)"),
    (dict(roi=torch.zeros(5, 4)), r"roi must be an integer tensor of shape \(5, 4\)"),
    (dict(roi=torch.zeros(4, 4, dtype=torch.int64)), r"roi must be an integer tensor of shape \(5, 4\)"),
    (dict(roi=torch.tensor([[0, 6, 0, 7]] * 4 + [[0, 7, 0, 7]])),
     r"roi boxes \(y0, y1, x0, x1\) must lie within the 6x7 map, got \[0, 7, 0, 7\] for channel 4"),
    (dict(roi=torch.tensor([[0, 6, 0, 7]] * 4 + [[0, 6, -1, 3]])), "roi boxes .* got \\[0, 6, -1, 3\\] for channel 4"),
    (dict(support=torch.zeros(2, 4, dtype=torch.int64)), r"support must be an integer tensor of shape \(3, 4\)"),
    (dict(support=torch.tensor([[0, 6, 0, 7], [0, 6, 0, 8], [0, 0, 0, 0]])),
     r"support boxes .* within the 6x7 map, got \[0, 6, 0, 8\] for channel 1"),
    (dict(strategy="lanes"), "strategy must be one of"),
    (dict(residual=True, pool=2), "a residual addition needs pool=1"),
]


@pytest.mark.parametrize("changes,message", BAD_ARGUMENTS)
def test_construction_checks_name_the_argument(changes, message):
    with pytest.raises(ValueError, match=message):
        _build(**changes)


@pytest.mark.parametrize("strategy", native.STRATEGIES)
def test_call_checks_the_input_and_residual(strategy):
    c_in = native.vector_width()
    conv = _build(weight=torch.randn(5, c_in, 3, 3), strategy=strategy, residual=strategy == "groups")
    x = torch.randn(2, c_in, 6, 7)
    residual = torch.randn(2, 5, 6, 7) if strategy == "groups" else None
    with pytest.raises(ValueError, match="needs float32 CPU input, got torch.float64 on cpu"):
        conv(x.double(), residual)
    with pytest.raises(ValueError, match="needs float32 CPU input, got ndarray"):
        conv(x.numpy(), residual)
    with pytest.raises(ValueError, match=rf"input must be \(N, {c_in}, 6, 7\), got \(2, {c_in}, 7, 6\)"):
        conv(x.transpose(2, 3), residual)
    with pytest.raises(ValueError, match=rf"input must be \(N, {c_in}, 6, 7\), got \({c_in}, 6, 7\)"):
        conv(x[0], residual)
    if strategy == "groups":
        for bad in (None, residual[:1], residual.double(), residual[..., :6]):
            with pytest.raises(ValueError, match=r"adds a float32 residual of shape \(2, 5, 6, 7\) on the CPU"):
                conv(x, bad)
    else:
        with pytest.raises(ValueError, match="built without a residual addition"):
            conv(x, torch.randn(2, 5, 6, 7))
    # any memory format and stride of a valid input is copied into the layout the kernel reads
    ref = conv(x.contiguous(), residual)
    for variant in (x.contiguous(memory_format=torch.channels_last), torch.randn(2, c_in, 6, 14)[..., ::2].copy_(x),
                    torch.randn(2, c_in * 2, 6, 7)[:, ::2].copy_(x)):
        torch.testing.assert_close(conv(variant, residual), ref)


@pytest.mark.parametrize("strategy", native.STRATEGIES)
def test_packed_tensors_are_checked_before_any_call(strategy):
    """Every tensor handed to the kernel is checked (``_check_packed`` runs at construction and unpickling)."""
    conv = _layer(strategy)
    conv._check_packed()
    tampered = []
    if strategy == "groups":
        tampered += [("index", (0, 0), 5, r"index must hold output channels in \[0, 5\) or -1"),
                     ("ranges", (0, 0, 1), 9, r"ranges must be column ranges within \[0, 7\]")]
    elif strategy == "batch":
        tampered += [("slist", (0,), 7, r"slist must hold channels in \[0, 5\)"),
                     ("zoff", (1,), -3, "zoff must be non-decreasing offsets from 0 into zlist"),
                     ("soff", (-1,), 1, r"slist must be a contiguous torch.int32 CPU tensor of shape \(1,\)")]
    else:
        tampered += [("set_boxes", (0, 3), 8, r"set_boxes boxes .* within the 6x7 map"),
                     ("set_channels", (0,), 5, r"set_channels must hold channels in \[0, 5\)"),
                     ("set_channels", (1,), 0, "set_channels must hold each output channel at most once"),
                     ("set_offsets", (2,), 0, "set_offsets must be non-decreasing offsets from 0 into set_channels")]
    for name, index, value, message in tampered:
        bad = pickle.loads(pickle.dumps(conv))
        getattr(bad, name)[index] = value
        with pytest.raises(ValueError, match=message):
            bad._check_packed()
        with pytest.raises(ValueError, match=message):
            pickle.loads(pickle.dumps(bad))
    for name, replace, message in [
        ("weight", lambda t: t.double(), r"weight must be a contiguous torch.float32 CPU tensor of shape"),
        ("window", lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2),
         r"window must be a contiguous torch.float32 CPU tensor .*got a non-contiguous"),
        ("fill", lambda t: t[:4], r"fill must be a contiguous torch.float32 CPU tensor of shape \(5,\)"),
        ("dims", lambda t: t.long(), r"dims must be a contiguous torch.int32 CPU tensor of shape \(18,\)"),
        ("bias", lambda t: t[:-1], "bias must be a contiguous torch.float32 CPU tensor"),
    ]:
        bad = pickle.loads(pickle.dumps(conv))
        setattr(bad, name, replace(getattr(bad, name)))
        with pytest.raises(ValueError, match=message):
            bad._check_packed()
    bad = pickle.loads(pickle.dumps(conv))
    bad.shift = None
    with pytest.raises(ValueError, match="scale and shift must be given together"):
        bad._check_packed()


# -- sanitizers ----------------------------------------------------------------------------------------------

def _sanitizer_runtime() -> str | None:
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


#: The kernel tests run under the sanitizers: every strategy against float64 loops, chained batch layers,
#: residuals, input sparsity, buffer reuse, strategy plans, and the refusals of this file.
SANITIZED_TESTS = ["tests/engine/test_engine_native.py", "tests/engine/test_native_errors.py", "-k",
                   "(kernel_matches or chains_layers or residual_is_added or input_support or buffer_is_reused "
                   "or strategy_reaches or every_executor or test_native_errors) and not sanitizers"]


@pytest.mark.slow
def test_kernel_tests_pass_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """``TKN_NATIVE_SANITIZE=1``: the kernel built with ``-fsanitize=address,undefined`` (its own cache entry)
    runs the kernel tests in a process started with the ASan runtime preloaded; any out-of-bounds access or
    undefined behaviour aborts it."""
    runtime = _sanitizer_runtime()
    if runtime is None:
        pytest.skip("no AddressSanitizer runtime (gcc -print-file-name=libasan.so)")
    env = dict(os.environ, TKN_NATIVE_SANITIZE="1", TKN_REQUIRE_NATIVE="1", LD_PRELOAD=runtime,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SANITIZED_TESTS],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, tail
    assert re.search(r"\d+ passed", proc.stdout) and " skipped" not in proc.stdout, tail
    # the control: the same build catches a read past the input (valid dims, a buffer one sample short)
    proc = subprocess.run([sys.executable, "-c", OUT_OF_BOUNDS], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-4000:]


OUT_OF_BOUNDS = """
import sys
sys.path[:0] = ["tests/engine", "tests"]
from test_native_errors import _arguments, _call, _layer
args = _arguments("tkn_roi_conv", _layer("groups"))
args["x"] = args["x"][:1].clone()
print("returned", _call("tkn_roi_conv", args))
"""

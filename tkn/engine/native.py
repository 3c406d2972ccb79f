"""The native ROI convolution: a C++ kernel that computes a target layer's exact ROIs in one call.

The kernel (``tkn/engine/csrc/roi_conv.cpp``) is compiled with the system C++
compiler (``g++ -O3 -march=native -fopenmp``) at first use and loaded with
:mod:`ctypes` (it has a plain C interface, so it needs no PyTorch headers and
builds in seconds). The library is cached under ``$TKN_CACHE/native`` (default
``~/.cache/tkn/native``) in a directory named by a hash of the source, the
compiler flags, the compiler's version, the torch version and the CPU's flags,
so a second process, or another machine sharing the cache, never reuses a
library built for something else. A library whose recorded checksum does not
match, or that fails to load, is rebuilt; every freshly loaded library is
checked against ``torch.nn.functional.conv2d`` on a small random problem
before it is used.

:func:`available` says whether the kernel can be used; when it cannot (no
compiler, a failed build or check, or ``TKN_NATIVE=0`` in the environment when
the kernel is first needed), :func:`reason` holds a one-line explanation and
the frozen layers run the PyTorch executors instead.

What the kernel supports: float32 CPU tensors, ``groups=1``, any stride and
dilation, zero padding given as (top, left) offsets (other padding modes are
applied by the caller as an explicit pad), a fused bias, window·mask, affine
(``scale``, ``shift``), ReLU and a ``pool``×``pool`` max-pool of stride ``pool``
with ``pool <= 8``.

Memory safety: :class:`NativeConv` checks every tensor it hands to the kernel
(shape, dtype, device, contiguity, boxes and channel indices within range, CSR
offsets within their lists) when it is built, and the input and residual at
every call, raising ``ValueError``; the C entry points check their arguments
again and return a negative code (:data:`ERROR_CODES`) instead of reading out
of bounds. ``TKN_NATIVE_SANITIZE=1`` builds the kernel with AddressSanitizer
and UndefinedBehaviorSanitizer (a separate cache entry; the process must be
started with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``).
"""
from __future__ import annotations

import ctypes
import hashlib
import operator
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tkn import functional as TF
from tkn.io import atomic_write, atomic_write_text

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised between processes
    fcntl = None

__all__ = ["available", "reason", "vector_width", "cache_dir", "NativeConv", "group_channels", "channel_sets",
           "MAX_POOL", "STRATEGIES", "strategy_unsupported", "batch_layout", "to_batch_layout", "ERROR_CODES",
           "ABI_VERSION", "build_flags", "nhwc_as_nchw"]

#: The largest fused max-pool the kernel handles.
MAX_POOL = 8

#: How the kernel can spend its vector lanes (see :class:`NativeConv`).
STRATEGIES = ("groups", "batch", "reduce")

#: Below this many input channels (and without input support boxes) the ``"groups"`` kernel runs its flat loop
#: over (ky, kx, ci); the same bound is written in csrc/roi_conv.cpp.
FLAT_CHANNELS = 32


def strategy_unsupported(strategy: str, in_channels: int, residual: bool = False) -> str:
    """Why the native kernel cannot run a layer with ``strategy``; ``""`` when it can."""
    if strategy not in STRATEGIES:
        return f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
    if not available():
        return f"the native kernel is not available ({reason()})"
    if residual and strategy != "groups":
        return f"a residual addition is fused by the 'groups' strategy only, got {strategy!r}"
    if not available():
        return f"the native kernel is not available ({reason()})"
    if strategy == "reduce" and in_channels % vector_width():
        return f"the 'reduce' strategy needs input channels in multiples of {vector_width()}, got {in_channels}"
    return ""

_SOURCE = Path(__file__).with_name("csrc") / "roi_conv.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC"]
#: Added under ``TKN_NATIVE_SANITIZE=1``: undefined behaviour aborts, out-of-bounds accesses are reported. ``-O1``
#: (the last ``-O`` wins): the instrumented ``-O3`` build took 50 s to compile, this one 15 s.
_SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
                   "-g", "-O1"]

#: The kernel's negative return codes (``TKN_E_*`` in ``csrc/roi_conv.cpp``) and what each means.
ERROR_CODES: dict[int, str] = {
    -1: "a size below 1 (input, channels, kernel, conv output), a negative batch, group or set count, or more "
        "than 64 kernel rows",
    -2: "sizes whose offsets overflow the kernel's index types",
    -3: "a residual addition with a fused pool",
    -4: "batch lanes that are not a positive multiple of the vector width",
    -5: "a pooled size other than the conv output's size divided by the pool",
    -6: "more than 4096 kernel taps",
    -7: "input channels that are not a multiple of the vector width (the 'reduce' strategy)",
    -8: "a required pointer is null",
    -9: f"a pool outside 1..{MAX_POOL}",
    -10: "a stride or dilation below 1, or a negative padding",
    -11: "a column range, ROI or channel set's box outside the conv map",
    -12: "a channel index out of range, or a channel in two sets",
    -13: "CSR offsets that are not 0-based, non-decreasing and ending at their list's length",
}


def _env_on(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("", "0", "false", "no", "off")


def build_flags() -> list[str]:
    """The compiler flags of the kernel: optimised for this CPU, plus the sanitizers under
    ``TKN_NATIVE_SANITIZE=1``."""
    return _FLAGS + (_SANITIZE_FLAGS if _env_on("TKN_NATIVE_SANITIZE") else [])


def _asan_preloaded() -> bool:
    """Whether the AddressSanitizer runtime is loaded in this process (a sanitized library needs it first)."""
    try:
        with open("/proc/self/maps") as fh:
            return any("libasan" in line for line in fh)
    except OSError:
        return "libasan" in os.environ.get("LD_PRELOAD", "")


def _check_code(code: int, entry: str) -> None:
    """Raise for a kernel return code other than 0 (the kernel refused its arguments and touched nothing)."""
    if code != 0:
        what = ERROR_CODES.get(code, "an unknown error")
        raise RuntimeError(f"the native kernel ({entry}) rejected its arguments: {what} (code {code})")

_state: dict[str, object] = {}

#: Outputs of at least this many bytes are kept for reuse by the next call (see ``NativeConv._output``).
_REUSE_BYTES = 1 << 20
#: How many references a tensor storage has (``None`` where this torch does not say).
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def cache_dir() -> Path:
    """Root of the build cache: ``$TKN_CACHE/native``, default ``~/.cache/tkn/native``."""
    root = os.environ.get("TKN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tkn")
    return Path(root) / "native"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _key(cxx: str) -> str:
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), " ".join(build_flags()).encode(), version.encode(), torch.__version__.encode(),
                 _cpu_flags().encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


#: Version of the entry points' argument lists that this module calls (``tkn_abi_version()`` of the library).
ABI_VERSION = 5


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cxx: str, directory: Path) -> Path:
    """Compile into ``directory`` (atomically: a temporary file renamed) and record the library's checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    lib = directory / "roi_conv.so"

    def compile_to(tmp: Path) -> None:
        proc = subprocess.run([cxx, *build_flags(), str(_SOURCE), "-o", str(tmp)], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise RuntimeError(f"compiling {_SOURCE.name} failed: {last}")

    atomic_write(lib, compile_to, pass_path=True)
    atomic_write_text(directory / "roi_conv.sha256", _digest(lib))
    return lib


def _open(directory: Path) -> ctypes.CDLL:
    """Load the cached library, rebuilding it when it is missing, does not match its checksum or fails to load.

    Processes sharing the cache take turns (an exclusive lock on ``<directory>.lock``).
    """
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        return _open_locked(cxx, directory)
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _open_locked(cxx, directory)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_locked(cxx: str, directory: Path) -> ctypes.CDLL:
    lib, stamp = directory / "roi_conv.so", directory / "roi_conv.sha256"
    for attempt in range(2):
        fresh = False
        try:
            ok = lib.is_file() and stamp.is_file() and stamp.read_text().strip() == _digest(lib)
        except OSError:
            ok = False
        if not ok:
            shutil.rmtree(directory, ignore_errors=True)
            _build(cxx, directory)
            fresh = True
        try:
            handle = ctypes.CDLL(str(lib))
            break
        except OSError as exc:
            if fresh or attempt:
                raise RuntimeError(f"loading the native kernel failed: {exc}") from exc
            shutil.rmtree(directory, ignore_errors=True)
    version = getattr(handle, "tkn_abi_version", None)
    found = None if version is None else int(version())
    if found != ABI_VERSION:  # e.g. the source changed under a running process: never call with the wrong arguments
        raise RuntimeError(f"the native library {lib} has ABI version {found}, this tkn needs {ABI_VERSION}")
    f = handle.tkn_roi_conv
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p] * 13 + [ctypes.c_int] * 3
    f = handle.tkn_roi_conv_batch
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p] * 13 + [ctypes.c_int] * 4
    f = handle.tkn_roi_conv_reduce
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p] * 12 + [ctypes.c_int] * 4
    handle.tkn_vector_width.restype = ctypes.c_int
    return handle


def _load() -> ctypes.CDLL | None:
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    lib = None
    if not _env_on("TKN_NATIVE", "1"):
        _state["reason"] = "disabled by TKN_NATIVE=0"
    else:
        cxx = _compiler()
        try:
            if cxx is None:
                raise RuntimeError("no C++ compiler found (set CXX or install g++)")
            if _env_on("TKN_NATIVE_SANITIZE") and not _asan_preloaded():
                raise RuntimeError("TKN_NATIVE_SANITIZE=1 needs the AddressSanitizer runtime loaded first: start "
                                   "the process with LD_PRELOAD=$(gcc -print-file-name=libasan.so)")
            lib = _open(cache_dir() / _key(cxx))
            _state["lib"] = lib
            _self_test()
            _state["reason"] = ""
        except (RuntimeError, OSError, subprocess.SubprocessError, AttributeError, TypeError, ValueError) as exc:
            lib = None
            _state["reason"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    _state["lib"] = lib
    return lib


def available() -> bool:
    """Whether the native kernel is built, loaded and checked (``False`` when ``TKN_NATIVE=0``)."""
    return _load() is not None


def reason() -> str:
    """Why :func:`available` is false (one line); ``""`` when it is true."""
    _load()
    return str(_state.get("reason", ""))


def vector_width() -> int:
    """Channels per group (one SIMD vector of float32: 16 with AVX-512, 8 otherwise)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native kernel is not available: {reason()}")
    return int(lib.tkn_vector_width())


def _reset() -> None:
    """Forget the loaded library (the next call loads or builds it again); for tests."""
    _state.clear()


def _self_test() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 11, generator=g)
    w = torch.randn(11, 5, 3, 3, generator=g)
    roi = torch.tensor([[0, 7, 0, 11]] * 11)
    conv = NativeConv(w, None, torch.ones(11, 7, 11), roi, conv_hw=(7, 11), input_hw=(9, 11), stride=(1, 1),
                      dilation=(1, 1), pad=(1, 1, 0, 0))
    ref = torch.nn.functional.conv2d(x, w, padding=(0, 1))
    got = conv(x.contiguous(memory_format=torch.channels_last))
    if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
        raise RuntimeError("the native kernel failed its check against torch.nn.functional.conv2d")


def group_channels(roi: Tensor, width: int) -> list[list[int]]:
    """Channels with non-empty ROIs cut into groups of at most ``width`` with nearby ROIs.

    Recursive median splits of the ROI centres along the axis of larger spread, into parts whose sizes
    are multiples of ``width`` (all groups full but the last): the union of a group's ROIs, which the
    kernel computes, stays close to the ROIs themselves.

    Shape:
        - roi: ``(C, 4)`` boxes ``y0, y1, x0, x1``.
    """
    r = roi.to(torch.int64).cpu().numpy()
    active = np.nonzero((r[:, 1] > r[:, 0]) & (r[:, 3] > r[:, 2]))[0]
    cy = (r[:, 0] + r[:, 1]) / 2.0
    cx = (r[:, 2] + r[:, 3]) / 2.0
    groups: list[list[int]] = []

    def split(idx: np.ndarray) -> None:
        if len(idx) <= width:
            groups.append(sorted(int(i) for i in idx))
            return
        spread_y, spread_x = np.ptp(cy[idx]), np.ptp(cx[idx])
        key = (cy[idx], cx[idx]) if spread_y >= spread_x else (cx[idx], cy[idx])
        order = idx[np.lexsort((key[1], key[0]))]
        blocks = -(-len(idx) // width)
        head = (blocks // 2) * width
        split(order[:head])
        split(order[head:])

    if len(active):
        split(active)
    return groups


#: The most output channels in one set of the ``"reduce"`` strategy (one work item of the kernel).
SET_CHANNELS = 24


def channel_sets(roi: Tensor, max_channels: int = SET_CHANNELS) -> tuple[list[list[int]], Tensor]:
    """Channels with non-empty ROIs cut into sets of at most ``max_channels`` whose ROIs are the same box,
    largest work (box area times channels) first: the ``"reduce"`` kernel computes a set's channels together
    over its box, so one input load feeds every channel of the set.

    Shape:
        - roi: ``(C, 4)`` boxes ``y0, y1, x0, x1``.
        - Returns: the sets (lists of channels) and their ``(S, 4)`` int32 boxes.
    """
    r = roi.to(torch.int64).cpu()
    by_box: dict[tuple[int, ...], list[int]] = {}
    for c, box in enumerate(r.tolist()):
        if box[1] > box[0] and box[3] > box[2]:
            by_box.setdefault(tuple(box), []).append(c)
    sets = [(box, chans[i:i + max_channels]) for box, chans in by_box.items()
            for i in range(0, len(chans), max_channels)]
    sets.sort(key=lambda bs: -(bs[0][1] - bs[0][0]) * (bs[0][3] - bs[0][2]) * len(bs[1]))
    boxes = torch.tensor([box for box, _ in sets], dtype=torch.int32).reshape(-1, 4)
    return [chans for _, chans in sets], boxes


def _describe(t: object) -> str:
    if not isinstance(t, Tensor):
        return type(t).__name__
    layout = "contiguous" if t.is_contiguous() else "non-contiguous"
    return f"a {layout} {t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"


def _expect(name: str, t: object, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """``t`` is a contiguous CPU tensor of ``dtype`` and ``shape`` (what the kernel reads), or ``ValueError``."""
    if (not isinstance(t, Tensor) or t.dtype != dtype or t.device.type != "cpu" or tuple(t.shape) != shape
            or not t.is_contiguous()):
        raise ValueError(f"{name} must be a contiguous {dtype} CPU tensor of shape {shape}, got {_describe(t)}")


def _int_pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    try:
        pair = tuple(operator.index(v) for v in value if not isinstance(v, bool))  # type: ignore[union-attr]
    except TypeError:
        pair = ()
    if len(pair) != 2 or min(pair) < minimum:
        raise ValueError(f"{name} must be a pair of ints >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def _vector(name: str, t: object, channels: int) -> None:
    if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != (channels,)):
        raise ValueError(f"{name} must be None or a floating-point tensor of shape ({channels},), got {_describe(t)}")


def _check_boxes(name: str, boxes: Tensor, height: int, width: int) -> None:
    """Every box ``y0, y1, x0, x1`` of ``boxes`` lies within an ``height`` x ``width`` map (empty boxes too)."""
    b = boxes.to(torch.int64).cpu()
    bad = (b < 0).any(1) | (b[:, :2] > height).any(1) | (b[:, 2:] > width).any(1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name} boxes (y0, y1, x0, x1) must lie within the {height}x{width} map, got "
                         f"{b[i].tolist()} for channel {i}")


def _check_csr(off_name: str, offsets: object, list_name: str, values: object, rows: int, limit: int) -> None:
    """CSR lists: ``offsets`` ``(rows + 1,)`` int32 from 0, non-decreasing, ending at ``len(values)``; ``values``
    int32 in ``[0, limit)``."""
    _expect(off_name, offsets, (rows + 1,), torch.int32)
    length = int(offsets[-1])  # type: ignore[index]
    _expect(list_name, values, (length,), torch.int32)
    o = offsets.to(torch.int64)  # type: ignore[union-attr]
    if int(o[0]) != 0 or bool((o[1:] < o[:-1]).any()):
        raise ValueError(f"{off_name} must be non-decreasing offsets from 0 into {list_name}")
    if length and (int(values.min()) < 0 or int(values.max()) >= limit):  # type: ignore[union-attr]
        raise ValueError(f"{list_name} must hold channels in [0, {limit}), got values in "
                         f"[{int(values.min())}, {int(values.max())}]")  # type: ignore[union-attr]


def _check_arguments(weight: object, bias: object, window_map: object, roi: object, *, conv_hw: object,
                     input_hw: object, stride: object, dilation: object, pad: object, scale: object, shift: object,
                     pool: object, support: object) -> tuple[Tensor, Tensor]:
    """The checks of :class:`NativeConv`'s arguments (``ValueError`` naming the argument); returns the weight and
    the ROIs."""
    if not isinstance(weight, Tensor) or weight.dim() != 4 or not weight.is_floating_point() or 0 in weight.shape:
        raise ValueError(f"weight must be a non-empty floating-point (C_out, C_in, kH, kW) tensor, got "
                         f"{_describe(weight)}")
    c_out, c_in, kh, kw = weight.shape
    ho, wo = _int_pair("conv_hw", conv_hw, 1)
    h, w = _int_pair("input_hw", input_hw, 1)
    sy, sx = _int_pair("stride", stride, 1)
    dy, dx = _int_pair("dilation", dilation, 1)
    try:
        pads = tuple(operator.index(v) for v in pad)  # type: ignore[union-attr]
    except TypeError:
        pads = ()
    if len(pads) != 4 or min(pads) < 0:
        raise ValueError(f"pad must be four ints >= 0 (left, right, top, bottom), got {pad!r}")
    left, right, top, bottom = pads
    expect = ((h + top + bottom - dy * (kh - 1) - 1) // sy + 1, (w + left + right - dx * (kw - 1) - 1) // sx + 1)
    if (ho, wo) != expect:
        raise ValueError(f"conv_hw must be the convolution's output size for input_hw={(h, w)}, kernel "
                         f"{(kh, kw)}, stride {(sy, sx)}, dilation {(dy, dx)} and pad {tuple(pad)}: {expect}, "
                         f"got {(ho, wo)}")
    if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= MAX_POOL:
        raise ValueError(f"the native kernel fuses max-pools of size 1..{MAX_POOL}, got pool={pool!r}")
    if pool > min(ho, wo):
        raise ValueError(f"pool={pool} is larger than the conv output {(ho, wo)}")
    _vector("bias", bias, c_out)
    _vector("scale", scale, c_out)
    _vector("shift", shift, c_out)
    if (not isinstance(window_map, Tensor) or not window_map.is_floating_point()
            or tuple(window_map.shape) != (c_out, ho, wo)):
        raise ValueError(f"window_map must be a floating-point tensor of shape ({c_out}, {ho}, {wo}), got "
                         f"{_describe(window_map)}")
    for name, boxes, rows, (bh, bw) in (("roi", roi, c_out, (ho, wo)), ("support", support, c_in, (h, w))):
        if boxes is None and name == "support":
            continue
        if (not isinstance(boxes, Tensor) or boxes.is_floating_point() or boxes.is_complex()
                or tuple(boxes.shape) != (rows, 4)):
            raise ValueError(f"{name} must be an integer tensor of shape ({rows}, 4) (boxes y0, y1, x0, x1), got "
                             f"{_describe(boxes)}")
        _check_boxes(name, boxes, bh, bw)
    return weight, roi  # type: ignore[return-value]


def _ptr(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class NativeConv:
    """One target layer packed for the native kernel: weight, window·mask, epilogue, column ranges.

    Args:
        weight: ``(C_out, C_in, kH, kW)`` (input channels in the order the input arrives).
        bias: ``(C_out,)`` added before the window, or ``None``.
        window_map: ``(C_out, H_out, W_out)`` window·mask (zero outside each ROI).
        roi: ``(C_out, 4)`` boxes ``y0, y1, x0, x1`` of the convolution output.
        conv_hw: ``(H_out, W_out)`` of the convolution; ``input_hw``: ``(H, W)`` of its (padded) input.
        stride, dilation: per axis; ``pad``: zero padding ``(left, right, top, bottom)``.
        scale, shift: optional ``(C_out,)`` affine applied after window·mask (``shift`` alone: scale 1).
        relu: ReLU after the affine; ``pool``: max-pool size (stride ``pool``; 1 = none, at most :data:`MAX_POOL`).
        support: optional ``(C_in, 4)`` boxes outside which each input channel is zero (input sparsity).
        residual: every call adds a tensor of the output's shape after the affine map, before the ReLU
            (``relu(affine + residual)``: a ResNet block's ending); needs ``pool=1``.
        strategy: how the kernel spends its vector lanes (:data:`STRATEGIES`).

            * ``"groups"``: lanes are output channels. Channels are grouped :func:`vector_width` at a
              time by ROI position, and each group computes the union of its ROIs row by row. Best when
              the ROIs of nearby channels overlap (large ROIs, or ROIs that training gathered).
            * ``"reduce"``: lanes are input channels of the reduction (``C_in`` a multiple of
              :func:`vector_width`). One work item is one (output channel, sample), over exactly that
              channel's ROI: a weight vector serves up to 8 positions of the ROI, and each channel's
              weights are read once per sample. Best at batch 1 with small ROIs and dense inputs.
            * ``"batch"``: lanes are samples of the batch (``N`` rounded up to :func:`vector_width`). Every
              conv position computes exactly the channels whose ROI holds it, reading exactly the input
              values that ``support`` allows to be non-zero: the work is the ROIs' own whatever their
              scatter, minus the products with known zeros. Its output is returned in a batch-innermost
              layout that the next ``"batch"`` layer reads without a copy. Best for small, scattered ROIs
              at batch sizes of a few vectors.

    Shape:
        - Input: ``(N, C_in, H, W)`` float32, ``channels_last`` memory for ``"groups"`` and the
          batch-innermost layout for ``"batch"`` (a copy is made otherwise).
        - Residual: ``(N, C_out, H_out, W_out)`` float32, any memory format (``"groups"`` only).
        - Output: ``(N, C_out, H_out // pool, W_out // pool)`` in ``channels_last`` memory
          (``"groups"``) or as a view of an ``(H_out // pool, W_out // pool, C_out, P)`` tensor,
          ``P >= N`` a multiple of :func:`vector_width` (``"batch"``).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, window_map: Tensor, roi: Tensor, *,
                 conv_hw: tuple[int, int], input_hw: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], pad: tuple[int, int, int, int], scale: Tensor | None = None,
                 shift: Tensor | None = None, relu: bool = False, pool: int = 1, support: Tensor | None = None,
                 residual: bool = False, strategy: str = "groups"):
        vector_width()  # RuntimeError when the kernel is not available
        weight, roi = _check_arguments(weight, bias, window_map, roi, conv_hw=conv_hw, input_hw=input_hw,
                                       stride=stride, dilation=dilation, pad=pad, scale=scale, shift=shift,
                                       pool=pool, support=support)
        if residual and pool != 1:
            raise ValueError(f"a residual addition needs pool=1, got pool={pool}")
        why = strategy_unsupported(strategy, weight.shape[1], residual)
        if why:
            raise ValueError(why)
        self.strategy = strategy
        self.residual = bool(residual)
        c_out, c_in, kh, kw = weight.shape
        ho, wo = conv_hw = (int(conv_hw[0]), int(conv_hw[1]))
        input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.conv_hw, self.input_hw, self.pool, self.relu = conv_hw, input_hw, pool, bool(relu)
        self.output_hw = (ho // pool, wo // pool)
        self.c_in, self.c_out = c_in, c_out
        left, right, top, bottom = pad
        self.dims = torch.tensor([0, input_hw[0], input_hw[1], c_in, kh, kw, stride[0], stride[1], dilation[0],
                                  dilation[1], top, left, ho, wo, pool, ho // pool, wo // pool, c_out],
                                 dtype=torch.int32)
        # The "groups" kernel's flat loop (C_in below FLAT_CHANNELS, no input support) and the "reduce" kernel's
        # row loop run only where a chunk's windows lie inside the input; the others take bounds-checked loops,
        # one tap at a time. Such layers pad their input themselves (a copy), so every chunk runs the fast loop:
        # at batch 1, TKN6's first layer (C_in 1, padding 2) took 406 -> 244 us on one thread.
        self._pad_copy: tuple[int, ...] | None = None
        if any(pad) and (strategy == "reduce" or (strategy == "groups" and c_in < FLAT_CHANNELS
                                                   and support is None)):
            self._pad_copy = (0, 0, left, right, top, bottom)
            self.dims[1:3] = torch.tensor([input_hw[0] + top + bottom, input_hw[1] + left + right])
            self.dims[10:12] = 0
        if scale is None and shift is not None:
            scale = torch.ones_like(shift)
        if scale is not None and shift is None:
            shift = torch.zeros_like(scale)
        fill = torch.zeros(c_out) if shift is None else shift.detach().to(torch.float32).cpu().clone()
        self.fill = fill.relu() if relu and not residual else fill
        self.support = None if support is None else support.to(torch.int32).cpu().contiguous()
        self._lock = threading.Lock()
        self._buffer: Tensor | None = None
        self._buffer_refs = 0
        self._pointers: tuple[ctypes.c_void_p | None, ...] | None = None  # see _packed_pointers
        self._dims_cache: dict[int, tuple[Tensor, ctypes.c_void_p]] = {}  # see _dims_for
        if strategy == "batch":
            self._pack_batch(weight, bias, window_map, roi, scale, shift)
        elif strategy == "reduce":
            self._pack_reduce(weight, bias, window_map, roi, scale, shift)
        else:
            self._pack_groups(weight, bias, window_map, roi, scale, shift)
        self._check_packed()

    def _pack_groups(self, weight: Tensor, bias: Tensor | None, window_map: Tensor, roi: Tensor,
                     scale: Tensor | None, shift: Tensor | None) -> None:
        """The tensors of the ``"groups"`` strategy: channels in lanes of :func:`vector_width` (``index``), weights
        ``(G, kh, C_in, kw, VW)``, window·mask ``(G, H_out, W_out, VW)``, column ranges per group and conv row."""
        vw = vector_width()
        c_out, c_in, kh, kw = weight.shape
        ho, wo = self.conv_hw
        groups = group_channels(roi, vw)
        self.groups = groups
        g_count = len(groups)
        index = torch.full((max(g_count, 1), vw), -1, dtype=torch.int32)
        for gi, chans in enumerate(groups):
            index[gi, :len(chans)] = torch.tensor(chans, dtype=torch.int32)
        self.index = index
        lanes = index.clamp(min=0).long()
        real = (index >= 0).to(torch.float32)
        f32 = dict(dtype=torch.float32)
        w = weight.detach().to(**f32).cpu()[lanes] * real[..., None, None, None]  # (G, VW, C_in, kh, kw)
        self.weight = w.permute(0, 3, 2, 4, 1).contiguous()  # (G, kh, C_in, kw, VW)
        wm = window_map.detach().to(**f32).cpu()[lanes] * real[..., None, None]  # (G, VW, ho, wo)
        self.window = wm.permute(0, 2, 3, 1).contiguous()
        self.bias = None if bias is None else (bias.detach().to(**f32).cpu()[lanes] * real).contiguous()
        self.scale = None if scale is None else (scale.detach().to(**f32).cpu()[lanes] * real).contiguous()
        self.shift = None if shift is None else (shift.detach().to(**f32).cpu()[lanes] * real).contiguous()
        self.ranges = self._ranges(roi, groups, max(g_count, 1), self.pool, ho, wo)
        #: multiply–accumulates per sample the kernel executes (every lane of every computed position)
        self.executed_macs = int(self._computed_positions()) * vw * c_in * kh * kw

    def _check_packed(self) -> None:
        """Check every tensor this layer hands to the kernel: dtype, CPU, contiguous, its shape for the geometry,
        and the indices it holds (lane channels, column ranges, ROIs, CSR lists) within what the kernel reads.
        Raises ``ValueError``."""
        vw = vector_width()
        (h, w), (ho, wo), pool = self.input_hw, self.conv_hw, self.pool
        c_in, c = self.c_in, self.c_out
        kh, kw = int(self.dims[4]), int(self.dims[5])
        f32, i32 = torch.float32, torch.int32
        _expect("dims", self.dims, (18,), i32)
        _expect("fill", self.fill, (c,), f32)
        if self.support is not None:
            _expect("support", self.support, (c_in, 4), i32)
            _check_boxes("support", self.support, h, w)
        if self.strategy == "groups":
            g = self.index.shape[0] if self.index.dim() == 2 else -1
            vectors = (g, vw)
            _expect("index", self.index, vectors, i32)
            _expect("weight", self.weight, (g, kh, c_in, kw, vw), f32)
            _expect("window", self.window, (g, ho, wo, vw), f32)
            _expect("ranges", self.ranges, (g, max((ho // pool) * pool, 1), 2), i32)
            if len(self.groups) > g:
                raise ValueError(f"index must have a row per channel group ({len(self.groups)}), got {g}")
            idx = self.index
            if bool(((idx < -1) | (idx >= c)).any()):
                raise ValueError(f"index must hold output channels in [0, {c}) or -1, got values in "
                                 f"[{int(idx.min())}, {int(idx.max())}]")
            r = self.ranges
            used = r[..., 1] > r[..., 0]
            width = (wo // pool) * pool
            if bool((used & ((r[..., 0] < 0) | (r[..., 1] > width))).any()):
                raise ValueError(f"ranges must be column ranges within [0, {width}]")
        else:
            if self.strategy == "reduce":
                _expect("weight", self.weight, (c, kh, kw, c_in), f32)
                sets = self.set_boxes.shape[0] if self.set_boxes.dim() == 2 else -1
                _expect("set_boxes", self.set_boxes, (sets, 4), i32)
                _check_boxes("set_boxes", self.set_boxes, ho, wo)
                _check_csr("set_offsets", self.set_offsets, "set_channels", self.set_channels, sets, c)
                if len(set(self.set_channels.tolist())) != self.set_channels.numel():
                    raise ValueError("set_channels must hold each output channel at most once")
            else:
                _expect("weight", self.weight, (c, kh * kw * c_in), f32)
                _check_csr("zoff", self.zoff, "zlist", self.zlist, h * w, c_in)
                _check_csr("soff", self.soff, "slist", self.slist, ho * wo, c)
            _expect("window", self.window, (c, ho, wo), f32)
            vectors = (c,)
        for name in ("bias", "scale", "shift"):
            if getattr(self, name) is not None:
                _expect(name, getattr(self, name), vectors, f32)
        if (self.scale is None) != (self.shift is None):
            raise ValueError("scale and shift must be given together (the layer fills in the other)")

    def _pack_reduce(self, weight: Tensor, bias: Tensor | None, window_map: Tensor, roi: Tensor,
                     scale: Tensor | None, shift: Tensor | None) -> None:
        """The tensors of the ``"reduce"`` strategy: weights ``(C, kh, kw, C_in)``, the channel sets
        (:func:`channel_sets`: CSR offsets, channels, one box each), the epilogue."""
        f32 = dict(dtype=torch.float32)
        c_out, c_in, kh, kw = weight.shape
        ho, wo = self.conv_hw
        self.groups = []
        self.weight = weight.detach().to(**f32).cpu().permute(0, 2, 3, 1).contiguous()
        self.window = window_map.detach().to(**f32).cpu().contiguous()
        self.bias = None if bias is None else bias.detach().to(**f32).cpu().contiguous()
        self.scale = None if scale is None else scale.detach().to(**f32).cpu().contiguous()
        self.shift = None if shift is None else shift.detach().to(**f32).cpu().contiguous()
        # the kernel computes only the pooled extent: ROIs clipped to it, those left empty dropped
        r = roi.to(torch.int64).cpu().clone()
        r[:, 1] = r[:, 1].clamp(max=(ho // self.pool) * self.pool)
        r[:, 3] = r[:, 3].clamp(max=(wo // self.pool) * self.pool)
        sets, self.set_boxes = channel_sets(r)
        sizes = torch.tensor([0] + [len(c) for c in sets], dtype=torch.int64)
        self.set_offsets = sizes.cumsum(0).to(torch.int32)
        self.set_channels = torch.tensor([c for chans in sets for c in chans], dtype=torch.int32)
        b = self.set_boxes.to(torch.int64)
        area = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
        self.executed_macs = int((area * sizes[1:]).sum()) * c_in * kh * kw

    def _pack_batch(self, weight: Tensor, bias: Tensor | None, window_map: Tensor, roi: Tensor,
                    scale: Tensor | None, shift: Tensor | None) -> None:
        """The tensors of the ``"batch"`` strategy: weights per output channel, the input values that may be
        non-zero per input pixel and the channels computed per conv position (both as CSR lists)."""
        f32 = dict(dtype=torch.float32)
        c_out, c_in, kh, kw = weight.shape
        h, w = self.input_hw
        ho, wo = self.conv_hw
        pool = self.pool
        self.groups = []
        self.weight = weight.detach().to(**f32).cpu().permute(0, 2, 3, 1).reshape(c_out, -1).contiguous()
        self.window = window_map.detach().to(**f32).cpu().contiguous()
        self.bias = None if bias is None else bias.detach().to(**f32).cpu().contiguous()
        self.scale = None if scale is None else scale.detach().to(**f32).cpu().contiguous()
        self.shift = None if shift is None else shift.detach().to(**f32).cpu().contiguous()
        # input pixel -> input channels that may be non-zero there
        if self.support is None:
            nonzero = np.ones((h * w, c_in), dtype=bool)
        else:
            nonzero = _box_mask(self.support.numpy(), h, w).reshape(h * w, c_in)
        self.zoff, self.zlist = _csr(nonzero)
        # conv position -> output channels whose ROI holds it (inside the pooled extent)
        active = _box_mask(roi.to(torch.int64).cpu().numpy(), ho, wo)
        active[(ho // pool) * pool:] = False
        active[:, (wo // pool) * pool:] = False
        self.soff, self.slist = _csr(active.reshape(ho * wo, c_out))
        # exact multiply-accumulates per sample: per position, its channels times its non-zero input values
        support = (torch.tensor([[0, h, 0, w]]).expand(c_in, 4) if self.support is None
                   else self.support.to(torch.int64))
        self.executed_macs = int(TF.input_sparse_macs(
            roi.to(torch.int64).cpu(), support, (kh, kw), stride=(int(self.dims[6]), int(self.dims[7])),
            dilation=(int(self.dims[8]), int(self.dims[9])), pad=(int(self.dims[10]), int(self.dims[11])),
            extent=((ho // pool) * pool, (wo // pool) * pool)))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        del state["_pointers"], state["_dims_cache"]  # addresses: rebuilt in the new process
        state["_buffer"], state["_buffer_refs"] = None, 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pointers, self._dims_cache = None, {}
        self._check_packed()

    def _output(self, shape: tuple[int, ...]) -> Tensor:
        """A new ``(N, H_out, W_out, C_out)`` tensor, or the last one returned once nothing else holds it.

        Large fresh tensors come from ``mmap`` and pay a page fault per 4 KiB on first touch (on TKN6's
        first layer at batch 64, 25 of 32 ms); reusing a buffer that every caller has released avoids it.
        The last output stays allocated between calls.
        """
        with self._lock:
            buf = self._buffer
            if (buf is not None and tuple(buf.shape) == shape and _USE_COUNT is not None
                    and _USE_COUNT(buf.untyped_storage()._cdata) <= self._buffer_refs):
                return buf
            buf = torch.empty(shape, dtype=torch.float32)
            if _USE_COUNT is not None and buf.numel() * 4 >= _REUSE_BYTES:
                self._buffer, self._buffer_refs = buf, _USE_COUNT(buf.untyped_storage()._cdata)
            return buf

    @staticmethod
    def _ranges(roi: Tensor, groups: list[list[int]], g_count: int, pool: int, ho: int, wo: int) -> Tensor:
        """``(G, (H_out // pool) * pool, 2)``: per group and conv row, the columns ``[xa, xb)`` of the union of
        the group's ROIs on that row (clipped to the pooled width)."""
        r = roi.to(torch.int64).cpu().numpy()
        rows_used, width = (ho // pool) * pool, (wo // pool) * pool
        out = np.zeros((g_count, max(rows_used, 1), 2), dtype=np.int32)
        rows = np.arange(rows_used)
        for gi, chans in enumerate(groups):
            b = r[chans]
            inside = (b[:, 0, None] <= rows) & (rows < b[:, 1, None])  # (lanes, rows)
            xa = np.where(inside, b[:, 2, None], width).min(0, initial=width)
            xb = np.minimum(np.where(inside, b[:, 3, None], 0).max(0, initial=0), width)
            keep = xb > xa
            out[gi, :rows_used, 0] = np.where(keep, xa, 0)
            out[gi, :rows_used, 1] = np.where(keep, xb, 0)
        return torch.from_numpy(out)

    def _computed_positions(self) -> int:
        r = self.ranges.to(torch.int64)
        return int((r[..., 1] - r[..., 0]).clamp(min=0).sum())

    def __call__(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.device.type != "cpu":
            got = f"{x.dtype} on {x.device}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"the native kernel needs float32 CPU input, got {got}")
        if x.dim() != 4 or x.shape[1] != self.c_in or tuple(x.shape[-2:]) != tuple(self.input_hw):
            raise ValueError(f"input must be (N, {self.c_in}, {self.input_hw[0]}, {self.input_hw[1]}), "
                             f"got {tuple(x.shape)}")
        n = x.shape[0]
        if n >= 2 ** 31 - 64:
            raise ValueError(f"input has {n} samples, more than the kernel's int32 sizes allow")
        if residual is not None and not self.residual:
            raise ValueError("this layer was built without a residual addition (residual=True)")
        if self.strategy == "batch":
            return self._call_batch(x)
        xl = x.permute(0, 2, 3, 1)
        if self._pad_copy is not None:
            xl = torch.constant_pad_nd(xl, self._pad_copy)
        elif not xl.is_contiguous():
            xl = xl.contiguous()
        hp, wp = self.output_hw
        rl = None
        if self.residual:
            want = (n, self.c_out, hp, wp)
            if (not isinstance(residual, Tensor) or tuple(residual.shape) != want or residual.dtype != torch.float32
                    or residual.device.type != "cpu"):
                got = (tuple(residual.shape), residual.dtype, str(residual.device)) if isinstance(
                    residual, Tensor) else None
                raise ValueError(f"this layer adds a float32 residual of shape {want} on the CPU, got {got}")
            rl = residual.permute(0, 2, 3, 1)
            rl = rl if rl.is_contiguous() else rl.contiguous()
        out = self._output((n, hp, wp, self.c_out))
        if not (n and out.numel()):
            return nhwc_as_nchw(out)
        # xl and out have the shapes the kernel reads (x was checked above; both are built here, contiguous)
        lib = _load()
        if lib is None:
            raise RuntimeError(f"the native kernel is not available: {reason()}")
        dims = self._dims_for(n)
        packed = self._packed_pointers()
        if self.strategy == "reduce":
            weight, offsets, channels, boxes, window, bias, scale, shift, fill = packed
            code = lib.tkn_roi_conv_reduce(_ptr(xl), weight, offsets, channels, boxes, window, bias, scale, shift,
                                           fill, _ptr(out), dims, self.set_boxes.shape[0], self.set_channels.numel(),
                                           int(self.relu), torch.get_num_threads())
            _check_code(code, "tkn_roi_conv_reduce")
        else:
            weight, ranges, window, bias, scale, shift, index, fill, support = packed
            code = lib.tkn_roi_conv(_ptr(xl), weight, ranges, window, bias, scale, shift, index, fill, support,
                                    _ptr(rl), _ptr(out), dims, len(self.groups), int(self.relu),
                                    torch.get_num_threads())
            _check_code(code, "tkn_roi_conv")
        return nhwc_as_nchw(out)

    def _dims_for(self, n: int) -> ctypes.c_void_p:
        """A pointer to ``dims`` with the batch ``n`` (one int32 tensor kept per batch size, the last 8)."""
        cache = self._dims_cache
        hit = cache.get(n)
        if hit is None:
            dims = self.dims.clone()
            dims[0] = n
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            hit = cache[n] = (dims, _ptr(dims))
        return hit[1]

    def _packed_pointers(self) -> tuple[ctypes.c_void_p | None, ...]:
        """The addresses of the packed tensors the strategy's entry point takes, in its order (computed once:
        the tensors are not replaced after packing; unpickling drops the cache)."""
        cached = self._pointers
        if cached is None:
            names = (("weight", "set_offsets", "set_channels", "set_boxes", "window", "bias", "scale", "shift", "fill")
                     if self.strategy == "reduce" else
                     ("weight", "ranges", "window", "bias", "scale", "shift", "index", "fill", "support"))
            cached = self._pointers = tuple(_ptr(getattr(self, k)) for k in names)
        return cached

    def _call_batch(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        vw = vector_width()
        lanes = -(-max(n, 1) // vw) * vw
        hp, wp = self.output_hw
        h, w = self.input_hw
        xt = batch_layout(x, lanes)
        if xt is None:  # transpose into (H, W, C_in, lanes), padding lanes zero
            xt = torch.empty((h, w, self.c_in, lanes), dtype=torch.float32)
            xt[..., :n].copy_(x.permute(2, 3, 1, 0))
            if lanes > n:
                xt[..., n:].zero_()
        out = self._output((hp, wp, self.c_out, lanes))
        if n and out.numel():
            _expect("input (as H, W, C_in, lanes)", xt, (h, w, self.c_in, lanes), torch.float32)
            _expect("output", out, (hp, wp, self.c_out, lanes), torch.float32)
            dims = self.dims.clone()
            dims[0] = lanes
            lib = _load()
            if lib is None:
                raise RuntimeError(f"the native kernel is not available: {reason()}")
            code = lib.tkn_roi_conv_batch(
                _ptr(xt), _ptr(self.weight), _ptr(self.zoff), _ptr(self.zlist), _ptr(self.soff), _ptr(self.slist),
                _ptr(self.window), _ptr(self.bias), _ptr(self.scale), _ptr(self.shift), _ptr(self.fill), _ptr(out),
                _ptr(dims), self.zlist.numel(), self.slist.numel(), int(self.relu), torch.get_num_threads())
            _check_code(code, "tkn_roi_conv_batch")
        return out[..., :n].permute(3, 2, 0, 1)


def nhwc_as_nchw(out: Tensor) -> Tensor:
    """A contiguous ``(N, H, W, C)`` tensor as the ``(N, C, H, W)`` view of the same memory (``channels_last``).

    With one channel the view gets plain NCHW strides instead (the same addresses): PyTorch's CPU convolution
    (2.13, oneDNN) returned garbage rows for one-channel inputs whose strides read as ``channels_last``
    (horizontal stride 2, output width 1), which the original model, in NCHW, never feeds it.
    """
    n, h, w, c = out.shape
    return out.view(n, 1, h, w) if c == 1 else out.permute(0, 3, 1, 2)


def to_batch_layout(x: Tensor) -> Tensor:
    """``x`` (``(N, C, H, W)``) with the values unchanged, stored as a ``"batch"`` layer's output is: a view of
    an ``(H, W, C, P)`` tensor, ``P`` the batch rounded up to :func:`vector_width` (padding lanes zero)."""
    n, c, h, w = x.shape
    vw = vector_width()
    lanes = -(-max(n, 1) // vw) * vw
    t = torch.zeros((h, w, c, lanes), dtype=x.dtype)
    t[..., :n].copy_(x.permute(2, 3, 1, 0))
    return t[..., :n].permute(3, 2, 0, 1)


def batch_layout(x: Tensor, lanes: int) -> Tensor | None:
    """``x`` (``(N, C, H, W)``) as the ``(H, W, C, lanes)`` tensor it is a view of, when it is one (the output
    of a ``"batch"`` layer, see :class:`NativeConv`); ``None`` otherwise. The lanes past ``N`` hold finite
    values that no sample reads."""
    n, c, h, w = x.shape
    if x.stride() != (1, lanes, w * c * lanes, c * lanes) or n > lanes:
        return None
    storage = x.untyped_storage()
    need = (x.storage_offset() + h * w * c * lanes) * x.element_size()
    if storage.nbytes() < need:
        return None
    return torch.empty(0, dtype=x.dtype).set_(storage, x.storage_offset(), (h, w, c, lanes))


def _box_mask(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(h, w, B)`` bool: whether each pixel lies in each of the ``(B, 4)`` half-open boxes ``y0, y1, x0, x1``."""
    ys, xs = np.arange(h)[:, None], np.arange(w)[:, None]
    in_y = (boxes[:, 0] <= ys) & (ys < boxes[:, 1])  # (h, B)
    in_x = (boxes[:, 2] <= xs) & (xs < boxes[:, 3])  # (w, B)
    return in_y[:, None, :] & in_x[None, :, :]


def _csr(mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """Rows of a 2-D bool mask as CSR: ``int32`` offsets ``(rows + 1,)`` and the true columns of each row."""
    rows, cols = np.nonzero(mask)
    offsets = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=offsets[1:])
    if offsets[-1] >= 2 ** 31:
        raise ValueError(f"too many entries for the native kernel's int32 lists ({offsets[-1]})")
    return torch.from_numpy(offsets.astype(np.int32)), torch.from_numpy(cols.astype(np.int32).reshape(-1))

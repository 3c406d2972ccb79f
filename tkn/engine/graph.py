"""The one analysis of a model: its :mod:`torch.fx` graph, read by :func:`tkn.engine.freeze` and by the fused
training view (:mod:`tkn.training.fusion`).

:func:`analyse` traces the model (target layers as leaf modules) and finds,
for every :class:`~tkn.layers.TargetConv2d` called once:

* its **epilogue**: the chain of single-user followers it can absorb, in this
  order, each optional — an ``nn.BatchNorm2d`` with running statistics
  (folded, in eval mode, into ``scale = γ/√(var+ε)`` and ``shift = β −
  mean·scale``), a ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``,
  ``.relu()``, their in-place variants), a max-pool (``nn.MaxPool2d`` or
  ``F.max_pool2d`` with kernel == stride, no padding, dilation, ceil mode or
  indices), and a ReLU after the pool if none came before (the two commute).
  :func:`rewrite` removes the fused nodes from the graph: the frozen layer
  computes ``maxpool(relu(conv·window·mask·scale + shift))`` itself;
* its **input support**: where its input is a frozen target layer's output,
  zero outside known boxes, reached only through operations that keep those
  zeros — ReLU, dropout (eval), identity, ``contiguous``/``clone``, the
  channel concatenation (each input's channels keep their boxes; channels of
  other inputs count as non-zero everywhere) and the addition (zero outside
  the union of the two boxes; a non-target addend makes the channel non-zero
  everywhere). A frozen layer whose fused shift (after its ReLU) is not zero
  in a channel reports the whole map for it (its
  :meth:`~tkn.engine.modules.FrozenTargetConv2d.output_support`). The
  consumer's blocks then read only the input channels whose box meets their
  window;
* its **residual addition**: an addition that alone reads the layer's output
  (after its batch norm), with an addend of the same shape, and the ReLU after
  it (:class:`Residual`; :func:`rewrite_residual` moves the layer's call to the
  addition, which the native kernel then fuses);
* its **route** (:mod:`tkn.engine.routes`): the consumer that can absorb a
  permutation of its output channels, and the batch norms on the way.

Residual additions and concatenations are otherwise left as they are: a
frozen layer feeding them returns its exact values (with a folded batch norm,
the constant ``shift`` outside its ROIs). :func:`analyse` returns ``None``
for models :mod:`torch.fx` cannot trace (Python control flow on input
values): :func:`tkn.engine.freeze` then replaces each target layer where it
is, and the training view fuses nothing.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from tkn.engine.routes import Route, find_routes
from tkn.layers import TargetConv2d

__all__ = ["Epilogue", "Residual", "GraphAnalysis", "analyse", "fold_batch_norm", "fold_conv_batch_norm", "rewrite",
           "rewrite_residual", "rewrite_views"]

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}
#: Single-input operations that keep zeros zero, channels apart and the map's geometry (in eval mode).
_KEEP_ZERO_MODULES = (nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout2d)
_KEEP_ZERO_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.dropout, F.dropout2d}
_KEEP_ZERO_METHODS = {"relu", "relu_", "contiguous", "clone"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}


@dataclass
class Epilogue:
    """What a target layer absorbs: the fused graph nodes, a batch norm's name, a ReLU and a pool size."""

    nodes: list[fx.Node] = field(default_factory=list)
    batch_norm: str | None = None
    relu: bool = False
    pool: int = 1

    @property
    def modules(self) -> list[str]:
        """Names of the fused modules (``call_module`` nodes)."""
        return [n.target for n in self.nodes if n.op == "call_module"]


@dataclass
class Residual:
    """A target layer's output (after its folded batch norm) added to another tensor of the same shape, the
    sum possibly followed by a ReLU: ``add`` and ``relu`` are the graph nodes, ``other`` the addend (as
    found; :func:`rewrite_residual` reads it from ``add`` again)."""

    add: fx.Node
    other: fx.Node
    relu: fx.Node | None = None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, TargetConv2d) or super().is_leaf_module(m, qualname)


class GraphAnalysis:
    """The traced graph of a model with each single-call target layer's :class:`Epilogue` and input sources.

    Attributes:
        graph: the traced :class:`torch.fx.Graph` (rewritten in place by :func:`rewrite`).
        epilogues: ``{target layer: Epilogue}`` (only layers with something to fuse).
        calls: ``{module name: call count}`` in the graph (aliases counted together).
        routes: ``{target layer: Route}``, found on the graph as traced (see :mod:`tkn.engine.routes`).
    """

    def __init__(self, model: nn.Module, graph: fx.Graph, shapes: dict[str, tuple[int, ...]]) -> None:
        self.model = model
        self.graph = graph
        self.shapes = shapes
        self.modules = dict(model.named_modules())
        counts: dict[str, int] = {}
        for n in graph.nodes:
            if n.op == "call_module":
                counts[n.target] = counts.get(n.target, 0) + 1
        by_id: dict[int, int] = {}
        for name, count in counts.items():
            by_id[id(self.modules[name])] = by_id.get(id(self.modules[name]), 0) + count
        self.calls = {name: by_id[id(self.modules[name])] for name in counts}
        self.routes: dict[str, Route] = find_routes(graph, self.modules, counts)
        self.nodes = {n.target: n for n in graph.nodes if n.op == "call_module"
                      and isinstance(self.modules[n.target], TargetConv2d) and self.calls[n.target] == 1}
        self.epilogues: dict[str, Epilogue] = {}
        #: ``{target layer: Residual}``: layers whose epilogue (a batch norm at most) ends in an addition
        self.residuals: dict[str, Residual] = {}

    # -- epilogues -----------------------------------------------------------------
    def find_epilogues(self, batch_norm: bool = True) -> None:
        """Fill :attr:`epilogues` (the chain rules of the module docstring); ``batch_norm=False`` fuses no batch
        norm (in training a batch norm normalises with the batch's statistics: nothing to fold)."""
        for name, node in self.nodes.items():
            epi, cur = Epilogue(), node
            nxt = self._only_user(cur)
            if batch_norm and nxt is not None and self._is_batch_norm(nxt):
                epi.batch_norm, cur = nxt.target, nxt
                epi.nodes.append(nxt)
                nxt = self._only_user(cur)
            if nxt is None and (residual := self._residual(cur)) is not None:
                self.residuals[name] = residual
            if nxt is not None and self._is_relu(nxt):
                epi.relu, cur = True, nxt
                epi.nodes.append(nxt)
                nxt = self._only_user(cur)
            out_hw = self.shapes.get(node.name)  # unknown without an example: the pool checks its size itself
            k = self._pool_size(nxt) if nxt is not None else 0
            if k > 1 and (out_hw is None or (len(out_hw) >= 2 and k <= min(out_hw[-2:]))):
                epi.pool, cur = k, nxt
                epi.nodes.append(nxt)
                nxt = self._only_user(cur)
                if not epi.relu and nxt is not None and self._is_relu(nxt):
                    epi.relu = True
                    epi.nodes.append(nxt)
            if epi.nodes:
                self.epilogues[name] = epi

    def _residual(self, node: fx.Node) -> Residual | None:
        """The addition that alone uses ``node`` once, with another node of the same shape (and the ReLU that
        alone uses the sum, if any), or ``None``."""
        users = list(node.users)
        if len(users) != 1:
            return None
        add = users[0]
        if (add.op != "call_function" or add.target not in _ADD_FUNCTIONS or len(add.args) != 2 or add.kwargs
                or sum(a is node for a in add.args) != 1):
            return None
        other = add.args[1] if add.args[0] is node else add.args[0]
        shape = self.shapes.get(node.name)
        if not isinstance(other, fx.Node) or shape is None or not (
                self.shapes.get(other.name) == shape == self.shapes.get(add.name)):
            return None
        relu = self._only_user(add)
        return Residual(add, other, relu if relu is not None and self._is_relu(relu) else None)

    def dense_batch_norms(self) -> list[tuple[str, str]]:
        """``(convolution, batch norm)`` module names where a plain ``nn.Conv2d`` called once feeds, and only
        feeds, an eval-foldable batch norm called once (e.g. ResNet's stem and shortcut projections)."""
        pairs = []
        for node in self.graph.nodes:
            if node.op != "call_module" or type(self.modules[node.target]) is not nn.Conv2d:
                continue
            user = self._only_user(node)
            if (self.calls.get(node.target) == 1 and user is not None and self._is_batch_norm(user)
                    and self.calls.get(user.target) == 1):
                pairs.append((node.target, user.target))
        return pairs

    def _only_user(self, node: fx.Node) -> fx.Node | None:
        """The single node using ``node``, if it uses nothing else as a tensor and uses ``node`` once."""
        users = list(node.users)
        if len(users) != 1:
            return None
        u = users[0]
        if u.all_input_nodes != [node] or not u.args or u.args[0] is not node:
            return None
        if sum(a is node for a in (*u.args, *u.kwargs.values())) != 1:
            return None
        return u

    def _module(self, node: fx.Node) -> nn.Module | None:
        """The module a ``call_module`` node calls (possibly also called elsewhere: the followers fused here,
        ReLU, max-pool and eval batch norm, compute the same function at every call, so fusing one call
        leaves the others intact)."""
        return self.modules[node.target] if node.op == "call_module" else None

    def _is_batch_norm(self, node: fx.Node) -> bool:
        m = self._module(node)
        return type(m) is nn.BatchNorm2d and m.running_mean is not None and m.running_var is not None

    def _is_relu(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self._module(node)) is nn.ReLU
        if node.op == "call_function":
            return node.target in _RELU_FUNCTIONS and len(node.args) == 1
        return node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1

    def _pool_size(self, node: fx.Node) -> int:
        """``k`` for a ``k``×``k`` max-pool of stride ``k`` without padding, dilation, ceil mode or indices."""
        if node.op == "call_module":
            m = self._module(node)
            if type(m) is not nn.MaxPool2d:
                return 0
            args = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                        ceil_mode=m.ceil_mode, return_indices=m.return_indices)
        elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            if len(node.args) > len(_POOL_ARGS):
                return 0
            args = {**_POOL_DEFAULTS, **dict(zip(_POOL_ARGS[1:], node.args[1:])), **node.kwargs}
        else:
            return 0
        k, s = _square(args.get("kernel_size")), _square(args["stride"] or args.get("kernel_size"))
        plain = (_square(args["padding"]) == 0 and _square(args["dilation"]) == 1 and not args["ceil_mode"]
                 and not args["return_indices"])
        return k if k is not None and k == s and plain else 0

    # -- input sparsity ------------------------------------------------------------
    def direct_consumer(self, name: str) -> str | None:
        """The target layer that alone reads target layer ``name``'s output, through nothing but zero-keeping
        single-input operations (in the graph as rewritten so far), or ``None``: that consumer may be built
        for any order of ``name``'s output channels (so it is not a grouped convolution, whose groups fix
        which input channels each output reads)."""
        cur = self.nodes.get(name)
        while cur is not None:
            u = self._only_user(cur)
            if u is None:
                return None
            if u.op == "call_module" and u.target in self.nodes:
                return u.target if self.modules[u.target].groups == 1 else None
            cur = u if self._keeps_zeros(u) else None
        return None

    def _keeps_zeros(self, node: fx.Node) -> bool:
        if len(node.all_input_nodes) != 1 or not node.args or node.args[0] is not node.all_input_nodes[0]:
            return False
        if node.op == "call_module":
            return type(self._module(node)) in _KEEP_ZERO_MODULES
        if node.op == "call_function":
            return node.target in _KEEP_ZERO_FUNCTIONS
        return node.op == "call_method" and node.target in _KEEP_ZERO_METHODS

    def input_support(self, name: str, supports: dict[str, Tensor]) -> Tensor | None:
        """``(C_in, 4)`` boxes outside which target layer ``name``'s input channels are zero (``None``: unknown).

        ``supports`` gives the output support of the frozen target layers built so far (in the order
        their channels are returned).
        """
        node = self.nodes.get(name)
        if node is None or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        box = self._support(node.args[0], supports, depth=0)
        shape = self.shapes.get(node.args[0].name)
        if box is not None and shape is not None and len(shape) == 4 and torch.equal(box, _full(shape)):
            return None  # zero nowhere: nothing to skip
        return box

    def _support(self, node: fx.Node, supports: dict[str, Tensor], depth: int) -> Tensor | None:
        if depth > 64:
            return None
        if node.op == "call_module" and node.target in supports:
            return supports[node.target]
        if self._keeps_zeros(node):
            return self._support(node.all_input_nodes[0], supports, depth + 1)
        if node.op == "call_function" and node.target is torch.cat:
            parts = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if not isinstance(parts, (list, tuple)) or dim not in (1, -3) or not all(
                    isinstance(p, fx.Node) for p in parts):
                return None
            boxes = []
            for p in parts:
                shape = self.shapes.get(p.name)
                if shape is None or len(shape) != 4:
                    return None
                box = self._support(p, supports, depth + 1)
                boxes.append(box if box is not None else _full(shape))
            if all(torch.equal(b, _full(self.shapes[p.name])) for b, p in zip(boxes, parts)):
                return None
            return torch.cat(boxes)
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
                return None
            if self.shapes.get(a.name) != self.shapes.get(b.name):
                return None
            sa, sb = self._support(a, supports, depth + 1), self._support(b, supports, depth + 1)
            if sa is None or sb is None:
                return None
            return _union(sa, sb)
        return None


def _square(v) -> int | None:
    if isinstance(v, (tuple, list)):
        return v[0] if len(v) in (1, 2) and len(set(v)) == 1 else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _full(shape: tuple[int, ...]) -> Tensor:
    return torch.tensor([[0, shape[2], 0, shape[3]]], dtype=torch.int64).expand(shape[1], 4).clone()


def _union(a: Tensor, b: Tensor) -> Tensor:
    """Per channel, the bounding box of two boxes (an empty box adds nothing)."""
    ea = (a[:, 1] <= a[:, 0]) | (a[:, 3] <= a[:, 2])
    eb = (b[:, 1] <= b[:, 0]) | (b[:, 3] <= b[:, 2])
    out = torch.stack([torch.minimum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1]),
                       torch.minimum(a[:, 2], b[:, 2]), torch.maximum(a[:, 3], b[:, 3])], 1)
    out[ea] = b[ea]
    out[eb & ~ea] = a[eb & ~ea]
    return out


def analyse(model: nn.Module, example: Tensor | None = None, *, fuse: bool = True,
            batch_norm: bool = True) -> GraphAnalysis | None:
    """Trace ``model`` and find the epilogues (when ``fuse``) and routes of its single-call target layers.

    Args:
        model: the model (in eval mode when batch norms are to be folded with their running statistics).
        example: one input batch; a single sample of it is run once to learn the activations' shapes.
            ``None``: no shapes (a pool is then fused whatever its size, residual additions are not found and
            there is no input support).
        fuse: look for epilogues (``False``: only the routes and input sources are wanted).
        batch_norm: let an epilogue start with a batch norm (see :meth:`GraphAnalysis.find_epilogues`).

    Returns:
        The analysis, or ``None`` when :mod:`torch.fx` cannot trace the model or run its graph.
    """
    try:
        graph = _Tracer().trace(model)
        if example is not None:
            with torch.no_grad():
                ShapeProp(fx.GraphModule(model, graph)).propagate(example[:1])
    except Exception:  # untraceable (data-dependent Python control flow, unsupported calls)
        return None
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in graph.nodes
              if isinstance(n.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata)}
    analysis = GraphAnalysis(model, graph, shapes)
    if fuse:
        analysis.find_epilogues(batch_norm)
    return analysis


@torch.no_grad()
def fold_conv_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` of an eval-mode batch norm (weights scaled, bias shifted)."""
    scale, shift = fold_batch_norm(bn)
    fused = copy.deepcopy(conv)
    fused.weight.copy_(conv.weight * scale.to(conv.weight)[:, None, None, None])
    bias = shift.to(conv.weight) if conv.bias is None else conv.bias * scale.to(conv.weight) + shift.to(conv.weight)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


@torch.no_grad()
def fold_batch_norm(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of an eval-mode batch norm: ``bn(y) = y * scale + shift`` per channel.

    Computed in float64, returned in the norm's dtype (its running statistics' when it has no affine part).

    Shape:
        - Output: two ``(C,)`` tensors.
    """
    mean, var = bn.running_mean.to(torch.float64), bn.running_var.to(torch.float64)
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight.to(torch.float64)
        shift = shift * bn.weight.to(torch.float64)
    if bn.bias is not None:
        shift = shift + bn.bias.to(torch.float64)
    return scale.to(bn.running_mean.dtype), shift.to(bn.running_mean.dtype)


def rewrite_residual(analysis: GraphAnalysis, name: str) -> None:
    """Make target layer ``name`` take the addend of its :class:`Residual` as a second argument and remove the
    addition (and its ReLU) from the graph: the layer's call moves to where the addition was, after the
    addend is computed. The caller builds the layer with ``residual=True`` (and ``relu`` if the ReLU went).

    An addition takes one layer: where both addends are target layers (a ResNet block's last convolution and
    its projection shortcut), the first rewritten absorbs it and the other's :class:`Residual` is dropped (its
    output becomes the addend)."""
    res = analysis.residuals[name]
    node = analysis.nodes[name]
    if node not in res.add.args:
        raise ValueError(f"{name}: its epilogue must be rewritten before its residual addition")
    # the addend as the graph holds it now (an earlier rewrite may have replaced the node it was)
    other = res.add.args[1] if res.add.args[0] is node else res.add.args[0]
    last = res.relu or res.add
    with analysis.graph.inserting_before(res.add):
        call = analysis.graph.call_module(name, args=(node.args[0], other))
    call.meta = dict(last.meta)
    if last.name in analysis.shapes:
        analysis.shapes[call.name] = analysis.shapes[last.name]
    last.replace_all_uses_with(call)
    for n in (res.relu, res.add, node):
        if n is not None:
            analysis.graph.erase_node(n)
    analysis.nodes[name] = call
    for layer in [n for n, r in analysis.residuals.items() if r.add is res.add]:
        del analysis.residuals[layer]
    analysis.graph.lint()


def rewrite(analysis: GraphAnalysis, layers: list[str]) -> bool:
    """Remove the epilogue nodes of ``layers`` from the graph (their users read the target layer instead).

    Returns whether a node other than a module call was removed (the model then has to become a
    :class:`torch.fx.GraphModule` of the rewritten graph; otherwise the fused modules can simply be
    replaced by ``nn.Identity``).
    """
    functional = False
    for name in layers:
        epi = analysis.epilogues.get(name)
        if epi is None:
            continue
        epi.nodes[-1].replace_all_uses_with(analysis.nodes[name])
        for n in reversed(epi.nodes):
            functional |= n.op != "call_module"
            analysis.graph.erase_node(n)
    analysis.graph.lint()
    return functional


def rewrite_views(analysis: GraphAnalysis) -> bool:
    """Make every ``view`` of an activation map (a tensor of 3 or more dimensions) a ``reshape``.

    Frozen layers return ``channels_last`` maps (and a frozen model may run in ``channels_last`` memory), on
    which a ``view`` that merges channels and pixels (``x.view(x.size(0), -1)``) fails. ``reshape`` gives the
    same values, and a view of the same memory wherever ``view`` would have succeeded. Returns whether a node
    changed.
    """
    changed = False
    for node in analysis.graph.nodes:
        if (node.op != "call_method" or node.target != "view" or not node.args
                or not isinstance(node.args[0], fx.Node) or node.kwargs
                or any(isinstance(a, torch.dtype) for a in node.args[1:])):
            continue
        shape = analysis.shapes.get(node.args[0].name)
        if shape is not None and len(shape) >= 3:
            node.target = "reshape"
            changed = True
    return changed

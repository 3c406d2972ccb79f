"""Channel-permutation routes on the traced graph: where a layer may emit its channels in plan order.

A block plan computes the output channels in its own order (channels with
similar ROIs adjacent). Restoring the original order costs a full gather of
the output; instead, when the layer's only consumer can be seen, the consumer
is permuted to expect the new order and the network's function is unchanged.

:func:`find_routes` reads the :mod:`torch.fx` graph of
:class:`~tkn.engine.graph.GraphAnalysis` (target layers as leaves, before any
rewrite). From each target layer called once the single-user chain is followed
through channel-wise operations (activations, pooling, dropout, batch norm —
whose parameters are permuted) to the consumer, which must be one of:

* a :class:`~tkn.layers.TargetConv2d` or ``nn.Conv2d`` with ``groups == 1``
  (its weight's input channels are permuted),
* ``flatten(start_dim=1)`` (module, function or method, or ``x.view(x.size(0), -1)``)
  followed by an ``nn.Linear`` (its columns are permuted block-wise).

Anything else (branches, residual additions, concatenations, modules called
more than once) leaves that layer un-permuted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from tkn.layers import TargetConv2d

__all__ = ["Route", "find_routes", "apply_route"]

_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, F.dropout, F.dropout2d,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}

# the channel-wise operations that also map 0 to 0 at every position (no pooling: it moves the zeros)
_ZERO_KEEPING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardtanh, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)
_ZERO_KEEPING_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    torch.tanh, F.tanh, F.dropout, F.dropout2d,
}
_ZERO_KEEPING_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone"}


@dataclass
class Route:
    """Where a layer's output channel order must be applied: batch norms on the way, then the consumer."""

    batch_norms: list[str] = field(default_factory=list)
    consumer: str = ""
    kind: str = ""  # "conv" (TargetConv2d or nn.Conv2d) or "linear"
    #: every operation on the way maps zeros to zeros in place (no batch norm, no pooling, no sigmoid...):
    #: the consumer sees zeros wherever the layer's output is zero
    keeps_zeros: bool = True


def _only_node_arg_is(node: fx.Node, src: fx.Node) -> bool:
    return node.all_input_nodes == [src]


def _flatten_dims(node: fx.Node) -> tuple:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start, end


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"):
        return _flatten_dims(node) == (1, -1) and _only_node_arg_is(node, node.args[0])
    if node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) == 3:
        src, first, second = node.args
        first_ok = (
            isinstance(first, fx.Node) and first.op == "call_method" and first.target == "size"
            and first.args[0] is src and (first.args[1:] == (0,) or first.kwargs.get("dim") == 0)
        )
        return first_ok and second == -1
    return False


def _route_from(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> Route | None:
    route = Route()
    cur = node
    flattened = False
    while True:
        users = list(cur.users)
        if len(users) == 2:  # ``x.view(x.size(0), -1)``: the size() call only feeds the view
            sizes = [v for v in users if v.op == "call_method" and v.target == "size" and len(v.users) == 1]
            if len(sizes) == 1 and next(iter(sizes[0].users)) in users:
                users = [v for v in users if v is not sizes[0]]
        if len(users) != 1:
            return None
        u = users[0]
        if u.op == "call_module":
            m = modules.get(u.target)
            if calls.get(u.target, 0) != 1 or not _only_node_arg_is(u, cur):
                return None
            if flattened:
                if isinstance(m, nn.Linear):
                    route.consumer, route.kind = u.target, "linear"
                    return route
                return None
            if (isinstance(m, TargetConv2d) or type(m) is nn.Conv2d) and m.groups == 1:
                route.consumer, route.kind = u.target, "conv"
                return route
            if isinstance(m, nn.BatchNorm2d):
                route.batch_norms.append(u.target)
                route.keeps_zeros = False
            elif _is_flatten(u, modules):
                flattened = True
            elif not isinstance(m, _CHANNELWISE_MODULES):
                return None
            elif not isinstance(m, _ZERO_KEEPING_MODULES):
                route.keeps_zeros = False
        elif flattened:
            return None
        elif u.op == "call_function" and u.target in _CHANNELWISE_FUNCTIONS and _only_node_arg_is(u, cur):
            route.keeps_zeros &= u.target in _ZERO_KEEPING_FUNCTIONS
        elif u.op == "call_method" and u.target in _CHANNELWISE_METHODS and _only_node_arg_is(u, cur):
            route.keeps_zeros &= u.target in _ZERO_KEEPING_METHODS
        elif _is_flatten(u, modules):
            flattened = True
        else:
            return None
        cur = u


def find_routes(graph: fx.Graph, modules: dict[str, nn.Module], calls: dict[str, int]) -> dict[str, Route]:
    """For each target layer called once, the :class:`Route` its permuted output can follow (absent: none).

    Args:
        graph: the traced graph, target layers as leaf modules, not rewritten.
        modules: the model's ``named_modules()``.
        calls: ``{module name: call count}`` per name in ``graph`` (a module reachable under several names
            counts once per name; such aliases are refused).
    """
    by_id: dict[int, int] = {}
    for name, count in calls.items():
        by_id[id(modules[name])] = by_id.get(id(modules[name]), 0) + count
    routes: dict[str, Route] = {}
    claimed: set[str] = set()
    for n in graph.nodes:
        if n.op != "call_module" or not isinstance(modules[n.target], TargetConv2d) or calls[n.target] != 1:
            continue
        if by_id[id(modules[n.target])] != 1:
            continue
        route = _route_from(n, modules, calls)
        if route is None or by_id[id(modules[route.consumer])] != 1 or route.consumer in claimed:
            continue
        if any(by_id[id(modules[b])] != 1 for b in route.batch_norms):
            continue
        claimed.add(route.consumer)
        routes[n.target] = route
    return routes


@torch.no_grad()
def apply_route(model: nn.Module, route: Route, perm: list[int], channels: int) -> None:
    """Permute the batch norms and the consumer of ``route`` (in place) so they accept channels in ``perm`` order.

    A :class:`~tkn.layers.TargetConv2d` consumer is left alone: the engine folds
    the permutation into its frozen replacement (``in_perm``).
    """
    idx = torch.tensor(perm, dtype=torch.long)
    for name in route.batch_norms:
        bn = model.get_submodule(name)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(bn, attr)
            if t is not None:
                t.copy_(t[idx.to(t.device)])
    consumer = model.get_submodule(route.consumer)
    if route.kind == "conv":
        if not isinstance(consumer, TargetConv2d):
            consumer.weight.copy_(consumer.weight[:, idx.to(consumer.weight.device)])
        return
    per_channel, rest = divmod(consumer.in_features, channels)
    if rest:
        raise ValueError(f"{route.consumer}: in_features {consumer.in_features} is not a multiple of {channels} "
                         "channels")
    cols = (idx[:, None] * per_channel + torch.arange(per_channel)[None, :]).flatten()
    consumer.weight.copy_(consumer.weight[:, cols.to(consumer.weight.device)])

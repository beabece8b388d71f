"""BatchNorm folded into the convolution before it (issue 17's lever after layout).

An eval-mode BatchNorm is a per-channel affine map, so a convolution followed by one equals a
convolution with scaled weights and a shifted bias. Folding removes the BatchNorm's forward and
its backward from every pass: 0.82x the fwd+bwd time of ResNet-50 alone, 0.71x together with
channels_last (2 cores, AVX512, 2026-12-04; docs/benchmarks.md). The maps move by kernel
rounding only (about 3e-3 relative L2, like channels_last).

The model is traced with torch.fx; a model fx cannot trace is left as it is, with the reason.
Two conv forms are folded: a `nn.Conv2d` module called once, and `F.conv2d` on a weight
attribute used once (what EfficientNet's same-padding convolutions do). The conv's output
must feed the BatchNorm only, and the BatchNorm must be in eval mode with running statistics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["Folded", "fold_batchnorm"]

_CONV_FUNCTIONS = (F.conv2d, torch.conv2d)


@dataclass(frozen=True)
class Folded:
    """The model to run (a traced copy, or the original when nothing could be folded), how
    many BatchNorms were folded, and why the rest were not (empty when all were)."""

    model: nn.Module
    count: int
    left: str


def fold_batchnorm(model: nn.Module) -> Folded:
    """`model` with each foldable BatchNorm2d folded into its convolution. `model` itself is
    never changed (the folded model is a traced deep copy)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    batchnorms = len(norms)
    if batchnorms == 0:
        return Folded(model, 0, "")
    if all(norm.training for norm in norms):  # a wrapper's own mode does not matter
        return Folded(model, 0, "its BatchNorms are in training mode")
    try:
        graph = fx.symbolic_trace(copy.deepcopy(model))
    except Exception as error:  # fx raises many kinds for untraceable Python
        return Folded(model, 0, f"torch.fx cannot trace it ({type(error).__name__})")
    count = sum(_fold(graph, node) for node in list(graph.graph.nodes))
    if count == 0:
        return Folded(model, 0, "no BatchNorm follows a convolution it alone reads")
    graph.graph.eliminate_dead_code()
    graph.delete_all_unused_submodules()
    graph.recompile()
    left = batchnorms - count
    return Folded(graph, count, f"{left} not after a foldable convolution" if left else "")


def _fold(graph: fx.GraphModule, node: fx.Node) -> bool:
    """Fold the BatchNorm called at `node` into the conv that feeds it; whether it was."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return False
    norm = graph.get_submodule(str(node.target))
    if not isinstance(norm, nn.BatchNorm2d) or not _frozen_stats(norm):
        return False
    conv = node.args[0]
    if not isinstance(conv, fx.Node) or len(conv.users) != 1:
        return False
    assert norm.running_mean is not None and norm.running_var is not None  # _frozen_stats
    stats = (norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
    if conv.op == "call_module":
        folded = _fold_module(graph, conv, stats)
    elif conv.op == "call_function" and conv.target in _CONV_FUNCTIONS:
        folded = _fold_function(graph, conv, stats)
    else:
        folded = False
    if folded:
        node.replace_all_uses_with(conv)
        graph.graph.erase_node(node)
    return folded


Stats = tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None, torch.Tensor | None]


def _frozen_stats(norm: nn.BatchNorm2d) -> bool:
    return (
        not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
    )


def _fold_module(graph: fx.GraphModule, node: fx.Node, stats: Stats) -> bool:
    target = str(node.target)
    conv = graph.get_submodule(target)
    if type(conv) is not nn.Conv2d or _calls(graph, "call_module", target) != 1:
        return False  # a subclass may change forward; a shared conv feeds other places too
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, *stats)
    conv.weight, conv.bias = weight, bias
    return True


def _fold_function(graph: fx.GraphModule, node: fx.Node, stats: Stats) -> bool:
    """`F.conv2d(x, weight, bias, stride, padding, dilation, groups)` with its weight (and any
    bias) read from attributes no other node reads."""
    args = list(node.args)
    bias_node = args[2] if len(args) > 2 else node.kwargs.get("bias")
    weight_node = args[1] if len(args) > 1 else node.kwargs.get("weight")
    attrs = [n for n in (weight_node, bias_node) if n is not None]
    if not all(_private_attr(graph, n) for n in attrs):
        return False
    assert isinstance(weight_node, fx.Node)
    old_weight = _attr(graph, weight_node)
    old_bias = _attr(graph, bias_node) if isinstance(bias_node, fx.Node) else None
    weight, bias = fuse_conv_bn_weights(old_weight, old_bias, *stats)
    _set_attr(graph, str(weight_node.target), weight)
    if isinstance(bias_node, fx.Node):
        _set_attr(graph, str(bias_node.target), bias)
    else:
        name = f"{weight_node.target}_folded_bias".replace(".", "_")
        graph.register_parameter(name, bias)
        with graph.graph.inserting_before(node):
            new_bias = graph.graph.get_attr(name)
        if len(args) > 2:
            args[2] = new_bias
            node.args = tuple(args)
        else:
            node.kwargs = {**node.kwargs, "bias": new_bias}
    return True


def _private_attr(graph: fx.GraphModule, node: object) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "get_attr"
        and len(node.users) == 1
        and _calls(graph, "get_attr", str(node.target)) == 1
        and isinstance(_attr(graph, node), nn.Parameter)
    )


def _calls(graph: fx.GraphModule, op: str, target: str) -> int:
    return sum(n.op == op and str(n.target) == target for n in graph.graph.nodes)


def _attr(graph: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    owner, _, name = str(node.target).rpartition(".")
    value = getattr(graph.get_submodule(owner), name)
    assert isinstance(value, torch.Tensor)
    return value


def _set_attr(graph: fx.GraphModule, target: str, value: nn.Parameter) -> None:
    owner, _, name = target.rpartition(".")
    setattr(graph.get_submodule(owner), name, value)

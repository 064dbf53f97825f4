"""Models, and the GEMM view of their crossbar-mapped layers.

A layer's weight is seen as its GEMM matrix W of shape (out, in): a Linear's
(out_features, in_features), a Conv2d's (F, C*kh*kw). Inputs drive crossbar
wordlines (rows), outputs are read on bitlines (columns).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from stages.errors import StageError

MODELS = ("mlp", "convnet", "lenet5", "vgg16", "resnet18")
# Modules and functions that pass channels through one to one, so a pruned output
# channel of the layer before them is a dead input channel of the layer after them.
_CHANNEL_PRESERVING = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                       nn.Flatten, nn.Dropout, nn.Identity)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)   # preserving once the pruned channel's gamma, beta are 0
_PRESERVING_FUNCTIONS = {F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                         torch.flatten, F.dropout}
_PRESERVING_METHODS = {"relu", "flatten"}


def mlp(in_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Fully connected ReLU network, e.g. 64-256-256-10 for digits; layers fc1, fc2, ..."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
        width = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def convnet(in_channels: int, channels: tuple[int, ...], image_size: int,
            num_classes: int) -> nn.Sequential:
    """Small conv net for 8x8 digits: 3x3 convs (padding 1), 2x2 max-pool, linear head `fc`."""
    layers: list[tuple[str, nn.Module]] = []
    width = in_channels
    for i, c in enumerate(channels, start=1):
        layers += [(f"conv{i}", nn.Conv2d(width, c, kernel_size=3, padding=1)), (f"relu{i}", nn.ReLU())]
        width = c
    layers += [("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(width * (image_size // 2) ** 2, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int,
                hidden: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Build a model by config name; `hidden` is the MLP widths or the conv channels.

    Initial weights come from `seed` alone (the global RNG is forked, not touched).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(name, input_shape, num_classes, hidden)


def _build(name, input_shape, num_classes, hidden) -> nn.Module:
    from stages import zoo   # the paper models; zoo imports this module's helpers

    if name in zoo.MODELS:
        return zoo.build_zoo_model(name, input_shape=input_shape, num_classes=num_classes)
    if name == "mlp":
        features = 1
        for d in input_shape:
            features *= d
        return mlp(features, tuple(hidden), num_classes)
    if name == "convnet":
        if len(input_shape) != 3:
            raise StageError(f"model.name: 'convnet' needs image input (C, H, W); got shape {input_shape}")
        return convnet(input_shape[0], tuple(hidden), input_shape[1], num_classes)
    raise StageError(f"model.name: got {name!r}; allowed: {', '.join(MODELS)}")


def crossbar_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear and Conv2d layers, by qualified name, in forward order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def gemm(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) view of a Linear (out, in) or Conv2d (F, C, kh, kw) weight."""
    return weight.reshape(weight.shape[0], -1)


@dataclass(frozen=True)
class LayerGraph:
    """What a pruned output channel of each crossbar layer touches, from the torch.fx graph.

    consumers[p]: crossbar layers fed by p's output through channel-preserving
        ops only (ReLU, BatchNorm, pooling, flatten, dropout): p's pruned filters
        are dead inputs there (the cascade).
    norms[p]: BatchNorms on those paths; a pruned filter zeroes their gamma and
        beta for its channel so the channel stays exactly zero.
    filter_prunable: layers whose output reaches nothing else. A layer whose
        output joins a residual addition, a concatenation, a reshape or the model's
        output is excluded from filter pruning: removing its channels would change
        the joined tensor, not just drop dead ones. Shape pruning works everywhere.
    input_consumers: the crossbar layers the model's input reaches through those
        per-sample ops only, or () where it reaches anything else too (a residual
        addition, the output): what sees the input itself, not a crossbar's output.
    """

    order: tuple[str, ...]
    consumers: dict[str, tuple[str, ...]]
    norms: dict[str, tuple[str, ...]]
    filter_prunable: frozenset[str]
    input_consumers: tuple[str, ...] = ()

    def cascade_pairs(self) -> list[tuple[str, str]]:
        return [(p, c) for p in self.order if p in self.filter_prunable for c in self.consumers[p]]


def layer_graph(model: nn.Module) -> LayerGraph:
    """Trace `model` with torch.fx and find each crossbar layer's channel consumers.

    A model that torch.fx cannot trace gets no cascade and no filter pruning.
    """
    layers = crossbar_layers(model)
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: no graph to reason with
        return LayerGraph(tuple(layers), {n: () for n in layers}, {n: () for n in layers}, frozenset())
    modules = dict(traced.named_modules())
    order = tuple(n.target for n in traced.graph.nodes
                  if n.op == "call_module" and n.target in layers)

    def reach(node: fx.Node) -> tuple[list[str], list[str], bool]:
        """The crossbar layers and BatchNorms node's output reaches through preserving ops,
        and whether it reaches anything else (blocked)."""
        found, bns = [], []
        frontier = list(node.users)
        while frontier:
            user = frontier.pop()
            if user.op == "call_module" and user.target in layers:
                found.append(user.target)
                continue
            if user.op == "call_module" and isinstance(modules[user.target], _CHANNEL_PRESERVING + _NORMS):
                if isinstance(modules[user.target], _NORMS):
                    bns.append(user.target)
            elif not (user.op == "call_function" and user.target in _PRESERVING_FUNCTIONS
                      or user.op == "call_method" and user.target in _PRESERVING_METHODS):
                return found, bns, True
            frontier.extend(user.users)
        return found, bns, False

    consumers, norms, prunable = {}, {}, set()
    for node in traced.graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        found, bns, blocked = reach(node)
        consumers[node.target] = () if blocked else tuple(dict.fromkeys(found))
        norms[node.target] = () if blocked else tuple(dict.fromkeys(bns))
        if not blocked and found:
            prunable.add(node.target)
    inputs = [n for n in traced.graph.nodes if n.op == "placeholder"]
    found, _, blocked = reach(inputs[0]) if len(inputs) == 1 else ([], [], True)
    return LayerGraph(order, consumers, norms, frozenset(prunable), () if blocked else tuple(dict.fromkeys(found)))


def zero_pruned_channels(model: nn.Module, keep_out: dict[str, torch.Tensor], graph: LayerGraph) -> None:
    """Zero the bias of each pruned filter, and gamma and beta of the BatchNorms after it."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in keep_out.items():
            params = [modules[name].bias] + [p for bn in graph.norms.get(name, ()) if modules[bn].affine
                                             for p in (modules[bn].weight, modules[bn].bias)]
            for p in params:
                if p is not None:
                    p.mul_(keep.to(device=p.device, dtype=p.dtype))


def input_channel_groups(consumer_in: int, producer_out: int) -> int:
    """GEMM columns per producer channel (kh*kw for a conv, H*W after a flatten)."""
    if consumer_in % producer_out:
        raise StageError(f"cascade: consumer has {consumer_in} inputs, not a multiple of "
                         f"the producer's {producer_out} outputs")
    return consumer_in // producer_out

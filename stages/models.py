"""Models, and the GEMM view of their crossbar-mapped layers.

A layer's weight is seen as its GEMM matrix W of shape (out, in): a Linear's
(out_features, in_features), a Conv2d's (F, C*kh*kw). Inputs drive crossbar
wordlines (rows), outputs are read on bitlines (columns).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from stages.errors import StageError

MODELS = ("mlp", "convnet")
# Modules that pass channels through one to one, so a pruned output channel
# of the layer before them is a dead input channel of the layer after them.
_CHANNEL_PRESERVING = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


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


def cascade_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, consumer) pairs where a pruned producer output removes consumer inputs.

    Found by walking the modules in order: two crossbar layers joined only by
    channel-preserving modules (ReLU, pooling, flatten, dropout) form a pair.
    Anything else between them (batch norm, a residual join) breaks the chain,
    so no cascade is claimed where the graph does not allow it.
    """
    pairs = []
    previous = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if previous is not None:
                pairs.append((previous, name))
            previous = name
        elif isinstance(module, _CHANNEL_PRESERVING) or len(list(module.children())) > 0:
            continue
        else:
            previous = None
    return pairs


def input_channel_groups(consumer_in: int, producer_out: int) -> int:
    """GEMM columns per producer channel (kh*kw for a conv, H*W after a flatten)."""
    if consumer_in % producer_out:
        raise StageError(f"cascade: consumer has {consumer_in} inputs, not a multiple of "
                         f"the producer's {producer_out} outputs")
    return consumer_in // producer_out

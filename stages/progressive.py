"""Mismatch-aware (progressive) masked mapping (Yuan et al., ISLPED 2019, step 2).

One-shot mapping moves every kept weight onto its conductance level at once.
Progressive mapping starts from the pruned but not yet quantized weights, maps
first the weights that already lie within a small distance of a level (they
lose least), freezes them there, retrains the free ones to absorb the error,
and repeats with a larger fraction until every weight is on a level. The scale
alpha of each layer and the masks are fixed at the start.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from stages.data import DataSplits
from stages.mapping import MappedNetwork, map_network, requantize
from stages.models import crossbar_layers, gemm, layer_graph, zero_pruned_channels
from stages.train import EpochCallback, Runtime, epoch_options, make_optimizer, train_one_epoch


def mapping_error(w: torch.Tensor, alpha: float, max_level: int) -> torch.Tensor:
    """Distance of each weight to its level, in units of alpha: |w/alpha - clip(round(w/alpha))|."""
    scaled = w / alpha
    return (scaled - torch.clamp(torch.round(scaled), -max_level, max_level)).abs()


def progressive_map(model: nn.Module, masks: dict[str, torch.Tensor], weight_bits: int, data: DataSplits, *,
                    fractions: tuple[float, ...], epochs: int, lr: float, optimizer: str, momentum: float,
                    weight_decay: float, batch_size: int, seed: int, cascade: bool = True,
                    block_tile: tuple[int, int] | None = None, block_layers: frozenset[str] = frozenset(),
                    on_epoch_end: EpochCallback = None, runtime: Runtime = Runtime()) -> MappedNetwork:
    """Map `model` (pruned, not quantized) onto levels round by round; returns the mapping.

    After round r the fraction fractions[r] of each layer's kept weights (those nearest their
    levels, the already-frozen ones included) sits on its level; a last round maps the rest.
    """
    start = map_network(model, masks, weight_bits, cascade, block_tile, block_layers)  # alphas, masks
    max_level = 2 ** (weight_bits - 1) - 1
    work = copy.deepcopy(model).to(runtime.device)
    layers = crossbar_layers(work)
    graph = layer_graph(work)
    keep_out = {n: l.keep_out for n, l in start.layers.items()}
    kept = {n: l.mask.to(runtime.device) for n, l in start.layers.items()}
    frozen = {n: torch.zeros_like(m) for n, m in kept.items()}
    generator = torch.Generator().manual_seed(seed)

    def pin() -> None:
        """Pruned weights at zero, frozen weights on their levels."""
        with torch.no_grad():
            for n, layer in start.layers.items():
                w = gemm(layers[n].weight)
                on_level = torch.clamp(torch.round(w / layer.alpha), -max_level, max_level) * layer.alpha
                w.copy_(torch.where(frozen[n], on_level, w * kept[n]))
        zero_pruned_channels(work, keep_out, graph)

    for round_index, fraction in enumerate((*fractions, 1.0)):
        with torch.no_grad():
            for n, layer in start.layers.items():
                error = mapping_error(gemm(layers[n].weight), layer.alpha, max_level)
                error = torch.where(kept[n], error, torch.full_like(error, float("inf")))
                count = int(round(fraction * int(kept[n].sum())))
                order = torch.argsort(error.flatten(), stable=True)[:count]
                frozen[n].view(-1)[order] = True
        pin()
        if fraction == 1.0:
            break
        opt = make_optimizer(work.parameters(), name=optimizer, lr=lr, momentum=momentum,
                             weight_decay=weight_decay)

        def free_gradients_only() -> None:
            for n in start.layers:
                grad = layers[n].weight.grad
                if grad is not None:
                    grad.mul_((kept[n] & ~frozen[n]).reshape(grad.shape).to(grad.dtype))

        for epoch in range(epochs):
            loss = train_one_epoch(work, data.x_train, data.y_train, opt, batch_size=batch_size,
                                   generator=generator, after_backward=free_gradients_only, after_step=pin,
                                   **epoch_options(data, runtime))
            if on_epoch_end is not None:
                on_epoch_end({"stage": "progressive-map", "round": round_index, "fraction": fraction,
                              "epoch": epoch, "loss": loss})
    mapped = requantize(work.cpu(), start)
    mapped.extra["mapping_mode"] = "progressive"
    return mapped

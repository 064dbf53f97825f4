"""Masked retraining on conductance levels.

Masks are fixed: pruned weights (and pruned filters' biases) stay exactly zero.
Each kept weight is seen by the forward pass on its level, alpha * round(w /
alpha) clipped to the level range, with a straight-through gradient to the
float weight underneath (masked retraining of the ADMM line; the STE of
Bengio et al. 2013). At the end the float weights are snapped onto the levels,
so every kept weight sits exactly on a conductance level.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from hardware import MappingSpec, conductance_to_levels, levels_to_conductance
from stages.data import DataSplits
from stages.mapping import MappedNetwork, requantize
from stages.models import crossbar_layers, gemm, layer_graph, zero_pruned_channels
from stages.montecarlo import Scenario, perturb
from stages.train import (EpochCallback, Runtime, epoch_options, evaluate, make_optimizer,
                          train_one_epoch)


class OnLevels(nn.Module):
    """Parametrization: weight -> alpha * clip(round(weight / alpha)) * mask, straight-through.

    With `noise` (variation-aware retraining), each training forward pass reads the
    levels back from devices programmed with that scenario's variation, so the
    network learns weights that tolerate it; evaluation sees the ideal levels.
    """

    def __init__(self, alpha: float, max_level: int, mask: torch.Tensor,
                 noise: tuple[MappingSpec, Scenario, torch.Generator] | None = None):
        super().__init__()
        self.alpha = alpha
        self.max_level = max_level
        self.noise = noise
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        kept = w * self.mask
        n = torch.clamp(torch.round(kept / self.alpha), -self.max_level, self.max_level)
        if self.training and self.noise is not None:
            spec, scenario, generator = self.noise
            g = levels_to_conductance(gemm(n).detach().to(torch.int32), spec)   # on the model's device
            n = conductance_to_levels(perturb(g, spec, scenario, generator), spec)
            n = n.reshape(kept.shape).to(kept.device, kept.dtype) * self.mask
        return kept + (n * self.alpha - kept).detach()


def _attach(model: nn.Module, mapped: MappedNetwork, noise=None) -> None:
    layers = crossbar_layers(model)
    max_level = 2 ** (mapped.weight_bits - 1) - 1
    for name, layer in mapped.layers.items():
        parametrize.register_parametrization(
            layers[name], "weight",
            OnLevels(layer.alpha, max_level, layer.mask.reshape(layer.weight_shape), noise))


def _detach(model: nn.Module) -> None:
    for module in crossbar_layers(model).values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def retrain(template: nn.Module, mapped: MappedNetwork, data: DataSplits, *, epochs: int,
            lr: float, optimizer: str, momentum: float, weight_decay: float, batch_size: int,
            seed: int, on_epoch_end: EpochCallback = None, runtime: Runtime = Runtime(),
            noise: tuple[MappingSpec, Scenario] | None = None) -> tuple[MappedNetwork, dict]:
    """Retrain the mapped network with masks and levels fixed; returns the best-on-val mapping.

    noise (spec, scenario): variation-aware retraining, device variation at every step.
    """
    model = mapped.load_into(template)
    device_noise = None
    if noise is not None:
        spec, scenario = noise
        device_noise = (spec.with_weight_bits(mapped.weight_bits), scenario,
                        torch.Generator(device=runtime.device).manual_seed(seed + 1))
    _attach(model, mapped, device_noise)
    model.to(runtime.device)
    graph = layer_graph(template)
    keep_out = {n: l.keep_out for n, l in mapped.layers.items()}

    def zero_pruned_biases() -> None:
        zero_pruned_channels(model, keep_out, graph)

    opt = make_optimizer(model.parameters(), name=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    generator = torch.Generator().manual_seed(seed)
    best_acc = evaluate(model, data.x_val, data.y_val)
    best = copy.deepcopy(model)
    for epoch in range(epochs):
        loss = train_one_epoch(model, data.x_train, data.y_train, opt, batch_size=batch_size,
                               generator=generator, after_step=zero_pruned_biases,
                               **epoch_options(data, runtime))
        sched.step()
        val_acc = evaluate(model, data.x_val, data.y_val)
        if val_acc > best_acc:
            best_acc, best = val_acc, copy.deepcopy(model)
        if on_epoch_end is not None:
            on_epoch_end({"stage": "retrain", "epoch": epoch, "loss": loss, "val_accuracy": val_acc})
    _detach(best)
    final = requantize(best.cpu(), mapped)
    if noise is not None:
        final.extra["retrain_noise"] = f"{noise[1].variation} sigma={noise[1].sigma:g}"
    return final, {"val_accuracy": best_acc}

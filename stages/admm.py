"""ADMM regularized optimization (Zhang et al., ECCV 2018; ADMM-NN, ASPLOS 2019).

For each constrained layer with GEMM weight W:

    W-step:  minimise  loss(W) + rho/2 * ||W - Z + U||^2   (one epoch of SGD/Adam)
    Z-step:  Z = project(W + U)                           (stages.projections)
    U-step:  U = U + W - Z
    rho      multiplied by rho_multiplier every rho_every epochs

Z0 is the projection of the pretrained weights and U0 = 0. After the last
epoch W is hard-projected: the returned model satisfies the constraints.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch import nn

from stages.data import DataSplits
from stages.models import LayerGraph, crossbar_layers, gemm, layer_graph, zero_pruned_channels
from stages.projections import LayerRule, project
from stages.train import (EpochCallback, Runtime, epoch_options, evaluate, make_optimizer,
                          train_one_epoch)


def hard_project(model: nn.Module, rules: dict[str, LayerRule],
                 graph: LayerGraph | None = None) -> dict[str, torch.Tensor]:
    """Project each ruled layer's weight in place, zero pruned filters' biases and BatchNorm
    affine parameters; returns the masks {layer: (out, in) bool}."""
    graph = graph or layer_graph(model)
    layers = crossbar_layers(model)
    masks = {}
    with torch.no_grad():
        for name, rule in rules.items():
            module = layers[name]
            z, mask = project(gemm(module.weight), rule)
            module.weight.copy_(z.reshape(module.weight.shape))
            masks[name] = mask
    zero_pruned_channels(model, {n: m.any(dim=1) for n, m in masks.items()}, graph)
    return masks


def admm_train(model: nn.Module, data: DataSplits, rules: dict[str, LayerRule], *,
               epochs: int, lr: float, optimizer: str, momentum: float, weight_decay: float,
               batch_size: int, rho: float, rho_multiplier: float, rho_every: int, seed: int,
               on_epoch_end: EpochCallback = None,
               projected_metrics: Callable[[nn.Module, dict, LayerGraph], dict] | None = None,
               runtime: Runtime = Runtime(), final_rules: dict[str, LayerRule] | None = None,
               ) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """Run ADMM from a trained model; returns (hard-projected model, masks, metrics).

    on_epoch_end receives, each epoch, the validation accuracy of a hard-projected
    copy (`val_accuracy`), the training loss (cross-entropy, without the penalty), the
    primal residual sum ||W - Z||^2, rho, and whatever projected_metrics(projected_model,
    masks, graph) adds (compression, crossbars), and timings: `step_s` (the ADMM iteration:
    W-step over the training set, then the Z and U updates), `report_s` (the projected copy's
    metrics) and `elapsed_s` since the start. The penalty's gradient is added after each
    backward pass, analytically.
    final_rules, if given, replace `rules` for the last hard projection (e.g. pruning only,
    for a progressive mapping that quantizes later).
    """
    model = copy.deepcopy(model).to(runtime.device)
    layers = crossbar_layers(model)
    graph = layer_graph(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        Z = {n: project(gemm(layers[n].weight), r)[0].clone() for n, r in rules.items()}
        U = {n: torch.zeros_like(Z[n]) for n in rules}
    state = {"rho": rho}

    ruled = [layers[n].weight for n in rules]

    def penalty_gradient() -> None:
        """Add the gradient of rho/2 ||W - Z + U||^2, rho (W + (U - Z)), to each ruled weight's
        (analytic: no autograd graph for the penalty; U - Z is fixed within an epoch)."""
        with torch.no_grad():
            have = [i for i, w in enumerate(ruled) if w.grad is not None]
            grads = [ruled[i].grad for i in have]
            torch._foreach_add_(grads, [ruled[i] for i in have], alpha=state["rho"])
            torch._foreach_add_(grads, [state["shifts"][i] for i in have], alpha=state["rho"])

    metrics = {}
    started = time.perf_counter()
    projected = copy.deepcopy(model)   # each epoch's hard-projected copy, for the metrics
    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        if epoch % rho_every == 0:   # a new ADMM stage: learning rate reset (ADMM line's code)
            if epoch > 0:
                state["rho"] *= rho_multiplier
            opt = make_optimizer(model.parameters(), name=optimizer, lr=lr, momentum=momentum,
                                 weight_decay=weight_decay)
        state["shifts"] = [(U[n] - Z[n]).reshape(w.shape) for n, w in zip(rules, ruled)]
        loss = train_one_epoch(model, data.x_train, data.y_train, opt, batch_size=batch_size,
                               generator=generator, after_backward=penalty_gradient,
                               **epoch_options(data, runtime))
        with torch.no_grad():
            residual = 0.0
            for n, r in rules.items():
                w = gemm(layers[n].weight)
                Z[n] = project(w + U[n], r)[0]
                U[n] += w - Z[n]
                residual += (w - Z[n]).pow(2).sum().item()
        step_s = time.perf_counter() - epoch_started
        projected.load_state_dict(model.state_dict())
        projected_masks = hard_project(projected, rules, graph)
        projected_masks = {n: m.cpu() for n, m in projected_masks.items()}
        metrics = {"stage": "admm", "epoch": epoch, "loss": loss, "rho": state["rho"],
                   "primal_residual": residual,
                   "val_accuracy": evaluate(projected, data.x_val, data.y_val)}
        if projected_metrics is not None:
            on_cpu = projected if runtime.device == "cpu" else copy.deepcopy(projected).cpu()
            metrics.update(projected_metrics(on_cpu, projected_masks, graph))
        metrics.update(elapsed_s=time.perf_counter() - started, step_s=step_s,
                       report_s=time.perf_counter() - epoch_started - step_s)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    masks = hard_project(model, final_rules or rules, graph)
    return model.cpu(), {n: m.cpu() for n, m in masks.items()}, metrics

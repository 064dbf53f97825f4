"""`memadmm estimate`: crossbars, power and area of a model at given keep ratios, no training.

The model is a preset's architecture (initial weights) or a checkpoint; which
rows, columns or blocks survive is chosen by the L2 norms of those weights, and
only the counts matter for the cost. Two ways to say what is kept:

- a uniform target `compression` (dense weights / kept weights) over every
  crossbar layer. With structure "filter+shape" a layer that may lose filters
  keeps sqrt(1/compression) of them, and every layer then keeps the input
  columns that bring its kept block to 1/compression of its weights, choosing
  them among the inputs its producer's kept filters still feed (the cascade
  already removes the others). A layer that may not lose filters (a residual
  join, the output layer) keeps 1/compression of its columns. "shape" prunes
  columns only; "block" keeps 1/compression of each layer's crossbar tiles.
- per-layer keep fractions `keep` {layer: fraction of its weights kept},
  split the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline import steps
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.results import cost_summary, layers_and_hardware
from stages.data import DATA_SHAPES
from stages.mapping import map_network
from stages.models import build_model, crossbar_layers, gemm, input_channel_groups, layer_graph
from stages.projections import block_mask, top_k_mask

ESTIMATE_STRUCTURES = ("filter+shape", "shape", "block")


def template_of(cfg: Config) -> nn.Module:
    """The config's architecture, built from its data set's input shape without loading the data."""
    images = cfg.model.name in steps.IMAGE_MODELS
    shape, classes = DATA_SHAPES[cfg.data.name]
    if not images:
        shape = (math.prod(shape),)
    return build_model(cfg.model.name, input_shape=shape, num_classes=classes, hidden=cfg.model.hidden,
                       seed=cfg.seed)


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Load a state dict (plain, or under "model" / "state_dict" as memadmm and torchvision save)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the user's file
        raise UserError(f"--checkpoint: cannot read {path!r} ({type(exc).__name__}: {exc}); allowed: a "
                        "torch.save'd state dict") from None
    state = saved.get("model", saved.get("state_dict", saved)) if isinstance(saved, dict) else None
    try:
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--checkpoint: {path!r} does not fit the model ({exc})") from None
    return model


def keep_masks(model: nn.Module, keep: dict[str, float], structure: str,
               tile: tuple[int, int]) -> dict[str, torch.Tensor]:
    """(out, in) masks keeping about keep[layer] of each layer's weights (see the module doc)."""
    if structure not in ESTIMATE_STRUCTURES:
        raise UserError(f"--structure: got {structure!r}; allowed: {', '.join(ESTIMATE_STRUCTURES)}")
    graph = layer_graph(model)
    layers = crossbar_layers(model)
    producer = {c: p for p, c in graph.cascade_pairs()}
    masks, keep_out = {}, {}
    for name in graph.order:
        k = keep.get(name, 1.0)
        w = gemm(layers[name].weight.detach())
        out, inputs = w.shape
        if structure == "block":
            masks[name] = block_mask(w, 1.0 - k, *tile)
            continue
        rows = torch.ones(out, dtype=torch.bool)
        if structure == "filter+shape" and name in graph.filter_prunable:
            rows = top_k_mask(w.norm(dim=1), max(1, round(math.sqrt(k) * out)))
        alive = torch.ones(inputs, dtype=torch.bool)
        if name in producer and structure == "filter+shape":
            p = producer[name]
            alive = keep_out[p].repeat_interleave(input_channel_groups(inputs, keep_out[p].numel()))
        target = min(max(1, round(k * out * inputs / int(rows.sum()))), int(alive.sum()))
        scores = torch.where(alive, w.norm(dim=0), torch.full_like(w[0], -1.0))
        masks[name] = rows[:, None] & top_k_mask(scores, target)[None, :]
        keep_out[name] = rows
    return masks


def estimate(cfg: Config, *, model: nn.Module, compression: float | None = None,
             keep: dict[str, float] | None = None, structure: str = "filter+shape"):
    """-> (layers rows, hardware rows, summary dict) for the model at the asked keep ratios."""
    names = list(crossbar_layers(model))
    if compression is not None:
        if compression < 1:
            raise UserError(f"--compression: got {compression}; allowed: a number >= 1")
        keep = {n: 1.0 / compression for n in names}
    keep = dict(keep or {})
    for layer, fraction in keep.items():
        if layer not in names:
            raise UserError(f"--keep {layer}: no such layer; allowed: {', '.join(names)}")
        if not 0 < fraction <= 1:
            raise UserError(f"--keep {layer}={fraction}; allowed: a fraction in (0, 1]")
    tile = (cfg.mapping.xbar_rows, cfg.mapping.xbar_cols)
    masks = keep_masks(model, keep, structure, tile)
    blocks = frozenset(masks) if structure == "block" else frozenset()
    mapped = map_network(model, masks, cfg.mapping.weight_bits, cascade=cfg.mapping.cascade,
                         block_tile=tile, block_layers=blocks, quantized=False)
    layers, hardware = layers_and_hardware(cfg, mapped)
    summary = {"model": cfg.model.name,
               "structure": structure, "weight_bits": cfg.mapping.weight_bits,
               "baseline_weight_bits": cfg.hardware.baseline_weight_bits,
               "xbar_rows": tile[0], "xbar_cols": tile[1], "cell_bits": cfg.mapping.cell_bits,
               "hardware_preset": cfg.hardware.preset, **cost_summary(cfg, layers, hardware)}
    return layers, hardware, summary

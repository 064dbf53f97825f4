"""Masked mapping: hard-project onto the structured masks and conductance levels.

Every crossbar layer (Linear, Conv2d) is quantized to `weight_bits` integer
levels with its own scale alpha; the ADMM masks say which rows and columns
survive. A filter pruned in one layer removes the matching input columns of
the next where the graph allows it (stages.models.cascade_pairs), and the
kept rows and columns are compacted and tiled onto crossbars.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from hardware import MappingSpec, compact, occupied_tiles, tiles
from stages.models import (LayerGraph, crossbar_layers, gemm, input_channel_groups, layer_graph,
                           zero_pruned_channels)
from stages.projections import quantize, weights_from_levels


@dataclass
class MappedLayer:
    """One layer on crossbars. levels: int32 (out, in), zero outside the kept block."""

    name: str
    layer_type: str                 # "linear" or "conv2d"
    weight_shape: tuple[int, ...]   # the module's weight shape
    levels: torch.Tensor            # (out, in) int32, |n| <= 2**(weight_bits-1)-1
    alpha: float                    # weight = alpha * level
    keep_out: torch.Tensor          # (out,) bool: bitlines kept
    keep_in: torch.Tensor           # (in,) bool: wordlines kept, after the cascade
    keep_in_shape: torch.Tensor     # (in,) bool: wordlines kept by this layer's own pruning
    mask: torch.Tensor              # (out, in) bool: weights that may be non-zero (non-zero levels of the kept block)
    block_tiles: int | None = None  # block pruning: tiles of the compacted matrix that survive

    def weight(self) -> torch.Tensor:
        """Ideal weight in the module's shape."""
        return weights_from_levels(self.levels, self.alpha).reshape(self.weight_shape)


@dataclass
class MappedNetwork:
    """A network on crossbars: its layers and the full model state (weights on levels)."""

    layers: dict[str, MappedLayer]
    state_dict: dict[str, torch.Tensor]
    weight_bits: int
    extra: dict = field(default_factory=dict)

    def to_plain(self) -> dict:
        """Plain tensors and numbers (no pickled classes): what artifacts store."""
        return {"weight_bits": self.weight_bits, "state_dict": self.state_dict, "extra": self.extra,
                "layers": {n: {k: getattr(l, k) for k in MappedLayer.__dataclass_fields__}
                           for n, l in self.layers.items()}}

    @classmethod
    def from_plain(cls, plain: dict) -> "MappedNetwork":
        layers = {n: MappedLayer(**{**fields, "weight_shape": tuple(fields["weight_shape"])})
                  for n, fields in plain["layers"].items()}
        return cls(layers, plain["state_dict"], plain["weight_bits"], dict(plain.get("extra", {})))

    def load_into(self, model: nn.Module) -> nn.Module:
        model = copy.deepcopy(model)
        model.load_state_dict(self.state_dict)
        return model


def _cascade(model: nn.Module, graph: LayerGraph, keep_out: dict, keep_in: dict) -> dict:
    """Remove consumer inputs fed by pruned producer outputs."""
    result = dict(keep_in)
    layers = crossbar_layers(model)
    for producer, consumer in graph.cascade_pairs():
        group = input_channel_groups(gemm(layers[consumer].weight).shape[1], keep_out[producer].numel())
        result[consumer] = result[consumer] & keep_out[producer].repeat_interleave(group)
    return result


def map_network(model: nn.Module, masks: dict[str, torch.Tensor], weight_bits: int,
                cascade: bool = True, block_tile: tuple[int, int] | None = None,
                block_layers: frozenset[str] = frozenset(), quantized: bool = True,
                graph: LayerGraph | None = None) -> MappedNetwork:
    """Quantize every crossbar layer onto levels inside its structured mask.

    masks: {layer: (out, in) bool} from ADMM; layers without one keep everything.
    block_layers were block-pruned on (xbar_rows, xbar_cols) = block_tile tiles: their
    crossbars are the surviving tiles, not the product of kept rows and columns.
    quantized=False maps structure only, for counting (memadmm estimate): every kept
    weight is put on level 1 with alpha 1, so non-zeros are exactly the kept weights.
    graph: the model's layer_graph, when the caller has it (traced here otherwise).
    """
    model = copy.deepcopy(model)
    graph = graph or layer_graph(model)
    layers = crossbar_layers(model)
    keep_out, keep_in_shape = {}, {}
    for name, module in layers.items():
        w = gemm(module.weight.detach())
        mask = masks.get(name, torch.ones_like(w, dtype=torch.bool))
        keep_out[name] = mask.any(dim=1)
        keep_in_shape[name] = mask.any(dim=0)
    keep_in = _cascade(model, graph, keep_out, keep_in_shape) if cascade else dict(keep_in_shape)
    mapped = {}
    with torch.no_grad():
        for name, module in layers.items():
            w = gemm(module.weight.detach())
            mask = keep_out[name][:, None] & keep_in[name][None, :]
            if name in masks:
                mask &= masks[name]   # irregular zeros inside the kept block stay zero
            blocks = None
            if name in block_layers:
                blocks = occupied_tiles(compact(mask, keep_out[name], keep_in[name]), *block_tile)
            levels, alpha = quantize(w, mask, weight_bits) if quantized else (mask.to(torch.int32), 1.0)
            # as in the ADMM line's masked retraining, weights that project to zero stay zero:
            # the retraining mask is the non-zero pattern (their devices still exist, at g_min)
            mask = mask & (levels != 0)
            layer = MappedLayer(name, "conv2d" if isinstance(module, nn.Conv2d) else "linear",
                                tuple(module.weight.shape), levels, alpha, keep_out[name],
                                keep_in[name], keep_in_shape[name], mask, blocks)
            module.weight.copy_(layer.weight())
            mapped[name] = layer
    zero_pruned_channels(model, keep_out, graph)
    return MappedNetwork(mapped, copy.deepcopy(model.state_dict()), weight_bits)


def requantize(model: nn.Module, mapped: MappedNetwork) -> MappedNetwork:
    """Snap a retrained model back onto the mapped levels (masks and alphas fixed)."""
    model = copy.deepcopy(model)
    layers = crossbar_layers(model)
    max_level = 2 ** (mapped.weight_bits - 1) - 1
    new_layers = {}
    zero_pruned_channels(model, {n: l.keep_out for n, l in mapped.layers.items()}, layer_graph(model))
    with torch.no_grad():
        for name, old in mapped.layers.items():
            module = layers[name]
            w = gemm(module.weight)
            levels = torch.clamp(torch.round(w / old.alpha), -max_level, max_level)
            levels = (levels * old.mask).to(torch.int32)
            layer = copy.copy(old)
            layer.levels = levels
            module.weight.copy_(layer.weight())
            new_layers[name] = layer
    return MappedNetwork(new_layers, copy.deepcopy(model.state_dict()), mapped.weight_bits,
                         dict(mapped.extra))


def layer_rows(mapped: MappedNetwork, spec: MappingSpec, baseline_bits: int) -> list[dict]:
    """`layers` table rows: the dense baseline and the compressed mapping of each layer."""
    rows = []
    for name, layer in mapped.layers.items():
        out_dim, in_dim = layer.levels.shape
        for variant in ("dense", "compressed"):
            dense = variant == "dense"
            s = spec.with_weight_bits(baseline_bits if dense else mapped.weight_bits)
            kept_out = out_dim if dense else int(layer.keep_out.sum())
            kept_in = in_dim if dense else int(layer.keep_in.sum())
            n_tiles = tiles(kept_in, kept_out, s.xbar_rows, s.data_cols)   # offset: one reference column
            if not dense and layer.block_tiles is not None:
                n_tiles = layer.block_tiles
            rows.append({
                "variant": variant, "layer": name, "layer_type": layer.layer_type,
                "weight_shape": list(layer.weight_shape), "gemm_out": out_dim, "gemm_in": in_dim,
                "kept_out": kept_out,
                "kept_in_own": in_dim if dense else int(layer.keep_in_shape.sum()),
                "kept_in": kept_in,
                "weights": out_dim * in_dim,
                "nonzeros": out_dim * in_dim if dense else int((layer.levels != 0).sum()),
                "weight_bits": s.weight_bits, "cell_bits": s.cell_bits, "slices": s.slices,
                "polarity": s.polarity, "xbar_rows": s.xbar_rows, "xbar_cols": s.xbar_cols,
                "tiles": n_tiles,
                "crossbars": n_tiles * s.slices * s.polarity,
            })
    return rows

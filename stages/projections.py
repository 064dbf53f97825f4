"""Euclidean projections onto the ADMM constraint sets, as scoring, policy, masking.

Every function works on a GEMM matrix W of shape (out, in). Structures:

- filter:    rows of W (output channels)  -> one bitline fewer each
- shape:     columns of W (input positions) -> one wordline fewer each
- block:     tile-aligned xbar_cols x xbar_rows blocks of W (after the kept rows and
             columns are compacted, so each block is one physical crossbar) -> one crossbar fewer
- irregular: single weights (comparison only; saves no crossbar)

A prune ratio is the fraction of structures removed. The projection keeps the
structures of largest L2 norm (the exact projection for one structure type);
combined types are applied in the order filter, shape, block, irregular. The kept
weights are then projected onto the quantization levels alpha * n,
|n| <= 2**(bits-1)-1, with alpha fitted by alternating rounding and least
squares (Ye et al., arXiv 1811.01907; ADMM-NN); pruned zeros stay out of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.errors import StageError

from hardware import compact, expand, tile_slices

STRUCTURES = ("filter", "shape", "block", "irregular")


@dataclass(frozen=True)
class LayerRule:
    """What one layer is projected onto. Ratios are fractions removed, in [0, 1)."""

    filter: float = 0.0
    shape: float = 0.0
    block: float = 0.0
    irregular: float = 0.0
    weight_bits: int | None = None   # None: no quantization constraint
    tile: tuple[int, int] | None = None   # (xbar_rows, xbar_cols), needed by block pruning

    def __post_init__(self):
        for field in STRUCTURES:
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise StageError(f"{field} ratio: got {value}; allowed: a fraction in [0, 1)")
        if self.block > 0 and self.tile is None:
            raise StageError(f"block ratio {self.block} needs the crossbar size (tile); got none")
        if self.weight_bits is not None and self.weight_bits < 2:
            raise StageError(f"weight_bits: got {self.weight_bits}; allowed: an integer >= 2")

    @property
    def prunes(self) -> bool:
        return any(getattr(self, s) > 0 for s in STRUCTURES)


def kept_count(n: int, ratio: float) -> int:
    """How many of n structures survive pruning `ratio` of them (at least one)."""
    return max(1, n - int(round(ratio * n)))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest scores; ties go to the lower index (deterministic)."""
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def filter_mask(w: torch.Tensor, ratio: float) -> torch.Tensor:
    """(out,) bool: rows of largest L2 norm."""
    return top_k_mask(w.norm(dim=1), kept_count(w.shape[0], ratio))


def shape_mask(w: torch.Tensor, ratio: float) -> torch.Tensor:
    """(in,) bool: columns of largest L2 norm."""
    return top_k_mask(w.norm(dim=0), kept_count(w.shape[1], ratio))


def irregular_mask(w: torch.Tensor, ratio: float) -> torch.Tensor:
    """(out, in) bool: entries of largest magnitude."""
    return top_k_mask(w.abs().flatten(), kept_count(w.numel(), ratio)).reshape(w.shape)


def block_mask(w: torch.Tensor, ratio: float, xbar_rows: int, xbar_cols: int) -> torch.Tensor:
    """(out, in) bool: the tile-aligned blocks (xbar_cols outputs x xbar_rows inputs) of
    largest Frobenius norm; each block is one crossbar (inputs drive its rows)."""
    tiles = tile_slices(w.shape[1], w.shape[0], xbar_rows, xbar_cols)   # (in-range, out-range) each
    scores = torch.stack([w[o, i].norm() for i, o in tiles])
    keep = top_k_mask(scores, kept_count(len(tiles), ratio))
    mask = torch.zeros_like(w, dtype=torch.bool)
    for (i, o), kept in zip(tiles, keep.tolist()):
        mask[o, i] = kept
    return mask


def prune_mask(w: torch.Tensor, rule: LayerRule) -> torch.Tensor:
    """(out, in) bool mask of the weights kept by `rule`'s structures."""
    mask = torch.ones_like(w, dtype=torch.bool)
    if rule.filter > 0:
        mask &= filter_mask(w, rule.filter)[:, None]
    if rule.shape > 0:
        mask &= shape_mask(w * mask, rule.shape)[None, :]
    if rule.block > 0:
        rows, cols = mask.any(dim=1), mask.any(dim=0)
        blocks = block_mask(compact(w, rows, cols), rule.block, *rule.tile)
        mask &= expand(blocks, rows, cols).to(torch.bool)
    if rule.irregular > 0:
        mask &= irregular_mask(w * mask, rule.irregular)
    return mask


def quantize(w: torch.Tensor, mask: torch.Tensor, weight_bits: int,
             iterations: int = 20) -> tuple[torch.Tensor, float]:
    """Integer levels n (same shape as w, 0 outside mask) and scale alpha with w ~ alpha * n.

    Alternates n = clip(round(w / alpha), -L, L) and alpha = <w, n> / <n, n>
    over the kept entries, from alpha = max|w| / L, until n stops changing;
    the returned alpha is always the least-squares scale of the returned n.
    """
    max_level = 2 ** (weight_bits - 1) - 1
    where = mask.reshape(-1).nonzero().squeeze(1)   # kept entries, row-major (as w[mask]), found once
    kept = w.reshape(-1).index_select(0, where).double()
    levels = torch.zeros(w.numel(), dtype=torch.int32, device=w.device)
    top = float(kept.abs().max()) if kept.numel() else 0.0
    if top == 0:
        return levels.view(w.shape), 1.0
    alpha = top / max_level
    n = torch.empty_like(kept)
    for _ in range(iterations):
        torch.div(kept, alpha, out=n).round_().clamp_(-max_level, max_level)
        previous = alpha
        alpha = float(torch.dot(kept, n)) / float(torch.dot(n, n))   # least squares for these levels
        if alpha == previous:   # the next n would be this one: a fixed point, found without comparing n
            break
    return levels.index_copy_(0, where, n.to(torch.int32)).view(w.shape), alpha


def weights_from_levels(levels: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * n as float32: the one place ideal weights are built from levels."""
    return levels.to(torch.float32) * torch.tensor(alpha, dtype=torch.float32)


def project(w: torch.Tensor, rule: LayerRule) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection of W onto the rule's set: (Z, mask); Z is W pruned, then quantized."""
    mask = prune_mask(w, rule)
    if rule.weight_bits is None:
        return w * mask, mask
    levels, alpha = quantize(w, mask, rule.weight_bits)
    return weights_from_levels(levels, alpha).to(w.dtype), mask

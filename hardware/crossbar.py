"""Crossbar tiling and counts. W is (out, in): `in` drives wordlines (rows), `out` is read on bitlines (cols)."""

import math

import torch
import torch.nn.functional as F

from hardware import checks
from hardware.errors import HardwareError
from hardware.spec import MappingSpec


def tiles(kept_in: int, kept_out: int, xbar_rows: int, xbar_cols: int) -> int:
    """Crossbar-sized tiles covering a (kept_out, kept_in) matrix: ceil(in/rows) * ceil(out/cols); 0 if empty."""
    kept_in = checks.int_at_least("kept_in", kept_in, 0)
    kept_out = checks.int_at_least("kept_out", kept_out, 0)
    xbar_rows = checks.int_at_least("xbar_rows", xbar_rows, 1)
    xbar_cols = checks.int_at_least("xbar_cols", xbar_cols, 1)
    return math.ceil(kept_in / xbar_rows) * math.ceil(kept_out / xbar_cols)


def physical_crossbars(kept_in: int, kept_out: int, spec: MappingSpec) -> int:
    """Physical arrays of a compacted layer: tiles * slices (bit slices) * polarity (G+ / G-).

    Tiles are ceil(kept_in / xbar_rows) * ceil(kept_out / spec.data_cols): with
    the "offset" scheme each crossbar spends one bitline on its reference column.
    """
    if not isinstance(spec, MappingSpec):
        raise HardwareError(f"spec: got {type(spec).__name__}; allowed: a MappingSpec")
    return tiles(kept_in, kept_out, spec.xbar_rows, spec.data_cols) * spec.slices * spec.polarity


def tile_slices(n_in: int, n_out: int, xbar_rows: int, xbar_cols: int) -> list[tuple[slice, slice]]:
    """(in_range, out_range) of every tile, input blocks outer and output blocks inner.

    Index W (out, in) as W[out_range, in_range]; the last block along an axis
    is short when the size is not a multiple. Together the tiles cover every
    entry exactly once; an empty matrix has no tiles.
    """
    tiles(n_in, n_out, xbar_rows, xbar_cols)  # validates
    return [(slice(i, min(i + xbar_rows, n_in)), slice(o, min(o + xbar_cols, n_out)))
            for i in range(0, n_in, xbar_rows) for o in range(0, n_out, xbar_cols)]


def occupied_tiles(mask: torch.Tensor, xbar_rows: int, xbar_cols: int) -> int:
    """Tile-aligned blocks of a (out, in) mask holding any nonzero: the crossbars block pruning keeps."""
    mask = checks.tensor("mask", mask, dims=(2,)) != 0
    xbar_rows = checks.int_at_least("xbar_rows", xbar_rows, 1)
    xbar_cols = checks.int_at_least("xbar_cols", xbar_cols, 1)
    n_out, n_in = mask.shape
    blocks_out, blocks_in = math.ceil(n_out / xbar_cols), math.ceil(n_in / xbar_rows)
    padded = F.pad(mask, (0, blocks_in * xbar_rows - n_in, 0, blocks_out * xbar_cols - n_out))
    blocks = padded.reshape(blocks_out, xbar_cols, blocks_in, xbar_rows)  # (To, cols, Ti, rows)
    return int(blocks.any(dim=3).any(dim=1).sum())


def _keep_vectors(keep_out, keep_in, n_out: int | None = None, n_in: int | None = None):
    for name, keep, n in (("keep_out", keep_out, n_out), ("keep_in", keep_in, n_in)):
        checks.tensor(name, keep, dims=(1,))
        if keep.dtype != torch.bool:
            raise HardwareError(f"{name}: got dtype {keep.dtype}; allowed: a bool vector")
        if n is not None and keep.numel() != n:
            raise HardwareError(f"{name}: got length {keep.numel()}; allowed: {n}, the weight's "
                                f"{name[5:]} size")


def compact(weight: torch.Tensor, keep_out: torch.Tensor, keep_in: torch.Tensor) -> torch.Tensor:
    """Kept rows and columns only: (..., out, in) -> (..., kept_out, kept_in); keep_* are bool vectors."""
    weight = checks.tensor("weight", weight)
    if weight.dim() < 2:
        raise HardwareError(f"weight: got shape {tuple(weight.shape)}; allowed: (..., out, in)")
    _keep_vectors(keep_out, keep_in, weight.shape[-2], weight.shape[-1])
    return weight[..., keep_out.to(weight.device), :][..., keep_in.to(weight.device)]


def expand(compact_w: torch.Tensor, keep_out: torch.Tensor, keep_in: torch.Tensor) -> torch.Tensor:
    """Inverse of compact: (..., kept_out, kept_in) -> (..., out, in), zeros where removed."""
    compact_w = checks.tensor("compact_w", compact_w)
    _keep_vectors(keep_out, keep_in)
    kept = (int(keep_out.sum()), int(keep_in.sum()))
    if compact_w.dim() < 2 or tuple(compact_w.shape[-2:]) != kept:
        raise HardwareError(f"compact_w: got shape {tuple(compact_w.shape)}; allowed: (..., {kept[0]}, {kept[1]}), "
                            "the kept counts of keep_out and keep_in")
    rows = keep_out.nonzero().squeeze(1).to(compact_w.device)
    cols = keep_in.nonzero().squeeze(1).to(compact_w.device)
    full = compact_w.new_zeros(*compact_w.shape[:-2], keep_out.numel(), keep_in.numel())
    full[..., rows[:, None], cols] = compact_w
    return full

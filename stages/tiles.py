"""Tile-level simulation of one layer's matrix-vector products, as ISAAC/PUMA-style crossbars compute them.

A compacted layer W = alpha * levels, (kept_out, kept_in), is stored as
conductances G (polarity, slices, kept_out, kept_in) in microsiemens
(hardware.levels_to_conductance; perhaps perturbed by device noise). Its
kept inputs are cut into blocks of `xbar_rows` wordlines and its kept
outputs into blocks of `xbar_cols` bitlines (hardware.tile_slices); every
(tile, polarity, slice) is one physical crossbar with its own ADC.

One read of a crossbar:
  DAC      inputs x (volts, as numbers) drive the wordlines, optionally
           quantized to 2**dac_bits levels over x_range (clipped);
  array    bitline currents I = x_tile @ G_tile^T (input units times uS);
  ADC      each current optionally quantized to 2**adc_bits levels over that
           crossbar's range [lo, hi] (clipped);
  digital  subtract the g_min_us baseline (g_min_us * sum of the tile's
           inputs, from the same DAC-quantized inputs), divide by g_step_us
           (the device digits), shift and add the slices (most significant
           first), subtract polarity 1 (G-) from polarity 0 (G+), add up the
           input tiles, multiply by alpha.

With neither converter this equals x @ (alpha * levels)^T. The arithmetic runs
in float64 (so slice recombination stays exact) and the result comes back in
x's dtype. Bit-serial input streaming (1-bit DACs read once per input bit, as
in ISAAC) is not modelled: dac_bits is the input resolution of one read.
Only the "differential" sign scheme is supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hardware import MappingSpec, slice_weights, tile_slices
from stages.errors import StageError

MAX_CONVERTER_BITS = 32   # 2**32 levels is "infinite" for any real converter; float64 still resolves it


# ----------------------------------------------------------------------------- checks


def _spec(spec) -> MappingSpec:
    if not isinstance(spec, MappingSpec):
        raise StageError(f"spec: got {type(spec).__name__}; allowed: a hardware.MappingSpec")
    if spec.sign_scheme != "differential":
        raise StageError(f"spec.sign_scheme: got {spec.sign_scheme!r}; allowed: 'differential' "
                         "(the tile simulation reads G+ - G- pairs)")
    return spec


def _float_tensor(name: str, value, dims: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise StageError(f"{name}: got {type(value).__name__}; allowed: a torch.Tensor")
    if not value.is_floating_point():
        raise StageError(f"{name}: got dtype {value.dtype}; allowed: a floating-point tensor")
    if value.dim() != dims:
        raise StageError(f"{name}: got shape {tuple(value.shape)}; allowed: {dims} dimensions")
    return value


def _conductances(G, spec: MappingSpec, dims: int = 4) -> torch.Tensor:
    """G checked to be ([T,] polarity, slices, kept_out, kept_in) for this spec (dims 4, or 5 with trials)."""
    G = _float_tensor("G", G, dims)
    if tuple(G.shape[-4:-2]) != (spec.polarity, spec.slices):
        raise StageError(f"G: got shape {tuple(G.shape)}; allowed: ({spec.polarity}, {spec.slices}, "
                         f"kept_out, kept_in), polarity and slices of weight_bits={spec.weight_bits}, "
                         f"cell_bits={spec.cell_bits}")
    return G


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StageError(f"{name}: got {value!r}; allowed: a finite number")
    return float(value)


def _bits(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONVERTER_BITS:
        raise StageError(f"{name}: got {value!r}; allowed: None or an integer in [1, {MAX_CONVERTER_BITS}]")
    return value


def _x_range(x_range) -> tuple[float, float]:
    if not isinstance(x_range, (tuple, list)) or len(x_range) != 2:
        raise StageError(f"x_range: got {x_range!r}; allowed: (lo, hi) with lo < hi, needed with dac_bits")
    lo, hi = _number("x_range[0]", x_range[0]), _number("x_range[1]", x_range[1])
    if not lo < hi:
        raise StageError(f"x_range: got ({lo}, {hi}); allowed: lo < hi")
    return lo, hi


def _adc_ranges(adc_ranges, n_tiles: int, spec: MappingSpec, device) -> torch.Tensor:
    """adc_ranges checked to be (tiles, polarity, slices, 2) with lo <= hi; float64 on `device`."""
    if adc_ranges is None:
        raise StageError("adc_ranges: got None with adc_bits set; allowed: a (tiles, polarity, slices, 2) "
                         "tensor of [lo, hi] bitline currents, e.g. from calibrate_adc_ranges")
    adc_ranges = _float_tensor("adc_ranges", adc_ranges, 4)
    expected = (n_tiles, spec.polarity, spec.slices, 2)
    if tuple(adc_ranges.shape) != expected:
        raise StageError(f"adc_ranges: got shape {tuple(adc_ranges.shape)}; allowed: {expected} "
                         "(tiles in hardware.tile_slices order, polarity, slices, [lo, hi])")
    if not torch.isfinite(adc_ranges).all() or (adc_ranges[..., 0] > adc_ranges[..., 1]).any():
        raise StageError("adc_ranges: got a non-finite bound or lo > hi; allowed: finite [lo, hi] with lo <= hi")
    return adc_ranges.to(device=device, dtype=torch.float64)


# ----------------------------------------------------------------------------- hardware math


def uniform_quantize(values: torch.Tensor, lo, hi, bits: int) -> torch.Tensor:
    """values clipped to [lo, hi] and rounded to the nearest of 2**bits evenly spaced levels lo .. hi.

    lo, hi: numbers or tensors broadcasting against values (same units). Where
    hi == lo every value becomes lo. Returns values' shape and dtype.
    """
    lo = torch.as_tensor(lo, dtype=values.dtype, device=values.device)
    hi = torch.as_tensor(hi, dtype=values.dtype, device=values.device)
    step = (hi - lo) / (2 ** bits - 1)
    safe_step = torch.where(step > 0, step, torch.ones_like(step))  # 0 / 0 where the range is a point
    return lo + torch.round((torch.clamp(values, lo, hi) - lo) / safe_step) * step


def _digit_weights(spec: MappingSpec, device) -> torch.Tensor:
    """(P*S,) float64: what one device digit adds to the level, the sign of its polarity times its
    slice's place value (hardware.slice_weights), G+ then G-."""
    place = slice_weights(spec, device)
    return torch.cat([place, -place])


class Crossbars:
    """A compacted layer's devices arranged to be read tile by tile, for one or more trials.

    Per tile (rows x cols of the kept matrix, hardware.tile_slices order): the
    conductances as (T, rows, P*S*cols) float64, so one batched GEMM gives
    every crossbar's bitline currents (p, s, col order), and with an ADC each
    crossbar's [lo, hi] and step spread over its columns. Built once per
    programming (stages.montecarlo reads them for every batch of inputs).
    """

    def __init__(self, G: torch.Tensor, spec: MappingSpec, alpha: float, *, adc_bits: int | None = None,
                 adc_ranges: torch.Tensor | None = None):
        spec = _spec(spec)
        G = _conductances(G, spec, dims=5)
        self.spec, self.alpha, self.kept_out, self.kept_in = spec, _number("alpha", alpha), G.shape[-2], G.shape[-1]
        self.trials = G.shape[0]
        parts = tile_slices(self.kept_in, self.kept_out, spec.xbar_rows, spec.xbar_cols)
        g64 = G.to(torch.float64)
        self.weights = _digit_weights(spec, G.device) / spec.g_step_us         # (P*S,) level per uS
        self.tiles = []
        for rows, cols in parts:   # (T, P, S, cols, rows) -> (T, rows, P*S*cols)
            self.tiles.append((rows, cols, g64[..., cols, rows].flatten(1, 3).transpose(1, 2).contiguous()))
        self.adc = None
        if adc_bits is not None:
            adc_bits = _bits("adc_bits", adc_bits)
            ranges = _adc_ranges(adc_ranges, len(parts), spec, G.device)      # (tiles, P, S, 2)
            self.adc = []
            for t, (_, cols, _) in enumerate(self.tiles):
                n = cols.stop - cols.start
                lo, hi = ranges[t, :, :, 0].flatten(), ranges[t, :, :, 1].flatten()   # (P*S,)
                step = (hi - lo) / (2 ** adc_bits - 1)
                inverse = torch.where(step > 0, 1 / torch.where(step > 0, step, 1.0), 0.0)
                # each crossbar's bounds over its columns (P*S*cols,); a column's level is
                # sum_ps w_ps (lo_ps + code_ps * step_ps), its ADC codes weighted
                self.adc.append((lo.repeat_interleave(n), hi.repeat_interleave(n), inverse.repeat_interleave(n),
                                 self.weights * step, float((self.weights * lo).sum())))

    def read(self, x: torch.Tensor, *, dac_bits: int | None = None,
             x_range: tuple[float, float] | None = None) -> torch.Tensor:
        """(T, B, kept_in) inputs -> (T, B, kept_out) outputs, through DACs, crossbars and ADCs."""
        x = _float_tensor("x", x, 3)
        if x.shape[0] != self.trials or x.shape[-1] != self.kept_in:
            raise StageError(f"x: got shape {tuple(x.shape)}; allowed: ({self.trials}, B, {self.kept_in}), "
                             "one batch of inputs per trial, kept_in of G")
        x64 = x.to(torch.float64)
        if dac_bits is not None:
            x64 = uniform_quantize(x64, *_x_range(x_range), _bits("dac_bits", dac_bits))
        planes = len(self.weights)
        y = x64.new_zeros(*x.shape[:-1], self.kept_out)                        # (T, B, kept_out)
        for t, (rows, cols, g) in enumerate(self.tiles):
            x_tile = x64[..., rows]
            currents = torch.bmm(x_tile, g)                                    # (T, B, P*S*cols)
            if self.adc is None:
                part = currents.unflatten(-1, (planes, -1)).transpose(-1, -2) @ self.weights
            else:
                lo, hi, inverse, weights, offset = self.adc[t]
                codes = currents.clamp_(lo, hi).sub_(lo).mul_(inverse).round_()   # each ADC's output code
                part = codes.unflatten(-1, (planes, -1)).transpose(-1, -2) @ weights + offset
            # minus the g_min baseline of every device: sum(x) * g_min * sum of the digit weights (0 for pairs)
            baseline = x_tile.sum(-1, keepdim=True) * (self.spec.g_min_us * float(self.weights.sum()))
            y[..., cols] += part - baseline
        return (self.alpha * y).to(x.dtype)


def crossbar_matmul(x: torch.Tensor, G: torch.Tensor, spec: MappingSpec, alpha: float, *,
                    adc_bits: int | None = None, dac_bits: int | None = None,
                    x_range: tuple[float, float] | None = None,
                    adc_ranges: torch.Tensor | None = None) -> torch.Tensor:
    """One compacted layer's output computed tile by tile through DACs, crossbars and ADCs.

    x: (B, kept_in) float inputs. G: (polarity, slices, kept_out, kept_in)
    microsiemens, taken as given (noisy devices stay noisy). Several trials at
    once: x (T, B, kept_in) and G (T, polarity, slices, kept_out, kept_in),
    trial t's inputs through trial t's devices, giving (T, B, kept_out).
    alpha: weight scale (weight = alpha * level). dac_bits: input resolution
    over x_range = (lo, hi), inputs clipped to it (x_range is needed with
    dac_bits, ignored without). adc_bits: resolution of every crossbar's ADC
    over its own [lo, hi] from adc_ranges (tiles, polarity, slices, 2), tiles
    in hardware.tile_slices order (needed with adc_bits, ignored without; see
    calibrate_adc_ranges). Returns x's dtype and device; with neither
    converter it equals x @ (alpha * levels)^T up to float rounding.
    """
    spec = _spec(spec)
    batched = isinstance(G, torch.Tensor) and G.dim() == 5
    x = _float_tensor("x", x, 3 if batched else 2)
    G = _conductances(G, spec, dims=5 if batched else 4)
    if x.shape[-1] != G.shape[-1] or (batched and x.shape[0] != G.shape[0]):
        allowed = f"({G.shape[0]}, B, {G.shape[-1]})" if batched else f"(B, {G.shape[-1]})"
        raise StageError(f"x: got shape {tuple(x.shape)}; allowed: {allowed}, the kept_in of G")
    crossbars = Crossbars(G if batched else G[None], spec, alpha, adc_bits=adc_bits, adc_ranges=adc_ranges)
    y = crossbars.read(x.to(G.device) if batched else x[None].to(G.device), dac_bits=dac_bits, x_range=x_range)
    return (y if batched else y[0]).to(x.device)


def calibrate_adc_ranges(G: torch.Tensor, spec: MappingSpec, x_min: float, x_max: float) -> torch.Tensor:
    """Every crossbar's ADC range, calibrated per tile from the mapped conductances.

    The range [lo, hi] of a (tile, polarity, slice) crossbar is the smallest
    interval holding every bitline current the tile can produce for inputs
    each anywhere in [x_min, x_max]: a column's current sum_i x_i g_i runs over
    [sum_i min(x_min g_i, x_max g_i), sum_i max(x_min g_i, x_max g_i)], and the
    crossbar's range spans its columns' lowest low and highest high. For inputs
    in [0, x_max] this is [0, x_max * largest column conductance]; a negative
    x_min (the first layer of a normalized network) gives lo = x_min * largest
    column conductance < 0. The range includes the g_min_us baseline current.
    G: (polarity, slices, kept_out, kept_in) microsiemens. Returns float64
    (tiles, polarity, slices, 2), [..., 0] = lo, [..., 1] = hi, in input units
    times uS, tiles in hardware.tile_slices order.
    """
    spec = _spec(spec)
    G = _conductances(G, spec)
    x_min, x_max = _number("x_min", x_min), _number("x_max", x_max)
    if x_min > x_max:
        raise StageError(f"x_min: got {x_min} > x_max = {x_max}; allowed: x_min <= x_max")
    g64 = G.to(torch.float64)
    ranges = []
    for rows, cols in tile_slices(G.shape[3], G.shape[2], spec.xbar_rows, spec.xbar_cols):
        g = g64[:, :, cols, rows]                                            # (P, S, cols, rows)
        low = torch.minimum(x_min * g, x_max * g).sum(dim=3)                 # (P, S, cols)
        high = torch.maximum(x_min * g, x_max * g).sum(dim=3)
        ranges.append(torch.stack([low.amin(dim=2), high.amax(dim=2)], dim=-1))  # (P, S, 2)
    if not ranges:
        return g64.new_zeros(0, spec.polarity, spec.slices, 2)
    return torch.stack(ranges)


# ----------------------------------------------------------------------------- convolutions


def _conv_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of a Conv2d, in F.pad's order."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":   # as torch: the odd pixel goes to the right / bottom
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        (top, bottom), (left, right) = [(t // 2, t - t // 2) for t in totals]
        return (left, right, top, bottom)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def unfold_conv_input(x: torch.Tensor, conv: nn.Conv2d, in_channels: int | None = None
                      ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """im2col of a Conv2d's input, so the conv is a GEMM with W = weight.reshape(F, C*kh*kw).

    x: (B, C, H, W). Returns x2d (B*L, C*kh*kw), L = H' * W' output positions
    (rows ordered batch-major, then H', then W'; columns in (c, kh, kw) order,
    the `in` axis of the GEMM: take x2d[:, keep_in] for a compacted layer), and
    fold(y2d) taking (B*L, n) to the conv output layout (B, n, H', W'). Padding
    modes are applied as the conv applies them; no bias is added. in_channels:
    the channels x holds when they are a subset of the conv's (Monte Carlo's
    compact activations), C = in_channels then.
    """
    if not isinstance(conv, nn.Conv2d):
        raise StageError(f"conv: got {type(conv).__name__}; allowed: a torch.nn.Conv2d")
    if conv.groups != 1:
        raise StageError(f"conv.groups: got {conv.groups}; allowed: 1 (a grouped conv is not one GEMM)")
    x = _float_tensor("x", x, 4)
    channels = conv.in_channels if in_channels is None else in_channels
    if x.shape[1] != channels:
        raise StageError(f"x: got shape {tuple(x.shape)}; allowed: (B, {channels}, H, W)")
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x, _conv_pads(conv), mode=mode)
    cols = F.unfold(padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # (B, C*kh*kw, L)
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    batch = x.shape[0]

    def fold(y2d: torch.Tensor) -> torch.Tensor:
        """(B*L, n) GEMM output -> (B, n, H', W')."""
        if not isinstance(y2d, torch.Tensor) or y2d.dim() != 2 or y2d.shape[0] != batch * out_h * out_w:
            shape = tuple(y2d.shape) if isinstance(y2d, torch.Tensor) else type(y2d).__name__
            raise StageError(f"y2d: got {shape}; allowed: ({batch * out_h * out_w}, n), "
                             f"B*H'*W' = {batch}*{out_h}*{out_w}")
        return y2d.reshape(batch, out_h, out_w, -1).permute(0, 3, 1, 2)

    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), fold

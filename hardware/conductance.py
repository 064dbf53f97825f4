"""Weight levels <-> device conductances: differential pairs, bit slices, most significant slice first.

A level n becomes magnitudes m+ = max(n, 0) on G+ and m- = max(-n, 0) on G-;
each magnitude is cut into `slices` base-2**cell_bits digits d_s (s = 0 the
most significant), m = sum_s d_s * 2**(cell_bits * (slices-1-s)), and digit
d_s is programmed as G = g_min_us + d_s * g_step_us.
"""

import torch

from hardware import checks
from hardware.errors import HardwareError
from hardware.spec import MappingSpec


def _spec(spec) -> MappingSpec:
    if not isinstance(spec, MappingSpec):
        raise HardwareError(f"spec: got {type(spec).__name__}; allowed: a MappingSpec")
    return spec


def _shifts(spec: MappingSpec) -> list[int]:
    """Bit position of each slice's digit, most significant first."""
    return [spec.cell_bits * (spec.slices - 1 - s) for s in range(spec.slices)]


def levels_to_conductance(levels: torch.Tensor, spec: MappingSpec) -> torch.Tensor:
    """Conductances of the devices that store `levels`.

    levels: (out, in) integers with |n| <= spec.max_level (an integer dtype, or
    a float dtype holding whole numbers). Returns float32 microsiemens of shape
    (polarity, slices, out, in); G[0] stores max(n, 0), G[1] stores max(-n, 0).
    """
    spec = _spec(spec)
    levels = checks.tensor("levels", levels, dims=(2,))
    if levels.dtype == torch.bool or levels.is_complex():
        raise HardwareError(f"levels: got dtype {levels.dtype}; allowed: an integer tensor")
    if levels.is_floating_point():
        fractional = levels[levels != levels.round()]  # NaN lands here too
        if fractional.numel():
            raise HardwareError(f"levels: got non-integer value {fractional[0].item()}; allowed: whole numbers")
    too_big = levels[levels.abs() > spec.max_level]
    if too_big.numel():
        raise HardwareError(f"levels: got {too_big[0].item()} at weight_bits={spec.weight_bits}; "
                            f"allowed: |n| <= {spec.max_level}")
    n = levels.to(torch.int64)
    magnitudes = torch.stack([n.clamp(min=0), (-n).clamp(min=0)])        # (P, out, in)
    shifts = torch.tensor(_shifts(spec), dtype=torch.int64, device=n.device)[:, None, None]  # (S, 1, 1)
    mask = (1 << min(spec.cell_bits, spec.magnitude_bits)) - 1          # no digit exceeds either width
    digits = ((magnitudes[:, None] >> shifts) & mask).to(torch.float64)  # (P, S, out, in)
    return (spec.g_min_us + digits * spec.g_step_us).to(torch.float32)


def conductance_to_levels(G: torch.Tensor, spec: MappingSpec) -> torch.Tensor:
    """Levels read back from conductances, real-valued: n+ - n-.

    G: microsiemens, (polarity, slices, out, in) or (B, polarity, slices, out, in).
    Returns (out, in) or (B, out, in) in G's float dtype. Each digit is
    (G - g_min_us) / g_step_us, not rounded, so noisy devices give fractional
    levels; only a digit within the float rounding of G (a few ulps of g_max_us)
    of a whole number is taken as that number, so noise-free conductances give
    their levels back exactly.
    """
    spec = _spec(spec)
    G = checks.tensor("G", G, floating=True, dims=(4, 5))
    expected = (spec.polarity, spec.slices)
    if tuple(G.shape[-4:-2]) != expected:
        raise HardwareError(f"G: got shape {tuple(G.shape)}; allowed: ([B,] {expected[0]}, {expected[1]}, out, in), "
                            f"polarity and slices of weight_bits={spec.weight_bits}, cell_bits={spec.cell_bits}")
    digits = (G.to(torch.float64) - spec.g_min_us) / spec.g_step_us    # (..., P, S, out, in)
    tolerance = 4 * torch.finfo(G.dtype).eps * spec.g_max_us / spec.g_step_us
    whole = digits.round()
    digits = torch.where((digits - whole).abs() <= tolerance, whole, digits)
    weights = torch.tensor([2.0 ** shift for shift in _shifts(spec)], dtype=torch.float64, device=G.device)
    magnitudes = torch.einsum("...psoi,s->...poi", digits, weights)     # (..., P, out, in)
    return (magnitudes[..., 0, :, :] - magnitudes[..., 1, :, :]).to(G.dtype)

"""Weight levels <-> device conductances: sign schemes, bit slices (most significant slice first).

Two sign schemes (MappingSpec.sign_scheme):

- "differential": a level n becomes magnitudes m+ = max(n, 0) on G+ and
  m- = max(-n, 0) on G-; read back as m+ - m-. Polarity 2.
- "offset": n becomes u = n + max_level >= 0 on one array (polarity 1); each
  crossbar has a reference column holding r = max_level on every row, and the
  level is read back as u - r.

Each stored value m (m+, m-, u or r) is cut into `slices` base-2**cell_bits
digits d_s (s = 0 the most significant), m = sum_s d_s * 2**(cell_bits *
(slices-1-s)), and digit d_s is programmed as G = g_min_us + d_s * g_step_us,
so every ideal conductance lies in [g_min_us, g_max_us].
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


def _to_conductance(values: torch.Tensor, spec: MappingSpec) -> torch.Tensor:
    """Non-negative int64 values (...) -> float32 microsiemens (slices, ...), most significant digit first."""
    shifts = torch.tensor(_shifts(spec), dtype=torch.int64, device=values.device)
    shifts = shifts.reshape(-1, *([1] * values.dim()))                  # (S, 1, ..., 1)
    mask = (1 << min(spec.cell_bits, spec.magnitude_bits)) - 1          # no digit exceeds either width
    digits = ((values[None] >> shifts) & mask).to(torch.float64)         # (S, ...)
    return (spec.g_min_us + digits * spec.g_step_us).to(torch.float32)


def _recombine(G: torch.Tensor, spec: MappingSpec) -> torch.Tensor:
    """Stored values read back from (..., slices, out, in) conductances: (..., out, in) in G's dtype.

    Each digit is (G - g_min_us) / g_step_us, not rounded; only a digit within
    the float rounding of G (a few ulps of g_max_us) of a whole number is taken
    as that number, so noise-free conductances give their values back exactly.
    The arithmetic runs in G's dtype: computing a digit rounds it by at most
    about 2 ulps of g_max_us / g_step_us, inside the snapping tolerance, and
    whole digits recombine exactly.
    """
    digits = G.clone().sub_(spec.g_min_us).div_(spec.g_step_us)       # (..., S, out, in)
    tolerance = 4 * torch.finfo(G.dtype).eps * spec.g_max_us / spec.g_step_us
    whole = digits.round()
    off = digits.sub_(whole)                 # exact (Sterbenz): whole + off gives digits back bit for bit
    far = off.abs().sub_(tolerance).relu_().sign_()                    # 1 where |off| > tolerance, else 0
    digits = whole.add_(off.mul_(far))
    values = digits.select(-3, 0) * 2.0 ** _shifts(spec)[0]          # shift and add, most significant first
    for s, shift in enumerate(_shifts(spec)[1:], start=1):
        values.add_(digits.select(-3, s), alpha=2.0 ** shift)
    return values


def slice_weights(spec: MappingSpec, device=None) -> torch.Tensor:
    """(slices,) float64: the place value 2**shift of each slice's digit, most significant first."""
    return torch.tensor([2.0 ** shift for shift in _shifts(spec)], dtype=torch.float64, device=device)


def _conductances(G, spec: MappingSpec) -> torch.Tensor:
    """G checked as ([B,] polarity, slices, out, in) floating conductances of `spec`."""
    G = checks.tensor("G", G, floating=True, dims=(4, 5))
    expected = (spec.polarity, spec.slices)
    if tuple(G.shape[-4:-2]) != expected:
        raise HardwareError(f"G: got shape {tuple(G.shape)}; allowed: ([B,] {expected[0]}, {expected[1]}, out, in), "
                            f"polarity and slices of weight_bits={spec.weight_bits}, cell_bits={spec.cell_bits}, "
                            f"sign_scheme={spec.sign_scheme!r}")
    return G


def _reference(reference, spec: MappingSpec, G: torch.Tensor) -> torch.Tensor:
    """The offset reference devices for G, checked: (..., 1, slices, 1 or out, in); ideal ones when None."""
    n_out, n_in = G.shape[-2:]
    if reference is None:
        return reference_conductance(spec, n_in).to(device=G.device, dtype=G.dtype)
    reference = checks.tensor("reference", reference, floating=True)
    shape = tuple(reference.shape)
    if (reference.dim() < 4 or shape[-4:-2] != (1, spec.slices) or shape[-2] not in (1, n_out)
            or shape[-1] != n_in):
        raise HardwareError(f"reference: got shape {shape}; allowed: (..., 1, {spec.slices}, 1 or {n_out}, {n_in}), "
                            "the slices of the spec and the out / in sizes of G")
    try:
        torch.broadcast_shapes(shape[:-4], tuple(G.shape[:-4]))
    except RuntimeError:
        raise HardwareError(f"reference: got leading dims {shape[:-4]}; allowed: dims that broadcast with "
                            f"G's {tuple(G.shape[:-4])}") from None
    return reference


def levels_to_conductance(levels: torch.Tensor, spec: MappingSpec) -> torch.Tensor:
    """Conductances of the devices that store `levels`.

    levels: (out, in) integers with |n| <= spec.max_level (an integer dtype, or
    a float dtype holding whole numbers). Returns float32 microsiemens of shape
    (polarity, slices, out, in), inside [g_min_us, g_max_us]. Differential:
    G[0] stores max(n, 0), G[1] stores max(-n, 0). Offset: G[0] stores
    n + max_level (the reference column is `reference_conductance`).
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
    if spec.sign_scheme == "offset":
        stored = (n + spec.max_level)[None]                                # (1, out, in)
    else:
        stored = torch.stack([n.clamp(min=0), (-n).clamp(min=0)])          # (2, out, in)
    return _to_conductance(stored, spec).transpose(0, 1).contiguous()     # (P, S, out, in)


def reference_conductance(spec: MappingSpec, n_rows: int) -> torch.Tensor:
    """The reference column of an "offset" crossbar: max_level on each of `n_rows` wordlines.

    Returns float32 microsiemens of shape (1, slices, 1, n_rows): polarity 1,
    one reference device per slice and row, most significant slice first,
    inside [g_min_us, g_max_us]. n_rows is usually the layer's kept `in` size.
    Each crossbar has its own reference column; give one (1, slices, out, in)
    tensor to conductance_to_levels (each output tile's devices repeated over
    its outputs) to model them apart. Refused for the differential scheme,
    which has no reference column.
    """
    spec = _spec(spec)
    if spec.sign_scheme != "offset":
        raise HardwareError(f"spec.sign_scheme: got {spec.sign_scheme!r}; allowed: 'offset' "
                            "(only offset crossbars have a reference column)")
    n_rows = checks.int_at_least("n_rows", n_rows, 0)
    stored = torch.full((1, 1, n_rows), spec.max_level, dtype=torch.int64)
    return _to_conductance(stored, spec).transpose(0, 1).contiguous()     # (1, S, 1, n_rows)


def conductance_to_levels(G: torch.Tensor, spec: MappingSpec, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Levels read back from conductances, real-valued.

    G: microsiemens, (polarity, slices, out, in) or (B, polarity, slices, out, in).
    Returns (out, in) or (B, out, in) in G's float dtype. Differential: n+ - n-.
    Offset: u_hat - r_hat, with r_hat recombined from `reference`, the
    reference-column devices, shape (..., 1, slices, 1 or out, in) with leading
    dims that broadcast with G's (so noise on them reaches every weight of
    their row), or the ideal max_level when None. Differential ignores
    `reference`. Each digit is (G - g_min_us) / g_step_us, not rounded, so
    noisy devices give fractional levels; only a digit within the float
    rounding of G (a few ulps of g_max_us) of a whole number is taken as that
    number, so noise-free conductances give their levels back exactly.
    """
    spec = _spec(spec)
    G = _conductances(G, spec)
    stored = _recombine(G, spec)                                        # (..., P, out, in)
    if spec.sign_scheme == "offset":
        offset = _recombine(_reference(reference, spec, G), spec)[..., 0, :, :]  # (..., 1 or out, in)
        return (stored[..., 0, :, :] - offset).to(G.dtype)
    return (stored[..., 0, :, :] - stored[..., 1, :, :]).to(G.dtype)


def read_noise_weight_variance(G: torch.Tensor, spec: MappingSpec, alpha: float, sigma: float,
                               reference: torch.Tensor | None = None) -> torch.Tensor:
    """Variance of each weight read back, alpha * level, when every device is read once with noise.

    G: microsiemens, ([B,] polarity, slices, out, in). alpha: the layer's scale
    (weight units per level), >= 0. sigma: relative read noise, >= 0, each
    device read as G * (1 + N(0, sigma)) independently (`read_noise`).
    reference: the offset reference devices as in conductance_to_levels (ideal
    when None); ignored by the differential scheme. Returns ([B,] out, in) in
    G's float dtype, in squared weight units.

    The read-back level is linear in the devices: n = sum_p c_p sum_s
    2**k_s (G_ps - g_min_us) / g_step_us - [offset] sum_s 2**k_s (R_s -
    g_min_us) / g_step_us, with c = (+1, -1) for the pair, k_s =
    cell_bits*(slices-1-s). Independent noise of std sigma*G per device gives

        Var(alpha * n) = alpha**2 * sigma**2 / g_step_us**2
                         * (sum_p sum_s 4**k_s G_ps**2 + [offset] sum_s 4**k_s R_s**2).

    Approximation: the reference column is shared by every output of its
    crossbar, so the weights (o, i) and (o', i) of one crossbar have
    covariance alpha**2 * Var(r_i). The per-weight variance, and the variance
    of each output sum_i x_i w_oi, are exact; sampling weights independently
    from these variances drops only that correlation between outputs. The
    clip of `read_noise` at 0 is ignored (it matters only for sigma near 1/3
    or larger).
    """
    spec = _spec(spec)
    G = _conductances(G, spec)
    alpha = checks.finite_float("alpha", alpha, 0.0)
    sigma = checks.finite_float("sigma", sigma, 0.0)
    weights = slice_weights(spec, G.device) ** 2                       # (S,) 4**k_s
    power = torch.einsum("...psoi,s->...oi", G.to(torch.float64) ** 2, weights)  # (..., out, in)
    if spec.sign_scheme == "offset":
        ref = _reference(reference, spec, G).to(torch.float64) ** 2
        power = power + torch.einsum("...psoi,s->...oi", ref, weights)
    return (alpha ** 2 * sigma ** 2 / spec.g_step_us ** 2 * power).to(G.dtype)

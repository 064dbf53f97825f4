"""Levels <-> conductances: differential pairs and offset arrays, bit slices (most significant first),
exact round trip, the offset reference column, and the weight variance read noise gives."""

import math

import pytest
import torch

from hardware import (HardwareError, MappingSpec, conductance_to_levels, levels_to_conductance, read_noise,
                      read_noise_weight_variance, reference_conductance)

SCHEMES = ("differential", "offset")


def all_levels(spec: MappingSpec) -> torch.Tensor:
    """Every level -L..L once, as a (1, 2L+1) matrix."""
    return torch.arange(-spec.max_level, spec.max_level + 1, dtype=torch.int64)[None, :]


@pytest.mark.parametrize("cell_bits, g_range", [(1, (1.0, 100.0)), (2, (1.0, 100.0)), (3, (1.0, 100.0)),
                                               (4, (1.0, 100.0)), (2, (0.37, 41.3)), (3, (0.37, 41.3))])
def test_round_trip_is_exact_for_every_level(cell_bits, g_range):
    for weight_bits in range(2, 17):
        spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, g_min_us=g_range[0], g_max_us=g_range[1])
        levels = all_levels(spec)
        G = levels_to_conductance(levels, spec)
        assert G.shape == (2, spec.slices, 1, levels.shape[1]) and G.dtype == torch.float32
        back = conductance_to_levels(G, spec)
        assert back.shape == levels.shape and back.is_floating_point()
        assert torch.equal(back, levels.to(back.dtype)), (weight_bits, cell_bits)


@pytest.mark.parametrize("weight_bits, cell_bits", [(2, 1), (8, 2), (16, 2), (9, 3), (16, 4)])
def test_conductances_are_programmable_states(weight_bits, cell_bits):
    spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, g_min_us=2.0, g_max_us=30.0)
    G = levels_to_conductance(all_levels(spec), spec).double()
    assert G.min() >= spec.g_min_us and G.max() <= spec.g_max_us * (1 + 1e-6)
    digits = (G - spec.g_min_us) / spec.g_step_us
    assert torch.allclose(digits, digits.round(), atol=1e-4)
    assert digits.round().max() == spec.cell_levels - 1  # the largest level reaches the top state


def test_digits_by_hand_most_significant_first():
    spec = MappingSpec(weight_bits=5, cell_bits=2, g_min_us=1.0, g_max_us=4.0)  # step 1 uS, 2 slices
    G = levels_to_conductance(torch.tensor([[13, -6, 0]]), spec)  # 13 = 0b11_01, 6 = 0b01_10
    digits = (G - 1.0).round().to(torch.int64)[:, :, 0, :]       # (polarity, slices, in)
    assert digits[0].tolist() == [[3, 0, 0], [1, 0, 0]]           # G+: 13 -> (3, 1); others 0
    assert digits[1].tolist() == [[0, 1, 0], [0, 2, 0]]           # G-: 6 -> (1, 2)


def test_uneven_top_slice():
    spec = MappingSpec(weight_bits=4, cell_bits=2, g_min_us=1.0, g_max_us=4.0)  # 3 magnitude bits, 2 slices
    G = levels_to_conductance(torch.tensor([[7, -5]]), spec)
    assert (G - 1.0).round()[0, :, 0, 0].tolist() == [1, 3]       # 7 = 0b1_11
    assert (G - 1.0).round()[1, :, 0, 1].tolist() == [1, 1]       # 5 = 0b1_01


def test_float_levels_holding_whole_numbers_are_accepted():
    spec = MappingSpec(weight_bits=4)
    ints = torch.tensor([[3, -7], [0, 5]], dtype=torch.int32)
    assert torch.equal(levels_to_conductance(ints.float(), spec), levels_to_conductance(ints, spec))


def test_batched_read_back():
    spec = MappingSpec(weight_bits=8, cell_bits=2)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-127, 128, (3, 5), generator=g) for _ in range(2))
    G = torch.stack([levels_to_conductance(a, spec), levels_to_conductance(b, spec)])
    back = conductance_to_levels(G, spec)
    assert back.shape == (2, 3, 5)
    assert torch.equal(back, torch.stack([a, b]).float())


def test_noisy_conductance_gives_fractional_levels():
    spec = MappingSpec(weight_bits=8, cell_bits=2, g_min_us=1.0, g_max_us=100.0)  # step 33 uS, 4 slices
    G = levels_to_conductance(torch.tensor([[10]]), spec)
    G[0, 1, 0, 0] += 0.25 * spec.g_step_us    # slice 1 of G+ weighs 2**4
    G[1, 3, 0, 0] += 0.5 * spec.g_step_us     # slice 3 of G- weighs 1
    back = conductance_to_levels(G, spec)
    assert back.item() == pytest.approx(10 + 0.25 * 16 - 0.5, abs=1e-4)


@pytest.mark.parametrize("levels, text", [
    (torch.tensor([[0, 128]]), "levels: got 128 .*allowed: \\|n\\| <= 127"),
    (torch.tensor([[-200, 3]]), "levels: got -200"),
    (torch.tensor([[0.5]]), "levels: got non-integer value 0.5"),
    (torch.tensor([[True]]), "levels: got dtype torch.bool"),
    (torch.tensor([1, 2]), r"levels: got shape \(2,\)"),
])
def test_bad_levels_are_refused(levels, text):
    with pytest.raises(HardwareError, match=text):
        levels_to_conductance(levels, MappingSpec(weight_bits=8))


def test_conductances_of_another_spec_are_refused():
    G = levels_to_conductance(torch.tensor([[3]]), MappingSpec(weight_bits=8))   # 4 slices
    with pytest.raises(HardwareError, match=r"G: got shape \(2, 4, 1, 1\).*\(\[B,\] 2, 8, out, in\)"):
        conductance_to_levels(G, MappingSpec(weight_bits=16))
    with pytest.raises(HardwareError, match="G: got dtype torch.int64"):
        conductance_to_levels(G.long(), MappingSpec(weight_bits=8))


@pytest.mark.parametrize("cell_bits", [1, 2, 3, 4])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_is_exact_for_every_level_both_schemes(scheme, cell_bits):
    for weight_bits in range(2, 13):
        spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, sign_scheme=scheme,
                           g_min_us=0.37, g_max_us=41.3)
        levels = all_levels(spec)
        G = levels_to_conductance(levels, spec)
        assert G.shape == (spec.polarity, spec.slices, 1, levels.shape[1]) and G.dtype == torch.float32
        assert G.min() >= spec.g_min_us and G.max() <= spec.g_max_us
        assert torch.equal(conductance_to_levels(G, spec), levels.float()), (weight_bits, cell_bits)
        if scheme == "offset":   # the ideal reference devices, given explicitly, read back the same
            ref = reference_conductance(spec, levels.shape[1])
            assert ref.min() >= spec.g_min_us and ref.max() <= spec.g_max_us
            assert torch.equal(conductance_to_levels(G, spec, reference=ref), levels.float())


def test_offset_digits_by_hand_most_significant_first():
    spec = MappingSpec(weight_bits=4, cell_bits=2, sign_scheme="offset", g_min_us=1.0, g_max_us=4.0)  # step 1 uS
    G = levels_to_conductance(torch.tensor([[-7, 0, 7, -3]]), spec)   # u = n + 7: 0, 7, 14, 4
    assert G.shape == (1, 2, 1, 4)
    assert (G - 1.0).round()[0, :, 0, :].T.tolist() == [[0, 0], [1, 3], [3, 2], [1, 0]]
    ref = reference_conductance(spec, 3)                                 # max_level 7 = 0b01_11 on every row
    assert ref.shape == (1, 2, 1, 3) and (ref - 1.0).round()[0, :, 0, :].T.tolist() == [[1, 3]] * 3


@pytest.mark.parametrize("weight_bits, cell_bits", [(2, 1), (4, 2), (8, 2), (8, 3), (12, 4)])
def test_offset_and_differential_give_the_same_ideal_weights(weight_bits, cell_bits):
    g = torch.Generator().manual_seed(weight_bits * 10 + cell_bits)
    top = 2 ** (weight_bits - 1) - 1
    levels = torch.randint(-top, top + 1, (4, 9, 11), generator=g)     # a batch of 4 layers' levels
    alpha = 0.0173
    weights = {}
    for scheme in SCHEMES:
        spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, sign_scheme=scheme)
        G = torch.stack([levels_to_conductance(n, spec) for n in levels])   # (B, P, S, out, in)
        weights[scheme] = alpha * conductance_to_levels(G, spec)
    assert torch.equal(weights["differential"], weights["offset"])
    assert torch.equal(weights["offset"], alpha * levels.float())


def test_reference_devices_shift_every_weight_of_their_row():
    spec = MappingSpec(weight_bits=8, cell_bits=2, sign_scheme="offset")   # 4 slices, slice 1 weighs 2**4
    levels = torch.tensor([[5, -3, 0], [100, -127, 127]])
    G = levels_to_conductance(levels, spec)
    ref = reference_conductance(spec, 3)
    ref[0, 1, 0, 2] += 0.5 * spec.g_step_us                                # row 2's reference reads 8 too high
    back = conductance_to_levels(G, spec, reference=ref)
    assert torch.allclose(back[:, :2], levels[:, :2].float())
    assert torch.allclose(back[:, 2], levels[:, 2].float() - 8, atol=1e-4)  # shared by both outputs
    per_output = reference_conductance(spec, 3).expand(1, 4, 2, 3).clone()  # one reference per output tile
    per_output[0, 1, 0, 2] += 0.5 * spec.g_step_us
    back = conductance_to_levels(G, spec, reference=per_output)
    assert torch.allclose(back[0, 2], torch.tensor(-8.0), atol=1e-4) and back[1, 2] == 127


def test_batched_offset_read_back_with_a_reference_per_trial():
    spec = MappingSpec(weight_bits=6, cell_bits=2, sign_scheme="offset")
    levels = torch.tensor([[31, -31, 2]])
    G = levels_to_conductance(levels, spec).expand(3, 1, 3, 1, 3)
    ref = reference_conductance(spec, 3).expand(3, 1, 3, 1, 3).clone()
    ref[1, 0, 2] += spec.g_step_us                                        # trial 1: least significant digit + 1
    back = conductance_to_levels(G, spec, reference=ref)
    assert back.shape == (3, 1, 3)
    assert torch.allclose(back[1], levels.float() - 1, atol=1e-4)
    assert torch.equal(back[[0, 2]], levels.float().expand(2, 1, 3))


def test_differential_ignores_a_reference():
    spec = MappingSpec(weight_bits=8)
    G = levels_to_conductance(torch.tensor([[3, -9]]), spec)
    assert torch.equal(conductance_to_levels(G, spec, reference=torch.zeros(1, 4, 1, 2)),
                       conductance_to_levels(G, spec))


def test_reference_conductance_edges():
    spec = MappingSpec(weight_bits=8, sign_scheme="offset")
    assert reference_conductance(spec, 0).shape == (1, 4, 1, 0)
    with pytest.raises(HardwareError, match="spec.sign_scheme: got 'differential'; allowed: 'offset'"):
        reference_conductance(MappingSpec(), 4)
    with pytest.raises(HardwareError, match="n_rows: got -1"):
        reference_conductance(spec, -1)


@pytest.mark.parametrize("reference, text", [
    (torch.zeros(1, 4, 1, 5), r"reference: got shape \(1, 4, 1, 5\); allowed: \(..., 1, 4, 1 or 2, 3\)"),
    (torch.zeros(2, 4, 1, 3), r"reference: got shape \(2, 4, 1, 3\)"),
    (torch.zeros(1, 3, 1, 3), r"reference: got shape \(1, 3, 1, 3\)"),
    (torch.zeros(1, 4, 3), r"reference: got shape \(1, 4, 3\)"),
    (torch.zeros(1, 4, 1, 3, dtype=torch.int64), "reference: got dtype torch.int64"),
    (torch.zeros(5, 1, 4, 1, 3), r"reference: got leading dims \(5,\).*\(2,\)"),
])
def test_bad_references_are_refused(reference, text):
    spec = MappingSpec(weight_bits=8, sign_scheme="offset")
    G = levels_to_conductance(torch.zeros(2, 3), spec).expand(2, 1, 4, 2, 3)
    with pytest.raises(HardwareError, match=text):
        conductance_to_levels(G, spec, reference=reference)


def test_conductances_of_the_other_scheme_are_refused():
    G = levels_to_conductance(torch.tensor([[3]]), MappingSpec(weight_bits=8, sign_scheme="offset"))
    with pytest.raises(HardwareError, match=r"G: got shape \(1, 4, 1, 1\).*\(\[B,\] 2, 4, out, in\)"):
        conductance_to_levels(G, MappingSpec(weight_bits=8))


def test_read_noise_weight_variance_by_hand():
    spec = MappingSpec(weight_bits=2, cell_bits=1, g_min_us=1.0, g_max_us=3.0)   # step 2 uS, one slice
    G = levels_to_conductance(torch.tensor([[1, 0]]), spec)                       # (G+, G-) = (3, 1), (1, 1)
    var = read_noise_weight_variance(G, spec, alpha=0.5, sigma=0.1)
    assert var.shape == (1, 2)
    assert torch.allclose(var, 0.25 * 0.01 / 4 * torch.tensor([[9.0 + 1.0, 1.0 + 1.0]]))
    offset = MappingSpec(weight_bits=2, cell_bits=1, sign_scheme="offset", g_min_us=1.0, g_max_us=3.0)
    G = levels_to_conductance(torch.tensor([[1]]), offset)                      # u = 2 = 0b1_0: (3, 1); ref 1: (1, 3)
    var = read_noise_weight_variance(G, offset, alpha=0.5, sigma=0.1)
    assert torch.allclose(var, 0.25 * 0.01 / 4 * torch.tensor([[4 * 9.0 + 1.0 + 4 * 1.0 + 9.0]]))
    assert torch.equal(read_noise_weight_variance(G, offset, 0.5, 0.0), torch.zeros(1, 1))
    explicit = read_noise_weight_variance(G, offset, 0.5, 0.1, reference=reference_conductance(offset, 1))
    assert torch.equal(explicit, var)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_read_noise_weight_variance_matches_sampling(scheme):
    spec = MappingSpec(weight_bits=6, cell_bits=2, sign_scheme=scheme, g_min_us=2.0, g_max_us=50.0)
    g = torch.Generator().manual_seed(11)
    levels = torch.randint(-spec.max_level, spec.max_level + 1, (4, 6), generator=g)
    alpha, sigma, draws = 0.03, 0.05, 20000
    G = levels_to_conductance(levels, spec).double()
    ref = reference_conductance(spec, 6).double() if scheme == "offset" else None
    expected = read_noise_weight_variance(G, spec, alpha, sigma, reference=ref)   # (out, in)
    noisy_G = read_noise(G.expand(draws, *G.shape), sigma, g)
    noisy_ref = None if ref is None else read_noise(ref.expand(draws, *ref.shape), sigma, g)
    w = alpha * conductance_to_levels(noisy_G, spec, reference=noisy_ref)         # (draws, out, in)
    assert torch.allclose(w.mean(0), alpha * levels.double(), atol=5 * expected.max().sqrt().item() / draws ** 0.5)
    tolerance = 5 * math.sqrt(2 / (draws - 1))                                   # 5 std of a sample variance
    assert torch.allclose(w.var(0), expected, rtol=tolerance, atol=0.0)
    # the reference column is shared by a crossbar's outputs: weights (0, i) and (1, i) covary by Var(r_i)
    centred = w - w.mean(0)
    covariance = (centred[:, 0, :] * centred[:, 1, :]).sum(0) / (draws - 1)         # (in,)
    shared = 0.0
    if scheme == "offset":                     # Var(r_i): the variance of a weight whose u-devices are silent
        shared = alpha ** 2 * sigma ** 2 / spec.g_step_us ** 2 * sum(
            4.0 ** (spec.cell_bits * (spec.slices - 1 - s)) * ref[0, s, 0, 0].item() ** 2 for s in range(spec.slices))
    std_error = ((expected[0] * expected[1] + shared ** 2) / draws).sqrt()          # of a sample covariance
    assert torch.all((covariance - shared).abs() < 5 * std_error), (covariance, shared)
    if scheme == "offset":
        assert torch.all(covariance > 10 * std_error)   # the correlation the per-weight variance leaves out


@pytest.mark.parametrize("call, text", [
    (lambda G, s: read_noise_weight_variance(G, s, -1.0, 0.1), "alpha: got -1.0"),
    (lambda G, s: read_noise_weight_variance(G, s, 1.0, float("nan")), "sigma: got nan"),
    (lambda G, s: read_noise_weight_variance(G[:1], s, 1.0, 0.1), r"G: got shape \(1, 4, 2, 2\)"),
    (lambda G, s: read_noise_weight_variance(G, "isaac", 1.0, 0.1), "spec: got str"),
])
def test_bad_variance_inputs_name_the_value(call, text):
    spec = MappingSpec(weight_bits=8)
    with pytest.raises(HardwareError, match=text):
        call(levels_to_conductance(torch.zeros(2, 2), spec), spec)

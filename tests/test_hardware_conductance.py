"""Levels <-> conductances: differential pairs, bit slices (most significant first), exact round trip."""

import pytest
import torch

from hardware import HardwareError, MappingSpec, conductance_to_levels, levels_to_conductance


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

"""Tile-level crossbar simulation: exact at infinite resolution, converters converge, ADC ranges hold."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardware import MappingSpec, levels_to_conductance, lognormal_variation, tile_slices
from hardware.spec import SIGN_SCHEMES
from stages.errors import StageError
from stages.tiles import (calibrate_adc_ranges, crossbar_matmul, uniform_quantize,
                          unfold_conv_input)

XBAR = dict(xbar_rows=16, xbar_cols=8)
SIZES = [(1, 1), (5, 11), (8, 16), (21, 37), (17, 48), (40, 3)]   # (kept_out, kept_in) against 16 x 8 tiles
BITS = [(2, 1), (4, 1), (8, 2), (5, 3), (9, 4), (16, 4)]            # (weight_bits, cell_bits)


def random_levels(kept_out: int, kept_in: int, spec: MappingSpec, seed: int) -> torch.Tensor:
    """(kept_out, kept_in) int32 levels over the whole allowed range, some zeros."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(-spec.max_level, spec.max_level + 1, (kept_out, kept_in), generator=g)
    levels[torch.rand(kept_out, kept_in, generator=g) < 0.2] = 0
    return levels.to(torch.int32)


def exact_g64(levels: torch.Tensor, spec: MappingSpec) -> torch.Tensor:
    """The conductances of `levels` in float64, without float32's rounding of G."""
    digits = ((levels_to_conductance(levels, spec).double() - spec.g_min_us) / spec.g_step_us).round()
    return spec.g_min_us + digits * spec.g_step_us


def ideal(x: torch.Tensor, levels: torch.Tensor, alpha: float) -> torch.Tensor:
    return x.double() @ (alpha * levels.double()).T


def scale(x: torch.Tensor, spec: MappingSpec, alpha: float) -> float:
    """Largest |output| possible: what float tolerances are relative to."""
    return alpha * spec.max_level * float(x.double().abs().sum(dim=1).max())


@pytest.mark.parametrize("weight_bits, cell_bits", BITS)
@pytest.mark.parametrize("kept_out, kept_in", SIZES)
def test_infinite_resolution_equals_the_ideal_matmul(kept_out, kept_in, weight_bits, cell_bits):
    spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, **XBAR)
    levels = random_levels(kept_out, kept_in, spec, seed=kept_out * 100 + kept_in)
    x = torch.randn(6, kept_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha = 0.0173
    want = ideal(x, levels, alpha)
    y64 = crossbar_matmul(x, exact_g64(levels, spec), spec, alpha)
    assert y64.dtype == torch.float64 and y64.shape == (6, kept_out)
    torch.testing.assert_close(y64, want, rtol=0, atol=1e-12 * scale(x, spec, alpha))
    x32 = x.float()
    y32 = crossbar_matmul(x32, levels_to_conductance(levels, spec), spec, alpha)
    assert y32.dtype == torch.float32 and y32.shape == (6, kept_out)
    torch.testing.assert_close(y32.double(), ideal(x32, levels, alpha), rtol=0,
                               atol=1e-6 * scale(x32, spec, alpha))


def test_batch_rows_are_independent():
    spec = MappingSpec(**XBAR)
    levels = random_levels(21, 37, spec, seed=3)
    G = levels_to_conductance(levels, spec)
    x = torch.rand(5, 37, generator=torch.Generator().manual_seed(4))
    ranges = calibrate_adc_ranges(G, spec, 0.0, 1.0)
    kwargs = dict(adc_bits=5, dac_bits=3, x_range=(0.0, 1.0), adc_ranges=ranges)
    batched = crossbar_matmul(x, G, spec, 0.5, **kwargs)
    for i in range(5):
        torch.testing.assert_close(batched[i:i + 1], crossbar_matmul(x[i:i + 1], G, spec, 0.5, **kwargs))


def test_empty_layer_gives_zeros_of_the_right_shape():
    spec = MappingSpec(**XBAR)
    G = levels_to_conductance(torch.zeros(4, 0, dtype=torch.int32), spec)
    y = crossbar_matmul(torch.zeros(3, 0), G, spec, 1.0, adc_bits=4,
                        adc_ranges=calibrate_adc_ranges(G, spec, 0.0, 1.0))
    assert y.shape == (3, 4) and torch.all(y == 0)


def test_one_device_by_hand():
    # weight_bits=2, cell_bits=1: one slice; level 1 -> G+ = g_max = 100 uS, G- = g_min = 1 uS (g_step 99)
    spec = MappingSpec(weight_bits=2, cell_bits=1)
    G = levels_to_conductance(torch.tensor([[1]]), spec)
    x = torch.tensor([[0.6]], dtype=torch.float64)
    assert crossbar_matmul(x, G, spec, 2.0).item() == pytest.approx(1.2, abs=1e-12)  # (60 - 0.6) / 99 * 2
    ranges = torch.tensor([[[[0.0, 100.0]], [[0.0, 100.0]]]], dtype=torch.float64)  # (1 tile, P, S, 2)
    # 1-bit ADC over [0, 100]: I+ = 60 reads 100, I- = 0.6 reads 0; baselines cancel between polarities
    y = crossbar_matmul(x, G, spec, 2.0, adc_bits=1, adc_ranges=ranges)
    assert y.item() == pytest.approx(2.0 * 100 / 99, abs=1e-12)


def converter_setup(seed: int = 7):
    spec = MappingSpec(weight_bits=8, cell_bits=2, **XBAR)
    levels = random_levels(21, 37, spec, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 37, generator=g, dtype=torch.float64) * 2 - 1        # inputs in [-1, 1]
    return spec, levels, levels_to_conductance(levels, spec), x


def mean_abs_error(y: torch.Tensor, want: torch.Tensor) -> float:
    return float((y.double() - want).abs().mean())


def test_adc_error_falls_as_adc_bits_grow():
    spec, levels, G, x = converter_setup()
    ranges = calibrate_adc_ranges(G, spec, -1.0, 1.0)
    want = ideal(x, levels, 0.01)
    errors = [mean_abs_error(crossbar_matmul(x, G, spec, 0.01, adc_bits=b, adc_ranges=ranges), want)
              for b in (4, 6, 8, 10)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0
    huge = crossbar_matmul(x, G, spec, 0.01, adc_bits=24, adc_ranges=ranges)
    torch.testing.assert_close(huge.double(), want, rtol=0, atol=1e-4 * scale(x, spec, 0.01))


def test_dac_error_falls_as_dac_bits_grow():
    spec, levels, G, x = converter_setup()
    want = ideal(x, levels, 0.01)
    errors = [mean_abs_error(crossbar_matmul(x, G, spec, 0.01, dac_bits=b, x_range=(-1.0, 1.0)), want)
              for b in (2, 4, 6, 8)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0
    huge = crossbar_matmul(x, G, spec, 0.01, dac_bits=24, x_range=(-1.0, 1.0))
    torch.testing.assert_close(huge.double(), want, rtol=0, atol=1e-5 * scale(x, spec, 0.01))


def test_dac_leaves_inputs_on_its_grid_alone_and_clips_the_rest():
    spec, levels, G, _ = converter_setup()
    binary = (torch.rand(8, 37, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    on_grid = crossbar_matmul(binary, G, spec, 0.01, dac_bits=1, x_range=(0.0, 1.0))
    torch.testing.assert_close(on_grid, crossbar_matmul(binary, G, spec, 0.01), rtol=0, atol=1e-12)
    clipped = crossbar_matmul(3 * binary - 1, G, spec, 0.01, dac_bits=1, x_range=(0.0, 1.0))
    torch.testing.assert_close(clipped, on_grid, rtol=0, atol=1e-12)   # -1 -> 0 and 2 -> 1


def test_uniform_quantize_levels_and_clipping():
    values = torch.tensor([-5.0, 0.0, 0.1, 0.2, 0.9, 1.0, 7.0], dtype=torch.float64)
    q = uniform_quantize(values, 0.0, 1.0, 2)                      # levels 0, 1/3, 2/3, 1
    torch.testing.assert_close(q, torch.tensor([0, 0, 0, 1 / 3, 1, 1, 1], dtype=torch.float64))
    assert torch.all(uniform_quantize(values, 0.5, 0.5, 4) == 0.5)  # a point range reads its point


@pytest.mark.parametrize("x_min, x_max", [(0.0, 1.0), (-2.0, 3.0), (-1.5, -0.25), (0.0, 0.0)])
def test_calibrated_ranges_hold_every_partial_sum(x_min, x_max):
    spec = MappingSpec(weight_bits=8, cell_bits=2, **XBAR)
    levels = random_levels(21, 37, spec, seed=11)
    G = lognormal_variation(levels_to_conductance(levels, spec), 0.3, torch.Generator().manual_seed(12),
                            spec.g_min_us, spec.g_max_us)
    ranges = calibrate_adc_ranges(G, spec, x_min, x_max)
    parts = tile_slices(37, 21, spec.xbar_rows, spec.xbar_cols)
    assert ranges.shape == (len(parts), 2, spec.slices, 2) and torch.all(ranges[..., 0] <= ranges[..., 1])
    g = torch.Generator().manual_seed(13)
    x = x_min + (x_max - x_min) * torch.rand(256, 37, generator=g, dtype=torch.float64)
    corners = torch.tensor([x_min, x_max], dtype=torch.float64)[torch.randint(0, 2, (256, 37), generator=g)]
    x = torch.cat([x, corners, torch.full((1, 37), x_min), torch.full((1, 37), x_max)]).double()
    for t, (rows, cols) in enumerate(parts):
        currents = torch.einsum("bi,psoi->bpso", x[:, rows], G[:, :, cols, rows].double())   # bitline currents
        lo, hi = ranges[t, :, :, 0], ranges[t, :, :, 1]                          # (P, S)
        slack = 1e-12 * (1 + hi.abs().max())
        assert torch.all(currents.amin(dim=(0, 3)) >= lo - slack)
        assert torch.all(currents.amax(dim=(0, 3)) <= hi + slack)
        # tight: the all-x_min and all-x_max inputs reach the bounds
        torch.testing.assert_close(currents.amin(dim=(0, 3)), lo, rtol=1e-12, atol=slack)
        torch.testing.assert_close(currents.amax(dim=(0, 3)), hi, rtol=1e-12, atol=slack)


def test_calibrated_range_for_nonnegative_inputs_is_zero_to_largest_column():
    spec = MappingSpec(**XBAR)
    G = levels_to_conductance(random_levels(8, 16, spec, seed=5), spec)   # exactly one tile
    ranges = calibrate_adc_ranges(G, spec, 0.0, 0.5)
    assert torch.all(ranges[..., 0] == 0)
    torch.testing.assert_close(ranges[0, :, :, 1], 0.5 * G.double().sum(dim=3).amax(dim=2))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=3, stride=2, padding=0),
    pytest.param(dict(kernel_size=(4, 3), padding="same"),
                 marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
])
def test_unfold_fold_matches_conv2d(kwargs):
    spec = MappingSpec(weight_bits=6, cell_bits=2, **XBAR)
    conv = nn.Conv2d(3, 5, bias=True, **kwargs)
    levels = random_levels(5, conv.weight[0].numel(), spec, seed=21)
    alpha = 0.03
    with torch.no_grad():
        conv.weight.copy_(alpha * levels.reshape(conv.weight.shape).float())
    x = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(22))
    x2d, fold = unfold_conv_input(x, conv)
    assert x2d.shape[1] == 3 * conv.kernel_size[0] * conv.kernel_size[1]
    y = fold(crossbar_matmul(x2d, levels_to_conductance(levels, spec), spec, alpha))
    with torch.no_grad():
        want = conv(x) - conv.bias[None, :, None, None]
    assert y.shape == want.shape
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_unfold_fold_matches_functional_conv2d_without_bias():
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, bias=True)
    x = torch.randn(3, 4, 11, 10, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    x2d, fold = unfold_conv_input(x, conv)
    weight = conv.weight.detach().double()
    y = fold(x2d @ weight.reshape(6, -1).T)
    torch.testing.assert_close(y, F.conv2d(x, weight, None, stride=2, padding=1))


@pytest.mark.parametrize("call, words", [
    (lambda x, G, s: crossbar_matmul(x[:, :-1], G, s, 1.0), "x"),
    (lambda x, G, s: crossbar_matmul(x, G[:, :1], s, 1.0), "G"),
    (lambda x, G, s: crossbar_matmul(x.long(), G, s, 1.0), "x"),
    (lambda x, G, s: crossbar_matmul(x, G, s, float("nan")), "alpha"),
    (lambda x, G, s: crossbar_matmul(x, G, s, 1.0, adc_bits=4), "adc_ranges"),
    (lambda x, G, s: crossbar_matmul(x, G, s, 1.0, adc_bits=0, adc_ranges=torch.zeros(1)), "adc_bits"),
    (lambda x, G, s: crossbar_matmul(x, G, s, 1.0, adc_bits=4, adc_ranges=torch.zeros(3, 2, 4, 2)),
     "adc_ranges"),
    (lambda x, G, s: crossbar_matmul(x, G, s, 1.0, dac_bits=4), "x_range"),
    (lambda x, G, s: crossbar_matmul(x, G, s, 1.0, dac_bits=4, x_range=(1.0, 0.0)), "x_range"),
    (lambda x, G, s: crossbar_matmul(x, G, s, 1.0, dac_bits=2.5, x_range=(0.0, 1.0)), "dac_bits"),
    (lambda x, G, s: crossbar_matmul(x, G, "spec", 1.0), "spec"),
    (lambda x, G, s: calibrate_adc_ranges(G, s, 1.0, 0.0), "x_min"),
])
def test_bad_values_are_named(call, words):
    spec = MappingSpec(**XBAR)
    G = levels_to_conductance(random_levels(21, 37, spec, seed=1), spec)
    x = torch.rand(2, 37)
    with pytest.raises(StageError, match=words):
        call(x, G, spec)


def test_unfold_refuses_grouped_convs_and_wrong_channels():
    with pytest.raises(StageError, match="groups"):
        unfold_conv_input(torch.zeros(1, 4, 5, 5), nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(StageError, match="x"):
        unfold_conv_input(torch.zeros(1, 3, 5, 5), nn.Conv2d(4, 4, 3))
    _, fold = unfold_conv_input(torch.zeros(2, 4, 5, 5), nn.Conv2d(4, 4, 3))
    with pytest.raises(StageError, match="y2d"):
        fold(torch.zeros(17, 4))


@pytest.mark.skipif("offset" not in SIGN_SCHEMES, reason="no offset sign scheme in hardware yet")
def test_only_the_differential_scheme_is_simulated():
    spec = MappingSpec(sign_scheme="offset", **XBAR)
    with pytest.raises(StageError, match="sign_scheme"):
        crossbar_matmul(torch.zeros(1, 3), torch.zeros(spec.polarity, spec.slices, 2, 3), spec, 1.0)

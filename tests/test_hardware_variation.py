"""Programming variation and stuck-at faults: statistics, clipping, seeding, and no global RNG."""

import math

import pytest
import torch

from hardware import HardwareError, additive_variation, lognormal_variation, stuck_at_faults

Z_999 = 3.2905  # two-sided 99.9% normal quantile


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def devices(value: float = 10.0) -> torch.Tensor:
    """200k devices as (P, S, out, in) = (2, 4, 100, 250)."""
    return torch.full((2, 4, 100, 250), value)


def test_lognormal_log_mean_zero_and_log_std_sigma():
    G, sigma = devices(), 0.2
    out = lognormal_variation(G, sigma, gen(1), g_min_us=1e-3, g_max_us=1e5)  # wide range: no clipping
    inside = (out > 1e-3) & (out < 1e5)
    assert inside.float().mean() > 0.9999
    log_ratio = torch.log(out[inside].double() / 10.0)
    n = log_ratio.numel()
    assert abs(log_ratio.mean().item()) < 5 * sigma / math.sqrt(n)
    assert log_ratio.std().item() == pytest.approx(sigma, rel=0.02)


def test_additive_std_is_sigma_times_range():
    G, sigma = devices(50.0), 0.01
    out = additive_variation(G, sigma, gen(2), g_min_us=1.0, g_max_us=100.0)  # std 0.99 uS around 50: unclipped
    delta = (out - G).double()
    assert abs(delta.mean().item()) < 5 * 0.99 / math.sqrt(delta.numel())
    assert delta.std().item() == pytest.approx(sigma * 99.0, rel=0.02)


@pytest.mark.parametrize("vary", [lognormal_variation, additive_variation])
def test_variation_is_clipped_to_the_conductance_range(vary):
    G = torch.linspace(1.0, 100.0, 20000).reshape(2, 1, 100, 100)
    out = vary(G, 0.5, gen(3), 1.0, 100.0)
    assert out.min() >= 1.0 and out.max() <= 100.0
    assert (out == 1.0).any() and (out == 100.0).any()   # strong noise does reach both bounds


def test_stuck_at_rates_inside_binomial_intervals():
    G, p0, p1 = devices(50.0), 0.01, 0.03
    out = stuck_at_faults(G, p0, p1, gen(4), 1.0, 100.0)
    n = G.numel()
    for value, p in ((1.0, p0), (100.0, p1)):
        count = int((out == value).sum())
        half = Z_999 * math.sqrt(n * p * (1 - p))
        assert n * p - half <= count <= n * p + half, (value, count)
    assert torch.all((out == 1.0) | (out == 100.0) | (out == 50.0))


def test_all_stuck_when_probabilities_sum_to_one():
    out = stuck_at_faults(devices(50.0), 0.25, 0.75, gen(5), 1.0, 100.0)
    assert torch.all((out == 1.0) | (out == 100.0))


@pytest.mark.parametrize("call", [
    lambda G, g: lognormal_variation(G, 0.1, g, 1.0, 100.0),
    lambda G, g: additive_variation(G, 0.1, g, 1.0, 100.0),
    lambda G, g: stuck_at_faults(G, 0.05, 0.05, g, 1.0, 100.0),
])
def test_same_seed_same_devices_other_seed_others_and_no_global_rng(call):
    G = torch.linspace(1.0, 100.0, 6000).reshape(3, 2, 2, 10, 50)   # with a leading batch dim
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a, b, c = call(G, gen(7)), call(G, gen(7)), call(G, gen(8))
    assert a.shape == G.shape and a.dtype == G.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, G)
    assert torch.equal(torch.get_rng_state(), global_state)


@pytest.mark.parametrize("call", [
    lambda G, g: lognormal_variation(G, 0.0, g, 1.0, 100.0),
    lambda G, g: additive_variation(G, 0.0, g, 1.0, 100.0),
    lambda G, g: stuck_at_faults(G, 0.0, 0.0, g, 1.0, 100.0),
])
def test_zero_strength_returns_a_copy_and_draws_nothing(call):
    G = torch.linspace(1.0, 100.0, 100).reshape(2, 1, 5, 10)
    g = gen(9)
    state = g.get_state()
    out = call(G, g)
    assert torch.equal(out, G) and out is not G
    assert torch.equal(g.get_state(), state)


def test_float64_conductances_stay_float64():
    G = devices().double()
    assert lognormal_variation(G, 0.1, gen(0), 1.0, 100.0).dtype == torch.float64
    assert stuck_at_faults(G, 0.1, 0.1, gen(0), 1.0, 100.0).dtype == torch.float64


@pytest.mark.parametrize("call, text", [
    (lambda G: lognormal_variation(G, -0.1, gen(0), 1.0, 100.0), "sigma: got -0.1"),
    (lambda G: additive_variation(G, float("inf"), gen(0), 1.0, 100.0), "sigma: got inf"),
    (lambda G: stuck_at_faults(G, 1.5, 0.0, gen(0), 1.0, 100.0), "p_sa0: got 1.5"),
    (lambda G: stuck_at_faults(G, 0.0, -0.2, gen(0), 1.0, 100.0), "p_sa1: got -0.2"),
    (lambda G: stuck_at_faults(G, 0.6, 0.5, gen(0), 1.0, 100.0), "p_sa0 \\+ p_sa1: got 0.6 \\+ 0.5"),
    (lambda G: lognormal_variation(G, 0.1, None, 1.0, 100.0), "generator: got NoneType"),
    (lambda G: lognormal_variation(G, 0.1, gen(0), 100.0, 1.0), "g_max_us: got 1.0"),
    (lambda G: additive_variation(G.long(), 0.1, gen(0), 1.0, 100.0), "G: got dtype torch.int64"),
])
def test_bad_inputs_name_the_value(call, text):
    with pytest.raises(HardwareError, match=text):
        call(devices())

"""Programming variation, stuck-at faults, drift and read noise: statistics, clipping, seeding, no global RNG."""

import math

import pytest
import torch

from hardware import HardwareError, additive_variation, drift, lognormal_variation, read_noise, stuck_at_faults

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
    lambda G, g: drift(G, 0.05, 0.02, 1e4, 1.0, g),
    lambda G, g: read_noise(G, 0.05, g),
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
    lambda G, g: drift(G, 0.0, 0.0, 1e4, 1.0, g),
    lambda G, g: read_noise(G, 0.0, g),
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
    (lambda G: drift(G, -0.01, 0.0, 10.0, 1.0, gen(0)), "nu_mean: got -0.01; allowed: >= 0"),
    (lambda G: drift(G, 0.05, -1.0, 10.0, 1.0, gen(0)), "nu_std: got -1.0"),
    (lambda G: drift(G, 0.05, 0.0, 10.0, 0.0, gen(0)), "t0_s: got 0.0; allowed: > 0"),
    (lambda G: drift(G, 0.05, 0.0, 0.5, 1.0, gen(0)), r"t_s: got 0.5; allowed: a time >= t0_s \(1.0\)"),
    (lambda G: drift(G, 0.05, 0.0, float("inf"), 1.0, gen(0)), "t_s: got inf"),
    (lambda G: drift(G, 0.05, 0.01, 10.0, 1.0, 7), "generator: got int"),
    (lambda G: read_noise(G, -0.1, gen(0)), "sigma: got -0.1"),
    (lambda G: read_noise(G.int(), 0.1, gen(0)), "G: got dtype torch.int32"),
])
def test_bad_inputs_name_the_value(call, text):
    with pytest.raises(HardwareError, match=text):
        call(devices())


TIMES_S = (1.0, 10.0, 1e3, 1e5, 3e7)   # read times, t0 = 1 s


def test_drift_without_spread_is_an_exact_power_law():
    G, nu = torch.linspace(1.0, 100.0, 1000, dtype=torch.float64), 0.06
    ratios = torch.stack([drift(G, nu, 0.0, t, 1.0, gen(0)) / G for t in TIMES_S])   # (T, devices)
    for ratio, t in zip(ratios, TIMES_S):
        assert torch.allclose(ratio, torch.tensor(t ** -nu, dtype=torch.float64), rtol=1e-12, atol=0.0)
    log_t = torch.log(torch.tensor(TIMES_S, dtype=torch.float64))
    slope = torch.linalg.lstsq(torch.stack([log_t, torch.ones_like(log_t)], 1), torch.log(ratios)).solution[0]
    assert torch.allclose(slope, torch.tensor(-nu, dtype=torch.float64), rtol=1e-10, atol=0.0)
    assert torch.equal(drift(G, nu, 0.0, 7.0, 7.0, gen(0)), G)          # t = t0: nothing has drifted yet
    assert torch.allclose(drift(G.float(), nu, 0.0, 1e5, 10.0, gen(0)), G.float() * 1e4 ** -nu, rtol=1e-6)


def test_drift_exponents_have_the_requested_mean_and_std():
    G, nu_mean, nu_std = devices(), 0.05, 0.01            # 5 std above 0: clipping at nu >= 0 is negligible
    times = TIMES_S[1:]
    # the same seed at every time: each device keeps its exponent, so log G(t) is a line in log t
    logs = torch.stack([torch.log(drift(G.double(), nu_mean, nu_std, t, 1.0, gen(3)) / 10.0).flatten()
                        for t in times])                                    # (T, devices)
    log_t = torch.log(torch.tensor(times, dtype=torch.float64))
    design = torch.stack([log_t, torch.ones_like(log_t)], 1)
    fit = torch.linalg.lstsq(design, logs).solution                         # (2, devices)
    nu, intercept = -fit[0], fit[1]
    assert intercept.abs().max() < 1e-9                                      # G(t0) = G0: no jump at t0
    assert (logs - design @ fit).abs().max() < 1e-9                          # a power law per device
    n = nu.numel()
    assert abs(nu.mean().item() - nu_mean) < 5 * nu_std / math.sqrt(n)
    assert nu.std().item() == pytest.approx(nu_std, rel=5 / math.sqrt(2 * n))
    assert len(set(nu[:100].tolist())) > 90                                  # drawn per device


def test_drift_exponents_are_clipped_at_zero_and_not_to_the_conductance_range():
    G = devices(1.0)                                            # every device at g_min = 1 uS
    out = drift(G, 0.0, 0.05, 1e6, 1.0, gen(4))                # half the draws are negative -> nu = 0
    assert torch.all(out <= G)                                  # drift never raises a conductance
    n, unchanged = G.numel(), int((out == G).sum())
    half = Z_999 * math.sqrt(n * 0.25)
    assert n / 2 - half <= unchanged <= n / 2 + half
    assert out.min() < 0.5 and out.min() > 0                    # below g_min, never negative


def test_read_noise_is_relative_unbiased_and_fresh_on_each_read():
    G, sigma = torch.cat([devices(10.0), devices(80.0)]), 0.05
    g = gen(5)
    first, second = read_noise(G, sigma, g), read_noise(G, sigma, g)
    assert not torch.equal(first, second)                      # each read draws anew
    for value in (10.0, 80.0):
        rel = (first[G == value] / value - 1).double()
        assert abs(rel.mean().item()) < 5 * sigma / math.sqrt(rel.numel())
        assert rel.std().item() == pytest.approx(sigma, rel=5 / math.sqrt(2 * rel.numel()))
    both = torch.stack([first, second]).double() / G - 1
    corr = torch.corrcoef(both.reshape(2, -1))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(G.numel())


def test_read_noise_is_clipped_at_zero_only():
    G = devices(100.0)                                          # at g_max
    out = read_noise(G, 2.0, gen(6))                            # strong noise: about 31% of draws below -1/2
    assert out.min() == 0.0 and (out > 100.0).any()             # nothing negative; above g_max is kept
    zeros, n, p = int((out == 0).sum()), G.numel(), 0.5 * math.erfc(0.5 / math.sqrt(2))
    half = Z_999 * math.sqrt(n * p * (1 - p))
    assert n * p - half <= zeros <= n * p + half

"""Device non-idealities on conductance tensors (microsiemens, any shape, e.g. (P, S, out, in) or (B, P, S, out, in)).

Programming (once per programmed array): lognormal or additive variation and
stuck-at faults, clipped to [g_min_us, g_max_us]. After programming: drift
over time and read noise per read, which are not clipped to that range (see
each function). Every draw uses the caller's torch.Generator on G's device and
dtype; nothing touches the global RNG, and a zero-strength call draws nothing.
The programming functions also take `noise`, the draws made beforehand (a
tensor broadcasting with G; the generator is then not used): Monte Carlo
draws many trials' noise into one preallocated buffer, each trial from its
own generator, and perturbs them all in one call.
"""

import math

import torch

from hardware import checks
from hardware.errors import HardwareError


def _inputs(G, generator, g_min_us, g_max_us) -> tuple[torch.Tensor, float, float]:
    G = checks.tensor("G", G, floating=True)
    if generator is not None:
        checks.generator(generator)
    g_min, g_max = checks.conductance_range(g_min_us, g_max_us)
    return G, g_min, g_max


def _draw(kind: str, G: torch.Tensor, generator, noise) -> torch.Tensor:
    """Standard normal ("normal") or uniform [0, 1) ("uniform") draws for G: `noise` when given
    (checked to broadcast with G), else one per element of G from `generator`."""
    if noise is None:
        checks.generator(generator)
        sample = torch.randn if kind == "normal" else torch.rand
        return sample(G.shape, generator=generator, device=G.device, dtype=G.dtype)
    noise = checks.tensor("noise", noise, floating=True)
    try:
        torch.broadcast_shapes(noise.shape, G.shape)
    except RuntimeError:
        raise HardwareError(f"noise: got shape {tuple(noise.shape)}; allowed: a shape broadcasting with G's "
                            f"{tuple(G.shape)}") from None
    return noise


def lognormal_variation(G: torch.Tensor, sigma: float, generator: torch.Generator | None,
                        g_min_us: float, g_max_us: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Multiplicative programming variation: G * exp(N(0, sigma)), clipped to [g_min_us, g_max_us].

    sigma is relative (the std of log G). sigma == 0 returns a copy of G and draws nothing.
    noise: standard normal draws broadcasting with G, used instead of drawing from generator.
    """
    G, g_min, g_max = _inputs(G, generator, g_min_us, g_max_us)
    sigma = checks.finite_float("sigma", sigma, 0.0)
    if sigma == 0:
        return G.clone()
    noise = _draw("normal", G, generator, noise)
    return (G * torch.exp(sigma * noise)).clamp(g_min, g_max)


def additive_variation(G: torch.Tensor, sigma: float, generator: torch.Generator | None,
                       g_min_us: float, g_max_us: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Additive programming variation: G + N(0, sigma * (g_max_us - g_min_us)), clipped to the range.

    sigma is relative to the conductance range. sigma == 0 returns a copy of G and draws nothing.
    noise: standard normal draws broadcasting with G, used instead of drawing from generator.
    """
    G, g_min, g_max = _inputs(G, generator, g_min_us, g_max_us)
    sigma = checks.finite_float("sigma", sigma, 0.0)
    if sigma == 0:
        return G.clone()
    noise = _draw("normal", G, generator, noise)
    return (G + sigma * (g_max - g_min) * noise).clamp(g_min, g_max)


def stuck_at_faults(G: torch.Tensor, p_sa0: float, p_sa1: float, generator: torch.Generator | None,
                    g_min_us: float, g_max_us: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Stuck devices: each independently at g_min_us with p_sa0, at g_max_us with p_sa1, else unchanged.

    One uniform draw u per device: u < p_sa0 -> g_min_us; p_sa0 <= u < p_sa0 + p_sa1 -> g_max_us.
    p_sa0 + p_sa1 <= 1. Both zero returns a copy of G and draws nothing.
    noise: the uniform [0, 1) draws u, broadcasting with G, used instead of drawing from generator.
    """
    G, g_min, g_max = _inputs(G, generator, g_min_us, g_max_us)
    p_sa0 = checks.finite_float("p_sa0", p_sa0, 0.0, 1.0)
    p_sa1 = checks.finite_float("p_sa1", p_sa1, 0.0, 1.0)
    if p_sa0 + p_sa1 > 1:
        raise HardwareError(f"p_sa0 + p_sa1: got {p_sa0} + {p_sa1} = {p_sa0 + p_sa1}; allowed: <= 1")
    if p_sa0 == 0 and p_sa1 == 0:
        return G.clone()
    u = _draw("uniform", G, generator, noise)
    stuck = torch.where(u < p_sa0, g_min, g_max).to(G.dtype)
    return torch.where(u < p_sa0 + p_sa1, stuck, G)


def drift(G: torch.Tensor, nu_mean: float, nu_std: float, t_s: float, t0_s: float,
          generator: torch.Generator | None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Conductance drift: G(t) = G * (t_s / t0_s) ** (-nu), one exponent nu per device.

    G: conductances at t0_s (microsiemens), programmed at time 0 and read at
    t_s >= t0_s > 0 seconds. nu ~ N(nu_mean, nu_std), clipped at >= 0 (drift
    only lowers conductance; nu_mean >= 0, nu_std >= 0). nu_std == 0 uses
    nu_mean for every device and draws nothing; otherwise one normal draw per
    device of G, also when t_s == t0_s, so the generator moves the same way
    whatever the time (the same seed gives the same nu at every t_s).

    Not clipped to [g_min_us, g_max_us]: g_min_us is where programming stops,
    not a floor of the physics, and a drifted device keeps decaying below it
    (the read-back level falls below the programmed one: that is the error
    drift causes). Since the factor is in (0, 1] the result never exceeds G;
    it is clamped at >= 0 (a no-op for conductances, which are >= 0).
    noise: the standard normal draws of nu, broadcasting with G, used instead of drawing from generator.
    """
    G = checks.tensor("G", G, floating=True)
    if generator is not None:
        checks.generator(generator)
    nu_mean = checks.finite_float("nu_mean", nu_mean, 0.0)
    nu_std = checks.finite_float("nu_std", nu_std, 0.0)
    t0 = checks.finite_float("t0_s", t0_s, 0.0, open_min=True)
    t = checks.finite_float("t_s", t_s)
    if t < t0:
        raise HardwareError(f"t_s: got {t}; allowed: a time >= t0_s ({t0})")
    log_t = math.log(t / t0)
    if nu_std == 0:
        return (G * (t / t0) ** (-nu_mean)).clamp(min=0.0)
    nu = nu_mean + nu_std * _draw("normal", G, generator, noise)
    return (G * torch.exp(-nu.clamp(min=0.0) * log_t)).clamp(min=0.0)


def read_noise(G: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """One noisy read of each device: G * (1 + N(0, sigma)), clamped at >= 0.

    sigma is relative (the std of a read over G), >= 0. Each call is a fresh,
    independent read; the programmed G is unchanged. Clamped at 0 only: a
    device cannot conduct negatively (clamping needs a normal draw below
    -1/sigma, a 5-sigma event at sigma = 0.2: under 3e-7 of reads), but a read
    is a fluctuating current, not a programmed state, so it may land outside
    [g_min_us, g_max_us]. sigma == 0 returns a copy of G and draws nothing.
    The variance this gives a read-back weight is `read_noise_weight_variance`.
    """
    G = checks.tensor("G", G, floating=True)
    checks.generator(generator)
    sigma = checks.finite_float("sigma", sigma, 0.0)
    if sigma == 0:
        return G.clone()
    noise = torch.randn(G.shape, generator=generator, device=G.device, dtype=G.dtype)
    return (G * (1 + sigma * noise)).clamp(min=0.0)

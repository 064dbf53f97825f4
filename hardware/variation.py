"""Device non-idealities on conductance tensors (microsiemens, any shape, e.g. (P, S, out, in) or (B, P, S, out, in)).

Every draw uses the caller's torch.Generator on G's device and dtype; nothing
touches the global RNG, and a zero-strength call draws nothing.
"""

import torch

from hardware import checks
from hardware.errors import HardwareError


def _inputs(G, generator, g_min_us, g_max_us) -> tuple[torch.Tensor, float, float]:
    G = checks.tensor("G", G, floating=True)
    checks.generator(generator)
    g_min, g_max = checks.conductance_range(g_min_us, g_max_us)
    return G, g_min, g_max


def lognormal_variation(G: torch.Tensor, sigma: float, generator: torch.Generator,
                        g_min_us: float, g_max_us: float) -> torch.Tensor:
    """Multiplicative programming variation: G * exp(N(0, sigma)), clipped to [g_min_us, g_max_us].

    sigma is relative (the std of log G). sigma == 0 returns a copy of G and draws nothing.
    """
    G, g_min, g_max = _inputs(G, generator, g_min_us, g_max_us)
    sigma = checks.finite_float("sigma", sigma, 0.0)
    if sigma == 0:
        return G.clone()
    noise = torch.randn(G.shape, generator=generator, device=G.device, dtype=G.dtype)
    return (G * torch.exp(sigma * noise)).clamp(g_min, g_max)


def additive_variation(G: torch.Tensor, sigma: float, generator: torch.Generator,
                       g_min_us: float, g_max_us: float) -> torch.Tensor:
    """Additive programming variation: G + N(0, sigma * (g_max_us - g_min_us)), clipped to the range.

    sigma is relative to the conductance range. sigma == 0 returns a copy of G and draws nothing.
    """
    G, g_min, g_max = _inputs(G, generator, g_min_us, g_max_us)
    sigma = checks.finite_float("sigma", sigma, 0.0)
    if sigma == 0:
        return G.clone()
    noise = torch.randn(G.shape, generator=generator, device=G.device, dtype=G.dtype)
    return (G + sigma * (g_max - g_min) * noise).clamp(g_min, g_max)


def stuck_at_faults(G: torch.Tensor, p_sa0: float, p_sa1: float, generator: torch.Generator,
                    g_min_us: float, g_max_us: float) -> torch.Tensor:
    """Stuck devices: each independently at g_min_us with p_sa0, at g_max_us with p_sa1, else unchanged.

    One uniform draw u per device: u < p_sa0 -> g_min_us; p_sa0 <= u < p_sa0 + p_sa1 -> g_max_us.
    p_sa0 + p_sa1 <= 1. Both zero returns a copy of G and draws nothing.
    """
    G, g_min, g_max = _inputs(G, generator, g_min_us, g_max_us)
    p_sa0 = checks.finite_float("p_sa0", p_sa0, 0.0, 1.0)
    p_sa1 = checks.finite_float("p_sa1", p_sa1, 0.0, 1.0)
    if p_sa0 + p_sa1 > 1:
        raise HardwareError(f"p_sa0 + p_sa1: got {p_sa0} + {p_sa1} = {p_sa0 + p_sa1}; allowed: <= 1")
    if p_sa0 == 0 and p_sa1 == 0:
        return G.clone()
    u = torch.rand(G.shape, generator=generator, device=G.device, dtype=G.dtype)
    stuck = torch.where(u < p_sa0, g_min, g_max).to(G.dtype)
    return torch.where(u < p_sa0 + p_sa1, stuck, G)

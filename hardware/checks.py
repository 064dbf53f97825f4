"""Input checks shared by the hardware functions; each failure is a HardwareError naming the value."""

import math

import torch

from hardware.errors import HardwareError


def int_at_least(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; bools and non-integers are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise HardwareError(f"{name}: got {value!r}; allowed: an integer >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise HardwareError(f"{name}: got {value}; allowed: an integer >= {minimum}{upper}")
    return value


def finite_float(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 open_min: bool = False) -> float:
    """`value` as a finite float inside the given bounds (the lower one open when open_min)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HardwareError(f"{name}: got {value!r}; allowed: a finite number")
    low_bad = minimum is not None and (value <= minimum if open_min else value < minimum)
    if low_bad or (maximum is not None and value > maximum):
        low = "" if minimum is None else (f"> {minimum}" if open_min else f">= {minimum}")
        high = "" if maximum is None else f"<= {maximum}"
        raise HardwareError(f"{name}: got {value}; allowed: {' and '.join(s for s in (low, high) if s)}")
    return float(value)


def conductance_range(g_min_us, g_max_us) -> tuple[float, float]:
    """(g_min_us, g_max_us) with 0 < g_min_us < g_max_us, both finite."""
    g_min = finite_float("g_min_us", g_min_us, 0.0, open_min=True)
    g_max = finite_float("g_max_us", g_max_us)
    if g_max <= g_min:
        raise HardwareError(f"g_max_us: got {g_max}; allowed: a number > g_min_us ({g_min})")
    return g_min, g_max


def tensor(name: str, value, floating: bool = False, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """`value` if it is a torch.Tensor (floating when asked) with one of the allowed numbers of dims."""
    if not isinstance(value, torch.Tensor):
        raise HardwareError(f"{name}: got {type(value).__name__}; allowed: a torch.Tensor")
    if floating and not value.is_floating_point():
        raise HardwareError(f"{name}: got dtype {value.dtype}; allowed: a floating-point tensor")
    if dims is not None and value.dim() not in dims:
        raise HardwareError(f"{name}: got shape {tuple(value.shape)}; allowed: "
                            f"{' or '.join(str(d) for d in dims)} dimensions")
    return value


def generator(value) -> torch.Generator:
    """`value` if it is a torch.Generator (the hardware code never draws from the global RNG)."""
    if not isinstance(value, torch.Generator):
        raise HardwareError(f"generator: got {type(value).__name__}; allowed: a torch.Generator")
    return value

"""How a layer's integer weight levels become memristor devices (frozen, validated once)."""

import dataclasses
import math
from dataclasses import dataclass

from hardware import checks
from hardware.errors import HardwareError

SIGN_SCHEMES = ("differential",)
MAX_WEIGHT_BITS = 32  # levels are int32 in the stages; float64 recombination stays exact below 2**53


@dataclass(frozen=True)
class MappingSpec:
    """How weights become devices. Validates in __post_init__ (HardwareError).

    A weight level n (|n| <= max_level) is stored as its magnitude on a pair of
    devices (G+ for n > 0, G- for n < 0), each magnitude cut into `slices`
    digits of `cell_bits` bits, one device per digit.
    """

    xbar_rows: int = 128
    """Wordlines per crossbar: the layer's inputs (the `in` axis of W). >= 1."""
    xbar_cols: int = 128
    """Bitlines per crossbar: the layer's outputs (the `out` axis of W). >= 1."""
    weight_bits: int = 8
    """Signed weight precision in bits, sign included. 2 .. 32."""
    cell_bits: int = 2
    """Bits stored per device (2**cell_bits conductance states). >= 1."""
    sign_scheme: str = "differential"
    """How signs are stored; only "differential" (G+ - G- pairs) for now."""
    g_min_us: float = 1.0
    """Lowest programmable conductance, microsiemens. > 0."""
    g_max_us: float = 100.0
    """Highest programmable conductance, microsiemens. > g_min_us."""

    def __post_init__(self):
        checks.int_at_least("xbar_rows", self.xbar_rows, 1)
        checks.int_at_least("xbar_cols", self.xbar_cols, 1)
        checks.int_at_least("weight_bits", self.weight_bits, 2, MAX_WEIGHT_BITS)
        checks.int_at_least("cell_bits", self.cell_bits, 1)
        if self.sign_scheme not in SIGN_SCHEMES:
            raise HardwareError(f"sign_scheme: got {self.sign_scheme!r}; allowed: {', '.join(SIGN_SCHEMES)}")
        g_min, g_max = checks.conductance_range(self.g_min_us, self.g_max_us)
        object.__setattr__(self, "g_min_us", g_min)  # ints become floats: one spelling per spec
        object.__setattr__(self, "g_max_us", g_max)

    @property
    def magnitude_bits(self) -> int:
        """Bits of |n|: weight_bits - 1 (the sign goes to the G+/G- choice)."""
        return self.weight_bits - 1

    @property
    def max_level(self) -> int:
        """Largest |n|: 2**(weight_bits-1) - 1."""
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def slices(self) -> int:
        """Devices per magnitude: ceil(magnitude_bits / cell_bits)."""
        return math.ceil(self.magnitude_bits / self.cell_bits)

    @property
    def polarity(self) -> int:
        """Devices per sign scheme: 2 for a differential pair."""
        return 2

    @property
    def cell_levels(self) -> int:
        """Conductance states per device: 2**cell_bits."""
        return 2 ** self.cell_bits

    @property
    def g_step_us(self) -> float:
        """Conductance between adjacent device states, microsiemens."""
        return (self.g_max_us - self.g_min_us) / (self.cell_levels - 1)

    def with_weight_bits(self, bits: int) -> "MappingSpec":
        """The same spec at another weight precision (validated again)."""
        return dataclasses.replace(self, weight_bits=bits)

"""How a layer's integer weight levels become memristor devices (frozen, validated once)."""

import dataclasses
import math
from dataclasses import dataclass

from hardware import checks
from hardware.errors import HardwareError

SIGN_SCHEMES = ("differential", "offset")
MAX_WEIGHT_BITS = 32  # levels are int32 in the stages; float64 recombination stays exact below 2**53


@dataclass(frozen=True)
class MappingSpec:
    """How weights become devices. Validates in __post_init__ (HardwareError).

    A weight level n (|n| <= max_level) is stored on devices of `cell_bits` bits,
    cut into `slices` digits, one device per digit, most significant first:

    - "differential": |n| on a pair of device arrays, G+ for n > 0 and G- for
      n < 0 (polarity 2); magnitude_bits = weight_bits - 1.
    - "offset": the shifted level u = n + max_level in [0, 2*max_level] on one
      array (polarity 1); magnitude_bits = weight_bits. Each crossbar gives one
      bitline to a reference column holding max_level on every row, subtracted
      from every output, so `data_cols` = xbar_cols - 1 bitlines carry weights.
    """

    xbar_rows: int = 128
    """Wordlines per crossbar: the layer's inputs (the `in` axis of W). >= 1."""
    xbar_cols: int = 128
    """Bitlines per crossbar: the layer's outputs (the `out` axis of W). >= 1 (>= 2 for "offset")."""
    weight_bits: int = 8
    """Signed weight precision in bits, sign included. 2 .. 32."""
    cell_bits: int = 2
    """Bits stored per device (2**cell_bits conductance states). >= 1."""
    sign_scheme: str = "differential"
    """How signs are stored: "differential" (G+ - G- pairs) or "offset" (n + max_level, minus a reference column)."""
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
        if self.sign_scheme == "offset" and self.xbar_cols < 2:
            raise HardwareError(f"xbar_cols: got {self.xbar_cols} with sign_scheme 'offset'; allowed: an integer "
                                ">= 2 (one bitline is the reference column)")
        g_min, g_max = checks.conductance_range(self.g_min_us, self.g_max_us)
        object.__setattr__(self, "g_min_us", g_min)  # ints become floats: one spelling per spec
        object.__setattr__(self, "g_max_us", g_max)

    @property
    def magnitude_bits(self) -> int:
        """Bits stored on devices per weight: weight_bits - 1 for "differential" (|n|; the sign picks
        G+ or G-), weight_bits for "offset" (n + max_level reaches 2**weight_bits - 2)."""
        return self.weight_bits if self.sign_scheme == "offset" else self.weight_bits - 1

    @property
    def max_level(self) -> int:
        """Largest |n|: 2**(weight_bits-1) - 1."""
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def slices(self) -> int:
        """Devices (bit slices) per stored value: ceil(magnitude_bits / cell_bits)."""
        return math.ceil(self.magnitude_bits / self.cell_bits)

    @property
    def polarity(self) -> int:
        """Device arrays per sign scheme: 2 for a differential pair, 1 for offset."""
        return 1 if self.sign_scheme == "offset" else 2

    @property
    def data_cols(self) -> int:
        """Bitlines per crossbar that hold weights: xbar_cols, less the reference column for "offset"."""
        return self.xbar_cols - 1 if self.sign_scheme == "offset" else self.xbar_cols

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

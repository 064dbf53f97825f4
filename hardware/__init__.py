"""Device model, crossbar tiling and cost tables for memristor crossbars: tensors in, tensors out.

Conventions: a layer's weight is its GEMM matrix W of shape (out, in); the
`in` axis drives crossbar rows (wordlines), `out` is read on columns
(bitlines). Conductances are in microsiemens, power in mW, area in mm2.
Imports only the standard library, numpy and torch.
"""

from hardware.conductance import (conductance_to_levels, levels_to_conductance, read_noise_weight_variance,
                                  reference_conductance, slice_weights)
from hardware.cost import Component, CostTable, layer_cost, load_cost_table, per_crossbar_cost
from hardware.crossbar import compact, expand, occupied_tiles, physical_crossbars, tile_slices, tiles
from hardware.errors import HardwareError
from hardware.spec import MappingSpec
from hardware.variation import additive_variation, drift, lognormal_variation, read_noise, stuck_at_faults

__all__ = [
    "MappingSpec", "HardwareError",
    "tiles", "physical_crossbars", "tile_slices", "occupied_tiles", "compact", "expand",
    "levels_to_conductance", "conductance_to_levels", "reference_conductance", "read_noise_weight_variance",
    "slice_weights",
    "lognormal_variation", "additive_variation", "stuck_at_faults", "drift", "read_noise",
    "CostTable", "Component", "load_cost_table", "layer_cost", "per_crossbar_cost",
]

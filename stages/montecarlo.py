"""Monte-Carlo evaluation of a mapped network under device non-idealities.

A trial samples every physical device of every kept crossbar block once:
levels -> conductances (G+ / G- pairs, bit slices) -> programming variation ->
stuck-at faults -> recombined weights -> test accuracy. Devices exist only for
kept rows and columns; removed ones stay exactly zero. Each trial has its own
seed, so one trial can be re-run alone and gives the same accuracy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hardware import (MappingSpec, additive_variation, compact, conductance_to_levels, expand,
                      levels_to_conductance, lognormal_variation, stuck_at_faults)
from stages.errors import StageError
from stages.mapping import MappedLayer, MappedNetwork
from stages.models import crossbar_layers
from stages.projections import weights_from_levels
from stages.train import evaluate

VARIATIONS = ("none", "lognormal", "additive")


@dataclass(frozen=True)
class Scenario:
    """One device scenario. sigma is relative (lognormal: of G; additive: of g_max - g_min)."""

    scenario_id: str
    variation: str = "none"
    sigma: float = 0.0
    p_sa0: float = 0.0   # probability a device is stuck at g_min
    p_sa1: float = 0.0   # probability a device is stuck at g_max

    def __post_init__(self):
        if self.variation not in VARIATIONS:
            raise StageError(f"montecarlo.scenarios[{self.scenario_id}].variation: got "
                             f"{self.variation!r}; allowed: {', '.join(VARIATIONS)}")


def trial_seed(run_seed: int, scenario_id: str, trial: int) -> int:
    """Seed of one trial, from the run seed, the scenario's id and the trial index (< 2**63)."""
    key = int.from_bytes(hashlib.sha256(scenario_id.encode()).digest()[:4], "little")
    words = np.random.SeedSequence([run_seed, key, trial]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def device_levels(layer: MappedLayer, spec: MappingSpec, scenario: Scenario,
                  generator: torch.Generator) -> torch.Tensor:
    """Levels read back from perturbed devices, (out, in) float; exact levels when noise-free."""
    keep_out, keep_in = layer.keep_out, layer.keep_in
    g = levels_to_conductance(compact(layer.levels, keep_out, keep_in), spec)  # (P, S, kept_out, kept_in)
    if scenario.variation == "lognormal":
        g = lognormal_variation(g, scenario.sigma, generator, spec.g_min_us, spec.g_max_us)
    elif scenario.variation == "additive":
        g = additive_variation(g, scenario.sigma, generator, spec.g_min_us, spec.g_max_us)
    g = stuck_at_faults(g, scenario.p_sa0, scenario.p_sa1, generator, spec.g_min_us, spec.g_max_us)
    return expand(conductance_to_levels(g, spec), keep_out, keep_in)


def perturb_into(model: nn.Module, mapped: MappedNetwork, spec: MappingSpec, scenario: Scenario,
                 seed: int) -> None:
    """Write one trial's device weights into `model` (layers in forward order, one generator)."""
    generator = torch.Generator().manual_seed(seed)
    layers = crossbar_layers(model)
    with torch.no_grad():
        for name, layer in mapped.layers.items():
            levels = device_levels(layer, spec, scenario, generator)
            layers[name].weight.copy_(weights_from_levels(levels, layer.alpha).reshape(layer.weight_shape))


def run_trials(template: nn.Module, mapped: MappedNetwork, spec: MappingSpec, scenario: Scenario,
               seeds: list[int], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Test accuracy of each trial, in the order of `seeds`."""
    spec = spec.with_weight_bits(mapped.weight_bits)
    model = mapped.load_into(template)
    accuracies = []
    for seed in seeds:
        perturb_into(model, mapped, spec, scenario, seed)
        accuracies.append(evaluate(model, x, y))
    return accuracies

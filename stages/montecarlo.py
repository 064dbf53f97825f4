"""Monte-Carlo evaluation of a mapped network under device non-idealities.

A trial samples every physical device of every kept crossbar block once:
levels -> conductances (G+ / G- pairs, bit slices) -> programming variation ->
stuck-at faults -> drift -> recombined weights -> test accuracy. Read noise is
drawn at every inference: as each device's read noise is independent and
Gaussian, a layer's output noise is Gaussian with variance sum_j x_j^2 Var(W_ij),
which is sampled directly on the outputs (exact in distribution, one draw per
output instead of one per device and input). With `tiles`, each layer's
products are computed tile by tile, slice by slice, through finite DACs and
ADCs (stages.tiles), and summed digitally. Devices exist only for
kept rows and columns; removed ones stay exactly zero. Each trial has its own
seed, so one trial can be re-run alone and gives the same accuracy.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hardware import (MappingSpec, additive_variation, compact, conductance_to_levels, drift, expand,
                      levels_to_conductance, lognormal_variation, read_noise_weight_variance,
                      reference_conductance, stuck_at_faults)
from stages.errors import StageError
from stages.mapping import MappedLayer, MappedNetwork
from stages.models import crossbar_layers
from stages.projections import weights_from_levels
from stages.tiles import calibrate_adc_ranges, crossbar_matmul, unfold_conv_input
from stages.train import evaluate

VARIATIONS = ("none", "lognormal", "additive")


@dataclass(frozen=True)
class Scenario:
    """One device scenario. sigma is relative (lognormal: of G; additive: of g_max - g_min)."""

    scenario_id: str
    variation: str = "none"
    sigma: float = 0.0
    p_sa0: float = 0.0        # probability a device is stuck at g_min
    p_sa1: float = 0.0        # probability a device is stuck at g_max
    read_noise: float = 0.0   # relative std of G at every read (every inference)
    drift_nu: float = 0.0     # G(t) = G0 (t / t0) ** -nu, nu ~ N(drift_nu, drift_nu_std) per device
    drift_nu_std: float = 0.0
    drift_t_s: float = 1.0
    drift_t0_s: float = 1.0
    tiles: bool = False       # simulate each tile's partial sums (implied by adc_bits / dac_bits)
    adc_bits: int = 0         # 0: infinite resolution
    dac_bits: int = 0

    def __post_init__(self):
        if self.variation not in VARIATIONS:
            raise StageError(f"montecarlo.scenarios[{self.scenario_id}].variation: got "
                             f"{self.variation!r}; allowed: {', '.join(VARIATIONS)}")

    @property
    def simulate_tiles(self) -> bool:
        return self.tiles or self.adc_bits > 0 or self.dac_bits > 0


def trial_seed(run_seed: int, scenario_id: str, trial: int) -> int:
    """Seed of one trial, from the run seed, the scenario's id and the trial index (< 2**63)."""
    key = int.from_bytes(hashlib.sha256(scenario_id.encode()).digest()[:4], "little")
    words = np.random.SeedSequence([run_seed, key, trial]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def program(layer: MappedLayer, spec: MappingSpec, scenario: Scenario,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's devices after programming and drift: G (polarity, slices, kept_out, kept_in) in uS,
    and for the offset scheme the reference columns (1, slices, kept_out, kept_in): one column of
    devices per crossbar (per block of data_cols outputs), perturbed like the others, shown per output."""
    g = levels_to_conductance(compact(layer.levels, layer.keep_out, layer.keep_in), spec)
    g = perturb(g, spec, scenario, generator)
    if spec.sign_scheme != "offset":
        return g, None
    kept_out, kept_in = g.shape[-2], g.shape[-1]
    blocks = -(-kept_out // spec.data_cols)
    ref = reference_conductance(spec, kept_in).expand(-1, -1, blocks, -1).contiguous()   # (1, S, blocks, in)
    ref = perturb(ref, spec, scenario, generator)
    return g, ref.repeat_interleave(spec.data_cols, dim=2)[:, :, :kept_out]


def perturb(g: torch.Tensor, spec: MappingSpec, scenario: Scenario, generator: torch.Generator) -> torch.Tensor:
    """Programming variation, then stuck-at faults, then drift, drawn in that order from `generator`."""
    if scenario.variation == "lognormal":
        g = lognormal_variation(g, scenario.sigma, generator, spec.g_min_us, spec.g_max_us)
    elif scenario.variation == "additive":
        g = additive_variation(g, scenario.sigma, generator, spec.g_min_us, spec.g_max_us)
    g = stuck_at_faults(g, scenario.p_sa0, scenario.p_sa1, generator, spec.g_min_us, spec.g_max_us)
    if scenario.drift_nu > 0 or scenario.drift_nu_std > 0:
        g = drift(g, scenario.drift_nu, scenario.drift_nu_std, scenario.drift_t_s, scenario.drift_t0_s,
                  generator)
    return g


class _Trial:
    """Forward hooks that make each crossbar layer compute as its devices do in one trial."""

    def __init__(self, model: nn.Module, mapped: MappedNetwork, spec: MappingSpec, scenario: Scenario,
                 ranges: dict | None):
        self.model, self.mapped, self.spec, self.scenario, self.ranges = model, mapped, spec, scenario, ranges
        self.layers = crossbar_layers(model)
        self.devices: dict[str, torch.Tensor] = {}
        self.variance: dict[str, torch.Tensor] = {}
        self.generator = torch.Generator()

    def program(self, seed: int) -> None:
        """Program every layer's devices (layers in forward order, one generator) and set the weights."""
        self.generator.manual_seed(seed)
        with torch.no_grad():
            for name, layer in self.mapped.layers.items():
                g, ref = program(layer, self.spec, self.scenario, self.generator)
                self.devices[name] = g
                levels = expand(conductance_to_levels(g, self.spec, reference=ref), layer.keep_out, layer.keep_in)
                self.layers[name].weight.copy_(weights_from_levels(levels, layer.alpha).reshape(layer.weight_shape))
                if self.scenario.read_noise > 0:
                    var = read_noise_weight_variance(g, self.spec, layer.alpha, self.scenario.read_noise,
                                                     reference=ref)
                    self.variance[name] = expand(var, layer.keep_out, layer.keep_in).reshape(layer.weight_shape)

    def __enter__(self):
        s = self.scenario
        self.handles = [] if not (s.simulate_tiles or s.read_noise > 0) else [
            module.register_forward_hook(functools.partial(self._forward, name))
            for name, module in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _forward(self, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if self.scenario.simulate_tiles:
            output = self._tiles(name, module, x)
        if self.scenario.read_noise > 0:
            var = self.variance[name]
            spread = (F.conv2d(x * x, var, None, module.stride, module.padding, module.dilation, module.groups)
                      if isinstance(module, nn.Conv2d) else (x * x) @ var.T)
            noise = torch.randn(output.shape, generator=self.generator, dtype=output.dtype)
            output = output + spread.clamp_min(0).sqrt() * noise
        return output

    def _tiles(self, name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        layer, s = self.mapped.layers[name], self.scenario
        fold = None
        if isinstance(module, nn.Conv2d):
            x, fold = unfold_conv_input(x, module)
        lo, hi, adc = self.ranges[name]
        y_kept = crossbar_matmul(x[:, layer.keep_in], self.devices[name], self.spec, layer.alpha,
                                 adc_bits=s.adc_bits or None, dac_bits=s.dac_bits or None,
                                 x_range=(lo, hi), adc_ranges=adc)
        y = x.new_zeros(x.shape[0], layer.keep_out.numel())
        y[:, layer.keep_out] = y_kept
        y = fold(y) if fold is not None else y
        if module.bias is not None:
            y = y + (module.bias[None, :, None, None] if fold is not None else module.bias)
        return y


@torch.inference_mode()
def input_ranges(model: nn.Module, mapped: MappedNetwork, spec: MappingSpec,
                 calibration: torch.Tensor) -> dict[str, tuple]:
    """Per layer: (input min, input max, ADC ranges) from the ideal mapped model on calibration
    inputs; the ADC ranges come from the ideal conductances (hardware calibrates at mapping)."""
    seen: dict[str, list] = {}
    layers = crossbar_layers(model)
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.setdefault(n, []).append(inp[0]))
             for n, m in layers.items()]
    model.eval()
    model(calibration)
    for h in hooks:
        h.remove()
    ranges = {}
    for name, layer in mapped.layers.items():
        x = torch.cat([t.flatten() for t in seen[name]])
        lo, hi = float(x.min()), float(x.max())
        ideal = levels_to_conductance(compact(layer.levels, layer.keep_out, layer.keep_in), spec)
        ranges[name] = (lo, hi, calibrate_adc_ranges(ideal, spec, lo, hi))
    return ranges


def run_trials(template: nn.Module, mapped: MappedNetwork, spec: MappingSpec, scenario: Scenario,
               seeds: list[int], x: torch.Tensor, y: torch.Tensor,
               calibration: torch.Tensor | None = None) -> list[float]:
    """Test accuracy of each trial, in the order of `seeds`.

    Tile simulation calibrates the DAC input range and the ADC ranges on `calibration`
    inputs (training data; default: the first 256 of x) through the ideal mapped model.
    """
    spec = spec.with_weight_bits(mapped.weight_bits)
    if scenario.simulate_tiles and spec.sign_scheme != "differential":
        raise StageError(f"montecarlo scenario {scenario.scenario_id!r}: tile-level simulation (tiles, "
                         f"adc_bits, dac_bits) needs mapping.sign_scheme 'differential'; got {spec.sign_scheme!r}")
    model = mapped.load_into(template)
    ranges = None
    if scenario.simulate_tiles:
        ranges = input_ranges(model, mapped, spec, calibration if calibration is not None else x[:256])
    trial = _Trial(model, mapped, spec, scenario, ranges)
    accuracies = []
    for seed in seeds:
        trial.program(seed)
        with trial:
            accuracies.append(evaluate(model, x, y))
    return accuracies

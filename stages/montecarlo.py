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

import contextlib
import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hardware import (
    MappingSpec,
    additive_variation,
    compact,
    conductance_to_levels,
    drift,
    levels_to_conductance,
    lognormal_variation,
    read_noise_weight_variance,
    reference_conductance,
    stuck_at_faults,
)
from stages.errors import StageError
from stages.mapping import MappedLayer, MappedNetwork
from stages.models import LayerGraph, crossbar_layers, input_channel_groups, layer_graph
from stages.projections import weights_from_levels
from stages.tiles import Crossbars, calibrate_adc_ranges, unfold_conv_input

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


def ideal_conductance(layer: MappedLayer, spec: MappingSpec) -> torch.Tensor:
    """The layer's devices as mapped, before any non-ideality: (polarity, slices, kept_out, kept_in) uS."""
    return levels_to_conductance(compact(layer.levels, layer.keep_out, layer.keep_in), spec)


def reference_columns(spec: MappingSpec, kept_out: int, kept_in: int) -> torch.Tensor:
    """The offset scheme's ideal reference devices: one column per crossbar (per block of
    data_cols outputs), (1, slices, blocks, kept_in) uS."""
    blocks = -(-kept_out // spec.data_cols)
    return reference_conductance(spec, kept_in).expand(-1, -1, blocks, -1).contiguous()


def per_output(ref: torch.Tensor, spec: MappingSpec, kept_out: int) -> torch.Tensor:
    """Reference devices (..., 1, slices, blocks, kept_in) shown per output: (..., 1, slices, kept_out, kept_in)."""
    return ref.repeat_interleave(spec.data_cols, dim=-2)[..., :kept_out, :]


def program(layer: MappedLayer, spec: MappingSpec, scenario: Scenario,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's devices after programming and drift: G (polarity, slices, kept_out, kept_in) in uS,
    and for the offset scheme the reference columns (1, slices, kept_out, kept_in), perturbed like the
    others. One trial, drawn from `generator` on its device: the reference the batched trials
    (_Trials) reproduce."""
    where = generator.device
    g = perturb(ideal_conductance(layer, spec).to(where), spec, scenario, generator)
    if spec.sign_scheme != "offset":
        return g, None
    ref = perturb(reference_columns(spec, g.shape[-2], g.shape[-1]).to(where), spec, scenario, generator)
    return g, per_output(ref, spec, g.shape[-2])


def draw_plan(scenario: Scenario) -> tuple[str, ...]:
    """The draws `perturb` makes for one tensor of devices, in order: "variation" and "drift"
    are standard normal, "stuck" uniform [0, 1); an effect of zero strength draws nothing."""
    plan = []
    if scenario.variation != "none" and scenario.sigma > 0:
        plan.append("variation")
    if scenario.p_sa0 > 0 or scenario.p_sa1 > 0:
        plan.append("stuck")
    if scenario.drift_nu_std > 0:
        plan.append("drift")
    return tuple(plan)


def perturb(g: torch.Tensor, spec: MappingSpec, scenario: Scenario, generator: torch.Generator | None,
            noise: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Programming variation, then stuck-at faults, then drift, drawn in that order from `generator`,
    or taken from `noise` ({name in draw_plan: draws broadcasting with g}, e.g. one row per trial)."""
    noise = noise or {}
    if scenario.variation == "lognormal":
        g = lognormal_variation(g, scenario.sigma, generator, spec.g_min_us, spec.g_max_us,
                                noise=noise.get("variation"))
    elif scenario.variation == "additive":
        g = additive_variation(g, scenario.sigma, generator, spec.g_min_us, spec.g_max_us,
                               noise=noise.get("variation"))
    g = stuck_at_faults(g, scenario.p_sa0, scenario.p_sa1, generator, spec.g_min_us, spec.g_max_us,
                        noise=noise.get("stuck"))
    if scenario.drift_nu > 0 or scenario.drift_nu_std > 0:
        g = drift(g, scenario.drift_nu, scenario.drift_nu_std, scenario.drift_t_s, scenario.drift_t0_s,
                  generator, noise=noise.get("drift"))
    return g


EVAL_SAMPLES = 128         # test samples per trial in one forward pass (default): the same for every batch
                           # size, so a trial's arithmetic (and accuracy) does not depend on the trials beside it
DEVICE_BUDGET = 256 << 20  # bytes of device tensors (noise buffers, perturbed copies, read-back) per batch, CPU
GPU_MEMORY_SHARE = 0.25    # on CUDA: the share of the GPU's free memory a batch's device tensors may take


def _in_order(idx: torch.Tensor) -> bool:
    return bool((idx == torch.arange(idx.numel(), device=idx.device)).all())


def _gather(x: torch.Tensor, dim: int, idx: torch.Tensor, in_order: bool) -> torch.Tensor:
    """x's entries `idx` along `dim`; x itself where idx reads all of them in order."""
    return x if in_order and idx.numel() == x.shape[dim] else x.index_select(dim, idx)


class _Layer:
    """One crossbar layer as its crossbars compute it: kept rows and columns only.

    Linear: x[..., kept_in] @ W_kept^T. Conv2d: a conv over the input channels
    that keep any (c, kh, kw) column, with the kept filters; shape-pruned
    columns inside a kept channel are zeros of its weight. Outputs of pruned
    filters are exact zeros (plus the bias, as the module computes them), or,
    when `compact_out`, are not computed at all: every layer after it sees the
    kept channels only (see `_compaction`) and reads them with `fed_compact`.
    """

    def __init__(self, module: nn.Module, layer: MappedLayer, spec: MappingSpec, device):
        self.module, self.layer, self.conv = module, layer, isinstance(module, nn.Conv2d)
        if self.conv and module.groups != 1:
            raise StageError(f"montecarlo: layer {layer.name!r} is a grouped Conv2d (groups={module.groups}); "
                             "allowed: groups=1 (a crossbar layer is one GEMM)")
        self.out_idx = layer.keep_out.nonzero().squeeze(1).to(device)
        self.in_idx = layer.keep_in.nonzero().squeeze(1).to(device)
        self.in_order = _in_order(self.in_idx)
        self.in_channels = getattr(module, "in_channels", None)   # of a conv: what its input holds
        if self.conv:   # kept input channels, and each kept column's place in (kept channels, kh, kw)
            taps = module.kernel_size[0] * module.kernel_size[1]
            channels = layer.keep_in.view(module.in_channels, taps).any(1)
            self.channel_idx = channels.nonzero().squeeze(1).to(device)
            self.channels_in_order = _in_order(self.channel_idx)
            place = torch.full((module.in_channels, taps), -1, dtype=torch.long)
            place[channels] = torch.arange(int(channels.sum()) * taps).view(-1, taps)
            self.col_place = place.flatten()[layer.keep_in].to(device)
            self.width = int(channels.sum()) * taps
        self.kept_bias = module.bias.detach()[self.out_idx] if module.bias is not None else None
        self.compact_out = False
        self.whole_out = bool(layer.keep_out.all())   # every filter kept: nothing to scatter
        self.g = ideal_conductance(layer, spec).to(device)
        self.ref = None
        if spec.sign_scheme == "offset":
            self.ref = reference_columns(spec, self.g.shape[-2], self.g.shape[-1]).to(device)

    def fed_compact(self, producer_keep: torch.Tensor) -> None:
        """Read this layer's inputs from a producer whose output holds its kept channels only:
        each kept column (channel c, position g) moves to (rank of c among the kept, g)."""
        group = input_channel_groups(self.layer.keep_in.numel(), producer_keep.numel())
        rank = (torch.cumsum(producer_keep.to(torch.long), 0) - 1).to(self.in_idx.device)
        self.in_idx = rank[self.in_idx // group] * group + self.in_idx % group
        self.in_order = _in_order(self.in_idx)
        if self.conv:
            self.channel_idx = rank[self.channel_idx]
            self.channels_in_order = _in_order(self.channel_idx)
            self.in_channels = int(producer_keep.sum())

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The device tensors a trial programs, in program()'s order: the array, then the reference columns."""
        return [("g", tuple(self.g.shape))] + ([("ref", tuple(self.ref.shape))] if self.ref is not None else [])

    def kernel(self, weights: torch.Tensor) -> torch.Tensor:
        """(T, kept_out, kept_in) -> the per-trial weight the compacted forward uses."""
        if not self.conv:
            return weights
        m = self.module
        full = weights.new_zeros(*weights.shape[:-1], self.width)
        full[..., self.col_place] = weights
        return full.reshape(weights.shape[0] * weights.shape[1], -1, *m.kernel_size)   # (T * kept_out, Ck, kh, kw)

    def gemm_input(self, x: torch.Tensor, trials: int):
        """Per trial, the kept GEMM inputs (T, rows, kept_in) and a fold back to the module's output layout."""
        if self.conv:
            x2d, fold = unfold_conv_input(x, self.module, in_channels=self.in_channels)
            return _gather(x2d, 1, self.in_idx, self.in_order).reshape(trials, -1, self.in_idx.numel()), fold
        return _gather(x.reshape(trials, -1, x.shape[-1]), -1, self.in_idx, self.in_order), None

    def grouped_conv(self, x: torch.Tensor, kernel: torch.Tensor, trials: int) -> torch.Tensor:
        """Grouped conv of each trial's kept input channels with its kernel -> (T, N, kept_out, H', W')."""
        m = self.module
        x = _gather(x, 1, self.channel_idx, self.channels_in_order)
        if m.padding_mode != "zeros":
            x, padding = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode), 0
        else:
            padding = m.padding
        n = x.shape[0] // trials
        x = x.reshape(trials, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
        y = F.conv2d(x, kernel, None, m.stride, padding, m.dilation, groups=trials)
        return y.reshape(n, trials, -1, *y.shape[2:]).transpose(0, 1)

    def scatter(self, y_kept: torch.Tensor, dim: int) -> torch.Tensor:
        """The module's output from its kept outputs along `dim` (the channel axis): the bias
        everywhere, plus the kept outputs at the kept filters' places."""
        m, shape = self.module, list(y_kept.shape)
        if self.compact_out or self.whole_out:
            if m.bias is None:
                return y_kept
            view = [1] * len(shape)
            view[dim] = -1
            return y_kept + self.kept_bias.view(view)
        shape[dim] = m.out_channels if self.conv else m.out_features
        if m.bias is None:
            return y_kept.new_zeros(shape).index_copy_(dim, self.out_idx, y_kept)
        view = [1] * len(shape)
        view[dim] = -1
        return (m.bias.view(view).expand(shape).clone()
                .index_copy_(dim, self.out_idx, y_kept + self.kept_bias.view(view)))


def _compaction(model: nn.Module, mapped: MappedNetwork, layers: dict[str, _Layer],
                graph: LayerGraph) -> dict[nn.Module, torch.Tensor]:
    """Let pruned filters' outputs go uncomputed where nothing reads them.

    A layer's output stays compact (kept channels only) when the layer graph
    says it reaches crossbar layers only, through channel-preserving ops (ReLU,
    pooling, flatten, dropout, BatchNorm), and each of those consumers reads
    none of its pruned channels (the cascade removed them). The consumers then
    gather from the compact tensor, and the BatchNorms on the way keep their
    kept channels' parameters. Returns those BatchNorms and their kept channels.
    """
    modules = dict(model.named_modules())
    norms = {}
    for producer in graph.filter_prunable:
        keep = mapped.layers[producer].keep_out
        consumers = graph.consumers[producer]
        if bool(keep.all()) or not consumers:
            continue
        reads_pruned = [bool((mapped.layers[c].keep_in & ~keep.repeat_interleave(
            input_channel_groups(mapped.layers[c].keep_in.numel(), keep.numel()))).any()) for c in consumers]
        if any(reads_pruned):
            continue
        layers[producer].compact_out = True
        for c in consumers:
            layers[c].fed_compact(keep)
        norms.update({modules[n]: keep.nonzero().squeeze(1) for n in graph.norms[producer]})
    return norms


def _trial_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each trial's inputs times its weights transposed: (T, B, in), (T, out, in) -> (T, B, out).
    For one output torch.bmm takes another kernel (a matrix-vector product) for one trial than
    for several, which can round differently; that case computes a zero second output and drops it."""
    if w.shape[-2] == 1:
        return torch.bmm(x, F.pad(w, (0, 0, 0, 1)).transpose(1, 2))[..., :1]
    return torch.bmm(x, w.transpose(1, 2))


def _per_trial(x: torch.Tensor, trials: int) -> torch.Tensor:
    """x repeated once per trial on the batch axis."""
    return x.repeat(trials, *([1] * (x.dim() - 1)))


def _kept_channels_norm(norm: nn.Module, keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm (in eval mode) on a tensor that holds only the `keep` channels."""
    pick = lambda t: None if t is None else t.index_select(0, keep)
    return F.batch_norm(x, pick(norm.running_mean), pick(norm.running_var), pick(norm.weight), pick(norm.bias),
                        False, 0.0, norm.eps)


@contextlib.contextmanager
def _float32_convolutions():
    """cuDNN convolutions in full float32 for a while (torch lets them use TF32 by default, whose
    10-bit mantissa would add its own error to the simulated devices'); a no-op on the CPU."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


class _Trials:
    """Monte-Carlo trials of one scenario, several at a time: each trial programs every device of
    every kept crossbar block from its own generator (trial-major, layers in forward order: the
    same draws whether it runs alone or with others), into preallocated buffers; the perturbation,
    read-back and forward pass then run for all of them at once, the trials stacked on the batch
    axis of the non-crossbar layers and batched through each crossbar layer. Where the layer graph
    shows the test inputs reach crossbar layers through per-sample ops only, they go in once, not
    once per trial, and those layers broadcast them over the trials."""

    def __init__(self, model: nn.Module, mapped: MappedNetwork, spec: MappingSpec, scenario: Scenario,
                 ranges: dict | None, device, capacity: int, eval_samples: int = EVAL_SAMPLES):
        self.model, self.spec, self.scenario, self.ranges = model, spec, scenario, ranges
        self.eval_samples = eval_samples
        self.device, self.capacity = torch.device(device), capacity
        modules = crossbar_layers(model)
        self.layers = {name: _Layer(modules[name], layer, spec, self.device) for name, layer in mapped.layers.items()}
        graph = layer_graph(model)
        self.norms = _compaction(model, mapped, self.layers, graph)
        self.input_layers = frozenset(graph.input_consumers)
        self.rows = 0   # test samples in the forward pass under way, when its input is shared
        self.plan = draw_plan(scenario)
        self.buffers = {(name, tensor, kind): torch.empty(capacity, *shape, device=self.device)
                        for name, layer in self.layers.items() for tensor, shape in layer.shapes()
                        for kind in self.plan}
        self.generators: list[torch.Generator] = []
        self.weights: dict[str, torch.Tensor] = {}
        self.devices: dict[str, torch.Tensor] = {}   # each layer's programmed devices (T, P, S, out, in)
        self.crossbars: dict[str, Crossbars] = {}
        self.variance: dict[str, torch.Tensor] = {}

    def program(self, seeds: list[int]) -> None:
        """Draw and apply each trial's programming noise; set each layer's per-trial weights."""
        trials = len(seeds)
        if not 1 <= trials <= self.capacity:
            raise StageError(f"trials per batch: got {trials}; allowed: 1 to {self.capacity}")
        self.generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        for t, generator in enumerate(self.generators):   # trial-major: as if each trial ran alone
            for name, layer in self.layers.items():
                for tensor, shape in layer.shapes():
                    for kind in self.plan:
                        sample = torch.randn if kind != "stuck" else torch.rand
                        sample(shape, generator=generator, out=self.buffers[name, tensor, kind][t])
        s = self.scenario
        for name, layer in self.layers.items():
            noise = {kind: self.buffers[name, "g", kind][:trials] for kind in self.plan}
            g = perturb(layer.g.expand(trials, *layer.g.shape), self.spec, s, None, noise)
            ref = None
            if layer.ref is not None:
                noise = {kind: self.buffers[name, "ref", kind][:trials] for kind in self.plan}
                ref = per_output(perturb(layer.ref.expand(trials, *layer.ref.shape), self.spec, s, None, noise),
                                 self.spec, g.shape[-2])
            self.devices[name] = g
            if s.simulate_tiles:
                self.crossbars[name] = Crossbars(g, self.spec, layer.layer.alpha, adc_bits=s.adc_bits or None,
                                                 adc_ranges=self.ranges[name][2])
            self.weights[name] = layer.kernel(weights_from_levels(
                conductance_to_levels(g, self.spec, reference=ref), layer.layer.alpha))
            if s.read_noise > 0:
                var = read_noise_weight_variance(g, self.spec, layer.layer.alpha, s.read_noise, reference=ref)
                self.variance[name] = var if s.simulate_tiles or not layer.conv else layer.kernel(var)

    @torch.inference_mode()
    def accuracies(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Top-1 test accuracy of each programmed trial on (x, y)."""
        trials = len(self.generators)
        self.model.eval()
        correct = torch.zeros(trials, dtype=torch.long, device=self.device)
        step = self.eval_samples
        with self, _float32_convolutions():
            for start in range(0, len(x), step):
                xb = x[start:start + step].to(self.device)
                self.rows = len(xb) if self.input_layers else 0
                logits = self.model(xb if self.rows else _per_trial(xb, trials))
                predicted = logits.reshape(trials, len(xb), -1).argmax(-1)
                correct += (predicted == y[start:start + step].to(self.device)).sum(1)
        return [c / len(x) for c in correct.tolist()]

    def __enter__(self):
        for name, layer in self.layers.items():
            layer.module.forward = functools.partial(self._forward, name)
        for norm, keep in self.norms.items():
            norm.forward = functools.partial(_kept_channels_norm, norm, keep.to(self.device))
        return self

    def __exit__(self, *exc):
        for module in [layer.module for layer in self.layers.values()] + list(self.norms):
            del module.forward

    def _forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for every trial: x and the result stack the trials on the batch axis."""
        layer, s, trials = self.layers[name], self.scenario, len(self.generators)
        shared = name in self.input_layers and len(x) == self.rows   # the test inputs themselves
        if shared and layer.conv:   # a conv over the trials' stacked inputs needs them per trial
            x, shared = _per_trial(x, trials), False
        if s.simulate_tiles or not layer.conv:   # one GEMM per trial on the kept rows and columns
            if shared:   # every trial's weights times the same inputs: a broadcast, not a copy per trial
                x_kept, fold = layer.gemm_input(x, 1)[0].expand(trials, -1, -1), None
            else:
                x_kept, fold = layer.gemm_input(x, trials)
            if s.simulate_tiles:
                lo, hi, _ = self.ranges[name]
                y = self.crossbars[name].read(x_kept, dac_bits=s.dac_bits or None, x_range=(lo, hi))
            else:
                y = _trial_gemm(x_kept, self.weights[name])
            if s.read_noise > 0:
                spread = _trial_gemm(x_kept * x_kept, self.variance[name])
                y = y + spread.clamp_min(0).sqrt() * self._normal(name, y.shape)
            if fold is None:
                y = layer.scatter(y, dim=-1)
                return y.reshape(-1, y.shape[-1])
            return fold(layer.scatter(y.reshape(-1, y.shape[-1]), dim=-1))
        y = layer.grouped_conv(x, self.weights[name], trials)   # a grouped conv over the trials
        if s.read_noise > 0:
            spread = layer.grouped_conv(x * x, self.variance[name], trials)
            y = y + spread.clamp_min(0).sqrt() * self._normal(name, y.shape)
        return layer.scatter(y, dim=2).flatten(0, 1)

    def _normal(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Read noise: standard normal draws of `shape` (trials first), each trial's from its generator."""
        key = (name, "read", tuple(shape))
        if key not in self.buffers:
            self.buffers = {k: v for k, v in self.buffers.items() if k[1] != "read" or k[0] != name}
            self.buffers[key] = torch.empty(shape, device=self.device)
        out = self.buffers[key]
        for t, generator in enumerate(self.generators):
            torch.randn(shape[1:], generator=generator, out=out[t])
        return out


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
        ranges[name] = (lo, hi, calibrate_adc_ranges(ideal_conductance(layer, spec), spec, lo, hi))
    return ranges


def device_budget(device) -> int:
    """Bytes a batch's device tensors may take: DEVICE_BUDGET on the CPU (cache-sized batches are
    fastest there), GPU_MEMORY_SHARE of the free memory on CUDA (so big models still batch)."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEVICE_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    return max(DEVICE_BUDGET, int(free * GPU_MEMORY_SHARE))


def trial_bytes(mapped: MappedNetwork, spec: MappingSpec) -> int:
    """Bytes one trial's device tensors take while it is programmed: per device, a float32 noise
    buffer per draw, the perturbed copy and the read-back temporaries (about 32 B, a bound)."""
    devices = sum(int(l.keep_out.sum()) * int(l.keep_in.sum()) for l in mapped.layers.values())
    return max(1, devices * spec.polarity * spec.slices * 32)


def run_trials(template: nn.Module, mapped: MappedNetwork, spec: MappingSpec, scenario: Scenario,
               seeds: list[int], x: torch.Tensor, y: torch.Tensor,
               calibration: torch.Tensor | None = None, *, batch_trials: int = 50,
               device: str = "cpu", eval_samples: int = EVAL_SAMPLES) -> list[float]:
    """Test accuracy of each trial, in the order of `seeds`.

    batch_trials trials are programmed and evaluated together (1: one at a
    time; fewer where their devices would pass `device_budget`), eval_samples
    test samples per trial in each forward pass; a trial's accuracy does not
    depend on which others share its batch (for a given eval_samples).
    device: where devices are sampled and the network runs ("cuda" samples the
    noise on the GPU, from CUDA generators: the same seed gives other draws
    than on the CPU; convolutions run in full float32, not TF32). Tile
    simulation calibrates the DAC input range and the ADC ranges on
    `calibration` inputs (training data; default: the first 256 of x) through
    the ideal mapped model.
    """
    for name, value in (("batch_trials", batch_trials), ("eval_samples", eval_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StageError(f"{name}: got {value!r}; allowed: an integer >= 1")
    spec = spec.with_weight_bits(mapped.weight_bits)
    if scenario.simulate_tiles and spec.sign_scheme != "differential":
        raise StageError(f"montecarlo scenario {scenario.scenario_id!r}: tile-level simulation (tiles, "
                         f"adc_bits, dac_bits) needs mapping.sign_scheme 'differential'; got {spec.sign_scheme!r}")
    model = mapped.load_into(template).to(device)
    ranges = None
    if scenario.simulate_tiles:
        ranges = input_ranges(model, mapped, spec, (calibration if calibration is not None else x[:256]).to(device))
    capacity = max(1, min(batch_trials, len(seeds), device_budget(device) // trial_bytes(mapped, spec)))
    trials = _Trials(model, mapped, spec, scenario, ranges, device, capacity, eval_samples)
    x, y = x.to(device), y.to(device)   # resident for every batch of trials
    accuracies = []
    for start in range(0, len(seeds), capacity):
        trials.program(seeds[start:start + capacity])
        accuracies += trials.accuracies(x, y)
    return accuracies

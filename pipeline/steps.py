"""The stages, driven by a Config: plain functions, no Ray.

The Ray DAG (pipeline.run) and the Tune trainable (pipeline.tuning) call
these; tests call them directly, in-process.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from torch import nn

from hardware import MappingSpec, load_cost_table
from pipeline.config import Config
from pipeline.errors import ConfigError
from stages.admm import admm_train
from stages.admm import hard_project
from stages.data import DataSplits, load_data
from stages.mapping import MappedNetwork, layer_rows, map_network
from stages.models import LayerGraph, build_model, crossbar_layers, layer_graph
from stages.montecarlo import Scenario, run_trials, trial_seed
from stages.progressive import progressive_map
from stages.projections import STRUCTURES, LayerRule
from stages.retrain import retrain
from stages.train import EpochCallback, Runtime, evaluate, prepare_worker, pretrain, resolve_device

IMAGE_MODELS = ("convnet", "lenet5", "vgg16", "resnet18")

SPLITS = ("val", "test")


def data_for(cfg: Config) -> DataSplits:
    d = cfg.data
    if d.name == "digits" and cfg.model.name in ("lenet5", "vgg16", "resnet18"):
        raise ConfigError(f"model.name: {cfg.model.name!r} needs "
                          f"{'28x28 MNIST-like' if cfg.model.name == 'lenet5' else '32x32 CIFAR'} images; "
                          f"data.name is 'digits' (8x8): use mlp or convnet, or another data set")
    return load_data(d.name, as_images=cfg.model.name in IMAGE_MODELS, val_fraction=d.val_fraction,
                     test_fraction=d.test_fraction, split_seed=d.split_seed, root=d.root,
                     download=d.download)


def runtime_for(cfg: Config, gpus: float) -> Runtime:
    device = resolve_device(gpus)
    return Runtime(device, cfg.resources.mixed_precision and device == "cuda")


def template_for(cfg: Config, data: DataSplits, model: nn.Module | None = None) -> nn.Module:
    """The untrained model: `model` (a copy) when the caller brings one, else the config's
    architecture, whose initial weights depend on the run seed only."""
    if model is not None:
        return copy.deepcopy(model).cpu()
    return build_model(cfg.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                       hidden=cfg.model.hidden, seed=cfg.seed)


def check_layers(cfg: Config, template: nn.Module) -> None:
    """Refuse per-layer settings naming a layer the model does not have, or pruning it cannot take."""
    names = list(crossbar_layers(template))
    for field, layers in (("admm.layers", cfg.admm.layers), ("tune.ratios", cfg.tune.ratios)):
        for layer in layers:
            if layer not in names:
                raise ConfigError(f"{field}.{layer}: no such layer in model {cfg.model.name!r}; "
                                  f"allowed: {', '.join(names)}")
    graph = layer_graph(template)
    effective_ratios(cfg, graph, {layer: p.model_dump() for layer, p in cfg.admm.layers.items()})
    for layer, by_structure in cfg.tune.ratios.items():
        if by_structure.get("filter", (0, 0))[1] > 0 and layer not in graph.filter_prunable:
            raise ConfigError(f"tune.ratios.{layer}.filter: got {list(by_structure['filter'])}; allowed: "
                              "[0, 0] for this layer, since its output joins a residual sum or is the "
                              "model's output (use shape or block pruning)")


def effective_ratios(cfg: Config, graph: LayerGraph, named: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Prune ratios of every crossbar layer: its own entry, else admm.all_layers.

    all_layers skips the first / last layer unless admm.first_layer / last_layer is
    "prune", and drops its filter ratio where the graph forbids filter pruning
    (residual joins, the output layer). A named layer asking for filter pruning
    where the graph forbids it is refused.
    """
    default = cfg.admm.all_layers.model_dump()
    first, last = graph.order[0], graph.order[-1]
    ratios = {}
    for name in graph.order:
        if name in named:
            r = {s: float(named[name].get(s, 0.0)) for s in STRUCTURES}
            if r["filter"] > 0 and name not in graph.filter_prunable:
                raise ConfigError(
                    f"admm.layers.{name}.filter: got {r['filter']}; allowed: 0 for this layer, since its "
                    "output joins a residual sum or is the model's output (use shape or block pruning)")
        elif (name == first and cfg.admm.first_layer == "keep") or (name == last and cfg.admm.last_layer == "keep"):
            r = {s: 0.0 for s in STRUCTURES}
        else:
            r = dict(default)
            if name not in graph.filter_prunable:
                r["filter"] = 0.0
        ratios[name] = r
    return ratios


def spec_for(cfg: Config) -> MappingSpec:
    m = cfg.mapping
    return MappingSpec(xbar_rows=m.xbar_rows, xbar_cols=m.xbar_cols, weight_bits=m.weight_bits,
                       cell_bits=m.cell_bits, sign_scheme=m.sign_scheme, g_min_us=m.g_min_us,
                       g_max_us=m.g_max_us)


def default_ratios(cfg: Config) -> dict[str, dict[str, float]]:
    return {layer: p.model_dump() for layer, p in cfg.admm.layers.items()}


def rules_for(cfg: Config, template: nn.Module, ratios: dict[str, dict[str, float]]) -> dict[str, LayerRule]:
    """One rule per crossbar layer: its effective prune ratios, plus quantization when admm.quantize."""
    bits = cfg.mapping.weight_bits if cfg.admm.quantize else None
    tile = (cfg.mapping.xbar_rows, cfg.mapping.xbar_cols)
    rules = {}
    for name, r in effective_ratios(cfg, layer_graph(template), ratios).items():
        rule = LayerRule(**r, weight_bits=bits, tile=tile)
        if rule.prunes or bits is not None:
            rules[name] = rule
    return rules


def block_layers(rules: dict[str, LayerRule]) -> frozenset[str]:
    return frozenset(n for n, r in rules.items() if r.block > 0)


def mapping_of(cfg: Config, model: nn.Module, masks: dict, rules: dict[str, LayerRule],
               graph: LayerGraph | None = None) -> MappedNetwork:
    m = cfg.mapping
    return map_network(model, masks, m.weight_bits, m.cascade, (m.xbar_rows, m.xbar_cols),
                       block_layers(rules), graph=graph)


SCENARIO_FIELDS = ("variation", "sigma", "p_sa0", "p_sa1", "read_noise", "drift_nu", "drift_nu_std",
                   "drift_t_s", "drift_t0_s", "tiles", "adc_bits", "dac_bits")


def scenarios_for(cfg: Config) -> list[Scenario]:
    return [Scenario(s.key(), **{f: getattr(s, f) for f in SCENARIO_FIELDS})
            for s in cfg.montecarlo.all_scenarios()]


def accuracy_rows(stage: str, model: nn.Module, data: DataSplits) -> list[dict]:
    rows = []
    for split in SPLITS:
        x, y = data.split(split)
        rows.append({"stage": stage, "split": split, "accuracy": evaluate(model, x, y),
                     "n_samples": len(y)})
    return rows


@dataclass
class Footprint:
    """Weights and crossbars of a mapping."""

    weights: int
    nonzeros: int
    crossbars: int

    @property
    def weight_compression(self) -> float:
        return self.weights / max(self.nonzeros, 1)


def footprint(cfg: Config, mapped: MappedNetwork) -> Footprint:
    rows = layer_rows(mapped, spec_for(cfg), cfg.hardware.baseline_weight_bits)
    dense = [r for r in rows if r["variant"] == "dense"]
    comp = [r for r in rows if r["variant"] == "compressed"]
    return Footprint(sum(r["weights"] for r in dense), sum(r["nonzeros"] for r in comp),
                     sum(r["crossbars"] for r in comp))


def score(val_accuracy: float, compression: float, target: float) -> float:
    """Tune's objective: validation accuracy after hard projection for trials that meet the
    compression target; below it, compression / target - 1 (in (-1, 0)), so every trial
    that meets the target ranks above every trial that does not."""
    return val_accuracy if compression >= target else compression / target - 1.0


# ---- stages ------------------------------------------------------------------------------

def run_pretrain(cfg: Config, data: DataSplits, on_epoch_end: EpochCallback = None, *,
                 model: nn.Module | None = None):
    """-> (state_dict, accuracy rows)."""
    prepare_worker()
    template = template_for(cfg, data, model)
    p = cfg.pretrain
    state, _ = pretrain(template, data, epochs=p.epochs, lr=p.lr, optimizer=p.optimizer,
                        momentum=p.momentum, weight_decay=p.weight_decay,
                        batch_size=cfg.data.batch_size, seed=cfg.seed, on_epoch_end=on_epoch_end,
                        runtime=runtime_for(cfg, cfg.resources.gpus_per_task))
    trained = copy.deepcopy(template)
    trained.load_state_dict(state)
    return state, accuracy_rows("pretrain", trained, data)


def admm_iterations(cfg: Config) -> int:
    """Epochs a search trial reports: admm.epochs, or 1 for the one-shot magnitude method."""
    return cfg.admm.epochs if cfg.admm.method == "admm" else 1


def run_admm(cfg: Config, data: DataSplits, state: dict, *, rho: float,
             ratios: dict[str, dict[str, float]], on_epoch_end: EpochCallback = None,
             model: nn.Module | None = None):
    """One compression run at (rho, ratios) -> (projected state_dict, masks, last epoch's metrics).

    method "admm": ADMM from the pretrained weights; "magnitude": the one-shot projection of
    the pretrained weights onto the same sets (L2 norms of the same structures).
    """
    prepare_worker()
    template = template_for(cfg, data, model)
    template.load_state_dict(state)
    rules = rules_for(cfg, template, ratios)
    a = cfg.admm

    def projected_metrics(model: nn.Module, masks: dict, graph: LayerGraph | None = None) -> dict:
        fp = footprint(cfg, mapping_of(cfg, model, masks, rules, graph))
        return {"weight_compression": fp.weight_compression, "crossbars": fp.crossbars}

    def report(metrics: dict) -> None:
        metrics["meets_target"] = metrics["weight_compression"] >= a.target_compression
        metrics["score"] = score(metrics["val_accuracy"], metrics["weight_compression"],
                                 a.target_compression)
        if on_epoch_end is not None:
            on_epoch_end(metrics)

    if a.method == "magnitude":
        pruned = copy.deepcopy(template)
        masks = hard_project(pruned, rules)
        metrics = {"stage": "magnitude", "epoch": 0, "rho": 0.0,
                   "val_accuracy": evaluate(pruned, data.x_val, data.y_val),
                   **projected_metrics(pruned, masks)}
        report(metrics)
        return pruned.state_dict(), masks, metrics
    # a progressive mapping quantizes later, round by round: hand it pruned float weights
    final_rules = ({n: dataclasses.replace(r, weight_bits=None) for n, r in rules.items()}
                   if cfg.mapping.mode == "progressive" else None)
    compressed, masks, metrics = admm_train(
        template, data, rules, epochs=a.epochs, lr=a.lr, optimizer=a.optimizer,
        momentum=a.momentum, weight_decay=a.weight_decay, batch_size=cfg.data.batch_size,
        rho=rho, rho_multiplier=a.rho_multiplier, rho_every=a.rho_every, seed=cfg.seed,
        on_epoch_end=report, projected_metrics=projected_metrics,
        runtime=runtime_for(cfg, cfg.resources.gpus_per_trial), final_rules=final_rules)
    return compressed.state_dict(), masks, metrics


def run_map(cfg: Config, data: DataSplits, state: dict, masks: dict, ratios: dict,
            stage: str = "admm", *, model: nn.Module | None = None):
    """-> (MappedNetwork, accuracy rows of the compressed (`stage`) and mapped models)."""
    template = template_for(cfg, data, model)
    template.load_state_dict(state)
    rows = accuracy_rows(stage, template, data)
    rules = rules_for(cfg, template, ratios)
    m = cfg.mapping
    if m.mode == "progressive":
        r = cfg.retrain
        mapped = progressive_map(template, masks, m.weight_bits, data, fractions=m.progressive_fractions,
                                 epochs=m.progressive_epochs, lr=r.lr, optimizer=r.optimizer,
                                 momentum=r.momentum, weight_decay=r.weight_decay,
                                 batch_size=cfg.data.batch_size, seed=cfg.seed, cascade=m.cascade,
                                 block_tile=(m.xbar_rows, m.xbar_cols), block_layers=block_layers(rules),
                                 runtime=runtime_for(cfg, cfg.resources.gpus_per_task))
    else:
        mapped = mapping_of(cfg, template, masks, rules)
        mapped.extra["mapping_mode"] = "one-shot"
    prefix = "" if stage == "admm" else f"{stage}-"
    return mapped, rows + accuracy_rows(f"{prefix}mapped", mapped.load_into(template), data)


def run_retrain(cfg: Config, data: DataSplits, mapped: MappedNetwork, *, method: str | None = None,
                stage: str = "retrain", on_epoch_end: EpochCallback = None,
                model: nn.Module | None = None):
    """-> (retrained MappedNetwork, accuracy rows). The magnitude method retrains for
    admm.epochs + retrain.epochs epochs: the same budget ADMM spends after pretraining."""
    prepare_worker()
    template = template_for(cfg, data, model)
    r = cfg.retrain
    epochs = r.epochs + (cfg.admm.epochs if (method or cfg.admm.method) == "magnitude" else 0)
    noise = None
    if r.noise_sigma > 0:
        noise = (spec_for(cfg), Scenario("retrain-noise", r.noise_variation, r.noise_sigma))
    final, _ = retrain(template, mapped, data, epochs=epochs, lr=r.lr, optimizer=r.optimizer,
                       momentum=r.momentum, weight_decay=r.weight_decay,
                       batch_size=cfg.data.batch_size, seed=cfg.seed, on_epoch_end=on_epoch_end,
                       runtime=runtime_for(cfg, cfg.resources.gpus_per_task), noise=noise)
    return final, accuracy_rows(stage, final.load_into(template), data)


def run_magnitude_baseline(cfg: Config, data: DataSplits, state: dict, ratios: dict, *,
                           model: nn.Module | None = None):
    """The obvious method at the same ratios and training budget -> (MappedNetwork, accuracy rows)."""
    magnitude = cfg.model_copy(update={"admm": cfg.admm.model_copy(update={"method": "magnitude"})})
    projected, masks, _ = run_admm(magnitude, data, state, rho=0.0, ratios=ratios, model=model)
    mapped, rows = run_map(magnitude, data, projected, masks, ratios, stage="magnitude", model=model)
    final, retrain_rows = run_retrain(magnitude, data, mapped, stage="magnitude-retrain", model=model)
    return final, rows + retrain_rows


def run_montecarlo_chunk(cfg: Config, data: DataSplits, mapped: MappedNetwork, scenario: Scenario,
                         trials: list[int], *, model: nn.Module | None = None) -> list[dict]:
    """`montecarlo` rows for some trials of one scenario, on the test split."""
    prepare_worker()
    device = resolve_device(cfg.resources.gpus_per_task)
    seeds = [trial_seed(cfg.seed, scenario.scenario_id, t) for t in trials]
    accuracies = run_trials(template_for(cfg, data, model), mapped, spec_for(cfg), scenario, seeds,
                            data.x_test, data.y_test, calibration=data.x_train[:256],
                            batch_trials=cfg.montecarlo.batch_trials,
                            device=device)
    params = {f: getattr(scenario, f) for f in SCENARIO_FIELDS}
    params["tiles"] = scenario.simulate_tiles
    params["mapping_mode"] = mapped.extra.get("mapping_mode", cfg.mapping.mode)
    return [{"scenario_id": scenario.scenario_id, **params, "trial": t, "seed": s, "accuracy": a,
             "n_samples": len(data.y_test), "device": device}
            for t, s, a in zip(trials, seeds, accuracies)]


def cost_table_for(cfg: Config):
    return load_cost_table(cfg.hardware.preset, cfg.hardware.overrides)

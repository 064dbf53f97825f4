"""The stages, driven by a Config: plain functions, no Ray.

The Ray DAG (pipeline.run) and the Tune trainable (pipeline.tuning) call
these; tests call them directly, in-process.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from hardware import MappingSpec, load_cost_table
from pipeline.config import Config
from pipeline.errors import ConfigError
from stages.admm import admm_train
from stages.data import DataSplits, load_data
from stages.mapping import MappedNetwork, layer_rows, map_network
from stages.models import build_model, crossbar_layers
from stages.montecarlo import Scenario, run_trials, trial_seed
from stages.projections import LayerRule
from stages.retrain import retrain
from stages.train import EpochCallback, evaluate, pretrain, set_torch_threads

SPLITS = ("val", "test")


def data_for(cfg: Config) -> DataSplits:
    return load_data(cfg.data.name, as_images=cfg.model.name == "convnet",
                     val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                     split_seed=cfg.data.split_seed)


def template_for(cfg: Config, data: DataSplits) -> nn.Module:
    """The untrained model; its initial weights depend on the run seed only."""
    return build_model(cfg.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                       hidden=cfg.model.hidden, seed=cfg.seed)


def check_layers(cfg: Config, template: nn.Module) -> None:
    """Refuse per-layer settings naming a layer the model does not have."""
    names = list(crossbar_layers(template))
    for field, layers in (("admm.layers", cfg.admm.layers), ("tune.ratios", cfg.tune.ratios)):
        for layer in layers:
            if layer not in names:
                raise ConfigError(f"{field}.{layer}: no such layer in model {cfg.model.name!r}; "
                                  f"allowed: {', '.join(names)}")


def spec_for(cfg: Config) -> MappingSpec:
    m = cfg.mapping
    return MappingSpec(xbar_rows=m.xbar_rows, xbar_cols=m.xbar_cols, weight_bits=m.weight_bits,
                       cell_bits=m.cell_bits, sign_scheme=m.sign_scheme, g_min_us=m.g_min_us,
                       g_max_us=m.g_max_us)


def default_ratios(cfg: Config) -> dict[str, dict[str, float]]:
    return {layer: p.model_dump() for layer, p in cfg.admm.layers.items()}


def rules_for(cfg: Config, template: nn.Module, ratios: dict[str, dict[str, float]]) -> dict[str, LayerRule]:
    """One rule per crossbar layer: its prune ratios, plus quantization when admm.quantize."""
    bits = cfg.mapping.weight_bits if cfg.admm.quantize else None
    rules = {}
    for name in crossbar_layers(template):
        r = ratios.get(name, {})
        rule = LayerRule(filter=r.get("filter", 0.0), shape=r.get("shape", 0.0),
                         irregular=r.get("irregular", 0.0), weight_bits=bits)
        if rule.prunes or bits is not None:
            rules[name] = rule
    return rules


def scenarios_for(cfg: Config) -> list[Scenario]:
    return [Scenario(s.id, s.variation, s.sigma, s.p_sa0, s.p_sa1) for s in cfg.montecarlo.scenarios]


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
    crossbars_dense: int
    crossbars: int

    @property
    def weight_compression(self) -> float:
        return self.weights / max(self.nonzeros, 1)


def footprint(cfg: Config, mapped: MappedNetwork) -> Footprint:
    rows = layer_rows(mapped, spec_for(cfg), cfg.hardware.baseline_weight_bits)
    dense = [r for r in rows if r["variant"] == "dense"]
    comp = [r for r in rows if r["variant"] == "compressed"]
    return Footprint(sum(r["weights"] for r in dense), sum(r["nonzeros"] for r in comp),
                     sum(r["crossbars"] for r in dense), sum(r["crossbars"] for r in comp))


def score(val_accuracy: float, compression: float, target: float) -> float:
    """Tune's objective: validation accuracy after hard projection for trials that meet the
    compression target; below it, compression / target - 1 (in (-1, 0)), so every trial
    that meets the target ranks above every trial that does not."""
    return val_accuracy if compression >= target else compression / target - 1.0


# ---- stages ------------------------------------------------------------------------------

def run_pretrain(cfg: Config, data: DataSplits, on_epoch_end: EpochCallback = None):
    """-> (state_dict, accuracy rows)."""
    set_torch_threads()
    template = template_for(cfg, data)
    p = cfg.pretrain
    state, _ = pretrain(template, data, epochs=p.epochs, lr=p.lr, optimizer=p.optimizer,
                        momentum=p.momentum, weight_decay=p.weight_decay,
                        batch_size=cfg.data.batch_size, seed=cfg.seed, on_epoch_end=on_epoch_end)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return state, accuracy_rows("pretrain", model, data)


def run_admm(cfg: Config, data: DataSplits, state: dict, *, rho: float,
             ratios: dict[str, dict[str, float]], on_epoch_end: EpochCallback = None):
    """One ADMM run at (rho, ratios) -> (projected state_dict, masks, last epoch's metrics)."""
    set_torch_threads()
    template = template_for(cfg, data)
    template.load_state_dict(state)
    rules = rules_for(cfg, template, ratios)
    a = cfg.admm

    def projected_metrics(model: nn.Module, masks: dict) -> dict:
        fp = footprint(cfg, map_network(model, masks, cfg.mapping.weight_bits, cfg.mapping.cascade))
        return {"weight_compression": fp.weight_compression, "crossbars": fp.crossbars}

    def report(metrics: dict) -> None:
        metrics["meets_target"] = metrics["weight_compression"] >= a.target_compression
        metrics["score"] = score(metrics["val_accuracy"], metrics["weight_compression"],
                                 a.target_compression)
        if on_epoch_end is not None:
            on_epoch_end(metrics)

    model, masks, metrics = admm_train(
        template, data, rules, epochs=a.epochs, lr=a.lr, optimizer=a.optimizer,
        momentum=a.momentum, weight_decay=a.weight_decay, batch_size=cfg.data.batch_size,
        rho=rho, rho_multiplier=a.rho_multiplier, rho_every=a.rho_every, seed=cfg.seed,
        on_epoch_end=report, projected_metrics=projected_metrics)
    return model.state_dict(), masks, metrics


def run_map(cfg: Config, data: DataSplits, state: dict, masks: dict):
    """-> (MappedNetwork, accuracy rows of the admm and mapped models)."""
    template = template_for(cfg, data)
    template.load_state_dict(state)
    rows = accuracy_rows("admm", template, data)
    mapped = map_network(template, masks, cfg.mapping.weight_bits, cfg.mapping.cascade)
    return mapped, rows + accuracy_rows("mapped", mapped.load_into(template), data)


def run_retrain(cfg: Config, data: DataSplits, mapped: MappedNetwork,
                on_epoch_end: EpochCallback = None):
    """-> (retrained MappedNetwork, accuracy rows)."""
    set_torch_threads()
    template = template_for(cfg, data)
    r = cfg.retrain
    final, _ = retrain(template, mapped, data, epochs=r.epochs, lr=r.lr, optimizer=r.optimizer,
                       momentum=r.momentum, weight_decay=r.weight_decay,
                       batch_size=cfg.data.batch_size, seed=cfg.seed, on_epoch_end=on_epoch_end)
    return final, accuracy_rows("retrain", final.load_into(template), data)


def run_montecarlo_chunk(cfg: Config, data: DataSplits, mapped: MappedNetwork, scenario: Scenario,
                         trials: list[int]) -> list[dict]:
    """`montecarlo` rows for some trials of one scenario, on the test split."""
    set_torch_threads()
    seeds = [trial_seed(cfg.seed, scenario.scenario_id, t) for t in trials]
    accuracies = run_trials(template_for(cfg, data), mapped, spec_for(cfg), scenario, seeds,
                            data.x_test, data.y_test)
    return [{"scenario_id": scenario.scenario_id, "variation": scenario.variation,
             "sigma": scenario.sigma, "p_sa0": scenario.p_sa0, "p_sa1": scenario.p_sa1,
             "trial": t, "seed": s, "accuracy": a, "n_samples": len(data.y_test)}
            for t, s, a in zip(trials, seeds, accuracies)]


def cost_table_for(cfg: Config):
    return load_cost_table(cfg.hardware.preset, cfg.hardware.overrides)

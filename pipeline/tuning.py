"""The ADMM stage as a Ray Tune search over rho and per-layer prune ratios.

The only module that talks to Tune's reporting API. Each trial runs
pipeline.steps.run_admm and reports, every epoch, the validation accuracy
after hard projection, the weight compression and crossbars of that
projection, and `score` (pipeline.steps.score): the objective, maximised.
ASHA stops weak trials early; the search is a seeded random search. Each
trial's computation is deterministic, but which trials ASHA stops depends on
the order their reports arrive in; `tune.early_stopping: none` runs every
trial to the end, and then a seed gives the same tables every time. The
chosen trial is the best-scoring one among trials that ran every epoch; it
hands its projected weights and masks back through its final checkpoint.

With an `events` actor (pipeline.progress.TrialEvents, made by the driver when it draws
progress) a Tune callback puts each trial's results, completion and error into it.
"""

from __future__ import annotations

import os
import tempfile

import ray
import torch
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from pipeline.config import Config
from pipeline.environ import environment
from pipeline.steps import (
    admm_iterations,
    default_ratios,
    effective_ratios,
    run_admm,
    template_for,
)
from stages.data import DataSplits
from stages.models import LayerGraph, layer_graph
from stages.projections import STRUCTURES


def search_space(cfg: Config) -> dict:
    """{"rho": ..., "ratios": {layer: {structure: ...}}}: Tune domains where the config asks."""
    ratios = default_ratios(cfg)
    for layer, by_structure in cfg.tune.ratios.items():
        for structure, (low, high) in by_structure.items():
            ratios.setdefault(layer, {})[structure] = tune.uniform(low, high) if high > low else low
    rho = tune.choice(list(cfg.tune.rho)) if len(cfg.tune.rho) > 1 else (
        cfg.tune.rho[0] if cfg.tune.rho else cfg.admm.rho)
    return {"rho": rho, "ratios": ratios}


def _trainable(params: dict, cfg: Config, data: DataSplits, state: dict, model) -> None:
    last_epoch = admm_iterations(cfg) - 1

    def report(metrics: dict) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "stage"}
        if metrics["epoch"] < last_epoch:
            tune.report(metrics)

    projected, masks, metrics = run_admm(cfg, data, state, rho=params["rho"],
                                         ratios=params["ratios"], on_epoch_end=report, model=model)
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": projected, "masks": masks}, os.path.join(folder, "admm.pt"))
        final = {k: v for k, v in metrics.items() if k != "stage"}
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(folder))


class _TrialEventsCallback(tune.Callback):
    """Puts trial events into the driver's TrialEvents actor (see pipeline.progress for their form)."""

    def __init__(self, events):
        self.events, self.sent = events, []

    def _put(self, event: str, trial=None, result: dict | None = None) -> None:
        message = {"event": event}
        if trial is not None:
            result = result if result is not None else (trial.last_result or {})
            message.update(trial_id=trial.trial_id, val_accuracy=result.get("val_accuracy"),
                           meets_target=result.get("meets_target"))
        self.sent.append(self.events.put.remote(message))

    def setup(self, **info) -> None:
        self._put("start")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._put("result", trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._put("complete", trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._put("error", trial)

    def on_experiment_end(self, trials, **info) -> None:
        ray.get(self.sent)   # every event has arrived before the admm task returns
        self.sent = []


def run_search(cfg: Config, data: DataSplits, state: dict, storage_path: str, name: str, model=None,
               events=None):
    """Run the Tuner; returns (projected state, masks, tune rows, chosen trial's ratios).

    `events`: a pipeline.progress.TrialEvents actor handle that gets each trial's events, or None.
    """
    iterations = admm_iterations(cfg)
    trainable = tune.with_resources(tune.with_parameters(_trainable, cfg=cfg, data=data, state=state, model=model),
                                    {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial})
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=iterations,
                               grace_period=min(cfg.tune.grace_period, iterations),
                               reduction_factor=cfg.tune.reduction_factor)
                 if cfg.tune.early_stopping == "asha" else FIFOScheduler())
    tuner = tune.Tuner(
        trainable, param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric="score", mode="max", scheduler=scheduler, num_samples=cfg.tune.num_samples,
            search_alg=BasicVariantGenerator(random_state=cfg.seed),
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            reuse_actors=True),   # a finished trial's actor (process, imports) runs the next one
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[CSVLoggerCallback(), JsonLoggerCallback(),
                                             *([_TrialEventsCallback(events)] if events is not None else [])]))
    # Tune adds CSV, JSON and TensorBoard trial loggers unless this variable is 1. The TensorBoard one
    # imports tensorboardX and with it boto3 in this task (1.5-2.2 s here, 6 s from a cold disk cache)
    # for files nothing reads; the CSV and JSON ones are passed above, so progress.csv and result.json stay.
    with environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
        grid = tuner.fit()
    finished = [r for r in grid if r.error is None and r.checkpoint is not None
                and r.metrics.get("training_iteration") == iterations]
    if not finished:
        errors = "; ".join(str(r.error) for r in grid if r.error is not None)
        raise RuntimeError(f"no compression trial finished all {iterations} epochs ({errors or 'none failed'})")
    chosen = max(finished, key=lambda r: r.metrics["score"])
    with chosen.checkpoint.as_directory() as folder:
        saved = torch.load(os.path.join(folder, "admm.pt"), map_location="cpu", weights_only=True)
    graph = layer_graph(template_for(cfg, data, model))
    rows = tune_rows(cfg, grid, chosen.metrics["trial_id"], graph)
    return saved["model"], saved["masks"], rows, chosen.config["ratios"]


def tune_rows(cfg: Config, grid, chosen_id: str, graph: LayerGraph) -> list[dict]:
    """One `tune` row per trial and crossbar layer, with the ratios that layer really had."""
    rows = []
    iterations = admm_iterations(cfg)
    for result in grid:
        m = result.metrics or {}
        params = result.config or {}
        epochs = int(m.get("training_iteration", 0))
        status = ("failed" if result.error is not None else
                  "completed" if epochs == iterations else "stopped")
        trial_id = m.get("trial_id") or os.path.basename(str(result.path))
        for layer, ratios in effective_ratios(cfg, graph, params.get("ratios", {})).items():
            rows.append({
                "trial_id": trial_id, "layer": layer, "rho": float(params.get("rho", float("nan"))),
                **{f"{s}_ratio": float(ratios.get(s, 0.0)) for s in STRUCTURES},
                "status": status, "epochs": epochs,
                "val_accuracy": m.get("val_accuracy"), "weight_compression": m.get("weight_compression"),
                "crossbars": m.get("crossbars"), "meets_target": m.get("meets_target"),
                "score": m.get("score"), "chosen": trial_id == chosen_id,
            })
    return rows

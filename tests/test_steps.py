"""The stages driven by a Config, in-process (no Ray): the conv-net preset end to end."""

import pytest
import torch

from pipeline import steps
from pipeline.config import load_config
from pipeline.errors import ConfigError
from stages.models import layer_graph
from toy_models import ResidualNet
from pipeline.results import layers_and_hardware, summary_row

TINY = ["pretrain.epochs=3", "admm.epochs=2", "admm.rho_every=1", "retrain.epochs=1",
        "montecarlo.trials=2"]


@pytest.mark.parametrize("preset", ["quick", "quick-convnet"])
def test_preset_runs_in_process_and_its_rows_are_consistent(preset):
    cfg = load_config(preset, TINY)
    data = steps.data_for(cfg)
    steps.check_layers(cfg, steps.template_for(cfg, data))
    state, accuracy = steps.run_pretrain(cfg, data)
    seen = []
    projected, masks, metrics = steps.run_admm(cfg, data, state, rho=cfg.admm.rho,
                                               ratios=steps.default_ratios(cfg), on_epoch_end=seen.append)
    assert [m["epoch"] for m in seen] == [0, 1]
    assert {"val_accuracy", "weight_compression", "crossbars", "score", "meets_target"} <= set(metrics)
    mapped, rows = steps.run_map(cfg, data, projected, masks, steps.default_ratios(cfg))
    final, retrain_rows = steps.run_retrain(cfg, data, mapped)
    mc = [r for s in steps.scenarios_for(cfg) for r in steps.run_montecarlo_chunk(cfg, data, final, s, [0, 1])]
    layers, hardware = layers_and_hardware(cfg, final)
    summary = summary_row(cfg, accuracy + rows + retrain_rows, layers, hardware, mc)
    # the ADMM metric and the mapping agree on the weights kept (retraining only adds zeros)
    assert summary["weight_compression"] >= metrics["weight_compression"] - 1e-9
    assert summary["crossbars_compressed"] == metrics["crossbars"]
    assert 0 < summary["power_reduction"] < 1 and 0 < summary["area_reduction"] < 1
    assert summary["montecarlo"][0]["std"] == 0.0    # sigma = 0: every trial the same
    if cfg.model.name == "convnet":
        fc = next(r for r in layers if r["layer"] == "fc" and r["variant"] == "compressed")
        assert fc["kept_in"] < fc["kept_in_own"]     # conv2's pruned filters removed fc wordlines


def test_score_ranks_every_trial_that_meets_the_target_first():
    assert steps.score(0.5, 30, 25) > steps.score(0.99, 24.9, 25) > steps.score(0.99, 10, 25)
    assert -1 < steps.score(0.9, 1, 25) < 0


def test_a_user_model_is_mapped_layer_by_layer():
    cfg = load_config("quick-convnet", TINY + ["admm.layers={}", "tune.ratios={}",
                                               "admm.all_layers={filter: 0.5, shape: 0.25}"])
    data = steps.data_for(cfg)
    model = ResidualNet()
    steps.check_layers(cfg, steps.template_for(cfg, data, model))
    state, _ = steps.run_pretrain(cfg, data, model=model)
    ratios = steps.effective_ratios(cfg, layer_graph(model), {})
    # first and last layers kept (the default); stem and outer join the residual sum
    assert ratios["inner"] == {"filter": 0.5, "shape": 0.25, "block": 0.0, "irregular": 0.0}
    assert ratios["outer"]["filter"] == 0.0 and ratios["outer"]["shape"] == 0.25
    assert ratios["stem"]["filter"] == ratios["head"]["shape"] == 0.0
    projected, masks, _ = steps.run_admm(cfg, data, state, rho=1e-3, ratios={}, model=model)
    mapped, _ = steps.run_map(cfg, data, projected, masks, {}, model=model)
    assert int(mapped.layers["inner"].keep_out.sum()) == 4
    outer, alive = mapped.layers["outer"], mapped.layers["inner"].keep_out.repeat_interleave(9)
    assert torch.equal(outer.keep_in, outer.keep_in_shape & alive)   # inner's pruned filters cascade
    final, rows = steps.run_retrain(cfg, data, mapped, model=model)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


def test_filter_pruning_where_the_graph_forbids_it_is_refused():
    cfg = load_config("quick-convnet", ["admm.layers={stem: {filter: 0.5}}", "tune.ratios={}"])
    data = steps.data_for(cfg)
    with pytest.raises(ConfigError, match="admm.layers.stem.filter.*residual"):
        steps.check_layers(cfg, steps.template_for(cfg, data, ResidualNet()))


def test_tune_rows_record_failed_stopped_and_completed_trials():
    from types import SimpleNamespace

    from pipeline.tuning import tune_rows

    cfg = load_config("quick", ["admm.epochs=4"])
    graph = layer_graph(steps.template_for(cfg, steps.data_for(cfg)))
    params = {"rho": 0.01, "ratios": {"fc1": {"filter": 0.85, "shape": 0.2}, "fc2": {"filter": 0.85}}}
    metrics = lambda it: {"trial_id": f"t{it}", "training_iteration": it, "val_accuracy": 0.9,
                          "weight_compression": 30.0, "crossbars": 12, "meets_target": True, "score": 0.9}
    grid = [SimpleNamespace(metrics=metrics(4), config=params, error=None, path="/x/t4"),
            SimpleNamespace(metrics=metrics(2), config=params, error=None, path="/x/t2"),
            SimpleNamespace(metrics={}, config=params, error=RuntimeError("worker died"), path="/x/t_failed")]
    rows = tune_rows(cfg, grid, "t4", graph)
    status = {r["trial_id"]: r["status"] for r in rows}
    assert status == {"t4": "completed", "t2": "stopped", "t_failed": "failed"}
    assert len(rows) == 3 * 3                       # a row per trial and crossbar layer
    assert [r["chosen"] for r in rows if r["layer"] == "fc1"] == [True, False, False]

"""Device fidelity: noise-free trials are exact (with and without tiles), every effect is seeded,
progressive mapping and variation-aware retraining end on levels, the scenario grid is stable."""

import copy

import pytest
import torch

from hardware import MappingSpec
from pipeline import steps
from pipeline.config import load_config
from stages.admm import admm_train
from stages.data import load_digits
from stages.mapping import map_network
from stages.models import build_model, crossbar_layers, gemm
from stages.montecarlo import Scenario, run_trials, trial_seed
from stages.progressive import mapping_error, progressive_map
from stages.projections import LayerRule
from stages.retrain import retrain
from stages.train import evaluate, pretrain

TRAIN = dict(optimizer="adam", momentum=0.9, weight_decay=0.0, batch_size=64)
SPEC = MappingSpec(xbar_rows=32, xbar_cols=16, weight_bits=4)   # several tiles per layer


@pytest.fixture(scope="module")
def setup():
    data = load_digits()
    template = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(48, 48), seed=0)
    state, _ = pretrain(template, data, epochs=10, lr=3e-3, seed=0, **TRAIN)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    rules = {"fc1": LayerRule(filter=0.5, shape=0.25), "fc2": LayerRule(filter=0.5), "fc3": LayerRule()}
    pruned, masks, _ = admm_train(model, data, {n: LayerRule(r.filter, r.shape, weight_bits=4) for n, r in rules.items()},
                                  epochs=3, lr=1e-3, rho=1e-2, rho_multiplier=2, rho_every=1, seed=0,
                                  final_rules=rules, **TRAIN)
    mapped = map_network(pruned, masks, weight_bits=4)
    return data, template, pruned, masks, mapped


@pytest.mark.parametrize("scenario", [
    Scenario("plain"), Scenario("ln0", "lognormal", 0.0), Scenario("tiles", tiles=True),
    Scenario("tiles-ln0", "lognormal", 0.0, tiles=True), Scenario("drift0", drift_t_s=10.0),
])
def test_noise_free_trials_reproduce_the_mapped_accuracy_exactly(setup, scenario):
    data, template, _, _, mapped = setup
    exact = evaluate(mapped.load_into(template), data.x_test, data.y_test)
    seeds = [trial_seed(0, scenario.scenario_id, t) for t in range(3)]
    assert run_trials(template, mapped, SPEC, scenario, seeds, data.x_test, data.y_test,
                      calibration=data.x_train[:256]) == [exact] * 3


@pytest.mark.parametrize("scenario", [
    Scenario("rn", read_noise=0.3), Scenario("drift", drift_nu=0.1, drift_nu_std=0.05, drift_t_s=1e4),
    Scenario("adc", adc_bits=3), Scenario("adc-dac", adc_bits=4, dac_bits=3),
    Scenario("all", "lognormal", 0.2, 0.01, 0.01, read_noise=0.1, drift_nu=0.05, drift_t_s=100.0, adc_bits=5),
])
def test_every_effect_changes_accuracy_and_reruns_from_its_seed(setup, scenario):
    data, template, _, _, mapped = setup
    seeds = [trial_seed(1, scenario.scenario_id, t) for t in range(4)]
    run = lambda s: run_trials(template, mapped, SPEC, scenario, s, data.x_test, data.y_test,
                               calibration=data.x_train[:256])
    batch = run(seeds)
    exact = evaluate(mapped.load_into(template), data.x_test, data.y_test)
    assert batch != [exact] * 4
    assert run([seeds[2]]) == [batch[2]]


def test_finer_adcs_lose_less(setup):
    data, template, _, _, mapped = setup
    exact = evaluate(mapped.load_into(template), data.x_test, data.y_test)
    loss = {}
    for bits in (2, 4, 10):
        acc = run_trials(template, mapped, SPEC, Scenario(f"adc{bits}", adc_bits=bits), [0], data.x_test,
                         data.y_test, calibration=data.x_train[:256])[0]
        loss[bits] = exact - acc
    assert loss[2] > loss[10] and abs(loss[10]) < 0.01


def test_progressive_mapping_ends_on_levels_with_masks_fixed(setup):
    data, template, pruned, masks, mapped = setup
    seen = []
    prog = progressive_map(pruned, masks, 4, data, fractions=(0.5, 0.8), epochs=1, lr=1e-3, seed=0,
                           on_epoch_end=seen.append, **TRAIN)
    assert [(e["round"], e["fraction"]) for e in seen] == [(0, 0.5), (1, 0.8)]
    assert prog.extra["mapping_mode"] == "progressive"
    model = prog.load_into(template)
    for name, layer in prog.layers.items():
        one_shot = mapped.layers[name]
        assert torch.equal(layer.mask, one_shot.mask) and layer.alpha == one_shot.alpha
        w = gemm(crossbar_layers(model)[name].weight.detach())
        assert torch.all(w[~layer.mask] == 0)
        assert mapping_error(w, layer.alpha, 7).max() < 1e-4


def test_variation_aware_retraining_ends_on_levels(setup):
    data, template, _, _, mapped = setup
    final, _ = retrain(template, mapped, data, epochs=2, lr=1e-3, seed=0,
                       noise=(SPEC, Scenario("train", "lognormal", 0.3)), **TRAIN)
    model = final.load_into(template)
    for name, layer in final.layers.items():
        w = gemm(crossbar_layers(model)[name].weight.detach())
        assert mapping_error(w, layer.alpha, 7).max() < 1e-4 and torch.all(w[~layer.mask] == 0)
    assert "lognormal" in final.extra["retrain_noise"]


def test_scenario_grid_ids_are_stable_and_rows_name_every_parameter():
    grid = ["montecarlo.scenarios=[]", "montecarlo.trials=2",
            "montecarlo.grid={sigma: [0, 0.1], p_sa0: [0, 0.01], adc_bits: [0, 6]}"]
    cfg = load_config("quick", grid)
    ids = [s.key() for s in cfg.montecarlo.all_scenarios()]
    assert len(ids) == 8 == len(set(ids))
    assert ids == [s.key() for s in load_config("quick", grid).montecarlo.all_scenarios()]
    assert "lognormal-sigma0.1-sa0_0.01-adc6" in ids
    data = steps.data_for(cfg)
    scenario = steps.scenarios_for(cfg)[-1]
    template = steps.template_for(cfg, data)
    mapped = map_network(template, {}, 4)
    rows = steps.run_montecarlo_chunk(cfg, data, mapped, scenario, [0, 1])
    import pandas as pd
    frame = pd.DataFrame(rows)
    assert {"sigma", "p_sa0", "p_sa1", "adc_bits", "dac_bits", "read_noise", "drift_nu", "drift_nu_std",
            "drift_t_s", "tiles", "mapping_mode", "seed"} <= set(frame.columns)
    assert len(frame.groupby(["sigma", "p_sa0", "p_sa1", "adc_bits"])) == 1


def test_offset_and_differential_schemes_agree_when_noise_free_and_both_feel_noise(setup):
    data, template, _, _, mapped = setup
    exact = evaluate(mapped.load_into(template), data.x_test, data.y_test)
    offset = MappingSpec(xbar_rows=32, xbar_cols=16, weight_bits=4, sign_scheme="offset")
    for spec in (SPEC, offset):
        assert run_trials(template, mapped, spec, Scenario("ideal"), [1, 2], data.x_test, data.y_test) == [exact] * 2
        noisy = run_trials(template, mapped, spec, Scenario("ln", "lognormal", 0.3, read_noise=0.1), [1, 2],
                           data.x_test, data.y_test)
        assert noisy != [exact] * 2
    from stages.errors import StageError
    with pytest.raises(StageError, match="differential"):
        run_trials(template, mapped, offset, Scenario("adc", adc_bits=4), [1], data.x_test, data.y_test)


def test_offset_crossbars_count_the_reference_column(setup):
    from stages.mapping import layer_rows
    *_, mapped = setup
    rows = {(r["variant"], r["layer"]): r for r in layer_rows(mapped, MappingSpec(xbar_rows=64, xbar_cols=16,
                                                                                     sign_scheme="offset"), 8)}
    fc1 = rows[("compressed", "fc1")]      # 24 kept outputs over 15 data columns per crossbar: 2 tiles
    assert fc1["kept_out"] == 24 and fc1["tiles"] == 2 and fc1["polarity"] == 1
    assert fc1["crossbars"] == 2 * 2      # 4-bit offset: ceil(4 / 2) = 2 slices, 1 device per weight

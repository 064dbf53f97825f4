"""Batched Monte Carlo: trials evaluated together give exactly the accuracies they give one at a time,
their devices are the ones the single-trial reference (`program`, drawing from one generator) samples,
and a noise-free batch reproduces the mapped model's accuracy, for linear, conv and residual models."""

import copy

import pytest
import torch
from toy_models import ResidualNet

from hardware import MappingSpec
from stages.admm import hard_project
from stages.data import load_digits
from stages.mapping import map_network
from stages.models import build_model
from stages.montecarlo import (
    Scenario,
    _trial_gemm,
    _Trials,
    input_ranges,
    program,
    run_trials,
    trial_seed,
)
from stages.projections import LayerRule
from stages.train import evaluate, pretrain

TRAIN = dict(optimizer="adam", momentum=0.9, weight_decay=0.0, batch_size=64, lr=3e-3, seed=0)

SCENARIOS = [
    Scenario("ln", "lognormal", 0.3),
    Scenario("add", "additive", 0.05, p_sa0=0.01, p_sa1=0.02),
    Scenario("drift", "lognormal", 0.1, drift_nu=0.05, drift_nu_std=0.02, drift_t_s=1e3),
    Scenario("read", read_noise=0.2),
    Scenario("adc", "lognormal", 0.1, adc_bits=4, dac_bits=6),
    Scenario("adc-read", adc_bits=5, read_noise=0.1),
]


def _mapped(name: str, rules: dict[str, LayerRule], epochs: int = 4):
    images = name != "mlp"
    data = load_digits(as_images=images)
    if name == "residual":
        template = ResidualNet()
    else:
        template = build_model(name, input_shape=data.input_shape, num_classes=10,
                               hidden=(48, 48) if name == "mlp" else (8, 16), seed=0)
    state, _ = pretrain(template, data, epochs=epochs, **TRAIN)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    masks = hard_project(model, {n: LayerRule(r.filter, r.shape, weight_bits=4) for n, r in rules.items()})
    return data, template, map_network(model, masks, weight_bits=4)


@pytest.fixture(scope="module", params=["mlp", "convnet", "residual"])
def network(request):
    rules = {"mlp": {"fc1": LayerRule(filter=0.5, shape=0.25), "fc2": LayerRule(filter=0.5)},
             "convnet": {"conv1": LayerRule(filter=0.25), "conv2": LayerRule(filter=0.5, shape=0.3)},
             "residual": {"inner": LayerRule(filter=0.5, shape=0.2), "outer": LayerRule(shape=0.3)}}
    return _mapped(request.param, rules[request.param])


SPEC = MappingSpec(xbar_rows=16, xbar_cols=8, weight_bits=4)   # several tiles per layer


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.scenario_id)
def test_batched_and_one_at_a_time_trials_give_identical_accuracies(network, scenario):
    data, template, mapped = network
    seeds = [trial_seed(3, scenario.scenario_id, t) for t in range(7)]
    run = lambda batch: run_trials(template, mapped, SPEC, scenario, seeds, data.x_test, data.y_test,
                                   calibration=data.x_train[:256], batch_trials=batch)
    alone = run(1)
    assert run(4) == alone          # batches of 4 and a last batch of 3
    assert run(7) == alone
    assert len(set(alone)) > 1      # the noise does something, so equality is not trivial


def test_a_noise_free_batch_reproduces_the_mapped_accuracy(network):
    data, template, mapped = network
    exact = evaluate(mapped.load_into(template), data.x_test, data.y_test)
    for scenario in (Scenario("ideal"), Scenario("tiles", tiles=True)):
        assert run_trials(template, mapped, SPEC, scenario, [1, 2, 3], data.x_test, data.y_test,
                          calibration=data.x_train[:256], batch_trials=3) == [exact] * 3


@pytest.mark.parametrize("sign_scheme", ["differential", "offset"])
@pytest.mark.parametrize("scenario", SCENARIOS[:3], ids=lambda s: s.scenario_id)
def test_batched_devices_are_the_single_trial_reference_draws(network, scenario, sign_scheme):
    """Each trial's devices, drawn into the shared buffers, equal `program` run layer by layer
    from one generator seeded with that trial's seed (the hardware functions drawing themselves)."""
    _, template, mapped = network
    spec = MappingSpec(xbar_rows=16, xbar_cols=8, weight_bits=4, sign_scheme=sign_scheme)
    model = mapped.load_into(template)
    trials = _Trials(model, mapped, spec, scenario, None, "cpu", capacity=3)
    seeds = [11, 12, 13]
    trials.program(seeds)
    for t, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        for name, layer in mapped.layers.items():
            g, _ = program(layer, spec, scenario, generator)
            assert torch.equal(trials.devices[name][t], g), (name, t)


def test_offset_scheme_batches_identically():
    data, template, mapped = _mapped("mlp", {"fc1": LayerRule(filter=0.5), "fc2": LayerRule(filter=0.5)}, 2)
    spec = MappingSpec(xbar_rows=16, xbar_cols=8, weight_bits=4, sign_scheme="offset")
    scenario = Scenario("ln", "lognormal", 0.2, p_sa0=0.01, read_noise=0.1)
    seeds = list(range(5))
    run = lambda batch: run_trials(template, mapped, spec, scenario, seeds, data.x_test, data.y_test,
                                   batch_trials=batch)
    assert run(5) == run(1)


def test_bad_batch_sizes_are_named(network):
    data, template, mapped = network
    with pytest.raises(ValueError, match="batch_trials: got 0"):
        run_trials(template, mapped, SPEC, Scenario("ideal"), [1], data.x_test, data.y_test, batch_trials=0)
    trials = _Trials(mapped.load_into(template), mapped, SPEC, Scenario("ideal"), None, "cpu", capacity=2)
    with pytest.raises(ValueError, match="trials per batch: got 3; allowed: 1 to 2"):
        trials.program([1, 2, 3])


def test_tile_ranges_come_from_the_ideal_model(network):
    data, template, mapped = network
    ranges = input_ranges(mapped.load_into(template), mapped, SPEC, data.x_train[:64])
    assert set(ranges) == set(mapped.layers)


class BatchNormNet(torch.nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> flatten -> fc -> ReLU -> fc: filter pruning
    cascades through BatchNorms, pooling and a flatten."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.fc1, self.fc2 = torch.nn.Linear(8 * 16, 32), torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@pytest.mark.parametrize("scenario", [SCENARIOS[0], SCENARIOS[3], SCENARIOS[4], Scenario("ideal")],
                         ids=lambda s: s.scenario_id)
def test_compact_activations_change_nothing(monkeypatch, scenario):
    """Pruned filters' outputs are not computed where only cascaded layers read them (through
    BatchNorm, pooling and flatten): the accuracies are those of the full-width computation."""
    import stages.montecarlo as montecarlo

    data = load_digits(as_images=True)
    template = BatchNormNet()
    state, _ = pretrain(template, data, epochs=3, **TRAIN)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    rules = {"conv1": LayerRule(filter=0.25), "conv2": LayerRule(filter=0.5, shape=0.2), "fc1": LayerRule(filter=0.5)}
    masks = hard_project(model, {n: LayerRule(r.filter, r.shape, weight_bits=4) for n, r in rules.items()})
    mapped = map_network(model, masks, weight_bits=4)
    trials = _Trials(mapped.load_into(template), mapped, SPEC, scenario, None, "cpu", capacity=1)
    assert {n for n, layer in trials.layers.items() if layer.compact_out} == {"conv1", "conv2", "fc1"}
    assert len(trials.norms) == 2
    seeds = [trial_seed(5, scenario.scenario_id, t) for t in range(4)]
    run = lambda: run_trials(template, mapped, SPEC, scenario, seeds, data.x_test, data.y_test,
                             calibration=data.x_train[:256], batch_trials=2)
    compact = run()
    monkeypatch.setattr(montecarlo, "_compaction", lambda *args: {})
    assert run() == compact
    if scenario.scenario_id == "ideal":
        assert compact == [evaluate(mapped.load_into(template), data.x_test, data.y_test)] * 4


@pytest.mark.parametrize("rows, inputs, outputs", [(128, 64, 1), (104, 51, 1), (7, 300, 1), (128, 51, 38)])
def test_a_trial_gemm_does_not_depend_on_the_batch(rows, inputs, outputs):
    """Bit for bit, a trial's layer output is the same among 50 trials as alone, also for a layer
    that keeps one output (where a plain torch.bmm rounds differently for one trial than for many)."""
    g = torch.Generator().manual_seed(rows + inputs)
    x, w = torch.randn(50, rows, inputs, generator=g), torch.randn(50, outputs, inputs, generator=g)
    together = _trial_gemm(x, w)
    assert together.shape == (50, rows, outputs)
    shared = _trial_gemm(x[:1].expand(50, -1, -1), w)   # the test inputs broadcast over the trials
    for t in (0, 17, 49):
        assert torch.equal(together[t], _trial_gemm(x[t:t + 1], w[t:t + 1])[0])
        assert torch.equal(shared[t], _trial_gemm(x[:1], w[t:t + 1])[0])

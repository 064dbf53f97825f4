"""Stages without Ray: data, models, cascade, ADMM, mapping, retraining, Monte Carlo."""

import copy
import platform

import pytest
import torch

from hardware import MappingSpec
from stages.admm import admm_train
from stages.data import load_digits
from stages.errors import StageError
from stages.mapping import MappedNetwork, layer_rows, map_network
from stages.models import build_model, crossbar_layers, layer_graph
from stages.montecarlo import Scenario, run_trials, trial_seed
from stages.projections import LayerRule
from stages.retrain import retrain
from stages.train import evaluate, pretrain
from toy_models import ResidualNet

TRAIN = dict(optimizer="adam", momentum=0.9, weight_decay=0.0, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def images():
    return load_digits(as_images=True)


def test_digits_split_is_fixed_stratified_and_disjoint(digits):
    again = load_digits()
    assert torch.equal(digits.x_test, again.x_test)
    n = len(digits.y_train) + len(digits.y_val) + len(digits.y_test)
    assert n == 1797
    assert len(digits.y_test) == pytest.approx(0.2 * 1797, abs=1)
    assert set(digits.y_test.tolist()) == set(range(10))
    assert 0 <= float(digits.x_train.min()) and float(digits.x_train.max()) <= 1


def test_model_init_depends_on_seed_only(digits):
    a = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(16,), seed=3)
    torch.rand(5)  # the global RNG does not matter
    b = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(16,), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_model_names_allowed_ones():
    with pytest.raises(StageError, match="resnet.*allowed: mlp, convnet"):
        build_model("resnet", input_shape=(64,), num_classes=10, hidden=(16,))


def test_cascade_pairs_follow_the_graph():
    mlp = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(32, 16))
    assert layer_graph(mlp).cascade_pairs() == [("fc1", "fc2"), ("fc2", "fc3")]
    conv = build_model("convnet", input_shape=(1, 8, 8), num_classes=10, hidden=(4, 8))
    assert layer_graph(conv).cascade_pairs() == [("conv1", "conv2"), ("conv2", "fc")]
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    assert layer_graph(bn).cascade_pairs() == [("0", "2")]
    assert layer_graph(bn).norms["0"] == ("1",)


class InputSkip(torch.nn.Module):
    """The input feeds a crossbar layer and, as a skip, the output."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + x


def test_the_graph_names_the_layers_the_input_reaches_alone():
    """What Monte Carlo may feed the test inputs once for every trial: the input reaches these
    crossbar layers through per-sample ops and nothing else."""
    mlp = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(32, 16))
    assert layer_graph(mlp).input_consumers == ("fc1",)                   # through a Flatten
    assert layer_graph(ResidualNet()).input_consumers == ("stem",)
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert layer_graph(bn).input_consumers == ("2",)
    assert layer_graph(InputSkip()).input_consumers == ()                # the skip sees the input too


def test_layers_joining_a_residual_sum_are_not_filter_prunable():
    graph = layer_graph(ResidualNet())
    assert graph.filter_prunable == {"inner"}        # stem and outer feed the addition; head is the output
    assert graph.cascade_pairs() == [("inner", "outer")]
    assert graph.order == ("stem", "inner", "outer", "head")


def test_pruned_filters_zero_their_batchnorm_so_the_channel_is_dead():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        model[1].bias.fill_(0.5)
    from stages.admm import hard_project
    masks = hard_project(model, {"0": LayerRule(filter=0.5)})
    dead = ~masks["0"].any(1)
    model.eval()
    hidden = model[:3](torch.randn(2, 1, 8, 8))
    assert torch.all(hidden[:, dead] == 0) and torch.any(hidden[:, ~dead] != 0)


def test_mapping_cascades_pruned_filters_into_the_next_layer(images):
    model = build_model("convnet", input_shape=(1, 8, 8), num_classes=10, hidden=(4, 8))
    rules = {"conv2": LayerRule(filter=0.5)}
    masks = {}
    from stages.admm import hard_project
    masks = hard_project(model, rules)
    mapped = map_network(model, masks, weight_bits=4)
    fc = mapped.layers["fc"]
    removed = ~mapped.layers["conv2"].keep_out
    assert int(removed.sum()) == 4
    # each removed conv2 filter removes its 4x4 = 16 flattened positions of fc
    assert int((~fc.keep_in).sum()) == 16 * 4
    assert int(fc.keep_in_shape.sum()) == fc.keep_in.numel()
    rows = {(r["variant"], r["layer"]): r for r in layer_rows(mapped, MappingSpec(), 16)}
    assert rows[("compressed", "fc")]["kept_in"] == 64 and rows[("compressed", "fc")]["kept_in_own"] == 128
    # mapped model computes the same function as the unmapped one quantized, with dead inputs dropped
    out = mapped.load_into(model)(images.x_test[:8])
    assert torch.isfinite(out).all()


def _pretrained(digits, hidden=(64, 64), epochs=15):
    template = build_model("mlp", input_shape=(64,), num_classes=10, hidden=hidden, seed=0)
    state, _ = pretrain(template, digits, epochs=epochs, lr=3e-3, seed=0, **TRAIN)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return template, model


@pytest.fixture(scope="module")
def compressed(digits):
    template, model = _pretrained(digits)
    rules = {"fc1": LayerRule(filter=0.75, shape=0.25, weight_bits=4),
             "fc2": LayerRule(filter=0.75, weight_bits=4), "fc3": LayerRule(weight_bits=4)}
    admm_model, masks, metrics = admm_train(model, digits, rules, epochs=6, lr=1e-3, rho=1e-2,
                                            rho_multiplier=2, rho_every=2, seed=0, **TRAIN)
    mapped = map_network(admm_model, masks, weight_bits=4)
    final, _ = retrain(template, mapped, digits, epochs=5, lr=1e-3, seed=0, **TRAIN)
    return template, model, admm_model, masks, mapped, final, metrics


def test_admm_output_satisfies_the_constraints(compressed):
    _, _, admm_model, masks, _, _, metrics = compressed
    layers = crossbar_layers(admm_model)
    w1 = layers["fc1"].weight
    assert int((w1.abs().sum(1) > 0).sum()) == 16 and int((w1.abs().sum(0) > 0).sum()) == 48
    assert torch.all(layers["fc1"].bias[~masks["fc1"].any(1)] == 0)
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["rho"] == pytest.approx(1e-2 * 2 ** 2)


def test_retraining_keeps_masks_and_ends_on_levels(compressed, digits):
    template, _, _, _, mapped, final, _ = compressed
    model = final.load_into(template)
    layers = crossbar_layers(model)
    for name, layer in final.layers.items():
        old = mapped.layers[name]
        assert torch.equal(layer.mask, old.mask)
        w = layers[name].weight.detach().reshape(layer.levels.shape)
        assert torch.all(w[~layer.mask] == 0)
        n = w / layer.alpha
        assert torch.allclose(n, n.round(), atol=1e-4)          # on a level
        assert n.abs().max() <= 7                              # 4-bit levels
        if layers[name].bias is not None:
            assert torch.all(layers[name].bias[~layer.keep_out] == 0)
    assert evaluate(model, digits.x_test, digits.y_test) > 0.8


def test_mapped_network_round_trips_as_plain_data(compressed):
    *_, final, _ = compressed
    again = MappedNetwork.from_plain(final.to_plain())
    assert again.layers.keys() == final.layers.keys()
    assert all(torch.equal(again.layers[n].levels, final.layers[n].levels) for n in final.layers)


def test_noise_free_trials_reproduce_the_mapped_accuracy(compressed, digits):
    template, *_, final, _ = compressed
    exact = evaluate(final.load_into(template), digits.x_test, digits.y_test)
    spec = MappingSpec(xbar_rows=64, xbar_cols=64, weight_bits=4)
    for scenario in (Scenario("none"), Scenario("ln0", "lognormal", 0.0), Scenario("add0", "additive", 0.0)):
        seeds = [trial_seed(0, scenario.scenario_id, t) for t in range(3)]
        assert run_trials(template, final, spec, scenario, seeds, digits.x_test, digits.y_test) == [exact] * 3


def test_a_trial_rerun_from_its_seed_gives_its_accuracy(compressed, digits):
    template, *_, final, _ = compressed
    spec = MappingSpec(xbar_rows=64, xbar_cols=64, weight_bits=4)
    scenario = Scenario("ln", "lognormal", 0.3, p_sa0=0.01, p_sa1=0.01)
    seeds = [trial_seed(0, "ln", t) for t in range(6)]
    batch = run_trials(template, final, spec, scenario, seeds, digits.x_test, digits.y_test)
    alone = run_trials(template, final, spec, scenario, [seeds[4]], digits.x_test, digits.y_test)
    assert alone == [batch[4]]
    assert len(set(batch)) > 1     # noise does something


def test_trial_seeds_are_distinct_and_stable():
    seeds = {trial_seed(0, s, t) for s in ("a", "b") for t in range(100)}
    assert len(seeds) == 200
    assert trial_seed(0, "a", 1) == trial_seed(0, "a", 1) != trial_seed(1, "a", 1)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_admm_penalty_gradient_is_that_of_the_penalty(digits):
    """One ADMM epoch (the penalty's gradient added after backward) moves the weights as training
    with rho/2 ||W - Z + U||^2 added to the loss (autograd) does."""
    from stages.admm import hard_project
    from stages.models import gemm
    from stages.projections import project
    from stages.train import make_optimizer, train_one_epoch

    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(32, 32), seed=0)
    rules = {"fc1": LayerRule(filter=0.5, weight_bits=4), "fc2": LayerRule(shape=0.5, weight_bits=4)}
    rho = 0.5   # large, so a wrong penalty gradient moves the weights visibly
    admm, _, _ = admm_train(model, digits, rules, epochs=1, lr=0.05, optimizer="sgd", momentum=0.0,
                            weight_decay=0.0, batch_size=64, rho=rho, rho_multiplier=1, rho_every=1, seed=3,
                            final_rules={n: LayerRule() for n in rules})
    reference = copy.deepcopy(model)
    layers = crossbar_layers(reference)
    with torch.no_grad():
        Z = {n: project(gemm(layers[n].weight), r)[0].clone() for n, r in rules.items()}
    penalty = lambda: rho / 2 * sum((gemm(layers[n].weight) - Z[n]).pow(2).sum() for n in rules)
    train_one_epoch(reference, digits.x_train, digits.y_train,
                    make_optimizer(reference.parameters(), name="sgd", lr=0.05, momentum=0.0),
                    batch_size=64, generator=torch.Generator().manual_seed(3), extra_loss=penalty)
    hard_project(reference, {n: LayerRule() for n in rules})
    for name, param in reference.state_dict().items():
        torch.testing.assert_close(admm.state_dict()[name], param, rtol=1e-5, atol=1e-6)
    plain = copy.deepcopy(model)   # and without the penalty the weights differ: the test can fail
    train_one_epoch(plain, digits.x_train, digits.y_train,
                    make_optimizer(plain.parameters(), name="sgd", lr=0.05, momentum=0.0),
                    batch_size=64, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(plain.fc1.weight, admm.fc1.weight, atol=1e-4)


_MMAPPED_CHUNKS = """
import ctypes, sys, torch
from stages.train import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                                "fordblks keepcost").split()]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = mallinfo2().hblks
x = torch.empty(3 << 20, dtype=torch.uint8)   # a Monte-Carlo-sized temporary
print(mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
@pytest.mark.parametrize("setting, mapped", [("default", 1), ("keep", 0)])
def test_stage_workers_take_tensors_of_a_few_mib_from_the_heap(setting, mapped):
    """By default glibc maps a 3 MiB tensor from the kernel (fresh pages, faulted in and zeroed on
    every allocation); after keep_freed_memory it comes from the heap (a fresh process each)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _MMAPPED_CHUNKS, setting], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.stdout.split() == [str(mapped)], done.stderr[-2000:]

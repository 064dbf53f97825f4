"""The GPU path, where CUDA is visible (skipped elsewhere, so on CI): with `resources` asking for
GPUs every stage of the quick preset trains and evaluates on the GPU (training under bfloat16
autocast), and Monte Carlo samples its devices on the GPU and batches trials as on the CPU."""

import pytest
import torch
from test_montecarlo_batched import SPEC, _mapped

from pipeline import steps
from pipeline.config import load_config
from stages.montecarlo import (
    DEVICE_BUDGET,
    GPU_MEMORY_SHARE,
    Scenario,
    _Trials,
    device_budget,
    input_ranges,
    program,
    run_trials,
    trial_seed,
)
from stages.projections import LayerRule
from stages.train import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def watch(layer: torch.nn.Module) -> set[tuple[str, torch.dtype]]:
    """The device and dtype of every output `layer` (and its deep copies) produces from now on."""
    seen = set()
    layer.register_forward_hook(lambda module, inputs, output: seen.add((output.device.type, output.dtype)))
    return seen   # a function deep-copies as itself, so the stages' copies report here too


def test_every_stage_of_the_quick_preset_runs_on_the_gpu():
    cfg = load_config("quick", ["resources.gpus_per_task=1", "resources.gpus_per_trial=1",
                                "pretrain.epochs=10", "admm.epochs=10", "retrain.epochs=5"])
    data = steps.data_for(cfg)
    model = steps.template_for(cfg, data)
    seen = watch(model.fc1)

    state, rows = steps.run_pretrain(cfg, data, model=model)
    assert ("cuda", torch.bfloat16) in seen            # mixed-precision training on the GPU
    assert max(r["accuracy"] for r in rows if r["split"] == "test") > 0.9

    seen.clear()
    ratios = steps.default_ratios(cfg)
    projected, masks, metrics = steps.run_admm(cfg, data, state, rho=cfg.admm.rho, ratios=ratios, model=model)
    assert ("cuda", torch.bfloat16) in seen
    assert metrics["weight_compression"] > 4
    assert all(v.device.type == "cpu" for v in projected.values())   # stages hand on CPU tensors

    mapped, _ = steps.run_map(cfg, data, projected, masks, ratios, model=model)
    seen.clear()
    final, rows = steps.run_retrain(cfg, data, mapped, model=model)
    assert ("cuda", torch.bfloat16) in seen
    retrained = next(r["accuracy"] for r in rows if r["split"] == "test")
    assert retrained > 0.85

    rows = steps.run_montecarlo_chunk(cfg, data, final, Scenario("ideal"), [0, 1], model=model)
    assert {r["device"] for r in rows} == {"cuda"}
    exact = evaluate(final.load_into(steps.template_for(cfg, data)), data.x_test, data.y_test)   # on the CPU
    assert [r["accuracy"] for r in rows] == pytest.approx([exact] * 2, abs=1.01 / len(data.y_test))
    noisy = steps.run_montecarlo_chunk(cfg, data, final, Scenario("ln", "lognormal", 0.3), list(range(4)))
    assert len({r["accuracy"] for r in noisy}) > 1 and max(r["accuracy"] for r in noisy) <= retrained + 0.05


@pytest.fixture(scope="module")
def convnet():
    return _mapped("convnet", {"conv1": LayerRule(filter=0.25), "conv2": LayerRule(filter=0.5, shape=0.3)})


@pytest.mark.parametrize("scenario", [Scenario("ln", "lognormal", 0.3, p_sa0=0.01),
                                      Scenario("read", read_noise=0.2),
                                      Scenario("adc", "lognormal", 0.1, adc_bits=4, dac_bits=6)],
                         ids=lambda s: s.scenario_id)
def test_gpu_trials_draw_their_own_devices_and_batch_like_one_at_a_time(convnet, scenario):
    """Devices: bit-identical to each trial's own CUDA generator's reference draws. Accuracies:
    batched equal to one at a time up to one test sample, as cuBLAS and cuDNN may sum in another
    order for another batch size (on the CPU they are identical: test_montecarlo_batched)."""
    data, template, mapped = convnet
    seeds = [trial_seed(5, scenario.scenario_id, t) for t in range(6)]
    model = mapped.load_into(template).cuda()
    ranges = input_ranges(model, mapped, SPEC, data.x_train[:256].cuda()) if scenario.simulate_tiles else None
    trials = _Trials(model, mapped, SPEC, scenario, ranges, "cuda", capacity=3)
    trials.program(seeds[:3])
    for t, seed in enumerate(seeds[:3]):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        for name, layer in mapped.layers.items():
            g, _ = program(layer, SPEC, scenario, generator)
            assert torch.equal(trials.devices[name][t], g.to("cuda")), (name, t)

    run = lambda batch: run_trials(template, mapped, SPEC, scenario, seeds, data.x_test, data.y_test,
                                   calibration=data.x_train[:256], batch_trials=batch, device="cuda")
    alone, batched = run(1), run(4)
    assert batched == pytest.approx(alone, abs=1.01 / len(data.y_test))
    assert len(set(alone)) > 1
    on_cpu = run_trials(template, mapped, SPEC, Scenario("ideal"), [1], data.x_test, data.y_test, batch_trials=1)
    on_gpu = run_trials(template, mapped, SPEC, Scenario("ideal"), [1], data.x_test, data.y_test, device="cuda")
    assert on_gpu == pytest.approx(on_cpu, abs=1.01 / len(data.y_test))


def test_a_gpu_batch_may_use_a_share_of_the_free_memory():
    """On the CPU a batch's devices stay cache-sized; on a GPU with room they may take far more."""
    free, _ = torch.cuda.mem_get_info()
    assert device_budget("cpu") == DEVICE_BUDGET
    assert device_budget("cuda") == max(DEVICE_BUDGET, int(free * GPU_MEMORY_SHARE))
    if free > 8 * DEVICE_BUDGET:
        assert device_budget("cuda") > 2 * DEVICE_BUDGET

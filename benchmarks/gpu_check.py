"""A short GPU check: VGG-16 on CIFAR-shaped inputs, ADMM steps per second and Monte-Carlo trials per second.

    python benchmarks/gpu_check.py [--out benchmarks/GPU.md] [--samples 4096] [--trials 20]

Runs wherever CUDA is visible (exits 2 with one line otherwise) and writes its
figures, with the card's name, to benchmarks/GPU.md, which benchmarks/run.py
includes in RESULTS.md. The inputs are random CIFAR-shaped tensors (no data
set is needed): speed does not depend on the pixels. Every stage runs as the
pipeline runs it with `resources.gpus_per_*` > 0: training under bfloat16
autocast, Monte Carlo with its noise sampled on the GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

from pipeline import steps
from pipeline.config import load_config
from stages.admm import admm_train
from stages.data import DataSplits
from stages.mapping import map_network
from stages.montecarlo import Scenario, run_trials, trial_seed
from stages.train import Runtime, evaluate, keep_freed_memory, make_optimizer, train_one_epoch

HERE = Path(__file__).resolve().parent


def fake_cifar(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "GPU.md")
    parser.add_argument("--samples", type=int, default=4096, help="training samples per epoch")
    parser.add_argument("--test-samples", type=int, default=1000, help="Monte-Carlo test images")
    parser.add_argument("--trials", type=int, default=20, help="Monte-Carlo trials")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; run it on a machine with a GPU", file=sys.stderr)
        return 2
    keep_freed_memory()   # as stage workers run
    card = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    cfg = load_config("vgg16-cifar10", [])
    g = torch.Generator().manual_seed(0)
    x_train, y_train = fake_cifar(args.samples, g)
    x_test, y_test = fake_cifar(args.test_samples, g)
    data = DataSplits(x_train, y_train, x_test, y_test, x_test, y_test, num_classes=10, input_shape=(3, 32, 32))
    template = steps.template_for(cfg, data)
    rules = steps.rules_for(cfg, template, steps.default_ratios(cfg))
    runtime = Runtime(device, mixed_precision=device == "cuda")
    batch = cfg.data.batch_size
    steps_per_epoch = -(-args.samples // batch)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    # plain training epoch, then ADMM epochs (the first of each is a warm-up)
    model = template.to(device)
    opt = make_optimizer(model.parameters(), name=cfg.pretrain.optimizer, lr=cfg.pretrain.lr)
    plain = []
    for _ in range(2):
        sync()
        started = time.perf_counter()
        train_one_epoch(model, x_train, y_train, opt, batch_size=batch, generator=torch.Generator().manual_seed(0),
                        mixed_precision=runtime.mixed_precision)
        sync()
        plain.append(time.perf_counter() - started)
    template = template.cpu()
    admm_steps = []
    a = cfg.admm
    pruned, masks, _ = admm_train(template, data, rules, epochs=2, lr=a.lr, optimizer=a.optimizer,
                                  momentum=a.momentum, weight_decay=a.weight_decay, batch_size=batch, rho=a.rho,
                                  rho_multiplier=a.rho_multiplier, rho_every=a.rho_every, seed=0, runtime=runtime,
                                  on_epoch_end=lambda m: admm_steps.append(m["step_s"]))
    mapped = map_network(pruned, masks, cfg.mapping.weight_bits)
    spec = steps.spec_for(cfg)

    # Monte Carlo on the GPU: the plain forward pass of the mapped model, then trials
    mapped_model = mapped.load_into(template).to(device)
    x_dev = x_test.to(device)
    evaluate(mapped_model, x_dev, y_test)
    sync()
    started = time.perf_counter()
    for _ in range(5):
        evaluate(mapped_model, x_dev, y_test)
    sync()
    forward_s = (time.perf_counter() - started) / 5
    results = {}
    for scenario in (Scenario("sigma-0.1", "lognormal", 0.1), Scenario("adc-6bit", adc_bits=6)):
        seeds = [trial_seed(0, scenario.scenario_id, t) for t in range(args.trials)]
        run_trials(template, mapped, spec, scenario, seeds[:2], x_test, y_test, calibration=x_train[:256],
                   device=device)
        sync()
        started = time.perf_counter()
        accuracies = run_trials(template, mapped, spec, scenario, seeds, x_test, y_test,
                                calibration=x_train[:256], device=device)
        sync()
        results[scenario.scenario_id] = (time.perf_counter() - started, accuracies)

    lines = [
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `python benchmarks/gpu_check.py` on "
        f"**{card}** (torch {torch.__version__}, CUDA {torch.version.cuda}). VGG-16 (BN) on random "
        f"CIFAR-shaped inputs, the `vgg16-cifar10` preset's rules and batch size {batch}, "
        f"{'bfloat16 autocast' if runtime.mixed_precision else 'float32'}; {args.samples} training samples, "
        f"{args.trials} Monte-Carlo trials.", "",
        "| quantity | figure |", "| --- | --- |",
        f"| plain training steps per second | {steps_per_epoch / plain[-1]:.1f} /s |",
        f"| ADMM steps per second (W-step with the penalty, Z and U updates) | "
        f"{steps_per_epoch / admm_steps[-1]:.1f} /s ({admm_steps[-1] / plain[-1]:.2f}x a plain epoch) |",
        f"| plain forward pass of the mapped model, {args.test_samples} images | {1e3 * forward_s:.2f} ms |",
    ]
    for sid, (seconds, accuracies) in results.items():
        lines.append(f"| Monte-Carlo trials per second, {sid} ({args.test_samples} images each) | "
                     f"{args.trials / seconds:.1f} /s ({seconds / args.trials / forward_s:.2f}x a plain forward) |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark, side by side in one process, written to benchmarks/RESULTS.md.

    python benchmarks/run.py [--repeats 5] [--out benchmarks/RESULTS.md]

1. the quick preset end to end: wall time, and the share outside stage compute
   (from Ray's task timeline: the union of the stage tasks' `task:execute`
   spans and of the Tune trials' spans is stage compute; Ray start, worker
   start-up, scheduling, argument (de)serialization, Tune's own loop and the
   tables task are outside it), split by where it falls (Ray's start, the
   first worker's start-up, Tune's start, ...); then the same run again from
   this process with Ray and its workers already up;
2. Monte Carlo per trial against a plain forward pass of the same mapped model
   (its retrained mapping from run 1) over the same test set, for weight-noise
   scenarios and with tile-level ADC simulation;
3. batched trials against one at a time;
4. Monte-Carlo fan-out, 1 worker against 2 workers (one torch thread each);
5. an ADMM epoch against a plain training epoch of the same model.

Times are medians of `--repeats` runs measured one after the other in this
process, so each ratio compares like with like on this machine. These are
benchmarks, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from pipeline import run as pipeline_run  # noqa: E402
from pipeline import steps  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.run import montecarlo_task, package_versions, run_pipeline  # noqa: E402
from stages.admm import admm_train  # noqa: E402
from stages.mapping import MappedNetwork  # noqa: E402
from stages.montecarlo import EVAL_SAMPLES, Scenario, run_trials, trial_seed  # noqa: E402
from stages.train import evaluate, keep_freed_memory, make_optimizer, train_one_epoch  # noqa: E402

HERE = Path(__file__).resolve().parent
STAGE_TASKS = ("pretrain_task", "map_task", "retrain_task", "magnitude_task", "montecarlo_task")
TARGETS = {   # issue 6: what each ratio must meet
    "mc_weight_noise": ("<=", 1.15), "mc_tiles": ("<=", 3.0), "batched": (">=", 3.0),
    "fan_out": (">=", 1.7), "admm_epoch": ("<=", 1.10), "outside_share": ("<=", 0.30),
}


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each fn() over `repeats` rounds, each round calling every fn
    once, in turn (after one warm-up call each): a slow spell of the machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), **package_versions()}


def _merged(spans) -> list[list[float]]:
    """The union of (start, end, ...) spans as disjoint [start, end] intervals, in order."""
    merged: list[list[float]] = []
    for a, b, *_ in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def _union_seconds(spans) -> float:
    return sum(b - a for a, b in _merged(spans))


OUTSIDE_PARTS = {   # outside_parts' keys, as RESULTS.md names them
    "before_ray": "before Ray's start (the driver loads the data and checks the config's layers and root)",
    "ray_start": "Ray start (`ray.init`: GCS, API server, raylet and its agents)",
    "to_first_stage": "from Ray up to the first stage's compute (the first worker's start-up and imports, "
                      "scheduling)",
    "tune_start": "Tune's start (the search task, the trial actors' processes and imports) up to the first "
                  "trial's compute",
    "between_stages": "between stages (scheduling, argument (de)serialization, Tune's loop between trials)",
    "after_last_stage": "after the last stage's compute (the tables task, the driver's writes)",
}


def outside_parts(spans, started: float, ray_started: float, ray_ready: float, ended: float) -> dict[str, float]:
    """Where the wall time outside stage compute went, in seconds: `spans` are stage_compute_spans
    clipped to the run; `started`, `ray_started`, `ray_ready`, `ended` are the wall-clock times of
    the run's start, Ray's start being called and returning, and the run's end (the driver's data
    loading and checks come before Ray's start)."""
    merged = _merged(spans)
    first_trial = min((a for a, _, kind in spans if kind == "trial"), default=None)
    parts = {**dict.fromkeys(OUTSIDE_PARTS, 0.0),
             "before_ray": ray_started - started, "ray_start": ray_ready - ray_started}
    edges = [started, *[t for interval in merged for t in interval], ended]
    for gap_start, gap_end in zip(edges[::2], edges[1::2]):
        if gap_start == started:
            parts["to_first_stage"] += gap_end - ray_ready
        elif gap_end == ended:
            parts["after_last_stage"] += gap_end - gap_start
        elif gap_end == first_trial:
            parts["tune_start"] += gap_end - gap_start
        else:
            parts["between_stages"] += gap_end - gap_start
    return parts


def stage_compute_spans(events: list[dict]) -> list[tuple[float, float, str]]:
    """Stage compute in seconds since the epoch, as (start, end, "stage" or "trial"): the
    `task:execute` spans of the stage tasks, and each Tune trial's span from its first `train`
    call to its last `train` / `save` (a function trainable computes in a thread between `train`
    calls, which only fetch its results; a reused actor's `reset` starts the next trial)."""
    spans = []
    calls = sorted((e for e in events if e.get("ph") == "X" and e.get("cat", "").startswith("task::")),
                   key=lambda e: e["ts"])
    for p in calls:
        if any(p["cat"].endswith(name) for name in STAGE_TASKS):
            spans += [(e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6, "stage") for e in events
                      if e.get("cat") == "task:execute" and e["tid"] == p["tid"] and p["ts"] <= e["ts"]
                      and e["ts"] + e["dur"] <= p["ts"] + p["dur"] + 1]
    open_trials: dict[str, list[float]] = {}
    for p in calls:
        if "ImplicitFunc." not in p["cat"]:
            continue
        method, tid = p["cat"].rsplit(".", 1)[1], p["tid"]
        start, end = p["ts"] / 1e6, (p["ts"] + p["dur"]) / 1e6
        if method in ("train", "save"):
            if tid in open_trials:
                open_trials[tid][1] = end
            elif method == "train":
                open_trials[tid] = [start, end]
        elif tid in open_trials:   # reset, stop, ...: the trial on this actor is over
            spans.append((*open_trials.pop(tid), "trial"))
    return spans + [(*v, "trial") for v in open_trials.values()]


def bench_quick_preset(root: str) -> dict:
    """The embedded default end to end, from a cold Ray start to the tables; then once more from
    this process, on the Ray and workers the first run started, into a fresh output root so that no
    stage is read back from the cache. The pipeline's own `connect` (which starts Ray, or
    finds it running) is wrapped to note when it returns, so that Ray's start is timed apart
    without changing the order of the run. `root` holds the first run's tables and artifacts."""
    connect, marks = pipeline_run.connect, {}

    def timed_connect(*args, **kwargs):
        marks["ray_started"] = time.time()
        connect(*args, **kwargs)
        marks["ray_ready"] = time.time()

    def one_run(output_root: str) -> dict:
        cfg = load_config("quick", [f"output.root={output_root}"])
        started_wall, started = time.time(), time.perf_counter()
        summary = run_pipeline(cfg, run_id="bench-quick", preset="quick")
        return {"total_s": time.perf_counter() - started, "window": (started_wall, time.time()),
                "marks": dict(marks), "summary": summary}

    pipeline_run.connect = timed_connect
    try:
        runs = {"cold": one_run(root), "warm": one_run(tempfile.mkdtemp(prefix="memadmm-bench-warm-"))}
    finally:
        pipeline_run.connect = connect
    time.sleep(2)   # task events reach the GCS asynchronously
    events = stage_compute_spans(ray.timeline())
    ray.shutdown()
    out = {}
    for name, r in runs.items():
        (started, ended), m = r["window"], r["marks"]
        spans = [(max(a, started), min(b, ended), kind) for a, b, kind in events]
        spans = [s for s in spans if s[1] > s[0]]
        compute = _union_seconds(spans)
        out[name] = {"total_s": r["total_s"], "compute_s": compute, "outside_s": r["total_s"] - compute,
                     "outside_share": (r["total_s"] - compute) / r["total_s"], "summary": r["summary"],
                     "outside_parts_s": outside_parts(spans, started, m["ray_started"], m["ray_ready"], ended)}
    return {**out["cold"], "warm": out["warm"]}


def _mapped(root: str, cfg):
    artifact = torch.load(f"{root}/runs/bench-quick/artifacts/retrain.pt", weights_only=False)
    return MappedNetwork.from_plain(artifact)


def bench_montecarlo(root: str, repeats: int, trials: int = 100) -> dict:
    torch.set_num_threads(1)
    cfg = load_config("quick", [])
    data = steps.data_for(cfg)
    template = steps.template_for(cfg, data)
    mapped = _mapped(root, cfg)
    spec = steps.spec_for(cfg)
    model = mapped.load_into(template)
    x, y, calibration = data.x_test, data.y_test, data.x_train[:256]
    plain_forward = lambda: [evaluate(model, x, y) for _ in range(trials)]
    out = {"test_samples": len(y), "trials": trials, "batch_trials": cfg.montecarlo.batch_trials, "scenarios": {}}

    def run(scenario: Scenario, **kw):
        seeds = [trial_seed(0, scenario.scenario_id, t) for t in range(trials)]
        kw.setdefault("batch_trials", cfg.montecarlo.batch_trials)
        return lambda: run_trials(template, mapped, spec, scenario, seeds, x, y, calibration=calibration, **kw)

    scenarios = {"ideal (no noise)": Scenario("ideal"),
                 "lognormal sigma 0.1": Scenario("sigma-0.1", "lognormal", 0.1),
                 "stuck-at 0.5 %": Scenario("stuck", p_sa0=0.005, p_sa1=0.005),
                 "read noise 0.05": Scenario("read", read_noise=0.05),
                 "tiles, 6-bit ADC": Scenario("adc-6bit", adc_bits=6)}
    plains = []
    for label, scenario in scenarios.items():   # each scenario's variants and the plain pass, interleaved
        t = interleaved_medians({"plain": plain_forward, "batched": run(scenario),
                                 "alone_same": run(scenario, batch_trials=1),
                                 "alone_best": run(scenario, batch_trials=1, eval_samples=len(y))}, repeats)
        t = {k: v / trials for k, v in t.items()}
        plains.append(t["plain"])
        out["scenarios"][label] = {"batched_s": t["batched"], "alone_same_chunk_s": t["alone_same"],
                                   "alone_best_s": t["alone_best"], "plain_s": t["plain"],
                                   "vs_plain": t["batched"] / t["plain"],
                                   "batched_speedup": min(t["alone_same"], t["alone_best"]) / t["batched"]}
    out["plain_forward_s"] = statistics.median(plains)
    return out


def bench_fan_out(root: str, repeats: int, scenarios: int = 4, trials: int = 2000, chunk: int = 250) -> dict:
    """Monte-Carlo chunks through the pipeline's own task, on 1 then 2 single-thread workers."""
    cfg = load_config("quick", [f"output.root={tempfile.mkdtemp(prefix='memadmm-fanout-')}"])
    data = steps.data_for(cfg)
    mapped = _mapped(root, cfg)
    ray.init(address="local", num_cpus=2, resources={"mc_slot": 2}, include_dashboard=False,
             log_to_driver=False, object_store_memory=200 * 1024 ** 2)
    refs = [ray.put(v) for v in (cfg, data, None, mapped)]
    runs = {"count": 0}
    work = [(Scenario(f"sigma-{s}", "lognormal", 0.05 * (s + 1)), list(range(i, i + chunk)))
            for s in range(scenarios) for i in range(0, trials, chunk)]

    def fan_out(slots: int) -> None:
        runs["count"] += 1   # a fresh cache key each time: no chunk is read back from the cache
        ray.get([montecarlo_task.options(num_cpus=1, resources={"mc_slot": 2 / slots}).remote(
            *refs, scenario, chunk_trials, f"bench-{runs['count']}-{scenario.scenario_id}-{chunk_trials[0]}")
            for scenario, chunk_trials in work])

    fan_out(2)   # start both workers and import torch in them before timing
    t = interleaved_medians({"one": lambda: fan_out(1), "two": lambda: fan_out(2)}, repeats)
    one, two = t["one"], t["two"]
    ray.shutdown()
    return {"tasks": len(work), "trials": scenarios * trials, "one_worker_s": one, "two_workers_s": two,
            "speedup": one / two}


def bench_admm_epoch(root: str, repeats: int, preset: str = "quick", epochs: int = 10) -> dict:
    """An ADMM epoch against a plain epoch of the preset's model, from its pretrained weights (the
    quick run's for `quick`; 10 epochs of the preset's pretraining for another preset)."""
    torch.set_num_threads(1)
    cfg = load_config(preset, [])
    data = steps.data_for(cfg)
    template = steps.template_for(cfg, data)
    if preset == "quick":
        state = torch.load(f"{root}/runs/bench-quick/artifacts/pretrain.pt", weights_only=False)["model"]
    else:
        state, _ = steps.run_pretrain(cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(
            update={"epochs": 10})}), data)
    template.load_state_dict(state)
    rules = steps.rules_for(cfg, template, steps.default_ratios(cfg))
    a, batch = cfg.admm, cfg.data.batch_size
    plain_epochs, plain_evals = [], []

    def plain() -> None:
        model = copy.deepcopy(template)
        opt = make_optimizer(model.parameters(), name=a.optimizer, lr=a.lr)
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            started = time.perf_counter()
            train_one_epoch(model, data.x_train, data.y_train, opt, batch_size=batch, generator=generator)
            plain_epochs.append(time.perf_counter() - started)
            started = time.perf_counter()
            evaluate(model, data.x_val, data.y_val)
            plain_evals.append(time.perf_counter() - started)

    steps_s, reports_s = [], []

    def admm() -> None:
        def projected_metrics(model, masks, graph):
            fp = steps.footprint(cfg, steps.mapping_of(cfg, model, masks, rules, graph))
            return {"weight_compression": fp.weight_compression, "crossbars": fp.crossbars}

        def record(metrics: dict) -> None:
            steps_s.append(metrics["step_s"])
            reports_s.append(metrics["report_s"])

        admm_train(template, data, rules, epochs=epochs, lr=a.lr, optimizer=a.optimizer, momentum=a.momentum,
                   weight_decay=a.weight_decay, batch_size=batch, rho=a.rho, rho_multiplier=a.rho_multiplier,
                   rho_every=a.rho_every, seed=0, projected_metrics=projected_metrics, on_epoch_end=record)

    for _ in range(repeats):   # interleaved, so drifts of the machine hit both alike
        plain()
        admm()
    plain_s, plain_eval_s = statistics.median(plain_epochs), statistics.median(plain_evals)
    step_s, report_s = statistics.median(steps_s), statistics.median(reports_s)
    return {"preset": preset, "model": cfg.model.name, "batches": -(-len(data.y_train) // batch),
            "epochs": epochs * repeats, "plain_epoch_s": plain_s, "plain_eval_s": plain_eval_s,
            "admm_step_s": step_s, "admm_report_s": report_s, "ratio": step_s / plain_s,
            "ratio_with_reporting": (step_s + report_s) / (plain_s + plain_eval_s)}


def verdict(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = value <= target if op == "<=" else value >= target
    return f"{'met' if ok else 'NOT met'} (target {op} {target:g})"


def write_results(path: Path, info: dict, quick: dict, mc: dict, fan: dict, admm: dict, repeats: int) -> None:
    ms = lambda s: f"{1e3 * s:.3f} ms"
    weight_noise = [mc["scenarios"][k]["vs_plain"] for k in ("lognormal sigma 0.1", "stuck-at 0.5 %")]
    tiles = mc["scenarios"]["tiles, 6-bit ADC"]["vs_plain"]
    batched = min(mc["scenarios"][k]["batched_speedup"] for k in ("lognormal sigma 0.1", "stuck-at 0.5 %"))
    warm = quick["warm"]
    lines = [
        "# Benchmarks", "",
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `python benchmarks/run.py "
        f"--repeats {repeats}`, every benchmark in one process, one after the other. Times are medians "
        f"of {repeats} repeats; ratios compare runs made side by side on this machine. Benchmarks, "
        "not tests: no test asserts a time.", "",
        "## Machine", "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; torch threads: 1 in every benchmark below "
        "except the end-to-end run (Ray sets one per CPU of each task)",
        "- glibc malloc as in every stage worker (`stages.train.keep_freed_memory`): tensors up to "
        "32 MiB come from the heap, and up to 256 MiB freed there is kept for reuse",
        f"- {info['platform']}",
        "- " + ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("cpu", "cores", "platform", "torch_threads")),
        "", "## Targets (issue 6)", "",
        "| quantity | measured | target |", "| --- | --- | --- |",
        f"| Monte-Carlo trial / plain forward, weight noise (lognormal, stuck-at) | "
        f"{max(weight_noise):.2f}x (worst of {', '.join(f'{v:.2f}x' for v in weight_noise)}) | "
        f"{verdict('mc_weight_noise', max(weight_noise))} |",
        f"| Monte-Carlo trial / plain forward, tile-level 6-bit ADC | {tiles:.2f}x | {verdict('mc_tiles', tiles)} |",
        f"| batched trials, speed-up per trial over one at a time (weight noise, worst) | {batched:.2f}x | "
        f"{verdict('batched', batched)} |",
        f"| Monte-Carlo fan-out, 1 -> 2 workers | {fan['speedup']:.2f}x | {verdict('fan_out', fan['speedup'])} |",
        *[f"| ADMM epoch (W-step + Z, U updates) / plain training epoch, `{r['preset']}` ({r['model']}) | "
          f"{r['ratio']:.2f}x | {verdict('admm_epoch', r['ratio'])} |" for r in admm],
        f"| quick preset: share of wall time outside stage compute | {100 * quick['outside_share']:.1f} % | "
        f"{verdict('outside_share', quick['outside_share'])} |",
        f"| the same, run again from the same process, Ray and its workers already up (for reference: "
        f"no Ray start) | {100 * warm['outside_share']:.1f} % | not a target |",
        "", "## 1. Quick preset end to end", "",
        f"`run_pipeline` on the `quick` preset from a cold start (Ray started by the run): "
        f"**{quick['total_s']:.1f} s** wall time. Stage compute (from `ray.timeline()`: the union of "
        f"the stage tasks' `task:execute` spans and of each Tune trial's span from its first `train` "
        f"call to its last `train` / `save`): "
        f"{quick['compute_s']:.1f} s; outside it: {quick['outside_s']:.1f} s "
        f"({100 * quick['outside_share']:.1f} %): Ray start, worker start-up and imports, scheduling, "
        "argument (de)serialization, Tune's own loop, the tables task and the driver's writes. "
        f"Result: baseline {100 * quick['summary']['baseline_accuracy']:.2f} %, final "
        f"{100 * quick['summary']['final_accuracy']:.2f} %, weight compression "
        f"{quick['summary']['weight_compression']:.2f}x, crossbars {quick['summary']['crossbars_dense']} -> "
        f"{quick['summary']['crossbars_compressed']}.", "",
        "Where the time outside stage compute went (seconds of wall time, from the same timeline; "
        "Ray's start is timed by wrapping the pipeline's own `connect`, the run's order unchanged):", "",
        "| part | cold start | share of wall time | Ray already running | share of wall time |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {label} | {quick['outside_parts_s'][key]:.1f} s | "
          f"{100 * quick['outside_parts_s'][key] / quick['total_s']:.1f} % | {warm['outside_parts_s'][key]:.1f} s | "
          f"{100 * warm['outside_parts_s'][key] / warm['total_s']:.1f} % |" for key, label in OUTSIDE_PARTS.items()],
        f"| **outside stage compute** | **{quick['outside_s']:.1f} s** | **{100 * quick['outside_share']:.1f} %** | "
        f"**{warm['outside_s']:.1f} s** | **{100 * warm['outside_share']:.1f} %** |",
        f"| stage compute | {quick['compute_s']:.1f} s | | {warm['compute_s']:.1f} s | |",
        f"| wall time | {quick['total_s']:.1f} s | | {warm['total_s']:.1f} s | |", "",
        "Ray already running: the same run once more, right after the first, from the same Python process "
        "(as a script or notebook calling `run_pipeline` again does), on the Ray the first started, into a "
        "fresh output root so that no stage comes from the cache. Ray's idle workers belong to this "
        "process's job and have torch and the stage modules imported already; Tune's trial actors are "
        "still new processes, since Tune gives them a runtime environment of their own and Ray does not "
        "hand an actor a worker that ran tasks. (A new `memadmm run` process against a running cluster, "
        "`--address`, skips Ray's start but not its workers' start-up: workers belong to one job.) Result: final "
        f"{100 * warm['summary']['final_accuracy']:.2f} %, weight compression "
        f"{warm['summary']['weight_compression']:.2f}x.",
        "", "## 2-3. Monte Carlo per trial", "",
        f"The quick run's retrained mapping (`artifacts/retrain.pt`), its {mc['test_samples']} test "
        f"samples, {mc['trials']} trials per measurement. Plain forward pass: `evaluate` of the mapped "
        f"model as a torch module (dense shapes, zeros where pruned): **{ms(mc['plain_forward_s'])}** "
        "(median over the scenarios' rounds; each ratio uses its own scenario's rounds, every variant "
        "timed in turn in each round). "
        f"A trial samples every device, reads the weights back and evaluates; batched: "
        f"`montecarlo.batch_trials` = {mc['batch_trials']} trials together, {EVAL_SAMPLES} test samples per trial per forward "
        "pass, each crossbar layer on its kept rows and columns only (as its crossbars compute). "
        "One at a time: batch_trials = 1, with the same chunk (whose accuracies a test checks are "
        "identical to the batched ones) and with the whole test set in one pass (its fastest).", "",
        "| scenario | batched, per trial | / plain forward | one at a time, same chunk | one at a time, "
        "whole test set | batched speed-up |", "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in mc["scenarios"].items():
        lines.append(f"| {label} | {ms(r['batched_s'])} | {r['vs_plain']:.2f}x | {ms(r['alone_same_chunk_s'])} | "
                     f"{ms(r['alone_best_s'])} | {r['batched_speedup']:.2f}x |")
    lines += [
        "", "The batched speed-up is against the faster of the two one-at-a-time variants.",
        "", "## 4. Monte-Carlo fan-out", "",
        f"{fan['trials']} trials (4 lognormal scenarios) in {fan['tasks']} chunks of "
        f"{fan['trials'] // fan['tasks']} trials through the pipeline's "
        "own `montecarlo_task`, the model, data and mapping `ray.put` once; 1 worker (a custom "
        "resource lets one task run at a time) against 2 workers, one torch thread each, workers "
        f"warmed first, the two timed in turn in each round: {fan['one_worker_s']:.2f} s against {fan['two_workers_s']:.2f} s, "
        f"**{fan['speedup']:.2f}x**.",
        "", "## 5. ADMM epoch", "",
        "Each preset's model from pretrained weights, its ADMM rules and batch size, plain and ADMM "
        "epochs interleaved. Plain epoch: `train_one_epoch`. ADMM iteration: the W-step with the "
        "penalty's gradient, then the Z and U updates. Each ADMM epoch's report for Tune (the "
        "hard-projected copy, its validation accuracy, compression and crossbars) is counted apart, "
        "against the plain epoch's validation pass.", "",
        "| preset (model) | batches per epoch | epochs | plain epoch | ADMM iteration | ratio | "
        "ADMM report | plain validation | ratio with reporting |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[f"| `{r['preset']}` ({r['model']}) | {r['batches']} | {r['epochs']} | {ms(r['plain_epoch_s'])} | "
          f"{ms(r['admm_step_s'])} | **{r['ratio']:.2f}x** | {ms(r['admm_report_s'])} | "
          f"{ms(r['plain_eval_s'])} | {r['ratio_with_reporting']:.2f}x |" for r in admm],
        "",
    ]
    gpu = HERE / "GPU.md"
    lines += ["## GPU check", "", gpu.read_text().strip() if gpu.exists() else
              "Not run: no GPU on this machine. `python benchmarks/gpu_check.py` runs it where one is "
              "at hand and writes `benchmarks/GPU.md`, which this page then includes.", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    info = machine()
    keep_freed_memory()   # this process measures what stage workers run: the same allocator settings
    root = tempfile.mkdtemp(prefix="memadmm-bench-")
    print("1/5 quick preset end to end ...", file=sys.stderr)
    quick = bench_quick_preset(root)
    print(f"    {quick['total_s']:.1f} s, {100 * quick['outside_share']:.1f} % outside stage compute; with Ray "
          f"running {quick['warm']['total_s']:.1f} s, {100 * quick['warm']['outside_share']:.1f} %", file=sys.stderr)
    print("2-3/5 Monte Carlo per trial, batched and one at a time ...", file=sys.stderr)
    mc = bench_montecarlo(root, args.repeats)
    print("4/5 fan-out ...", file=sys.stderr)
    fan = bench_fan_out(root, args.repeats)
    print("5/5 ADMM epoch ...", file=sys.stderr)
    admm = [bench_admm_epoch(root, args.repeats, preset) for preset in ("quick", "quick-convnet")]
    write_results(args.out, info, quick, mc, fan, admm, args.repeats)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

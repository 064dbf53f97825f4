"""The Ray DAG: six stages as Ray tasks passing ObjectRefs, tables written at the end.

    pretrain -> admm (a task running a Tuner) -> map -> retrain -> montecarlo (fan-out) -> tables

Each stage task returns two objects: its artifact (model state, masks, the
mapping), whose ObjectRef goes to the next stage, and its report (table
rows), which the driver fetches. Model state never passes through the
driver: the tables task saves it under runs/<run_id>/artifacts/ for the user
and writes the tables; the driver writes the run's status and manifest.

The driver logs each stage's start and end (logger `memadmm`) and, when asked, draws
live progress (pipeline.progress): Tune trials finished, Monte-Carlo trials done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import platform
import socket
import tempfile
import time
import uuid
from importlib import metadata

import fsspec
import ray
import torch

from pipeline import cache, steps
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.progress import RunProgress, TrialEvents, follow_tune
from pipeline.results import layers_and_hardware, summary_row
from stages.data import DataSplits
from stages.mapping import MappedNetwork

log = logging.getLogger("memadmm")
PACKAGES = ("memristor-admm", "torch", "torchvision", "ray", "pyarrow", "numpy", "pydantic")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# ---- stage tasks -------------------------------------------------------------------------
# `model` is None for the config's architecture, else the caller's untrained module. Each task
# returns its stored output when its key is in the cache (pipeline.cache), else computes and stores it.

@ray.remote(num_returns=2)
def pretrain_task(cfg: Config, data, model, key: str):
    return tuple(cache.cached(cfg.output.root, "pretrain", key,
                              lambda: steps.run_pretrain(cfg, data, model=model)))


@ray.remote(num_returns=2)
def admm_task(cfg: Config, data, model, state, storage_path: str, name: str, key: str, events=None):
    """`events`: the driver's TrialEvents actor when it draws progress, else None."""
    from pipeline.tuning import run_search   # Ray Tune is imported by the worker that runs the search only

    def compute():
        compressed, masks, rows, ratios = run_search(cfg, data, state, storage_path, name, model, events=events)
        return {"model": compressed, "masks": masks, "ratios": ratios}, {"tune": rows}
    return tuple(cache.cached(cfg.output.root, "admm", key, compute))


@ray.remote(num_returns=2)
def map_task(cfg: Config, data, model, admm, key: str):
    def compute():
        mapped, rows = steps.run_map(cfg, data, admm["model"], admm["masks"], admm["ratios"],
                                     stage=cfg.admm.method, model=model)
        return mapped.to_plain(), rows
    plain, rows = cache.cached(cfg.output.root, "map", key, compute)
    return MappedNetwork.from_plain(plain), rows


@ray.remote
def magnitude_task(cfg: Config, data, model, state, admm, key: str):
    """The magnitude baseline at the chosen ratios: its accuracy rows."""
    return cache.cached(cfg.output.root, "magnitude", key, lambda: steps.run_magnitude_baseline(
        cfg, data, state, admm["ratios"], model=model)[1])


@ray.remote(num_returns=2)
def retrain_task(cfg: Config, data, model, mapped, key: str):
    def compute():
        final, rows = steps.run_retrain(cfg, data, mapped, model=model)
        return final.to_plain(), rows
    plain, rows = cache.cached(cfg.output.root, "retrain", key, compute)
    return MappedNetwork.from_plain(plain), rows


@ray.remote
def montecarlo_task(cfg: Config, data, model, mapped, scenario, trials: list[int], key: str):
    return cache.cached(cfg.output.root, "montecarlo", key, lambda: steps.run_montecarlo_chunk(
        cfg, data, mapped, scenario, trials, model=model))


def write_results(cfg: Config, rec: Recorder, state, admm, mapped, final, accuracy, tune_rows, montecarlo):
    """Cost the final mapping, save the artifacts, write every table; returns the summary row."""
    layers, hardware = layers_and_hardware(cfg, final)
    summary = summary_row(cfg, accuracy, layers, hardware, montecarlo, model_name=rec.model_name)
    config = cfg.model_dump(mode="json")
    rec.artifact("pretrain", {"model": state, "config": config})
    rec.artifact("admm", {**admm, "config": config})
    rec.artifact("mapped", mapped.to_plain())
    rec.artifact("retrain", final.to_plain())
    for name, rows in (("accuracy", accuracy), ("layers", layers), ("hardware", hardware),
                       ("tune", tune_rows), ("montecarlo", montecarlo), ("summary", [summary])):
        rec.table(name, rows)
    return summary


tables_task = ray.remote(write_results)


# ---- driver ------------------------------------------------------------------------------

def check_root(root: str) -> None:
    """Refuse a results root that cannot be written, before any work (a probe file, then removed)."""
    try:
        fs, path = fsspec.core.url_to_fs(root)
        fs.makedirs(path, exist_ok=True)
        probe = f"{path.rstrip('/')}/_probe-{uuid.uuid4().hex}"
        with fs.open(probe, "wb") as f:
            f.write(b"")
        fs.rm(probe)
    except Exception as exc:  # noqa: BLE001 - any failure to write here is the user's root
        raise UserError(f"output.root: cannot write to {root!r} ({type(exc).__name__}: {exc}); allowed: a "
                        "writable folder or fsspec URL (s3://, gs://, file://, memory://)") from None


def check_address(address: str | None) -> None:
    """Refuse a cluster address that answers nothing, before any work (a TCP connect, 5 s at most)."""
    if not address or address == "auto":
        return
    target = address.split("://", 1)[-1].rsplit("/", 1)[0] if "://" in address else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address: got {address!r}; allowed: HOST:PORT of a Ray head (GCS), e.g. "
                        "10.0.0.1:6379, or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"--address: cannot reach a Ray cluster at {address!r} ({exc}); start one with "
                        "`ray start --head` or `ray up cluster.yaml`, or leave --address out to run locally") from None


# What the local Ray's worker processes import before they take work: the stage tasks' module and
# the ADMM search's (Ray Tune). Workers start with Ray, so this overlaps the driver's own start-up.
WORKER_PRELOAD = ("pipeline.run", "pipeline.tuning")


def local_ray_system_config(num_cpus: int | None) -> dict:
    """Ray settings for the local single-node cluster a run starts: workers preload WORKER_PRELOAD,
    and up to two idle workers per CPU stay alive, so those that ran the stages before the Tune
    search (whose trial actors take processes of their own) still run the stages after it."""
    cpus = num_cpus or os.cpu_count() or 1
    return {"preload_python_modules": list(WORKER_PRELOAD), "num_workers_soft_limit": 2 * cpus}


def connect(cfg: Config, address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local single-node Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=cfg.resources.num_cpus, include_dashboard=False,
                 log_to_driver=False, _system_config=local_ray_system_config(cfg.resources.num_cpus))


class Recorder:
    """Writes the run's files under <root>/runs/<run_id>/ and its tables, through fsspec."""

    def __init__(self, cfg: Config, run_id: str, preset: str, model_name: str):
        self.cfg, self.run_id, self.preset, self.model_name = cfg, run_id, preset, model_name
        self.root = cfg.output.root.rstrip("/")
        self.base = f"{self.root}/runs/{run_id}"
        self.created_at = dt.datetime.now(dt.timezone.utc)
        self.versions = package_versions()
        self.stages: dict[str, dict] = {}
        self.provenance = {"run_id": run_id, "config_hash": cfg.hash(), "seed": cfg.seed,
                           "versions": self.versions}

    def _write(self, name: str, data: bytes) -> None:
        fs, path = fsspec.core.url_to_fs(f"{self.base}/{name}")
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{os.path.dirname(path)}/_tmp-{uuid.uuid4().hex}"
        with fs.open(temporary, "wb") as f:
            f.write(data)
        fs.mv(temporary, path)

    def start(self) -> None:
        self._write("config.yaml", self.cfg.to_yaml().encode())
        self.status("running")

    def table(self, name: str, rows: list[dict]) -> None:
        from pipeline.tables import write_table   # pyarrow and pandas: only where tables are written

        write_table(self.root, name, self.run_id, rows, self.provenance)

    def artifact(self, stage: str, obj) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self._write(f"artifacts/{stage}.pt", buffer.getvalue())

    def begin(self, name: str) -> float:
        """Log a stage's start; returns its start time for `stage`."""
        log.info("stage %-10s started", name)
        return time.perf_counter()

    def stage(self, name: str, started: float, status: str = "succeeded", **extra) -> None:
        self.stages[name] = {"status": status, "seconds": round(time.perf_counter() - started, 3), **extra}
        log.info("stage %-10s %s in %.1f s", name, status, self.stages[name]["seconds"])
        self.manifest("running")

    def manifest(self, status: str) -> None:
        manifest = {"run_id": self.run_id, "status": status, "preset": self.preset,
                    "created_at": self.created_at.isoformat(), "seed": self.cfg.seed,
                    "config_hash": self.cfg.hash(), "versions": self.versions, "stages": self.stages}
        self._write("manifest.json", json.dumps(manifest, indent=2).encode())

    def status(self, status: str) -> None:
        self.table("runs", [{"created_at": self.created_at, "status": status, "seed": self.cfg.seed,
                             "config_hash": self.cfg.hash(),
                             "config": json.dumps(self.cfg.model_dump(mode="json"), sort_keys=True),
                             "package_versions": json.dumps(self.versions), "preset": self.preset}])
        self.manifest(status)


def _tune_storage(cfg: Config, run_id: str) -> str:
    """Tune needs an absolute local path or a URL it can write; memory:// roots get a temp dir."""
    root = cfg.output.root
    if "://" in root and not root.startswith("file://"):
        return tempfile.mkdtemp(prefix="memadmm-tune-") if root.startswith("memory://") else f"{root}/runs/{run_id}/tune"
    local = root.removeprefix("file://")
    return os.path.abspath(os.path.join(local, "runs", run_id, "tune"))


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def run_pipeline(cfg: Config, *, run_id: str | None = None, address: str | None = None,
                 preset: str = "", on_montecarlo=None, model: torch.nn.Module | None = None,
                 data: DataSplits | None = None, progress: bool | RunProgress = False) -> dict:
    """Run every stage on Ray; returns the summary row. Tables are under cfg.output.root.

    `on_montecarlo(done, total)` is called as Monte-Carlo chunks finish. `progress`: True
    draws live bars on stderr (what `memadmm run` does), a pipeline.progress.RunProgress
    draws on its console and keeps its counts; False (the default, for library use) draws
    nothing and starts nothing for it.

    From Python, `model` (an untrained torch.nn.Module whose Conv2d and Linear layers go on
    crossbars; cfg.model is then ignored) and `data` (a stages.data.DataSplits) replace
    the config's architecture and data set.
    """
    run_id = run_id or new_run_id()
    data = data if data is not None else steps.data_for(cfg)   # a missing data folder stops here
    steps.check_layers(cfg, steps.template_for(cfg, data, model))
    check_root(cfg.output.root)
    check_address(address if address or ray.is_initialized() else os.environ.get("RAY_ADDRESS"))
    name = type(model).__name__ if model is not None else cfg.model.name
    rec = Recorder(cfg, run_id, preset, name)
    rec.start()
    try:
        summary = _run(cfg, rec, data, model, address, on_montecarlo,
                       RunProgress() if progress is True else progress or None)
    except BaseException:
        rec.status("failed")
        raise
    rec.status("succeeded")
    return {"run_id": run_id, **summary}


def _run(cfg: Config, rec: Recorder, data, model, address, on_montecarlo, progress: RunProgress | None) -> dict:
    connect(cfg, address)
    with progress if progress is not None else contextlib.nullcontext():   # bars start after Ray's own lines
        return _stages(cfg, rec, data, model, on_montecarlo, progress)


def _stages(cfg: Config, rec: Recorder, data, model, on_montecarlo, progress: RunProgress | None) -> dict:
    root = cfg.output.root
    cpus, gpus = cfg.resources.cpus_per_task, cfg.resources.gpus_per_task
    retries = {"max_retries": cfg.resources.task_retries}
    data_ref, model_ref = ray.put(data), ray.put(model)
    keys = {"pretrain": cache.stage_key(cfg, "pretrain", extra=cache.model_fingerprint(model))}
    keys["admm"] = cache.stage_key(cfg, "admm", (keys["pretrain"],))
    keys["map"] = cache.stage_key(cfg, "map", (keys["admm"],))
    keys["retrain"] = cache.stage_key(cfg, "retrain", (keys["map"],))
    keys["magnitude"] = cache.stage_key(cfg, "magnitude", (keys["admm"],))

    def start(stage: str) -> tuple[float, str]:
        how = "cached" if cache.exists(root, stage, keys[stage]) else "succeeded"
        return rec.begin(stage), how

    t, how = start("pretrain")
    state_ref, pre_rows = pretrain_task.options(num_cpus=cpus, num_gpus=gpus, **retries).remote(
        cfg, data_ref, model_ref, keys["pretrain"])
    accuracy = list(ray.get(pre_rows))
    rec.stage("pretrain", t, how)

    t, how = start("admm")
    events = TrialEvents.remote() if progress is not None and how != "cached" else None
    admm_ref, tune_report = admm_task.options(num_cpus=0, **retries).remote(
        cfg, data_ref, model_ref, state_ref, _tune_storage(cfg, rec.run_id), f"admm-{rec.run_id}", keys["admm"],
        events)
    if progress is not None:
        progress.tune_started(cfg.tune.num_samples)
        if events is not None:
            follow_tune(progress, events, tune_report)
            ray.kill(events)
    tune_report = ray.get(tune_report)
    if progress is not None:
        progress.tune_done(cached=how == "cached")
    rec.stage("admm", t, how)

    magnitude_ref = None
    if cfg.admm.compare_magnitude and cfg.admm.method == "admm":   # runs beside map and retrain
        t_magnitude, how_magnitude = start("magnitude")
        magnitude_ref = magnitude_task.options(num_cpus=cpus, num_gpus=gpus, **retries).remote(
            cfg, data_ref, model_ref, state_ref, admm_ref, keys["magnitude"])

    t, how = start("map")
    mapped_ref, map_rows = map_task.options(num_cpus=cpus, num_gpus=gpus, **retries).remote(
        cfg, data_ref, model_ref, admm_ref, keys["map"])
    accuracy += ray.get(map_rows)
    rec.stage("map", t, how)

    t, how = start("retrain")
    final_ref, retrain_rows = retrain_task.options(num_cpus=cpus, num_gpus=gpus, **retries).remote(
        cfg, data_ref, model_ref, mapped_ref, keys["retrain"])
    accuracy += ray.get(retrain_rows)
    rec.stage("retrain", t, how)
    if magnitude_ref is not None:
        accuracy += ray.get(magnitude_ref)
        rec.stage("magnitude", t_magnitude, how_magnitude)

    t = rec.begin("montecarlo")
    scenarios = steps.scenarios_for(cfg)
    rows: dict[tuple[str, int], dict] = {}   # one row per (scenario, trial), however often a chunk ran
    pending, reused = [], 0
    for s in scenarios:
        for trials in _chunks(cfg.montecarlo.trials, cfg.montecarlo.chunk_size):
            key = cache.stage_key(cfg, "montecarlo", (keys["retrain"],),
                                  extra={"scenario": dataclasses.asdict(s), "trials": trials})
            if cache.exists(root, "montecarlo", key):
                chunk, reused = cache.load(root, "montecarlo", key), reused + 1
                rows.update({(r["scenario_id"], r["trial"]): r for r in chunk})
                continue
            pending.append(montecarlo_task.options(num_cpus=cpus, num_gpus=gpus, **retries).remote(
                cfg, data_ref, model_ref, final_ref, s, trials, key))
    total, computed = len(scenarios) * cfg.montecarlo.trials, len(pending)
    if progress is not None:
        progress.montecarlo(len(rows), total)        # chunks reused from the cache count as done
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            rows.update({(r["scenario_id"], r["trial"]): r for r in ray.get(ref)})
        if on_montecarlo is not None:
            on_montecarlo(len(rows), total)
        if progress is not None:
            progress.montecarlo(len(rows), total)
    order = {s.scenario_id: i for i, s in enumerate(scenarios)}
    montecarlo = sorted(rows.values(), key=lambda r: (order[r["scenario_id"]], r["trial"]))
    rec.stage("montecarlo", t, "cached" if computed == 0 else "succeeded", chunks_reused=reused)

    t = rec.begin("tables")
    results = (cfg, rec, state_ref, admm_ref, mapped_ref, final_ref, accuracy, tune_report["tune"], montecarlo)
    if cache.process_local(root):   # only the driver's process can see a memory:// root
        summary = write_results(*(ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in results))
    else:
        summary = ray.get(tables_task.options(num_cpus=cpus, **retries).remote(*results))
    rec.stage("tables", t)
    return summary

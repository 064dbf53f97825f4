"""The Ray DAG: six stages as Ray tasks passing ObjectRefs, tables written at the end.

    pretrain -> admm (a task running a Tuner) -> map -> retrain -> montecarlo (fan-out) -> tables

Each stage task returns two objects: its artifact (model state, masks, the
mapping), whose ObjectRef goes to the next stage, and its report (table
rows), which the driver fetches. Model state never passes through the
driver: the tables task saves it under runs/<run_id>/artifacts/ for the user
and writes the tables; the driver writes the run's status and manifest.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import platform
import tempfile
import time
import uuid
from importlib import metadata

import fsspec
import ray
import torch

from pipeline import steps
from pipeline.config import Config
from pipeline.results import layers_and_hardware, summary_row
from pipeline.tables import write_table
from pipeline.tuning import run_search
from stages.data import DataSplits

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
# `model` is None for the config's architecture, else the caller's untrained module.

@ray.remote(num_returns=2)
def pretrain_task(cfg: Config, data, model):
    return steps.run_pretrain(cfg, data, model=model)


@ray.remote(num_returns=2)
def admm_task(cfg: Config, data, model, state, storage_path: str, name: str):
    compressed, masks, rows, ratios = run_search(cfg, data, state, storage_path, name, model)
    return {"model": compressed, "masks": masks, "ratios": ratios}, {"tune": rows}


@ray.remote(num_returns=2)
def map_task(cfg: Config, data, model, admm):
    return steps.run_map(cfg, data, admm["model"], admm["masks"], admm["ratios"],
                         stage=cfg.admm.method, model=model)


@ray.remote
def magnitude_task(cfg: Config, data, model, state, admm):
    """The magnitude baseline at the chosen ratios: its accuracy rows."""
    return steps.run_magnitude_baseline(cfg, data, state, admm["ratios"], model=model)[1]


@ray.remote(num_returns=2)
def retrain_task(cfg: Config, data, model, mapped):
    return steps.run_retrain(cfg, data, mapped, model=model)


@ray.remote
def montecarlo_task(cfg: Config, data, model, mapped, scenario, trials: list[int]):
    return steps.run_montecarlo_chunk(cfg, data, mapped, scenario, trials, model=model)


@ray.remote
def tables_task(cfg: Config, rec: "Recorder", state, admm, mapped, final, accuracy, tune_rows, montecarlo):
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


# ---- driver ------------------------------------------------------------------------------

def connect(cfg: Config, address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local single-node Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=cfg.resources.num_cpus, include_dashboard=False,
                 log_to_driver=False)


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
        write_table(self.root, name, self.run_id, rows, self.provenance)

    def artifact(self, stage: str, obj) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self._write(f"artifacts/{stage}.pt", buffer.getvalue())

    def stage(self, name: str, started: float, status: str = "succeeded") -> None:
        self.stages[name] = {"status": status, "seconds": round(time.perf_counter() - started, 3)}
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
                 data: DataSplits | None = None) -> dict:
    """Run every stage on Ray; returns the summary row. Tables are under cfg.output.root.

    From Python, `model` (an untrained torch.nn.Module whose Conv2d and Linear layers go on
    crossbars; cfg.model is then ignored) and `data` (a stages.data.DataSplits) replace
    the config's architecture and data set.
    """
    run_id = run_id or new_run_id()
    data = data if data is not None else steps.data_for(cfg)
    steps.check_layers(cfg, steps.template_for(cfg, data, model))
    name = type(model).__name__ if model is not None else cfg.model.name
    rec = Recorder(cfg, run_id, preset, name)
    rec.start()
    try:
        summary = _run(cfg, rec, data, model, address, on_montecarlo)
    except BaseException:
        rec.status("failed")
        raise
    rec.status("succeeded")
    return {"run_id": run_id, **summary}


def _run(cfg: Config, rec: Recorder, data, model, address, on_montecarlo) -> dict:
    connect(cfg, address)
    cpus, gpus = cfg.resources.cpus_per_task, cfg.resources.gpus_per_task
    data_ref, model_ref = ray.put(data), ray.put(model)

    t = time.perf_counter()
    state_ref, pre_rows = pretrain_task.options(num_cpus=cpus, num_gpus=gpus).remote(cfg, data_ref, model_ref)
    accuracy = list(ray.get(pre_rows))
    rec.stage("pretrain", t)

    t = time.perf_counter()
    admm_ref, tune_report = admm_task.options(num_cpus=0).remote(
        cfg, data_ref, model_ref, state_ref, _tune_storage(cfg, rec.run_id), f"admm-{rec.run_id}")
    tune_report = ray.get(tune_report)
    rec.stage("admm", t)

    magnitude_ref = None
    if cfg.admm.compare_magnitude and cfg.admm.method == "admm":   # runs beside map and retrain
        magnitude_ref = magnitude_task.options(num_cpus=cpus, num_gpus=gpus).remote(
            cfg, data_ref, model_ref, state_ref, admm_ref)

    t = time.perf_counter()
    mapped_ref, map_rows = map_task.options(num_cpus=cpus).remote(cfg, data_ref, model_ref, admm_ref)
    accuracy += ray.get(map_rows)
    rec.stage("map", t)

    t = time.perf_counter()
    final_ref, retrain_rows = retrain_task.options(num_cpus=cpus, num_gpus=gpus).remote(
        cfg, data_ref, model_ref, mapped_ref)
    accuracy += ray.get(retrain_rows)
    rec.stage("retrain", t)
    if magnitude_ref is not None:
        t = time.perf_counter()
        accuracy += ray.get(magnitude_ref)
        rec.stage("magnitude", t)

    t = time.perf_counter()
    scenarios = steps.scenarios_for(cfg)
    pending = [montecarlo_task.options(num_cpus=cpus).remote(cfg, data_ref, model_ref, final_ref, s, trials)
               for s in scenarios for trials in _chunks(cfg.montecarlo.trials, cfg.montecarlo.chunk_size)]
    total = len(scenarios) * cfg.montecarlo.trials
    montecarlo: list[dict] = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            montecarlo += ray.get(ref)
        if on_montecarlo is not None:
            on_montecarlo(len(montecarlo), total)
    order = {s.scenario_id: i for i, s in enumerate(scenarios)}
    montecarlo.sort(key=lambda r: (order[r["scenario_id"]], r["trial"]))
    rec.stage("montecarlo", t)

    t = time.perf_counter()
    summary = ray.get(tables_task.options(num_cpus=cpus).remote(
        cfg, rec, state_ref, admm_ref, mapped_ref, final_ref, accuracy, tune_report["tune"], montecarlo))
    rec.stage("tables", t)
    return summary

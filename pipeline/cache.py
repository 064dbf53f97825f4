"""Stage outputs stored under content keys, so a re-run skips what already finished.

A stage's key hashes its own config sections and its inputs' keys:

    pretrain    seed, data, model, pretrain (+ the caller's model, if one was passed)
    admm        pretrain key, admm, tune, mapping
    map         admm key, mapping, retrain (progressive mapping retrains)
    retrain     map key, retrain
    magnitude   admm key, mapping, retrain
    montecarlo  retrain key, the scenario's parameters, the chunk's trials

Outputs live under <root>/cache/<stage>/<key>.pt, written atomically (a
temporary name, then a move), by the Ray task that computed them. `memadmm
run --run-id X` after a crash finds them and skips those stages and chunks;
a run with another id and the same settings reuses them too. A memory:// root
lives in the driver's process only, so nothing is cached there. Stored objects
are plain tensors, numbers and strings (torch.load with weights_only=True).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from typing import Any, Callable

import fsspec
import torch

from pipeline.config import Config

SECTIONS = {
    "pretrain": ("seed", "data", "model", "pretrain"),
    "admm": ("admm", "tune", "mapping"),
    "map": ("mapping", "retrain"),
    "retrain": ("retrain",),
    "magnitude": ("mapping", "retrain"),
    "montecarlo": (),
}


def stage_key(cfg: Config, stage: str, inputs: tuple[str, ...] = (), extra: Any = None) -> str:
    dump = cfg.model_dump(mode="json")
    payload = {"stage": stage, "inputs": list(inputs), "extra": extra,
               "config": {s: dump[s] for s in SECTIONS[stage]}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def model_fingerprint(model: torch.nn.Module | None) -> str | None:
    """A caller's model enters the pretrain key by class, structure and initial weights."""
    if model is None:
        return None
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return f"{type(model).__qualname__}:{h.hexdigest()[:16]}"


def process_local(root: str) -> bool:
    """A filesystem that lives inside one process (memory://): Ray workers cannot share it."""
    return root.startswith("memory://")


def _path(root: str, stage: str, key: str) -> str:
    return f"{root.rstrip('/')}/cache/{stage}/{key}.pt"


def exists(root: str, stage: str, key: str) -> bool:
    if process_local(root):
        return False
    fs, path = fsspec.core.url_to_fs(_path(root, stage, key))
    return fs.exists(path)


def load(root: str, stage: str, key: str):
    fs, path = fsspec.core.url_to_fs(_path(root, stage, key))
    with fs.open(path, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def save(root: str, stage: str, key: str, obj) -> None:
    fs, path = fsspec.core.url_to_fs(_path(root, stage, key))
    folder = path.rsplit("/", 1)[0]
    fs.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    temporary = f"{folder}/_tmp-{uuid.uuid4().hex}"
    with fs.open(temporary, "wb") as f:
        f.write(buffer.getvalue())
    fs.mv(temporary, path)


def cached(root: str, stage: str, key: str, compute: Callable[[], Any]):
    """The stored output under (stage, key), or compute it, store it and return it.
    A process-local root (memory://) caches nothing: the worker's copy would be invisible."""
    if process_local(root):
        return compute()
    if exists(root, stage, key):
        return load(root, stage, key)
    result = compute()
    save(root, stage, key, result)
    return result

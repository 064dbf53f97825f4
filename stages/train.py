"""Training and evaluation loops in torchvision's shape.

Plain PyTorch: `train_one_epoch` and `evaluate` know nothing of Ray or of
ADMM. Callers add a penalty with `extra_loss` and keep pruned weights at zero
with `after_step`; stages report progress through `on_epoch_end(metrics)`.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from stages.data import DataSplits, augment, batches
from stages.errors import StageError

EpochCallback = Optional[Callable[[dict], None]]


@dataclass(frozen=True)
class Runtime:
    """Where training runs: a torch device name, and bfloat16 autocast on CUDA."""

    device: str = "cpu"
    mixed_precision: bool = False


def epoch_options(data: DataSplits, runtime: Runtime) -> dict:
    """train_one_epoch keyword arguments for this data set (its augmentation) and runtime."""
    kind = data.augmentation
    return {"augment": None if kind == "none" else functools.partial(augment, kind=kind),
            "mixed_precision": runtime.mixed_precision}


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state: what stages hand on."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def set_torch_threads() -> int:
    """Use OMP_NUM_THREADS torch threads (set per Ray task from its CPUs); returns the count."""
    n = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Have glibc serve CPU tensors up to `mmap_threshold` bytes from its heap and keep up to
    `trim_threshold` bytes freed there, instead of mapping fresh zeroed pages from the kernel
    for every temporary of a few MiB (Monte Carlo's batched device tensors: measured 4-6x
    slower element-wise ops). Freed memory beyond `trim_threshold` still goes back to the
    system. Returns False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def prepare_worker() -> int:
    """What a stage does first in its process: torch threads from OMP_NUM_THREADS and
    keep_freed_memory. Returns the torch thread count."""
    keep_freed_memory()
    return set_torch_threads()


def make_optimizer(params, *, name: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise StageError(f"optimizer: got {name!r}; allowed: 'sgd', 'adam'")


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def resolve_device(gpus: float) -> str:
    """"cuda" when GPUs were asked for and one is visible, else "cpu"."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def train_one_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    optimizer: torch.optim.Optimizer, *, batch_size: int,
                    generator: torch.Generator,
                    extra_loss: Callable[[], torch.Tensor] | None = None,
                    after_backward: Callable[[], None] | None = None,
                    after_step: Callable[[], None] | None = None,
                    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                    mixed_precision: bool = False) -> float:
    """One pass over (x, y) in shuffled mini-batches on the model's device; returns the mean loss.

    augment(x_batch, generator) transforms training batches (on the CPU, seeded);
    mixed_precision runs the forward pass under bfloat16 autocast on CUDA.
    """
    model.train()
    device = device_of(model)
    amp = mixed_precision and device.type == "cuda"
    total, count = 0.0, 0
    for xb, yb in batches(x, y, batch_size, generator):
        if augment is not None:
            xb = augment(xb, generator=generator)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(xb), yb)
        if extra_loss is not None:
            loss = loss + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total += loss.item() * len(xb)
        count += len(xb)
    return total / max(count, 1)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    device = device_of(model)
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[start:start + batch_size]).sum().item()
    return correct / len(x)


def pretrain(model: nn.Module, data: DataSplits, *, epochs: int, lr: float, optimizer: str,
             momentum: float, weight_decay: float, batch_size: int, seed: int,
             on_epoch_end: EpochCallback = None, runtime: Runtime = Runtime()) -> tuple[dict, dict]:
    """Train the dense model; returns (best-on-val state_dict on the CPU, metrics)."""
    model = copy.deepcopy(model).to(runtime.device)
    opt = make_optimizer(model.parameters(), name=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    generator = torch.Generator().manual_seed(seed)
    best_acc, best_state = -1.0, cpu_state(model)
    for epoch in range(epochs):
        loss = train_one_epoch(model, data.x_train, data.y_train, opt, batch_size=batch_size,
                               generator=generator, **epoch_options(data, runtime))
        sched.step()
        val_acc = evaluate(model, data.x_val, data.y_val)
        if val_acc > best_acc:
            best_acc, best_state = val_acc, cpu_state(model)
        if on_epoch_end is not None:
            on_epoch_end({"stage": "pretrain", "epoch": epoch, "loss": loss, "val_accuracy": val_acc})
    return best_state, {"val_accuracy": best_acc}

"""Reusable training pieces: one epoch, evaluation, LR schedule, atomic checkpoints."""

from __future__ import annotations

import math
import os
import pickle
import random
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

AMP_MODES = ("off", "bf16", "fp16")
SCHEDULES = ("multistep", "cosine", "constant")


CHECKPOINT_FORMAT = "dst-checkpoint-v2"  # v2: RNG states in plain data (no numpy pickles)
CHECKPOINT_FORMATS = ("dst-checkpoint-v1", CHECKPOINT_FORMAT)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, or for another model or run)."""


# ----------------------------------------------------------------------------- schedule
class EpochLR:
    """LR factor by epoch: linear warm-up, then multistep (gamma at milestones), cosine or
    constant. Picklable, so it rides in LambdaLR's state."""

    def __init__(self, kind: str, milestones: list[int], gamma: float, epochs: int,
                 warmup_epochs: int = 0):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown LR schedule {kind!r}; valid choices: "
                             f"{', '.join(SCHEDULES)}")
        self.kind, self.milestones, self.gamma = kind, sorted(milestones), gamma
        self.epochs, self.warmup = epochs, warmup_epochs

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        if self.kind == "multistep":
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.kind == "cosine":
            span = max(1, self.epochs - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(epoch - self.warmup, span) / span))
        return 1.0


def build_scheduler(optimizer, cfg, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    unit = cfg.get("unit", "fraction")
    if unit not in ("fraction", "epoch"):
        raise ValueError(f"optim.scheduler.unit must be fraction or epoch, got {unit!r}")
    ms = [int(round(m * epochs)) if unit == "fraction" else int(m) for m in cfg.milestones]
    factor = EpochLR(cfg.kind, ms, float(cfg.gamma), epochs, int(cfg.get("warmup_epochs", 0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- amp
def autocast_ctx(device: torch.device, amp: str):
    if amp not in AMP_MODES:
        raise ValueError(f"unknown trainer.amp {amp!r}; valid choices: {', '.join(AMP_MODES)}")
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device, amp: str,
                init_scale: float | None = None) -> torch.amp.GradScaler:
    """fp16's loss scaler (``init_scale``: its first scale; None keeps torch's 2**16)."""
    kwargs = {} if init_scale is None else {"init_scale": float(init_scale)}
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16", **kwargs)


# ----------------------------------------------------------------------------- loops
def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _sum_across(values: list[float], device) -> list[float]:
    if not _is_dist():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(model: nn.Module, loader, optimizer, engine, *, device, amp: str = "off",
                    scaler=None, limit: int | None = None,
                    on_report: Callable | None = None,
                    on_step: Callable[[int, int, float], None] | None = None,
                    memory_format=torch.contiguous_format) -> dict:
    """One pass over ``loader``: forward, backward, ``optimizer.step()``, ``engine.step()``."""
    model.train()
    total_loss = correct = seen = 0.0
    skipped = 0
    n_batches = len(loader) if limit is None else min(limit, len(loader))
    for i, (x, y) in enumerate(loader):
        if i >= n_batches:
            break
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with autocast_ctx(device, amp):
            out = model(x)
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        lv = float(loss.detach())
        if scaler is not None and scaler.is_enabled():
            # an inf/NaN gradient makes the scaler skip optimizer.step(); the engine notices
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            if not math.isfinite(lv):
                raise FloatingPointError(
                    f"training loss is {lv} at batch {i}: training diverged. Lower optim.lr; "
                    "with trainer.amp=fp16 a GradScaler skips such steps instead")
            loss.backward()
            optimizer.step()
        if engine is not None:
            report = engine.step()
            if report is not None and on_report is not None:
                on_report(report)
        if math.isfinite(lv):  # a non-finite fp16 loss (a skipped step) stays out of the means
            total_loss += lv * y.numel()
            correct += float((out.detach().argmax(1) == y).sum())
            seen += y.numel()
        else:
            skipped += 1
        if on_step is not None:
            on_step(i + 1, n_batches, lv)
    total_loss, correct, seen = _sum_across([total_loss, correct, seen], device)
    return {"loss": total_loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1),
            "batches": n_batches, "images": int(seen), "nonfinite_losses": skipped}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device, amp: str = "off", limit: int | None = None,
             memory_format=torch.contiguous_format) -> dict:
    """Loss, top-1 and top-5 accuracy (%) over ``loader`` (summed across DDP ranks)."""
    model.eval()
    total_loss = c1 = c5 = seen = 0.0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with autocast_ctx(device, amp):
            out = model(x)
        total_loss += float(F.cross_entropy(out.float(), y, reduction="sum"))
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        c1 += float((top[:, 0] == y).sum())
        c5 += float((top == y[:, None]).any(1).sum())
        seen += y.numel()
    total_loss, c1, c5, seen = _sum_across([total_loss, c1, c5, seen], device)
    n = max(seen, 1)
    return {"loss": total_loss / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n,
            "images": int(seen)}


# ----------------------------------------------------------------------------- checkpoints
def rng_state() -> dict:
    """Every generator's state in plain data (tensors, ints, floats, strings), so a checkpoint
    loads with ``torch.load(weights_only=True)``."""
    key, words, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": str(key), "state": torch.from_numpy(words.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        words = npy["state"].numpy().astype(np.uint32)
        npy = (npy["key"], words, npy["pos"], npy["has_gauss"], npy["cached"])
    np.random.set_state(npy)  # a v1 checkpoint holds numpy's own tuple
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(tmp)`` to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _numpy_array_globals() -> list:
    """What unpickling a plain numpy array needs (v1 checkpoints hold numpy's RNG state as
    one): array reconstruction and dtypes, nothing that runs code."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype,
            *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.uint8, np.bool_)}]


def safe_load(path: Path):
    """``torch.load`` that never runs code: tensors and plain data only
    (``weights_only=True``; numpy arrays too, for files written by earlier releases). A file
    that needs other Python objects is refused with :class:`CheckpointError`; a corrupt one
    raises it too."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "numpy" not in str(e):
                raise
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0]
        what = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), None)
        if what is not None:  # a Python object to import and call: what runs code
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that could run code when "
                f"unpickled ({what}). dst reads only tensors and plain data "
                "(torch.load(weights_only=True)); a file dst wrote never needs more. If you "
                "made this file yourself and trust it, load it with torch.load(..., "
                "weights_only=False) and save its tensors again") from None
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), first)
        raise CheckpointError(f"{path} is corrupt or not a torch file (UnpicklingError: "
                              f"{detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a torch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = safe_load(path)
    except CheckpointError as e:
        if str(e).startswith("refused"):
            raise
        raise CheckpointError(f"checkpoint {e}; it was left untouched: restore it or start "
                              "without trainer.resume") from None
    if not isinstance(state, dict) or state.get("format") not in CHECKPOINT_FORMATS:
        raise CheckpointError(f"{path} is not a dst checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r}; "
                              f"this release reads {', '.join(CHECKPOINT_FORMATS)})")
    return state


def progress_printer(enabled: bool, label: str) -> Callable[[int, int, float], None]:
    """A one-line progress bar on a TTY (carriage returns), nothing otherwise."""
    if not enabled:
        return lambda i, n, loss: None
    start = time.time()

    def show(i: int, n: int, loss: float) -> None:
        width = 30
        done = int(width * i / max(n, 1))
        rate = i / max(time.time() - start, 1e-9)
        sys.stderr.write(f"\r{label} [{'#' * done}{'.' * (width - done)}] {i}/{n} "
                         f"loss {loss:.4f} {rate:.1f} it/s")
        if i == n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show

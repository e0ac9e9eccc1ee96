"""Reusable training pieces: one epoch, evaluation, LR schedule, AMP, progress (checkpoint files:
:mod:`dst.checkpoint`)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

AMP_MODES = ("off", "bf16", "fp16")
SCHEDULES = ("multistep", "cosine", "constant")


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

"""The training run behind ``dst-train``: builds everything from the config and runs it."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import convert
from ._checks import check_choice, check_density
from .engine import SparseEngine
from .runlog import RunLog
from .schedules import PeriodSchedule
from .summary import layer_backends, model_summary, param_counts
from .trainer import (
    AMP_MODES,
    CheckpointError,
    build_scheduler,
    evaluate,
    load_checkpoint,
    make_scaler,
    progress_printer,
    rng_state,
    save_checkpoint,
    set_rng_state,
    train_one_epoch,
)

log = logging.getLogger("dst")
SPARSITY_NAMES = ("dense", "static", "dsr", "set", "rigl", "snfs")
FILTERS = ("paper", "paper_sparse_fc", "all")
UNITS = ("fraction", "epoch", "step")
COMPAT_KEYS = ("model", "sparsity", "data.name", "optim.optimizer._target_")


class ConfigError(ValueError):
    """A bad value in the run's configuration."""


def build(node, **kwargs):
    """``hydra.utils.instantiate`` re-raising the target's own error (clear message)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        raise (e.__cause__ or e) from None


# ----------------------------------------------------------------------------- setup
def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use "
                              "trainer.device=cpu or auto")
        device = torch.device("cuda", local if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def validate(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing value for {', '.join(missing)}: set it on the command line,"
                          f" e.g. {missing[0]}=...")
    t, s = cfg.trainer, cfg.sparsity
    if not isinstance(t.epochs, int) or t.epochs < 1:
        raise ConfigError(f"trainer.epochs must be an int >= 1, got {t.epochs!r}")
    check_choice(t.amp, AMP_MODES, "trainer.amp")
    check_choice(s.name, SPARSITY_NAMES, "sparsity")
    check_choice(s.filter, FILTERS, "sparsity.filter")
    if s.name != "dense":
        check_density(s.density, "sparsity.density")
        if s.method is None:
            raise ConfigError(f"sparsity={s.name} needs a sparsity.method")
    if s.schedule is not None:
        check_choice(s.schedule.unit, UNITS, "sparsity.schedule.unit")


def engine_schedule(sched, epochs: int, steps_per_epoch: int):
    """(PeriodSchedule, stop_step) in optimizer steps from the preset's units."""
    total = epochs * steps_per_epoch

    def to_step(v) -> int:
        if sched.unit == "fraction":
            return int(round(float(v) * total))
        if sched.unit == "epoch":
            return int(round(float(v) * steps_per_epoch))
        return int(v)

    milestones: dict[int, int] = {}
    for start, period in sched.period:
        p = steps_per_epoch if period == "epoch" else int(period)
        milestones[to_step(start)] = p
    stop = None if sched.get("stop") is None else to_step(sched.stop)
    return PeriodSchedule(sorted(milestones.items())), stop


def _filter(model, name: str):
    if name == "all":
        return None
    return convert.paper_filter(model, dense_fc=name == "paper")


def _resume_path(resume, out_dir: Path) -> Path | None:
    if resume in (False, None, "false", ""):
        return None
    if resume is True or resume == "true":
        return out_dir / "checkpoints" / "last.pt"
    p = Path(str(resume))
    return p / "checkpoints" / "last.pt" if p.is_dir() else p


def _check_compatible(saved: DictConfig, cfg: DictConfig, path: Path) -> None:
    diffs = []
    for key in COMPAT_KEYS:
        a, b = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        a = OmegaConf.to_container(a) if isinstance(a, DictConfig) else a
        b = OmegaConf.to_container(b) if isinstance(b, DictConfig) else b
        if a != b:
            diffs.append(key)
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made with a different {', '.join(diffs)}; "
                              "resume with the same config or start a new run")


# ----------------------------------------------------------------------------- run
def run(cfg: DictConfig, out_dir: Path) -> dict:
    validate(cfg)
    t, s = cfg.trainer, cfg.sparsity
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    rank, world, device = setup_distributed(t.device)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    mem = torch.channels_last if t.channels_last else torch.contiguous_format
    on_device = cfg.data.on_device
    data_cfg = OmegaConf.to_container(cfg.data)
    data_cfg["on_device"] = device.type == "cuda" if on_device == "auto" else bool(on_device)
    data = build(data_cfg, device=device, seed=cfg.seed, rank=rank, world_size=world,
                 channels_last=bool(t.channels_last))
    model = build(cfg.model, num_classes=data.num_classes)
    if s.name != "dense":
        convert.sparsify_(model, s.density, distribution=s.distribution,
                          filter_fn=_filter(model, s.filter), format=s.format, seed=cfg.seed,
                          backend=s.get("backend", "dense"))
    model.to(device=device, memory_format=mem)
    optimizer = build(cfg.optim.optimizer)(model.parameters())
    scheduler = build_scheduler(optimizer, cfg.optim.scheduler, t.epochs)
    scaler = make_scaler(device, t.amp)
    spe = len(data.train) if t.limit_train_batches is None else min(
        int(t.limit_train_batches), len(data.train))
    engine = None
    if s.name != "dense":
        schedule, stop = engine_schedule(s.schedule or {"unit": "step", "period": [[0, 1]]},
                                         t.epochs, spe) if s.schedule else (1, None)
        engine = SparseEngine(model, optimizer, build(s.method), update_every=schedule,
                              stop_step=stop, seed=cfg.seed, check=bool(t.debug_checks))
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)

    names = [n for n, _ in convert.sparse_layers(model)]
    sizes = [m.numel_dense for _, m in convert.sparse_layers(model)]
    runlog = RunLog(out_dir, enabled=main, tensorboard=bool(t.tensorboard), layer_names=names,
                    layer_sizes=sizes)
    start_epoch, step, best, wall0 = 0, 0, float("-inf"), 0.0
    resume = _resume_path(t.resume, out_dir)
    if resume is not None:
        state = load_checkpoint(resume)
        _check_compatible(OmegaConf.create(state["config"]), cfg, resume)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if engine is not None:
                engine.load_state_dict(state["engine"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {resume} does not fit this model: "
                                  f"{str(e).splitlines()[0]}") from None
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, step, best = state["epoch"], state["step"], state["best_acc1"]
        wall0 = state.get("wall", 0.0)
        src = resume.parent.parent
        runlog.truncate(start_epoch, step, None if src.resolve() == out_dir.resolve() else src)
        if main:
            log.info("resumed from %s at epoch %d (step %d)", resume, start_epoch, step)

    text, totals = model_summary(model, data.input_shape)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model_summary.txt").write_text(text + "\n")
        log.info("model summary\n%s", text)
        log.info("data %s: %d train batches/epoch (x%d ranks), %d eval batches; device %s",
                 data.name, spe, world, len(data.test), device)

    progress = main and (sys.stderr.isatty() if t.progress == "auto" else bool(t.progress))
    epoch, last_eval, t_start = start_epoch, {}, time.time()
    for ran, epoch in enumerate(range(start_epoch + 1, t.epochs + 1), start=1):
        data.train.set_epoch(epoch)
        tic = time.time()

        def on_report(r, _epoch=epoch):
            runlog.update(r, _epoch)

        tr = train_one_epoch(net, data.train, optimizer, engine, device=device, amp=t.amp,
                             scaler=scaler, limit=t.limit_train_batches, on_report=on_report,
                             on_step=progress_printer(progress, f"epoch {epoch}/{t.epochs}"),
                             memory_format=mem)
        step += tr["batches"]
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_time = time.time() - tic
        if epoch % t.eval_every == 0 or epoch == t.epochs:
            last_eval = evaluate(net, data.test, device=device, amp=t.amp,
                                 limit=t.limit_eval_batches, memory_format=mem)
        counts = param_counts(model)
        metrics = {
            "epoch": epoch, "step": step, "lr": lr, "train_loss": tr["loss"],
            "train_acc": tr["acc"], "test_loss": last_eval.get("loss"),
            "test_acc1": last_eval.get("acc1"), "test_acc5": last_eval.get("acc5"),
            "active_weights": counts["params_nonzero"], "model_density": counts["model_density"],
            "pool_density": counts["pool_density"], "time": train_time,
            "wall": wall0 + time.time() - t_start,
        }
        runlog.epoch(metrics)
        if main:
            log.info("epoch %d/%d step %d lr %.4g | train loss %.4f acc %.2f | test loss %s "
                     "acc1 %s acc5 %s | %.1fs", epoch, t.epochs, step, lr, tr["loss"], tr["acc"],
                     _fmt(metrics["test_loss"]), _fmt(metrics["test_acc1"]),
                     _fmt(metrics["test_acc5"]), train_time)
        improved = metrics["test_acc1"] is not None and metrics["test_acc1"] > best
        best = max(best, metrics["test_acc1"] or float("-inf"))
        stopping = t.stop_after is not None and ran >= int(t.stop_after)
        if main and (epoch % t.checkpoint_every == 0 or epoch == t.epochs or stopping or improved):
            state = {
                "format": "dst-checkpoint-v1", "config": OmegaConf.to_container(cfg),
                "epoch": epoch, "step": step, "best_acc1": best, "wall": metrics["wall"],
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "engine": engine.state_dict() if engine is not None else None,
                "rng": rng_state(),
            }
            if epoch % t.checkpoint_every == 0 or epoch == t.epochs or stopping:
                save_checkpoint(out_dir / "checkpoints" / "last.pt", state)
            if improved:
                save_checkpoint(out_dir / "checkpoints" / "best.pt", state)
        if stopping and epoch < t.epochs:
            if main:
                log.info("stopping after %d epoch(s) as trainer.stop_after asks; resume with "
                         "trainer.resume=%s", ran, out_dir)
            return {"finished": False, "epoch": epoch}
    summary = {
        "finished": True, "epochs": t.epochs, "steps": step, "method": s.name,
        "density": None if s.name == "dense" else float(s.density),
        "distribution": s.distribution, "format": s.format, "model": cfg.model.name,
        "data": data.name, "seed": cfg.seed, "final_test_acc1": last_eval.get("acc1"),
        "final_test_acc5": last_eval.get("acc5"), "best_test_acc1": best,
        "wall_time": wall0 + time.time() - t_start, **totals,
        **param_counts(model),
        "final_layer_density": {n: m.density for n, m in convert.sparse_layers(model)},
        "backends": layer_backends(model),
        "method_state": engine.method.state() if engine is not None else {},
        "engine_steps": engine.step_count if engine is not None else 0,
    }
    summary["flops_ratio_final"] = model_summary(model, data.input_shape)[1]["flops_ratio"]
    summary["replica_fingerprints"] = gather_fingerprints(model, world)
    if len(set(summary["replica_fingerprints"])) > 1:
        log.error("DDP replicas differ at the end of training: %s", summary["replica_fingerprints"])
    runlog.summary(summary)
    if main:
        log.info("done: final test acc1 %s, best %s; run dir %s", _fmt(summary["final_test_acc1"]),
                 _fmt(best), out_dir)
    return summary


def fingerprint(model) -> str:
    """sha256 of every parameter and every sparse layer's mask: equal strings mean bit-identical
    weights and masks (BN running statistics are per rank under DDP and left out)."""
    h = hashlib.sha256()
    tensors = [(n, p.detach()) for n, p in model.named_parameters()]
    tensors += [(n + ".mask", m.mask) for n, m in convert.sparse_layers(model)]
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_fingerprints(model, world: int) -> list[str]:
    """One fingerprint per rank (model weights, masks and BN statistics)."""
    fp = fingerprint(model)
    if world == 1:
        return [fp]
    out: list[str] = [""] * world
    dist.all_gather_object(out, fp)
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

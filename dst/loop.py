"""The epoch loop of a run: train, evaluate, log, checkpoint; and the lottery-ticket rounds."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from . import convert
from .channels import channel_removal
from .checkpoint import CHECKPOINT_FORMAT, rng_state, save_checkpoint
from .runlog import RunLog
from .summary import layer_backends, model_summary, param_counts
from .trainer import build_scheduler, evaluate, progress_printer, train_one_epoch

log = logging.getLogger("dst")


@dataclass
class Run:
    """Everything a run is made of (built by :func:`dst.app.setup`)."""

    cfg: DictConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    memory_format: torch.memory_format
    data: Any
    model: torch.nn.Module
    net: torch.nn.Module  # the model, DDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    engine: Any
    runlog: RunLog
    steps_per_epoch: int
    info: dict = field(default_factory=dict)  # extra summary fields (thin widths, lottery...)
    init_state: dict = field(default_factory=dict)  # dense weights at step 0 (before masks)
    epoch: int = 0
    step: int = 0
    best: float = float("-inf")
    wall0: float = 0.0
    last_eval: dict = field(default_factory=dict)
    round: int = 0  # lottery round
    totals: dict = field(default_factory=dict)  # the model summary at step 0 (MACs, params)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def checkpoint_state(r: Run) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "config": OmegaConf.to_container(r.cfg),
        "epoch": r.epoch, "step": r.step, "best_acc1": r.best, "round": r.round,
        "wall": r.wall0, "model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
        "scheduler": r.scheduler.state_dict(), "scaler": r.scaler.state_dict(),
        "engine": r.engine.state_dict() if r.engine is not None else None, "rng": rng_state(),
        "totals": r.totals, "last_eval": r.last_eval,
    }


def fit(r: Run, last_epoch: int, total_epochs: int, on_step=None) -> bool:
    """Train epochs ``r.epoch + 1 .. last_epoch``; False if ``trainer.stop_after`` cut it short.
    ``on_step(global_step)`` is called after every optimizer step."""
    t = r.cfg.trainer
    progress = r.main and (sys.stderr.isatty() if t.progress == "auto" else bool(t.progress))
    t_start, ran = time.time(), 0
    wall_before = r.wall0
    while r.epoch < last_epoch:
        epoch = r.epoch + 1
        r.data.train.set_epoch(epoch)
        tic = time.time()
        show = progress_printer(progress, f"epoch {epoch}/{total_epochs}")

        def step_hook(i, n, loss, _show=show, _base=r.step):
            _show(i, n, loss)
            if on_step is not None:
                on_step(_base + i)

        tr = train_one_epoch(
            r.net, r.data.train, r.optimizer, r.engine, device=r.device, amp=t.amp,
            scaler=r.scaler, limit=t.limit_train_batches,
            on_report=lambda rep, _e=epoch: r.runlog.update(rep, _e), on_step=step_hook,
            memory_format=r.memory_format)
        r.epoch, r.step = epoch, r.step + tr["batches"]
        lr = r.optimizer.param_groups[0]["lr"]
        r.scheduler.step()
        train_time = time.time() - tic
        if epoch % t.eval_every == 0 or epoch == last_epoch:
            r.last_eval = evaluate(r.net, r.data.test, device=r.device, amp=t.amp,
                                   limit=t.limit_eval_batches, memory_format=r.memory_format)
        counts = param_counts(r.model)
        r.wall0 = wall_before + time.time() - t_start
        m = {"epoch": epoch, "step": r.step, "lr": lr, "train_loss": tr["loss"],
             "train_acc": tr["acc"], "test_loss": r.last_eval.get("loss"),
             "test_acc1": r.last_eval.get("acc1"), "test_acc5": r.last_eval.get("acc5"),
             "active_weights": counts["params_nonzero"],
             "model_density": counts["model_density"], "pool_density": counts["pool_density"],
             "itop_rate": r.engine.exploration.rate if r.engine is not None else None,
             "time": train_time, "wall": r.wall0}
        if "lottery_densities" in r.info:  # iterative lottery rounds
            m["round"] = r.round
        r.runlog.epoch(m)
        if r.main:
            log.info("epoch %d/%d step %d lr %.4g | train loss %.4f acc %.2f | test loss %s "
                     "acc1 %s acc5 %s | %.1fs", epoch, total_epochs, r.step, lr, tr["loss"],
                     tr["acc"], _fmt(m["test_loss"]), _fmt(m["test_acc1"]),
                     _fmt(m["test_acc5"]), train_time)
        improved = m["test_acc1"] is not None and m["test_acc1"] > r.best
        r.best = max(r.best, m["test_acc1"] if m["test_acc1"] is not None else float("-inf"))
        ran += 1
        stopping = t.stop_after is not None and ran >= int(t.stop_after) and \
            epoch < total_epochs
        periodic = epoch % t.checkpoint_every == 0 or epoch == last_epoch or stopping
        if r.main and (periodic or improved):
            state = checkpoint_state(r)
            if periodic:
                save_checkpoint(r.out_dir / "checkpoints" / "last.pt", state)
            if improved:
                save_checkpoint(r.out_dir / "checkpoints" / "best.pt", state)
        if stopping:
            if r.main:
                log.info("stopping after %d epoch(s) as trainer.stop_after asks; resume with "
                         "trainer.resume=true hydra.run.dir=%s", ran, r.out_dir)
            return False
    return True


def reset_optimization(r: Run, epochs: int) -> None:
    """A fresh optimizer state and LR schedule (lottery rounds restart training)."""
    r.optimizer.state.clear()
    for group in r.optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    r.scheduler = build_scheduler(r.optimizer, r.cfg.optim.scheduler, epochs)


def lottery_prune(r: Run, density: float, init_state: dict) -> None:
    """Prune to ``density`` by magnitude and rewind the survivors to ``init_state``."""
    from .baselines import magnitude_masks, rewind_

    s = r.cfg.sparsity
    masks = magnitude_masks(r.model, density, scope=s.get("scope", "layer"),
                            distribution=s.distribution)
    rewind_(r.model, init_state, masks)
    if r.engine is not None:
        r.engine.reset_budget()


def fit_ticket(r: Run) -> bool:
    """One-shot lottery ticket with late rewinding: train dense to step ``sparsity.rewind``,
    there keep the weights largest in the trained dense run ``sparsity.ticket_from`` (same
    model and seed: the same first steps) and train the rest of the run under that mask from
    the rewind step's weights. One run's cost instead of a dense run plus a sparse one."""
    from .baselines import prune_to_ticket_
    from .checkpoint import load_checkpoint

    s, total = r.cfg.sparsity, r.cfg.trainer.epochs
    rewind = 0 if s.get("rewind", "init") == "init" else s.rewind
    last = total * r.steps_per_epoch
    if isinstance(rewind, bool) or not isinstance(rewind, int) or not 0 <= rewind < last:
        raise ValueError(f"sparsity.rewind must be 'init' or an optimizer step in [0, {last}) "
                         f"for a one-shot ticket, got {rewind!r}")
    trained = load_checkpoint(Path(str(s.ticket_from)))["model"]  # fails before any batch
    r.info["ticket"] = {"from": str(s.ticket_from), "rewind_step": rewind}

    def prune(step: int) -> None:
        if step == rewind:
            prune_to_ticket_(r.model, trained, float(s.density), scope=s.get("scope", "layer"),
                             distribution=s.distribution, optimizer=r.optimizer)
            if r.engine is not None:
                r.engine.reset_budget()
            r.runlog.density(step, r.epoch + 1, {n: m.n_active
                                                 for n, m in convert.sparse_layers(r.model)})
            if r.main:
                log.info("ticket: pruned to density %s by the trained weights of %s at step %d",
                         s.density, s.ticket_from, step)

    if rewind == 0 and r.step == 0:  # a resumed run has the mask in its checkpoint
        prune(0)
    return fit(r, total, total, on_step=prune if r.step < rewind else None)


def fit_lottery(r: Run) -> bool:
    """Iterative magnitude pruning with rewinding: train, prune, rewind, ... , train at the
    target density. Each of the ``rounds + 1`` phases trains ``trainer.epochs`` epochs. A
    phase boundary's pruning follows the checkpoint written at that epoch, so a resume from it
    prunes again, identically."""
    from .baselines import lottery_densities

    if r.cfg.sparsity.get("ticket_from"):
        return fit_ticket(r)
    s, per_round = r.cfg.sparsity, r.cfg.trainer.epochs
    densities = lottery_densities(float(s.density), int(s.rounds))
    total = per_round * (len(densities) + 1)
    r.info["lottery_densities"] = densities
    rewind = s.get("rewind", "init")
    if rewind != "init" and (isinstance(rewind, bool) or not isinstance(rewind, int)
                             or not 0 <= rewind <= per_round * r.steps_per_epoch):
        raise ValueError(f"sparsity.rewind must be 'init' or an optimizer step in "
                         f"[0, {per_round * r.steps_per_epoch}] (the first round), got {rewind!r}")
    saved = {"state": r.init_state if rewind in ("init", 0) else None}

    def capture(step: int) -> None:  # the weights at the rewind step of the first round
        if saved["state"] is None and step == rewind:
            saved["state"] = {k: v.detach().cpu().clone()
                              for k, v in r.model.state_dict().items()}

    if saved["state"] is None and r.epoch > 0:
        raise ValueError("a lottery run rewinding to a step cannot resume after that step "
                         "(the rewind weights are not in the checkpoint); restart it")
    pruned_at = None
    while r.epoch < total:
        if r.epoch > 0 and r.epoch % per_round == 0 and pruned_at != r.epoch:
            density = densities[r.epoch // per_round - 1]
            lottery_prune(r, density, saved["state"])
            reset_optimization(r, per_round)
            pruned_at = r.epoch
            if r.main:
                log.info("lottery round %d: pruned to density %.4f, survivors rewound",
                         r.epoch // per_round, density)
        r.round = r.epoch // per_round
        if not fit(r, (r.round + 1) * per_round, total, on_step=capture):
            return False
    return True


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
    fp = fingerprint(model)
    if world == 1:
        return [fp]
    out: list[str] = [""] * world
    dist.all_gather_object(out, fp)
    return out


def finish(r: Run, totals: dict) -> dict:
    """Write summary.json (and the density plot) at the end of a run."""
    s, engine = r.cfg.sparsity, r.engine
    final = model_summary(r.model, r.data.input_shape)[1]
    summary = {
        "finished": True, "epochs": r.epoch, "steps": r.step, "method": s.name,
        "density": None if s.method is None and s.get("match") is None else float(s.density),
        "distribution": s.distribution, "format": s.format, "model": r.cfg.model.name,
        "data": r.data.name, "seed": r.cfg.seed, "final_test_acc1": r.last_eval.get("acc1"),
        "final_test_acc5": r.last_eval.get("acc5"), "best_test_acc1": r.best,
        "wall_time": r.wall0, **totals, **param_counts(r.model),
        "flops_ratio_final": final["flops_ratio"],
        "final_layer_density": {n: m.density for n, m in convert.sparse_layers(r.model)},
        "backends": layer_backends(r.model),
        "method_state": engine.method.state() if engine is not None else {},
        "engine_steps": engine.step_count if engine is not None else 0,
        "itop_rate": engine.exploration.rate if engine is not None else None,
        "skipped_optimizer_steps": engine.skipped_steps if engine is not None else 0,
        "replica_fingerprints": gather_fingerprints(r.model, r.world), **r.info,
    }
    channels = channel_removal(engine)
    if channels is not None:  # structured: what slimming left
        # densities stay relative to the model asked for (the same parameter count as DSR's),
        # the cut-down sizes beside them
        summary.update(params_dense_slimmed=summary["params_dense"],
                       pool_size_slimmed=summary["pool_size"],
                       params_dense=totals["params_dense"], pool_size=totals["pool_size"],
                       model_density=summary["params_nonzero"] / totals["params_dense"],
                       pool_density=summary["pool_active"] / totals["pool_size"])
        layers = dict(convert.sparse_layers(r.model))
        summary["channels"] = {g.producer: [layers[g.producer].weight_shape[0], n]
                               for g, n in zip(channels.groups, channels.n_channels,
                                               strict=True)}
        summary["dense_macs_ratio_final"] = final["flops_dense"] / totals["flops_dense"]
    if len(set(summary["replica_fingerprints"])) > 1:
        log.error("DDP replicas differ at the end of training: %s",
                  summary["replica_fingerprints"])
    r.runlog.summary(summary)
    if r.main:
        log.info("done: final test acc1 %s, best %s; run dir %s",
                 _fmt(summary["final_test_acc1"]), _fmt(r.best), r.out_dir)
    return summary

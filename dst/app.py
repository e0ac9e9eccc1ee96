"""The training run behind ``dst-train``: builds everything from the config and runs it."""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from . import convert
from ._checks import check_choice, check_density, drop_nulls
from .channels import channel_removal
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .engine import SparseEngine
from .environment import environment
from .loop import Run, finish, fit
from .runlog import RunLog
from .schedules import PeriodSchedule
from .slim import average_gradients_
from .summary import model_summary
from .trainer import AMP_MODES, build_scheduler, make_scaler

log = logging.getLogger("dst")
FILTERS = ("paper", "paper_sparse_fc", "ends_dense", "all")
UNITS = ("fraction", "epoch", "step")
COMPAT_KEYS = ("model", "sparsity", "data.name", "optim.optimizer._target_")
SPARSIFY_KEYS = ("distribution", "format", "backend", "init", "schedule", "block")


class ConfigError(ValueError):
    """A bad value in the run's configuration."""


def build(node, **kwargs):
    """``hydra.utils.instantiate`` re-raising the target's own error (clear message); a key the
    target does not take is named with the ones it does."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
        if isinstance(cause, TypeError) and "keyword argument" in str(cause) and target:
            try:
                params = [p for p in inspect.signature(get_object(target)).parameters
                          if p not in ("self", "args", "kwargs")]
            except (ImportError, ValueError, TypeError):
                params = []
            raise ConfigError(f"{target} does not take that option ({cause}); it takes: "
                              f"{', '.join(params)}") from None
        raise cause from None


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


def validate(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Every error a config can be found to hold before anything is built."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing value for {', '.join(missing)}: set it on the command line,"
                          f" e.g. {missing[0]}=...")
    t, s = cfg.trainer, cfg.sparsity
    if not isinstance(t.epochs, int) or t.epochs < 1:
        raise ConfigError(f"trainer.epochs must be an int >= 1, got {t.epochs!r}")
    check_choice(t.amp, AMP_MODES, "trainer.amp")
    scale = t.get("amp_init_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not 0 < scale < float("inf")):
        raise ConfigError(f"trainer.amp_init_scale must be a positive number or null, got "
                          f"{scale!r}")
    check_choice(s.filter, FILTERS, "sparsity.filter")
    check_density(s.density, "sparsity.density")
    if s.method is None and s.get("match") is None and float(s.density) < 1.0:
        raise ConfigError(f"sparsity={s.name} has no sparsity.method, so every weight trains "
                          f"and sparsity.density={s.density} would be ignored: set a method "
                          "(e.g. sparsity=static|dsr|set|rigl|snfs) or density 1.0")
    if s.schedule is not None:
        check_choice(s.schedule.unit, UNITS, "sparsity.schedule.unit")
    unused = _unused_keys(s)
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        parts = key.split(".")
        if parts[0] == "sparsity" and len(parts) > 1 and parts[1] in unused:
            raise ConfigError(f"sparsity={s.name} does not use sparsity.{parts[1]} (override "
                              f"{o!r}); drop it or choose a preset that does, e.g. "
                              "sparsity=static|dsr|set|rigl|snfs")


def _target_class(node):
    """The class a ``_target_`` node names, or None (the build reports a bad one itself)."""
    try:
        return get_object(node._target_) if node is not None else None
    except (ImportError, AttributeError, ValueError):
        return None


def _unused_keys(s: DictConfig) -> set[str]:
    """The sparsity keys this preset never reads, from what it is made of: no method (dense or
    thin dense training) reads none of the sparse layers' keys, a method that never changes
    masks reads no schedule, and a mask initialiser may name the keys it ignores."""
    if s.method is None:
        used_by_thin = {"density", "filter"} if s.get("match") is not None else set()
        return (set(SPARSIFY_KEYS) | {"density", "filter", "method"}) - used_by_thin
    unused = set()
    if not getattr(_target_class(s.method), "changes_masks", True):
        unused.add("schedule")
    return unused | set(getattr(_target_class(s.init), "ignores", ()))


def engine_schedule(sched, epochs: int, steps_per_epoch: int):
    """(PeriodSchedule, stop_step) in optimizer steps from the preset's units: ``unit`` for the
    start points and the stop (fraction of training, epoch or step) and ``period_unit`` for the
    periods (step, the default, epoch or fraction of training)."""
    total = epochs * steps_per_epoch

    def to_step(v) -> int:
        if sched.unit == "fraction":
            return int(round(float(v) * total))
        if sched.unit == "epoch":
            return int(round(float(v) * steps_per_epoch))
        return int(v)

    period_unit = sched.get("period_unit", "step")
    if period_unit not in ("step", "epoch", "fraction"):
        raise ConfigError(f"sparsity.schedule.period_unit must be step, epoch or fraction, got "
                          f"{period_unit!r}")
    per = {"step": 1, "epoch": steps_per_epoch, "fraction": total}[period_unit]
    milestones: dict[int, int] = {}
    for start, period in sched.period:
        # periods in epochs: DSR's 100-iteration period is 0.2 epoch on CIFAR-10 and ImageNet
        p = int(period) if period_unit == "step" else max(1, int(round(float(period) * per)))
        milestones[to_step(start)] = p
    stop = None if sched.get("stop") is None else to_step(sched.stop)
    return PeriodSchedule(sorted(milestones.items())), stop


def _block(block):
    """``sparsity.block`` as sparsify_ takes it (a YAML list [bh, bw] becomes a tuple)."""
    if block is None or isinstance(block, str):
        return block
    return tuple(OmegaConf.to_container(block) if OmegaConf.is_config(block) else block)


def _filter(model, name: str):
    if name == "all":
        return None
    if name == "ends_dense":
        return convert.ends_dense_filter(model)
    return convert.paper_filter(model, dense_fc=name == "paper")


def _resume_path(resume, out_dir: Path) -> Path | None:
    if resume in (False, None, "false", ""):
        return None
    if resume is True or resume == "true":
        return out_dir / "checkpoints" / "last.pt"
    p = Path(str(resume))
    return p / "checkpoints" / "last.pt" if p.is_dir() else p


def _check_compatible(saved: DictConfig, cfg: DictConfig, path: Path) -> None:
    """The checkpoint's model, sparsity, data set and optimizer are this run's; options at
    their null default count as absent, so a checkpoint written before such an option existed
    still resumes."""
    diffs = []
    for key in COMPAT_KEYS:
        a, b = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        a = drop_nulls(OmegaConf.to_container(a)) if isinstance(a, DictConfig) else a
        b = drop_nulls(OmegaConf.to_container(b)) if isinstance(b, DictConfig) else b
        if a != b:
            diffs.append(key)
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made with a different {', '.join(diffs)}; "
                              "resume with the same config or start a new run")


# ----------------------------------------------------------------------------- run
def _build_model(cfg: DictConfig, num_classes: int, info: dict):
    s = cfg.sparsity
    if s.get("match") is None:  # thin dense: a narrower dense model of the sparse count
        return build(cfg.model, num_classes=num_classes)
    from .baselines import sparse_param_target, thin_dense_model

    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model).items()
              if k not in ("_target_", "name")}
    target = sparse_param_target(cfg.model.name, kwargs, num_classes, float(s.density),
                                 s.filter)
    model, thin = thin_dense_model(cfg.model.name, kwargs, num_classes, target,
                                   match=s.get("match", "closest"))
    info["thin"] = thin
    log.info("thin dense: %s=%.4f gives %d parameters for a sparse target of %d (%+.2f%%)",
             thin["width_key"], thin["width"], thin["params"], target, 100 * thin["rel_diff"])
    return model


def _sparsify(cfg: DictConfig, model, info: dict) -> None:
    s = cfg.sparsity
    if s.method is None:  # dense or thin dense training: no sparse layer
        return
    # pruning baselines start at start_density (1.0) and reach the density on their own
    # schedule; mask initialisers (SNIP, a learned mask) choose among all weights
    start = s.get("start_density")
    if start is None:
        start = 1.0 if s.get("init") is not None else float(s.density)
    convert.sparsify_(model, float(start), distribution=s.distribution,
                      filter_fn=_filter(model, s.filter), format=s.format, seed=cfg.seed,
                      backend=s.get("backend", "dense"), block=_block(s.get("block")))
    if s.get("init_from"):  # start from trained dense weights (GMP as the DSR paper ran it)
        state = load_checkpoint(_resume_path(s.init_from, Path(".")))["model"]
        missing = convert.load_dense_weights_(model, state)
        info["init_from"] = str(s.init_from)
        if missing:
            raise ConfigError(f"sparsity.init_from: no weights for {missing[:5]} in the source")


def setup(cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = ()) -> Run:
    validate(cfg, overrides)
    t, s = cfg.trainer, cfg.sparsity
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    rank, world, device = setup_distributed(t.device)
    torch.manual_seed(cfg.seed)
    mem = torch.channels_last if t.channels_last else torch.contiguous_format
    data_cfg = OmegaConf.to_container(cfg.data)
    on_device = data_cfg["on_device"]
    data_cfg["on_device"] = device.type == "cuda" if on_device == "auto" else bool(on_device)
    data = build(data_cfg, device=device, seed=cfg.seed, rank=rank, world_size=world,
                 channels_last=bool(t.channels_last))
    info: dict = {}
    model = _build_model(cfg, data.num_classes, info)
    # the weights at step 0, before any mask: for rewinding and static_from_mask(init=original)
    init_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _sparsify(cfg, model, info)
    model.to(device=device, memory_format=mem)
    if s.get("init") is not None:  # a mask initialiser (SNIP, a learned mask, ...)
        build(s.init)(model, data.train, device, float(s.density), cfg.seed)
    optimizer = build(cfg.optim.optimizer)(model.parameters())
    scheduler = build_scheduler(optimizer, cfg.optim.scheduler, t.epochs)
    spe = len(data.train) if t.limit_train_batches is None else min(
        int(t.limit_train_batches), len(data.train))
    engine = None
    if convert.sparse_layers(model):
        method = build(s.method)
        if s.schedule:
            schedule, stop = engine_schedule(s.schedule, t.epochs, spe)
        else:
            schedule, stop = 1, None
        engine = SparseEngine(model, optimizer, method, update_every=schedule, stop_step=stop,
                              seed=cfg.seed, check=bool(t.debug_checks))
    net = model
    if world > 1 and channel_removal(engine) is not None:  # layers shrink: no DDP buckets
        if t.amp == "fp16":
            raise ConfigError("structured sparsity on several processes averages gradients "
                              "itself, which fp16's GradScaler cannot follow: use "
                              "trainer.amp=bf16 or off")
        average_gradients_(model, optimizer)
    elif world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)
    layers = convert.sparse_layers(model)
    runlog = RunLog(out_dir, enabled=rank == 0, tensorboard=bool(t.tensorboard),
                    layer_names=[n for n, _ in layers],
                    layer_sizes=[m.numel_dense for _, m in layers])
    return Run(cfg, out_dir, rank, world, device, mem, data, model, net, optimizer, scheduler,
               make_scaler(device, t.amp, t.get("amp_init_scale")), engine, runlog, spe, info,
               init_state)


def restore(r: Run, path: Path) -> None:
    """Continue ``r`` from the checkpoint at ``path`` (everything, exactly)."""
    state = load_checkpoint(path)
    _check_compatible(OmegaConf.create(state["config"]), r.cfg, path)
    try:
        r.model.load_state_dict(state["model"])
        r.optimizer.load_state_dict(state["optimizer"])
        if r.engine is not None:
            r.engine.load_state_dict(state["engine"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: "
                              f"{str(e).splitlines()[0]}") from None
    r.scheduler.load_state_dict(state["scheduler"])
    r.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    r.epoch, r.step, r.best = state["epoch"], state["step"], state["best_acc1"]
    r.wall0 = state.get("wall", 0.0)
    r.totals = dict(state.get("totals") or {})  # the model at step 0, not at this restart
    r.last_eval = dict(state.get("last_eval") or {})  # a run killed after its last epoch
    src = path.parent.parent
    r.runlog.truncate(r.epoch, r.step, None if src.resolve() == r.out_dir.resolve() else src)
    if r.main:
        log.info("resumed from %s at epoch %d (step %d)", path, r.epoch, r.step)


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files a killed process left mid-write (the rename never came)."""
    for p in folder.glob(".*.tmp-*") if folder.is_dir() else ():
        p.unlink(missing_ok=True)


def _check_init(r: Run, init_path: Path) -> None:
    """A run restarting from its beginning makes the weights its init.pt holds (same config
    and seed), or the run directory belongs to another run."""
    if not init_path.is_file():
        return
    saved = load_checkpoint(init_path)
    _check_compatible(OmegaConf.create(saved.get("config") or {}), r.cfg, init_path)
    model = saved["model"]
    if set(model) != set(r.init_state) or any(not torch.equal(model[k], v)
                                              for k, v in r.init_state.items()):
        raise CheckpointError(f"{init_path} holds other initial weights than this run makes "
                              "(another seed or model): use another run directory")


def run(cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """Build the run described by ``cfg``, train it in ``out_dir`` and return its summary
    (``{"finished": False, ...}`` when ``trainer.stop_after`` ended it early). ``overrides``
    (the command line's) are checked for keys the chosen preset would ignore."""
    r = setup(cfg, out_dir, overrides)
    t = cfg.trainer
    init_path = out_dir / "checkpoints" / "init.pt"
    resume = _resume_path(t.resume, out_dir)
    if r.main:
        _remove_stale_temp_files(out_dir / "checkpoints")
    if resume is not None and t.resume in (True, "true") and not resume.is_file():
        _check_init(r, init_path)  # a requeued run killed before its first checkpoint
        if r.main:
            log.info("no checkpoint in %s yet: starting the run from its beginning%s",
                     resume.parent, " (the initial weights equal init.pt's)"
                     if init_path.is_file() else "")
        r.runlog.truncate(0, 0)
        resume = None
    if resume is not None:
        restore(r, resume)
        src_init = resume.parent / "init.pt"
        if r.main and src_init.is_file() and not init_path.is_file():
            save_checkpoint(init_path, load_checkpoint(src_init))
    elif r.main:  # the dense weights at step 0: for rewinding and static_from_mask
        save_checkpoint(init_path, {"format": CHECKPOINT_FORMAT, "model": r.init_state,
                                    "config": OmegaConf.to_container(cfg)})
    text, totals = model_summary(r.model, r.data.input_shape)  # incl. per-layer dense MACs
    if r.totals:  # resumed: the summary describes the model the run started with
        totals = r.totals
    r.totals = totals
    r.info["environment"] = env = environment()  # versions, commit, CPU/GPU model
    if r.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "environment.json",
                     lambda p: p.write_text(json.dumps(env, indent=2) + "\n"))
        if resume is None or not (out_dir / "model_summary.txt").is_file():  # at step 0
            (out_dir / "model_summary.txt").write_text(text + "\n")
        log.info("model summary\n%s", text)
        log.info("data %s: %d train batches/epoch (x%d ranks), %d eval batches; device %s",
                 r.data.name, r.steps_per_epoch, r.world, len(r.data.test), r.device)
    driver = cfg.sparsity.get("driver")  # e.g. the lottery ticket's rounds around fit()
    done = get_object(driver)(r) if driver else fit(r, t.epochs, t.epochs)
    if not done:
        return {"finished": False, "epoch": r.epoch}
    return finish(r, totals)

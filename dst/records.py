"""Sweep records: one small JSON per finished run, meant to be committed, and the artifacts
other runs depend on (a run's final masks, a dense run's trained weights).

A record names its preset by ``config_hash``: a hash of the run's resolved config without the
keys that do not change the result (device, threads, logging, paths of the data set and of the
runs it depends on, which enter by file name only). Records of one hash are the same experiment
whichever machine or commit made them; records of another hash are never mixed with them.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from ._checks import drop_nulls
from .checkpoint import CHECKPOINT_FORMAT, atomic_write, load_checkpoint, save_checkpoint
from .environment import cpu_kind
from .runs import train_flops_ratio

RECORD_VERSION = 1
# keys that never change what a run computes
VOLATILE = ("trainer.device", "trainer.num_threads", "trainer.progress", "trainer.tensorboard",
            "trainer.resume", "trainer.stop_after", "trainer.log_every",
            "trainer.checkpoint_every", "trainer.debug_checks", "data.on_device")
# paths that enter the hash by file name only (the data set; the artifacts a run depends on)
PATH_KEYS = ("data.path", "data.root", "sparsity.init.source", "sparsity.init_from",
             "sparsity.ticket_from")
METRIC_KEYS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc1",
               "test_acc5", "active_weights", "pool_density", "itop_rate", "time")


def _walk(cfg: dict, dotted: str):
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return None, leaf
    return (node if isinstance(node, dict) else None), leaf


def canonical_config(cfg: dict) -> dict:
    """``cfg`` (a resolved config as plain containers) without volatile keys, with dependency
    and data paths reduced to their file names, and without null values: a new option whose
    default is null (a no-op) leaves every existing preset's hash, and its records, valid."""
    out = drop_nulls(copy.deepcopy(cfg))
    out.pop("hydra", None)
    for key in VOLATILE:
        node, leaf = _walk(out, key)
        if node is not None:
            node.pop(leaf, None)
    for key in PATH_KEYS:
        node, leaf = _walk(out, key)
        if node is not None and isinstance(node.get(leaf), str) and node[leaf] not in ("", "???"):
            node[leaf] = Path(node[leaf]).name
    return out


def config_hash(cfg: dict) -> str:
    text = json.dumps(canonical_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1, sort_keys=False, default=_jsonable) + "\n"
    atomic_write(Path(path), lambda p: p.write_text(text))


def machine_of(record: dict) -> str:
    """The kind of machine a record ran on: its GPU model, else its CPU model with the vector
    extension when recorded (``AMD EPYC (avx512)``; records before that field: the name only)."""
    if record.get("gpu_model"):
        return str(record["gpu_model"])
    return cpu_kind(str(record.get("cpu_model")), record.get("cpu_isa") or "")


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON-serializable: {type(v).__name__}")


def _read_csv(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.reader(f))


def build_record(run_dir: Path, *, sweep: str, name: str, method: str, density: float,
                 seed: int, threads: int | None = None, jobs: int | None = None,
                 artifacts: dict | None = None) -> dict:
    """The record of the finished run in ``run_dir`` (summary.json, metrics.jsonl,
    updates.csv, density_history.csv, environment.json and the resolved .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("finished") is not True:
        raise ValueError(f"{run_dir} is not a finished run")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"),
                                 resolve=True)
    metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
               if ln.strip()]
    updates = _read_csv(run_dir / "updates.csv")[1:]
    moved = [int(r[2]) for r in updates]
    history = _read_csv(run_dir / "density_history.csv")
    density_history = None
    if history:
        names = history[0][2:]
        density_history = {"step": [int(r[0]) for r in history[1:]],
                           "layers": {n: [float(r[2 + i]) for r in history[1:]]
                                      for i, n in enumerate(names)}}
    env = summary.get("environment") or {}
    return {
        "record_version": RECORD_VERSION, "sweep": sweep, "name": name, "method": method,
        "density": density, "seed": seed, "config_hash": config_hash(cfg),
        "git_commit": env.get("git_commit"), "cpu_model": env.get("cpu_model"),
        "cpu_isa": env.get("cpu_isa"),
        "gpu_model": env.get("gpu_model"), "torch": (env.get("packages") or {}).get("torch"),
        "environment": env, "threads": threads, "jobs": jobs,
        "final_test_acc1": summary.get("final_test_acc1"),
        "best_test_acc1": summary.get("best_test_acc1"),
        "final_test_acc5": summary.get("final_test_acc5"),
        "params_nonzero": summary.get("params_nonzero"),
        "params_dense": summary.get("params_dense"),
        "model_density": summary.get("model_density"),
        "pool_density": summary.get("pool_density"), "pool_size": summary.get("pool_size"),
        "flops_ratio_final": summary.get("flops_ratio_final"),
        "train_flops_ratio": train_flops_ratio(run_dir, summary),
        "updates": len(moved),
        "moved_per_update_mean": sum(moved) / len(moved) if moved else 0.0,
        "moved_per_update": moved,
        "final_layer_density": summary.get("final_layer_density"),
        "itop_rate": summary.get("itop_rate"),
        "density_history": density_history,
        "epochs": [{k: m.get(k) for k in METRIC_KEYS} for m in metrics],
        "wall_time": summary.get("wall_time"), "steps": summary.get("steps"),
        "skipped_optimizer_steps": summary.get("skipped_optimizer_steps"),
        "thin": summary.get("thin"), "channels": summary.get("channels"),
        "dense_macs_ratio_final": summary.get("dense_macs_ratio_final"),
        "params_dense_slimmed": summary.get("params_dense_slimmed"),
        "artifacts": artifacts or {}, "config": cfg,
    }


def load_records(folder: Path) -> tuple[list[dict], list[str]]:
    """(records, 'file (why)' for each JSON left out) of a sweep's record folder."""
    records, bad = [], []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name == "plan.json":  # the sweep's plan, not a record
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            bad.append(f"{path.name} ({type(e).__name__})")
            continue
        if not isinstance(rec, dict) or rec.get("record_version") != RECORD_VERSION:
            bad.append(f"{path.name} (not a version-{RECORD_VERSION} record)")
            continue
        records.append(rec)
    return records, bad


# ----------------------------------------------------------------------------- artifacts
def save_mask_artifact(run_dir: Path, path: Path) -> None:
    """The final masks of a sparse run, bit-packed (a few hundred KB for WRN-28-2), as a dst
    checkpoint that :func:`dst.baselines.load_run_masks` reads (``<layer>.packed_mask``)."""
    model = load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")["model"]
    packed = {}
    for key, value in model.items():
        name, _, leaf = key.rpartition(".")
        if leaf == "mask" and value.dtype == torch.bool:
            bits = np.packbits(value.reshape(-1).cpu().numpy().astype(np.uint8))
            packed[f"{name}.packed_mask"] = torch.from_numpy(bits)
    if not packed:
        raise ValueError(f"{run_dir} holds no dense-format mask to save")
    save_checkpoint(Path(path), {"format": CHECKPOINT_FORMAT, "model": packed})


def save_weights_artifact(run_dir: Path, path: Path) -> None:
    """The final model state_dict of a run (a trained dense model for gmp and lottery)."""
    state = load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")
    save_checkpoint(Path(path), {"format": CHECKPOINT_FORMAT, "model": state["model"],
                                 "config": state.get("config")})

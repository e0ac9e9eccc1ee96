"""The sweep's state in its records folder: one record per finished run, the artifacts later
runs read (``artifacts/``), and ``plan.json`` (every planned run and its status). Used by
``benchmarks/sweep.py``; a job is its ``Job`` (name, method, density, seed, hash, key,
``provides``)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

from dst.records import (
    build_record,
    load_records,
    save_mask_artifact,
    save_weights_artifact,
    write_json,
)

# what a re-run keeps of the record it replaces (so a changed figure stays visible)
REPLACED_FIELDS = ("final_test_acc1", "best_test_acc1", "git_commit", "cpu_model", "cpu_isa",
                   "wall_time")


def artifact_path(results: Path, job) -> Path:
    suffix = {"masks": "masks.pt", "weights": "weights.pt"}[job.provides]
    return results / "artifacts" / f"{job.key}.{suffix}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded(args) -> tuple[set[str], list[dict]]:
    records, bad = load_records(args.results)
    for b in bad:
        print(f"sweep: warning: record {b} left out", file=sys.stderr)
    return {f"{r['name']}-{r['config_hash']}" for r in records}, records


def missing_artifacts(jobs, records: list[dict], results: Path) -> dict[str, str]:
    """``{job key: why}`` for recorded runs whose artifact a later run of the plan needs but
    which is absent or not the file the record names (e.g. recorded by a sweep whose --methods
    left the dependent run out). They run again; the new record replaces the old one."""
    by_key = {f"{r['name']}-{r['config_hash']}": r for r in records}
    out = {}
    for j in jobs:
        rec = by_key.get(j.key)
        if not j.provides or rec is None:
            continue
        path = artifact_path(results, j)
        want = (rec.get("artifacts") or {}).get(j.provides, {}).get("sha256")
        if not path.is_file():
            out[j.key] = f"its {j.provides} ({path.name}) are not in the records folder"
        elif want and sha256(path) != want:
            out[j.key] = f"{path.name} is not the file its record names (sha256 differs)"
    return out


def record_run(j, args) -> Path:
    """Write ``j``'s record (and artifact) from its finished run directory. A record it
    replaces (a run made again for its artifact) is summarised under ``replaces``."""
    run_dir = args.work.resolve() / j.key
    artifacts = {}
    if j.provides:
        path = artifact_path(args.results, j)
        (save_mask_artifact if j.provides == "masks" else save_weights_artifact)(run_dir, path)
        artifacts[j.provides] = {"file": str(path.relative_to(args.results)),
                                 "sha256": sha256(path)}
    rec = build_record(run_dir, sweep=args.name, name=j.name, method=j.method,
                       density=j.density, seed=j.seed, threads=args.threads, jobs=args.jobs,
                       artifacts=artifacts)
    if rec["config_hash"] != j.hash:
        raise RuntimeError(f"{j.name}: the run's config hashes to {rec['config_hash']}, the "
                           f"plan's to {j.hash}; not recorded")
    path = args.results / f"{j.key}.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict):
        rec["replaces"] = [*old.get("replaces", []),
                           {k: old.get(k) for k in REPLACED_FIELDS}]
    write_json(path, rec)
    return path


def _alive(owner) -> bool:
    """Is the sweep ``host:pid`` still running on this machine? (A plan.json arrives from other
    machines through git: their sweeps, and entries without an owner, have ended.)"""
    host, _, pid = str(owner or "").rpartition(":")
    if not owner or not pid.isdigit() or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_plan(args, jobs, done: set[str], running=()) -> None:
    """plan.json in the records folder: every run of the plan with its hash and status, so the
    report marks the cells still to run (or running). Runs of the file that this invocation
    does not plan (a narrower --densities or --methods) keep their entries."""
    path = args.results / "plan.json"
    ours = {j.name for j in jobs}
    try:
        kept = [r for r in json.loads(path.read_text())["runs"] if r["name"] not in ours]
    except (OSError, ValueError, KeyError, TypeError):
        kept = []
    for r in kept:  # "running" only while the sweep that launched it lives
        if r.get("status") == "running" and not _alive(r.get("owner")):
            r["status"] = "to run"
            r.pop("owner", None)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    runs = [{"name": j.name, "method": j.method, "density": j.density, "seed": j.seed,
             "hash": j.hash, "status": "recorded" if j.key in done else
             "running" if j.name in running else "to run",
             **({"owner": owner} if j.name in running and j.key not in done else {})}
            for j in jobs]
    write_json(path, {"sweep": args.name, "epochs": args.epochs, "runs": kept + runs})

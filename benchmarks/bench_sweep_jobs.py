"""Runs per hour on this machine: one run with every core's thread vs N one-thread runs at once.

Each trial trains WRN-28-2 on the shared subset for ``--batches`` steps (the sweep's settings)
and reads the training time from the run's metrics; trials alternate (A, B, A, B, ...) and the
best of each mode counts. Writes benchmarks/sweep_jobs.csv and prints the RESULTS.md rows.

    python benchmarks/bench_sweep_jobs.py --repeats 2 --batches 15
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _results import command, machine, write_csv, write_section  # noqa: E402
from sweep import JOBS_CSV, JOBS_WIN, default_jobs  # noqa: E402

from dst.environment import cpu_kind  # noqa: E402


def trial(n_jobs: int, threads: int, batches: int, data: Path) -> float:
    """Seconds per training step of one run when ``n_jobs`` runs train at once."""
    procs, dirs = [], []
    for i in range(n_jobs):
        d = Path(tempfile.mkdtemp(prefix="dst-jobs-"))
        dirs.append(d)
        cmd = [sys.executable, "-m", "dst.train", "model=wrn28_2", "data=npz",
               f"data.path={data}", "sparsity=static", "sparsity.density=0.1", "trainer.epochs=1",
               f"trainer.limit_train_batches={batches}", "trainer.limit_eval_batches=1",
               "trainer.channels_last=true", "trainer.tensorboard=false", f"seed={i}",
               "trainer.progress=false", f"trainer.num_threads={threads}", f"hydra.run.dir={d}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a trial run failed")
    times = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0])["time"] for d in dirs]
    return max(times) / batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batches", type=int, default=15)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/cifar10_subset.npz"))
    args = p.parse_args()
    cores = os.cpu_count() or 1
    best = {1: float("inf"), cores: float("inf")}
    for _ in range(args.repeats):
        for n in (1, cores):
            best[n] = min(best[n], trial(n, cores // n, args.batches, Path(args.data)))
    kind = cpu_kind()
    rows = []
    for n, sec in best.items():
        steps_per_hour = 3600 / sec * n  # all n runs advance at once
        rows.append({"jobs": n, "threads_per_job": cores // n, "sec_per_step": round(sec, 3),
                     "steps_per_hour_total": round(steps_per_hour), "cpu": kind,
                     "command": command()})
    old = []  # other CPUs' measurements stay: the sweep's --jobs auto reads them per CPU
    if JOBS_CSV.is_file():
        with JOBS_CSV.open(newline="") as f:
            old = [r for r in csv.DictReader(f) if r.get("cpu") != kind]
    write_csv(JOBS_CSV, old + rows)
    lines = ["| CPU | runs at once x threads | s per step, per run | steps per hour, all runs |",
             "|---|---|---|---|"]
    lines += [f"| {r['cpu']} | {r['jobs']} x {r['threads_per_job']} | {r['sec_per_step']} | "
              f"{r['steps_per_hour_total']} |" for r in old + rows]
    verdicts = []
    for cpu in dict.fromkeys(r["cpu"] for r in old + rows):
        rate = {int(r["jobs"]): float(r["steps_per_hour_total"])
                for r in old + rows if r["cpu"] == cpu}
        n = max(rate)
        verdicts.append(f"{cpu}: {n} one-thread runs give {rate[n] / rate[1]:.2f}x the "
                        f"throughput of one {n}-thread run, so `--jobs auto` runs "
                        f"{default_jobs(cpu, n)} at once (more only above {JOBS_WIN}x).")
    md = "\n".join(lines)
    verdict = "\n".join(f"- {v}" for v in verdicts)
    print(md + "\n" + verdict)
    write_section("sweep-jobs", f"## Sweep: runs at once (CPU)\n\nCommand: `{command()}` "
                                f"(each CPU's rows from its own run; the latest: {machine()})"
                                f"\n\nWRN-28-2 on the subset, batch 100, best of "
                                f"{args.repeats} interleaved trials of {args.batches} "
                                f"steps.\n\n{md}\n\n{verdict}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

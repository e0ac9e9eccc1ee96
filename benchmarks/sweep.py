"""The method comparison on the shared CIFAR-10 subset, advanced a few runs at a time.

Every finished run leaves one small JSON record in ``benchmarks/results/<sweep>/`` (committed),
named ``<method>_d<density>_s<seed>-<config hash>.json``, and the artifacts later runs need
(DSR's final masks for static_from_mask; a dense run's trained weights for gmp and the lottery
ticket) in its ``artifacts/`` folder. The sweep skips every run already recorded with the
current preset, whichever machine made it, so it can be stopped at any point and continued on
another machine. A recorded run whose artifact a later run needs but which the records folder
lacks (a sweep whose --methods left the dependent out) runs again first; its new record replaces
the old one and keeps its figures under ``replaces`` (``_sweep_state.py``). Run directories
(``benchmarks/_sweep/``) are scratch: an interrupted run resumes from its checkpoint on the same
machine.

    python benchmarks/sweep.py --dry-run                  # the plan: recorded / to run
    python benchmarks/sweep.py --budget-minutes 120       # launch only what fits in 2 hours
                                                          # (--jobs auto: runs at once per CPU)
    python benchmarks/sweep.py --jobs 2 --set trainer.device=cuda   # on a GPU
    python benchmarks/sweep.py --model vit_tiny --name vit_tiny_subset --methods dsr static \
        dense --densities 0.1 --seeds-main 3 --no-report     # the ViT comparison
    dst-report benchmarks/results/wrn28_2_subset          # the table from the records

Order: density 0.1 before 0.2; within a density seed 0 of every method before seed 1. At the
first density ``--seeds-main`` seeds (default 5, the paper's runs per cell) of dense, dsr,
static, set, rigl and snfs and ``--seeds-rest`` (default 3) of the others; at later densities
``--seeds-rest`` of every method. ``static_2x`` and ``thin_dense_2x`` (the paper's protocol:
its static baselines train twice as long as DSR, with the same schedule shape) and
``dsr_kernel`` (DSR at kernel granularity) run at the first density only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from _sweep_state import (  # noqa: E402
    artifact_path,
    missing_artifacts,
    record_run,
    recorded,
    write_plan,
)

from dst.environment import cpu_kind, gpu_model  # noqa: E402
from dst.records import config_hash, machine_of  # noqa: E402

BENCH = REPO / "benchmarks"
MAIN = ("dense", "dsr", "static", "set", "rigl", "snfs")
REST = ("dsr_structured", "dsr_kernel", "thin_dense", "static_erk", "snip", "gmp", "lottery",
        "static_from_mask", "static_2x", "thin_dense_2x")
FIRST_ONLY = ("dsr_kernel", "static_2x", "thin_dense_2x")  # at the first density only
PRESETS = {"static_erk": ["sparsity=static", "sparsity.distribution=erk"],
           "static_2x": ["sparsity=static"], "thin_dense_2x": ["sparsity=thin_dense"]}
# the paper trains its static baselines for twice DSR's epochs (LR milestones are fractions of
# trainer.epochs, so the schedule keeps its shape); at the first density only
EPOCH_FACTOR = {"static_2x": 2, "thin_dense_2x": 2}
# per model: overrides of every run, and of every sparse run (a transformer trains with AdamW,
# its patch embedding and head dense: conf/experiment/subset_vit_tiny_dsr.yaml)
MODEL_EXTRA = {"vit_tiny": ["optim=adamw", "optim.scheduler.warmup_epochs=3"]}
MODEL_SPARSE_EXTRA = {"vit_tiny": ["sparsity.filter=ends_dense"]}
# one-shot lottery ticket: rewind to step 50 (~1 epoch of 51, 3 % of a 30-epoch run; Frankle et
# al. 2020 rewind to 0.5-5 % of training for CIFAR ResNets)
TICKET_REWIND = 50  # --ticket-rewind
JOBS_CSV = BENCH / "sweep_jobs.csv"  # bench_sweep_jobs.py's measurements, one block per CPU
JOBS_WIN = 1.05  # runs at once must beat one run by more than this (else noise: fewer win)
DEFAULT_MINUTES = 40.0  # a run's expected length when no record of this CPU says better


@dataclass
class Job:
    name: str
    method: str
    density: float
    seed: int
    overrides: list[str]
    epochs: int = 30
    needs: dict[str, str] = field(default_factory=dict)  # dependency job name -> artifact kind
    hash: str = ""
    provides: str | None = None  # artifact kind this run must leave ("masks" | "weights")

    @property
    def key(self) -> str:
        return f"{self.name}-{self.hash}"


def run_name(method: str, density: float, seed: int) -> str:
    return f"{method}_d{density:g}_s{seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", default="../shared/data/cifar10_subset.npz")
    p.add_argument("--model", default="wrn28_2", help="model preset (conf/model)")
    p.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds-main", type=int, default=5, help="seeds at the first density of "
                   + ", ".join(MAIN))
    p.add_argument("--seeds-rest", type=int, default=3, help="seeds of the other methods, and "
                   "of every method at later densities")
    p.add_argument("--methods", nargs="+", default=None, choices=MAIN + REST)
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run (repeatable); it changes the config hash "
                   "unless it is a volatile key such as trainer.device")
    p.add_argument("--name", default="wrn28_2_subset", help="sweep name (records folder)")
    p.add_argument("--results", default=None, help="records folder (default "
                   "benchmarks/results/NAME)")
    p.add_argument("--work", default=None, help="scratch run folder (default "
                   "benchmarks/_sweep/NAME)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="launch a run only if it is expected to end within this many minutes "
                   "from the sweep's start (estimated from records made on this CPU)")
    p.add_argument("--default-minutes", type=float, default=DEFAULT_MINUTES,
                   help="expected minutes of a 30-epoch run when no record of this machine "
                   "exists (default %(default)s: a 2-core CPU VM)")
    p.add_argument("--jobs", default="auto", help="runs at once, the CPU threads split between "
                   "them; auto (default): what bench_sweep_jobs.py measured best on this kind "
                   "of CPU (benchmarks/sweep_jobs.csv), 1 without a measurement or on a GPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: CPU cores // jobs)")
    p.add_argument("--ticket-rewind", type=int, default=TICKET_REWIND,
                   help="optimizer step the lottery ticket rewinds to (default %(default)s)")
    p.add_argument("--max-runs", type=int, default=None, help="launch at most this many")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    args = p.parse_args(argv)
    if args.jobs == "auto":
        args.jobs = 1 if on_gpu(args) else default_jobs(cpu_kind(), os.cpu_count() or 1)
    elif not str(args.jobs).isdigit():
        p.error(f"--jobs takes a count or auto, got {args.jobs!r}")
    args.jobs = int(args.jobs)
    if args.epochs < 1 or args.seeds_main < 0 or args.seeds_rest < 0 or args.jobs < 1:
        p.error("--epochs and --jobs must be >= 1 and the seed counts >= 0")
    if args.seeds_rest > args.seeds_main:
        p.error("--seeds-rest must not exceed --seeds-main: static_from_mask, gmp and lottery "
                "use the dsr and dense runs of the same seed")
    if any(not 0 < d <= 1 for d in args.densities):
        p.error(f"--densities must lie in (0, 1], got {args.densities}")
    bad = [e for e in args.extra if "=" not in e]
    if bad:
        p.error(f"--set takes KEY=VALUE, got {bad}")
    args.densities = sorted(set(args.densities))
    args.results = Path(args.results) if args.results else BENCH / "results" / args.name
    args.work = Path(args.work) if args.work else BENCH / "_sweep" / args.name
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def data_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        p = REPO / p
    return p.resolve()


def plan(args: argparse.Namespace) -> list[Job]:
    """Every run, in priority order, each after the runs it needs, with its config hash."""
    wanted = set(args.methods or MAIN + REST)
    common = [f"model={args.model}", "data=npz", f"data.path={data_file(args.data_path)}",
              "trainer.channels_last=true", "trainer.tensorboard=false",
              "trainer.progress=false", *MODEL_EXTRA.get(args.model, []), *args.extra]

    def job(method: str, density: float, seed: int) -> Job:
        preset = PRESETS.get(method, [f"sparsity={method}"])
        dens = [] if method == "dense" else [f"sparsity.density={density:g}",
                                             *MODEL_SPARSE_EXTRA.get(args.model, [])]
        epochs = args.epochs * EPOCH_FACTOR.get(method, 1)
        return Job(run_name(method, density, seed), method, density, seed,
                   [*common, f"trainer.epochs={epochs}", *preset, *dens, f"seed={seed}"],
                   epochs)

    def seeds(m: str, first: bool) -> int:
        return args.seeds_main if first and m in MAIN else args.seeds_rest

    jobs: list[Job] = []
    for d in args.densities:
        first = d == args.densities[0]
        for s in range(args.seeds_main):
            for m in MAIN + REST:
                if m not in wanted or s >= seeds(m, first) or (
                        not first and (m == "dense" or m in FIRST_ONLY)):
                    continue
                j = job(m, 1.0 if m == "dense" else d, s)
                if m in ("gmp", "lottery"):
                    j.needs[run_name("dense", 1.0, s)] = "weights"
                elif m == "static_from_mask":
                    j.needs[run_name("dsr", d, s)] = "masks"
                jobs.append(j)
    by_name = {j.name: j for j in jobs}
    for j in jobs:
        for dep, kind in j.needs.items():
            if dep in by_name:
                by_name[dep].provides = kind
            else:
                raise SystemExit(f"sweep: {j.name} needs {dep}, which --methods left out")
    hashes = compose_hashes(jobs, by_name, args)
    for j in jobs:
        j.hash = hashes[j.name]
    return jobs


def dependency_overrides(j: Job, by_name: dict[str, Job], results: Path,
                         rewind: int) -> list[str]:
    out = []
    for dep, _ in j.needs.items():
        path = artifact_path(results, by_name[dep])
        if j.method == "static_from_mask":
            out.append(f"sparsity.init.source={path}")
        elif j.method == "gmp":
            out.append(f"sparsity.init_from={path}")
        else:  # lottery: one-shot ticket from the trained dense weights
            out += [f"sparsity.ticket_from={path}", f"sparsity.rewind={rewind}"]
    return out


def compose_hashes(jobs: list[Job], by_name: dict[str, Job], args) -> dict[str, str]:
    """Config hashes from the composed configs, dependencies first (their hash is in the name
    of the artifact a dependent run reads)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    out: dict[str, str] = {}
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for j in jobs:
            for dep in j.needs:
                by_name[dep].hash = out[dep]
            j.overrides = [o for o in j.overrides if not o.startswith(
                ("sparsity.init.source=", "sparsity.init_from=", "sparsity.ticket_from=",
                 "sparsity.rewind="))] + dependency_overrides(j, by_name, args.results,
                                                               args.ticket_rewind)
            cfg = compose("train", overrides=j.overrides)
            out[j.name] = config_hash(OmegaConf.to_container(cfg, resolve=True))
    return out


# ----------------------------------------------------------------------------- estimates
def on_gpu(args) -> bool:
    return any(e.split("=", 1)[1].startswith("cuda") for e in args.extra
               if e.startswith("trainer.device="))


def this_machine(args) -> str:
    return str((gpu_model() if on_gpu(args) else None) or cpu_kind())


def default_jobs(where: str, cores: int, table: Path = JOBS_CSV) -> int:
    """``--jobs auto``: ``cores`` one-thread runs at once where bench_sweep_jobs.py measured
    them on this kind of CPU at more than ``JOBS_WIN`` x the steps per hour of one run using
    every core, else 1 (also without a measurement of this CPU)."""
    rows = []
    if table.is_file():
        with table.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("cpu") == where]
    rate = {int(r["jobs"]): float(r["steps_per_hour_total"]) for r in rows}
    if cores > 1 and 1 in rate and cores in rate and rate[cores] > JOBS_WIN * rate[1]:
        return cores
    return 1


def _per_epoch(pool: list[dict]) -> float:
    return statistics.median(r["wall_time"] / len(r["epochs"]) for r in pool)


def estimate_minutes(job: Job, records: list[dict], where: str, threads: int, jobs: int,
                     epochs: int, default: float = DEFAULT_MINUTES) -> float:
    """Minutes ``job`` should take here: the median recorded minutes per epoch of the same
    method on this kind of machine at the same threads and jobs; else the method's time in the
    other records scaled by how much slower this setup ran the methods both have; else any
    method's median here; else ``default`` minutes per 30 epochs."""
    timed = [r for r in records if r.get("wall_time") and r.get("epochs")]
    here = [r for r in timed if machine_of(r) == where and r.get("threads") == threads
            and r.get("jobs") == jobs]
    elsewhere = [r for r in timed if r not in here]
    kin = (job.method, job.method.removesuffix("_2x"))  # a 2x run: its preset's per-epoch time
    mine = [r for r in here if r["method"] in kin]
    if mine:
        return _per_epoch(mine) * epochs / 60.0
    theirs = [r for r in elsewhere if r["method"] in kin]

    def base(r):  # a 2x run's epochs cost what its preset's do
        return r["method"].removesuffix("_2x")

    shared = sorted({base(r) for r in here} & {base(r) for r in elsewhere})
    if theirs and shared:  # e.g. an expensive method's first run on a new CPU
        ratio = statistics.median(
            _per_epoch([r for r in here if base(r) == m])
            / _per_epoch([r for r in elsewhere if base(r) == m]) for m in shared)
        return _per_epoch(theirs) * ratio * epochs / 60.0
    if here:
        return _per_epoch(here) * epochs / 60.0
    return default * epochs / 30


# ----------------------------------------------------------------------------- execution
def command(j: Job, args) -> list[str]:
    run_dir = args.work.resolve() / j.key
    resume = ["trainer.resume=true"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
    return [sys.executable, "-m", "dst.train", *j.overrides, f"trainer.num_threads={args.threads}",
            *resume, f"hydra.run.dir={run_dir}"]


def execute(jobs: list[Job], args) -> list[str]:
    """Run what is not recorded yet, ``args.jobs`` at a time; returns the runs left undone."""
    done, records = recorded(args)
    for key, why in missing_artifacts(jobs, records, args.results).items():
        done.discard(key)  # made again for its artifact; the new record replaces the old one
        print(f"{key.rpartition('-')[0]}: recorded, but runs again: {why}", flush=True)
    where, start = this_machine(args), time.time()
    by_name = {j.name: j for j in jobs}
    pending = [j for j in jobs if j.key not in done]
    running: dict[str, tuple[Job, subprocess.Popen, object]] = {}
    failed: list[str] = []  # 'name (why)'
    lost: set[str] = set()  # names of runs that failed or were not launched
    launched = 0
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def stop(*_):
        for _, proc, _ in running.values():
            proc.terminate()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            if args.max_runs and launched >= args.max_runs and not running:
                break
            for j in list(pending):
                if len(running) >= args.jobs or (args.max_runs and launched >= args.max_runs):
                    break
                deps = [by_name[d] for d in j.needs]
                if any(d.key not in done for d in deps):
                    if not any(d.name in lost for d in deps):
                        continue  # its dependency is still to come
                    failed.append(f"{j.name} (needs {', '.join(d.name for d in deps)})")
                    lost.add(j.name)
                    pending.remove(j)
                    continue
                est = estimate_minutes(j, records, where, args.threads, args.jobs, j.epochs,
                                       args.default_minutes)
                elapsed = (time.time() - start) / 60
                if args.budget_minutes is not None and elapsed + est > args.budget_minutes:
                    print(f"{j.name}: not launched, ~{est:.0f} min would end past the "
                          f"{args.budget_minutes:g}-minute budget", flush=True)
                    lost.add(j.name)
                    pending.remove(j)
                    continue
                log = (logs / f"{j.key}.log").open("a")
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                proc = subprocess.Popen(command(j, args), cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
                running[j.name] = (j, proc, log)
                pending.remove(j)
                launched += 1
                write_plan(args, jobs, done, running)
                print(f"{j.name}: running (~{est:.0f} min, log {logs / (j.key + '.log')})",
                      flush=True)
            time.sleep(0.5)
            for name, (j, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                try:
                    if proc.returncode != 0:
                        raise RuntimeError(f"exit code {proc.returncode}")
                    path = record_run(j, args)
                    done.add(j.key)
                    records.append(json.loads(path.read_text()))
                    write_plan(args, jobs, done, running)
                    print(f"{j.name}: recorded {path}", flush=True)
                except (RuntimeError, ValueError, OSError) as e:
                    print(f"{j.name}: FAILED ({e})", flush=True)
                    failed.append(f"{j.name} ({e})")
                    lost.add(j.name)
            if pending and not running and all(
                    any(by_name[d].key not in done for d in j.needs) for j in pending):
                failed += [f"{j.name} (needs {', '.join(j.needs)})" for j in pending]
                pending = []
    except KeyboardInterrupt:
        for _, proc, _ in running.values():
            proc.terminate()
        print("sweep: interrupted; finished runs are recorded, the rest resume next time",
              file=sys.stderr)
        raise
    return failed + [f"{j.name} (not launched)" for j in pending]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = plan(args)
    if args.dry_run:
        done, records = recorded(args)
        again = missing_artifacts(jobs, records, args.results)
        for j in jobs:
            state = (f"recorded, runs again: {again[j.key]}" if j.key in again else
                     "recorded" if j.key in done else "to run")
            print(f"# {j.key}: {state}\n{shlex.join(command(j, args))}")
        print(f"# {len(jobs)} runs, {sum(j.key in done for j in jobs)} recorded, records in "
              f"{args.results}", file=sys.stderr)
        return 0
    if not data_file(args.data_path).is_file():
        print(f"sweep: error: data file {args.data_path} not found (the shared CIFAR-10 subset "
              "lives at ../shared/data/cifar10_subset.npz; see its README)", file=sys.stderr)
        return 2
    write_plan(args, jobs, recorded(args)[0])
    try:
        left = execute(jobs, args)
    except KeyboardInterrupt:
        return 130
    write_plan(args, jobs, recorded(args)[0])
    if not args.no_report:
        from dst.report import main as report

        rel = [os.path.relpath(p, REPO) for p in (args.results, BENCH, BENCH / "RESULTS.md",
                                                  REPO / "README.md")]
        report([rel[0], "--out", rel[1], "--results-md", rel[2], "--readme", rel[3]])
    if left:
        print("not finished: " + ", ".join(left), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

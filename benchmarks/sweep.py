"""The method comparison: DSR against its baselines and peers, on the shared CIFAR-10 subset.

Launches ``dst-train`` runs one after another (each in ``<out>/<method>_d<density>_s<seed>``),
skips runs whose summary.json says finished (so an interrupted sweep resumes where it stopped),
then writes the report (``dst-report``) and copies it into ``benchmarks/`` as
``comparison.md``, ``comparison.csv``, ``comparison_acc_vs_params.png`` and
``comparison_dsr_density.png``.

    python benchmarks/sweep.py --dry-run                 # print the commands only
    python benchmarks/sweep.py                           # WRN-28-2, densities 0.1 0.2, 30 epochs
    python benchmarks/sweep.py --densities 0.1 --epochs 10 --name quick

Seeds: ``--seeds-main`` for dsr, static, set and dense (dense once per seed, at density 1);
``--seeds-rest`` for thin_dense, static with ERK, snip, rigl, snfs, gmp (from the trained dense
run of the same seed, as the paper did) and static_from_mask (DSR's final mask of the same
density and seed, trained statically from a fresh init).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
MAIN = ("dsr", "static", "set", "dense")
REST = ("thin_dense", "static_erk", "snip", "rigl", "snfs", "gmp", "static_from_mask")
PRESETS = {"static_erk": ["sparsity=static", "sparsity.distribution=erk"]}
COPIES = {"report.md": "comparison.md", "report.csv": "comparison.csv",
          "acc_vs_params.png": "comparison_acc_vs_params.png",
          "dsr_layer_density.png": "comparison_dsr_density.png"}


@dataclass
class Job:
    name: str
    method: str
    density: float
    seed: int
    command: list[str]
    needs: list[str] = field(default_factory=list)


def run_name(method: str, density: float, seed: int) -> str:
    return f"{method}_d{density:g}_s{seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", default="../shared/data/cifar10_subset.npz",
                   help="the .npz data set (default: the shared CIFAR-10 subset)")
    p.add_argument("--model", default="wrn28_2", help="model preset (conf/model)")
    p.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds-main", type=int, default=3, help="seeds of " + ", ".join(MAIN))
    p.add_argument("--seeds-rest", type=int, default=2, help="seeds of " + ", ".join(REST))
    p.add_argument("--methods", nargs="+", default=None, choices=MAIN + REST,
                   help="run only these methods (default: all)")
    p.add_argument("--gmp-from-scratch", action="store_true",
                   help="start gmp from a fresh init instead of the trained dense run")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an override added to every run (repeatable), e.g. trainer.device=cuda")
    p.add_argument("--name", default="wrn28_2_subset", help="sweep name (output folder)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/_sweep/NAME)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--no-copy", action="store_true",
                   help="write the report in the sweep folder only (not benchmarks/comparison.*)"
                   ", e.g. for a quick check of the pipeline")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.seeds_main < 0 or args.seeds_rest < 0:
        p.error("--epochs must be >= 1 and the seed counts >= 0")
    if args.seeds_rest > args.seeds_main:
        p.error("--seeds-rest must not exceed --seeds-main: static_from_mask and gmp use the "
                "dsr and dense runs of the same seed")
    if any(not 0 < d <= 1 for d in args.densities):
        p.error(f"--densities must lie in (0, 1], got {args.densities}")
    bad = [e for e in args.extra if "=" not in e]
    if bad:
        p.error(f"--set takes KEY=VALUE, got {bad}")
    args.out = Path(args.out) if args.out else BENCH / "_sweep" / args.name
    return args


def data_file(path: str) -> Path:
    """``path`` as given, or relative to the repository root when it is not found from here."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        p = REPO / p
    return p.resolve()


def plan(args: argparse.Namespace) -> list[Job]:
    """Every run of the sweep, in an order where each run comes after the runs it needs."""
    out = Path(args.out).resolve()
    data = data_file(args.data_path)
    wanted = set(args.methods or MAIN + REST)
    common = [f"model={args.model}", "data=npz", f"data.path={data}",
              f"trainer.epochs={args.epochs}", "trainer.channels_last=true",
              "trainer.tensorboard=false", "trainer.progress=false"]

    def job(method: str, density: float, seed: int, extra=(), needs=()) -> Job:
        name = run_name(method, density, seed)
        preset = PRESETS.get(method, [f"sparsity={method}"])
        dens = [] if method == "dense" else [f"sparsity.density={density:g}"]
        cmd = [sys.executable, "-m", "dst.train", *common, *preset, *dens, *extra,
               f"seed={seed}", *args.extra, f"hydra.run.dir={out / name}"]
        return Job(name, method, density, seed, cmd, list(needs))

    jobs = [job("dense", 1.0, s) for s in range(args.seeds_main)] if "dense" in wanted else []
    for d in args.densities:
        for s in range(args.seeds_main):
            jobs += [job(m, d, s) for m in ("dsr", "static", "set") if m in wanted]
        for s in range(args.seeds_rest):
            for m in REST:
                if m not in wanted:
                    continue
                if m == "static_from_mask":
                    src = run_name("dsr", d, s)
                    jobs.append(job(m, d, s, [f"sparsity.init.source={out / src}"], [src]))
                elif m == "gmp" and not args.gmp_from_scratch:
                    src = run_name("dense", 1.0, s)
                    jobs.append(job(m, d, s, [f"sparsity.init_from={out / src}"], [src]))
                else:
                    jobs.append(job(m, d, s))
    return jobs


def finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def execute(jobs: list[Job], out: Path) -> list[str]:
    """Run the jobs not finished yet; returns 'name (why)' for each that failed or was left."""
    failed = []
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for i, j in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {j.name}"
        if finished(out / j.name):
            print(f"{tag}: done already, skipped", flush=True)
            continue
        missing = [n for n in j.needs if not finished(out / n)]
        if missing:
            print(f"{tag}: left out, needs finished {', '.join(missing)}", flush=True)
            failed.append(f"{j.name} (needs {', '.join(missing)})")
            continue
        print(f"{tag}: running (log {logs / (j.name + '.log')})", flush=True)
        with (logs / f"{j.name}.log").open("w") as log:
            rc = subprocess.run(j.command, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"{tag}: FAILED with exit code {rc}", flush=True)
            failed.append(f"{j.name} (exit code {rc})")
    return failed


def report(out: Path, copy: bool = True) -> list[Path]:
    """dst-report on the sweep, copied into benchmarks/ as comparison.* when ``copy``."""
    sys.path.insert(0, str(REPO))
    from dst.report import build_report

    build_report(out, out)
    if not copy:
        return [out / name for name in COPIES if (out / name).is_file()]
    copied = []
    for src, dst in COPIES.items():
        if (out / src).is_file():
            shutil.copyfile(out / src, BENCH / dst)
            copied.append(BENCH / dst)
    return copied


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = plan(args)
    if args.dry_run:
        for j in jobs:
            print(shlex.join(j.command))
        print(f"# {len(jobs)} runs into {args.out}", file=sys.stderr)
        return 0
    if not data_file(args.data_path).is_file():
        print(f"sweep: error: data file {args.data_path} not found (the shared CIFAR-10 subset "
              "lives at ../shared/data/cifar10_subset.npz; see its README)", file=sys.stderr)
        return 2
    failed = execute(jobs, Path(args.out))
    try:
        copied = report(Path(args.out), copy=not args.no_copy)
    except ValueError as e:  # dst.report.ReportError: nothing finished to report
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in copied))
    if failed:
        print("not finished: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

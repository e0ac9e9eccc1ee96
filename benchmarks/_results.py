"""Helpers for benchmarks: machine description, CSV output, and a marked section of RESULTS.md."""

from __future__ import annotations

import csv
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dst.environment import cpu_kind
from dst.runs import replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def machine() -> str:
    cpu = cpu_kind()
    dev = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{dev}")


def command() -> str:
    argv = [Path(sys.argv[0]).as_posix()] + sys.argv[1:]
    rel = os.path.relpath(argv[0], HERE.parent)
    return "python " + shlex.join([rel, *argv[1:]])


def timeit(fn: Callable[[], None], *, warmup: int = 3, repeats: int = 10,
           sync: bool = False) -> float:
    """Median seconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_csv(path: Path, rows: list[dict]) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    fields = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between BEGIN/END markers named ``name``."""
    replace_section(RESULTS, name, markdown)


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)

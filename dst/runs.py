"""Run folders and their groups: a finished run directory (``summary.json`` etc.) as a
:class:`Run`, runs grouped by (method, density), training FLOPs over a run, the accuracy-vs-
parameters plot, and markdown sections rewritten in place. Used by :mod:`dst.report` (tables of
run folders), :mod:`dst.comparison` (tables of sweep records) and :mod:`dst.records`."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import atomic_write

METHOD_ORDER = ("dense", "thin_dense", "static", "snip", "static_from_mask", "lottery", "gmp",
                "set", "snfs", "rigl", "dsr")
MARKERS = "osD^vP*Xph<>"
SPREAD = 0.02  # methods at the same density sit this far apart on the log-x axis (a factor)
_RUN_MARKERS = ("summary.json", "metrics.jsonl")


class ReportError(ValueError):
    """The sweep directory holds nothing to report."""


@dataclass
class Run:
    path: Path
    summary: dict
    label: str
    density: float
    flops: float | None


@dataclass
class Group:
    label: str
    density: float
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(r.summary[key]) for r in self.runs if _num(r.summary.get(key))]

    def mean(self, key: str) -> float | None:
        v = self.values(key)
        return sum(v) / len(v) if v else None

    @property
    def acc(self) -> tuple[float, float | None]:
        v = self.values("final_test_acc1")
        return sum(v) / len(v), statistics.stdev(v) if len(v) > 1 else None

    @property
    def flops(self) -> float | None:
        v = [r.flops for r in self.runs if r.flops is not None]
        return sum(v) / len(v) if v else None


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- discovery
def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory below ``sweep_dir`` that is a run (holds summary.json, metrics.jsonl or a
    checkpoints/ or .hydra/ folder); a run's own subfolders are not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(sweep_dir):
        dirnames.sort()
        if any(m in filenames for m in _RUN_MARKERS) or {"checkpoints", ".hydra"} & set(dirnames):
            found.append(Path(dirpath))
            dirnames[:] = []
    return sorted(found)


def _init_suffix(run_dir: Path) -> str:
    """' (original init)' for a FromMask run restarted from the source's initial weights."""
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        return ""
    try:
        from omegaconf import OmegaConf

        init = OmegaConf.select(OmegaConf.load(cfg_path), "sparsity.init.init", default=None)
    except Exception:  # an unreadable config only loses the label refinement
        return ""
    return " (original init)" if init == "original" else ""


def load_runs(sweep_dir: Path) -> tuple[list[Run], list[str]]:
    """(finished runs, 'name (reason)' for each run directory left out)."""
    runs, skipped = [], []
    for d in find_run_dirs(sweep_dir):
        name = str(d.relative_to(sweep_dir)) if d != sweep_dir else d.name
        path = d / "summary.json"
        if not path.is_file():
            skipped.append(f"{name} (no summary.json)")
            continue
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            skipped.append(f"{name} (unreadable summary.json)")
            continue
        if not isinstance(s, dict) or s.get("finished") is not True:
            skipped.append(f"{name} (not finished)")
            continue
        if not isinstance(s.get("method"), str) or not _num(s.get("final_test_acc1")):
            skipped.append(f"{name} (no method or test accuracy)")
            continue
        density = float(s["density"]) if _num(s.get("density")) else 1.0
        runs.append(Run(d, s, s["method"] + _init_suffix(d), density, train_flops_ratio(d, s)))
    # a method run with several distributions (static uniform and ERK) gets them in its label
    dists: dict[str, set] = {}
    for r in runs:
        dists.setdefault(r.label, set()).add(r.summary.get("distribution"))
    for r in runs:
        dist = r.summary.get("distribution")
        if len(dists[r.label]) > 1 and dist not in (None, "uniform"):
            r.label = f"{r.label} ({dist})"
    return runs, skipped


# ----------------------------------------------------------------------------- FLOPs
def train_flops_ratio(run_dir: Path, summary: dict) -> float | None:
    """Training MACs relative to the dense model.

    With ``layer_macs_dense`` ({layer: dense MACs} over all conv/linear layers) and the run's
    density_history.csv: Σ_l d_l·MAC_l / Σ_l MAC_l (layers not in the history dense), averaged
    over training with each row weighted by the steps it was in force (the summary's initial
    ``flops_ratio`` before the first row, the last row until ``steps``; a plain mean of the rows
    without ``steps``). Otherwise the summary's ``flops_ratio`` (static masks)."""
    fallback = float(summary["flops_ratio"]) if _num(summary.get("flops_ratio")) else None
    macs = summary.get("layer_macs_dense")
    path = run_dir / "density_history.csv"
    if not isinstance(macs, dict) or not macs or not path.is_file():
        return fallback
    try:
        with path.open() as f:
            rows = list(csv.reader(f))
        names = rows[0][2:]
        total = sum(float(v) for v in macs.values())
        if not rows[1:] or total <= 0 or any(n not in macs for n in names):
            return fallback
        series = []
        for r in rows[1:]:
            d = dict(zip(names, (float(x) for x in r[2:]), strict=True))
            series.append((int(r[0]), sum(d.get(n, 1.0) * float(m) for n, m in macs.items())
                           / total))
    except (OSError, ValueError, IndexError):
        return fallback
    series.sort()
    steps = summary.get("steps")
    if not _num(steps) or steps <= series[-1][0]:
        return sum(v for _, v in series) / len(series)
    first = fallback if fallback is not None else series[0][1]
    bounds = [0] + [s for s, _ in series] + [int(steps)]
    values = [first] + [v for _, v in series]
    spans = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return sum(v * w for v, w in zip(values, spans, strict=True)) / sum(spans)


# ----------------------------------------------------------------------------- tables
def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[tuple[str, float], Group] = {}
    for r in runs:
        groups.setdefault((r.label, r.density), Group(r.label, r.density)).runs.append(r)

    def order(g: Group):
        base = g.label.split(" ")[0]
        rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        return (g.density, rank, g.label)

    return sorted(groups.values(), key=order)


def plot_styles(labels: list[str]) -> dict[str, tuple[int, str]]:
    """Per label: a colour index into the 20-colour ``tab20`` map and a marker, the pair
    distinct per label (the colours for up to 20 labels)."""
    return {lab: ((2 * i) % 20 + (2 * i) // 20 % 2, MARKERS[i % len(MARKERS)])
            for i, lab in enumerate(labels)}


def x_factors(groups: list[Group]) -> dict[tuple[str, float], float]:
    """``{(label, density): factor}``: the methods sharing a density, in the order given, are
    spread ``SPREAD`` apart around their parameter count, so that they do not hide one
    another; a method alone at its density keeps its exact position."""
    at: dict[float, list[str]] = {}
    for g in groups:
        at.setdefault(g.density, []).append(g.label)
    return {(lab, d): 1.0 + SPREAD * (k - (len(labs) - 1) / 2)
            for d, labs in at.items() for k, lab in enumerate(labs)}


def plot_acc_vs_params(groups: list[Group], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    groups = [g for g in groups if g.mean("params_nonzero") is not None]
    by_label: dict[str, list[Group]] = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    cmap, dx = plt.get_cmap("tab20"), x_factors(groups)
    for label, (colour, marker) in plot_styles(list(by_label)).items():
        gs = sorted(by_label[label], key=lambda g: g.mean("params_nonzero"))
        xs = [g.mean("params_nonzero") * dx[label, g.density] for g in gs]
        ys = [g.acc[0] for g in gs]
        es = [g.acc[1] or 0.0 for g in gs]
        ax.errorbar(xs, ys, yerr=es, marker=marker, ms=5, capsize=3, lw=1.2, label=label,
                    color=cmap(colour))
        if label == "dense":  # the reference every sparse method is read against
            ax.axhline(ys[0], ls="--", lw=0.8, color=cmap(colour))
    ax.set_xscale("log")
    ax.set_xlabel(f"non-zero parameters (methods of one density side by side, {SPREAD:.0%} "
                  "apart)")
    ax.set_ylabel("test accuracy (%, mean ± sd over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    atomic_write(png, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def replace_section(path: Path, name: str, markdown: str) -> None:
    """Replace (or append) the part of the markdown file ``path`` between the markers
    ``<!-- BEGIN name -->`` and ``<!-- END name -->`` (written atomically)."""
    import re

    path = Path(path)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, lambda p: p.write_text(text if text.endswith("\n") else text + "\n"))



"""dst-report: the results table and plots of a sweep of run directories (or, given a sweep's
records folder, the comparison of :mod:`dst.comparison`).

``dst-report <sweep_dir> [--out DIR]`` finds every run directory below ``sweep_dir`` (one with a
``summary.json``; unfinished ones are listed as skipped), groups finished runs by
(method, density) and writes ``report.md``, ``report.csv``, ``acc_vs_params.png`` (test accuracy
against non-zero parameters, the paper's figure) and ``dsr_layer_density.png`` (per-layer density
over training of the first DSR run).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .trainer import atomic_write

METHOD_ORDER = ("dense", "thin_dense", "static", "snip", "static_from_mask", "lottery", "gmp",
                "set", "snfs", "rigl", "dsr")
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


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def markdown(groups: list[Group], skipped: list[str], title: str, dsr_plot: str | None) -> str:
    head = ["method", "density", "seeds", "test acc (%)", "params non-zero", "model density",
            "train FLOPs", "wall time"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    for g in groups:
        mean, sd = g.acc
        params = g.mean("params_nonzero")
        lines.append("| " + " | ".join([
            g.label, f"{g.density:g}", str(len(g.runs)), f"{mean:.2f} ± {_fmt(sd, '.2f')}",
            "-" if params is None else f"{int(round(params)):,}",
            _fmt(g.mean("model_density"), ".4f"), _fmt(g.flops, ".3f"),
            _wall(g.mean("wall_time"))]) + " |")
    lines += ["", "test acc: final top-1, mean ± sample sd over seeds. model density: non-zero "
              "parameters over all parameters (pool density is in report.csv). train FLOPs: "
              "forward MACs relative to the dense model, averaged over training steps from the "
              "per-layer density history where recorded, else at the initial mask."]
    if dsr_plot:
        lines += ["", f"Per-layer density of {dsr_plot}: dsr_layer_density.png. Accuracy vs "
                  "parameters: acc_vs_params.png."]
    lines += ["", "skipped: " + (", ".join(skipped) if skipped else "none")]
    return "\n".join(lines) + "\n"


CSV_HEAD = ["method", "density", "n", "acc_mean", "acc_sd", "best_acc_mean", "params_nonzero",
            "params_dense", "model_density", "pool_density", "flops_ratio", "wall_time_s",
            "epochs", "runs"]


def csv_text(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEAD)
    for g in groups:
        mean, sd = g.acc
        epochs = sorted({str(r.summary.get("epochs")) for r in g.runs})
        w.writerow([g.label, f"{g.density:g}", len(g.runs), f"{mean:.4f}", _fmt(sd, ".4f"),
                    _fmt(g.mean("best_test_acc1"), ".4f"), _fmt(g.mean("params_nonzero"), ".0f"),
                    _fmt(g.mean("params_dense"), ".0f"), _fmt(g.mean("model_density"), ".6f"),
                    _fmt(g.mean("pool_density"), ".6f"), _fmt(g.flops, ".6f"),
                    _fmt(g.mean("wall_time"), ".1f"), "/".join(epochs),
                    ";".join(r.path.name for r in g.runs)])
    return buf.getvalue()


# ----------------------------------------------------------------------------- plots
MARKERS = "osD^vP*Xph<>"
SPREAD = 0.02  # methods at the same density sit this far apart on the log-x axis (a factor)


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


# ----------------------------------------------------------------------------- entry points
def build_report(sweep_dir, out_dir=None) -> dict:
    """Write report.md, report.csv and the plots for ``sweep_dir`` into ``out_dir`` (default:
    ``sweep_dir``). Returns {"groups", "skipped", "files"}; raises ReportError when there is
    nothing to report."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ReportError(f"{sweep} is not a directory (give the folder holding the run "
                          "directories)")
    runs, skipped = load_runs(sweep)
    if not runs:
        detail = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise ReportError(f"no finished run (summary.json with finished: true) under "
                          f"{sweep}{detail}")
    out = Path(out_dir) if out_dir is not None else sweep
    groups = group_runs(runs)
    first = runs[0].summary
    title = f"Sweep {sweep.name}: {first.get('model', '?')} on {first.get('data', '?')}"
    dsr = next((r for r in runs if r.summary["method"] == "dsr"
                and (r.path / "density_history.csv").is_file()), None)
    files = []
    if dsr is not None:
        from .runlog import plot_density_csv

        png = plot_density_csv(dsr.path / "density_history.csv", out / "dsr_layer_density.png",
                               title=f"DSR per-layer density ({dsr.path.name})")
        files += [png] if png is not None else []
        if png is None:
            dsr = None
    plot_acc_vs_params(groups, out / "acc_vs_params.png", title)
    files.append(out / "acc_vs_params.png")
    md = markdown(groups, skipped, title, dsr.path.name if dsr is not None else None)
    atomic_write(out / "report.md", lambda p: p.write_text(md))
    text = csv_text(groups)
    atomic_write(out / "report.csv", lambda p: p.write_text(text))
    files += [out / "report.md", out / "report.csv"]
    return {"groups": groups, "skipped": skipped, "files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dst-report", description="Tables and plots from a sweep of dst run directories.")
    parser.add_argument("sweep_dir", help="folder searched recursively for run directories, "
                        "or a sweep's records folder (benchmarks/results/<sweep>)")
    parser.add_argument("--out", default=None, help="where to write (default: sweep_dir)")
    parser.add_argument("--results-md", default=None, metavar="PATH",
                        help="records folder only: also write the table into the 'comparison' "
                        "section of this markdown file (e.g. benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    folder = Path(args.sweep_dir)
    try:
        if folder.is_dir() and ((folder / "plan.json").is_file() or any(
                p.suffix == ".json" for p in folder.iterdir())):
            from .comparison import write

            result = write(folder, Path(args.out) if args.out else folder)
            if args.results_md:
                cmd = " ".join(["dst-report", *(argv if argv is not None else sys.argv[1:])])
                replace_section(Path(args.results_md), "comparison",
                                "## Comparison on the CIFAR-10 subset (generated)\n\n"
                                f"Command: `{cmd}`\n\n"
                                + result["markdown"].split("\n", 1)[1].lstrip())
            print(f"{sum(len(c['records']) for c in result['cells'].values())} records in "
                  f"{len(result['cells'])} cells; wrote "
                  f"{', '.join(str(f) for f in result['files'])}")
            return 0
        result = build_report(args.sweep_dir, args.out)
    except ReportError as e:
        print(f"dst-report: error: {e}", file=sys.stderr)
        return 2
    n = sum(len(g.runs) for g in result["groups"])
    print(f"{n} runs in {len(result['groups'])} groups ({len(result['skipped'])} skipped); "
          f"wrote {', '.join(str(f) for f in result['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

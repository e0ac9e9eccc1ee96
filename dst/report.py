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
import sys
from pathlib import Path

from .checkpoint import atomic_write
from .comparison import write
from .runs import (
    Group,
    ReportError,
    group_runs,
    load_runs,
    plot_acc_vs_params,
    replace_section,
)


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


def headline_text(result: dict, cmd: str) -> str:
    recs = [r for c in result["cells"].values() for r in c["records"]]
    cfg = recs[0].get("config", {}) if recs else {}
    m = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    model = (f"WRN-{m['depth']}-{m['widen_factor']}" if m.get("name") == "wrn"
             else m.get("name", "?"))
    epochs = cfg.get("trainer", {}).get("epochs", "?")
    return (f"{model} on the CIFAR-10 subset (5,085 training images), {epochs} epochs per run "
            "(`_2x` rows: twice that), final test accuracy, mean ± sd over seeds; DSR − X "
            "paired by seed with a two-sided t test, p corrected by Holm over the methods at "
            f"one density. Generated by `{cmd}` from {len(recs)} records.\n\n"
            + result["headline"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dst-report", description="Tables and plots from a sweep of dst run directories.")
    parser.add_argument("sweep_dir", help="folder searched recursively for run directories, "
                        "or a sweep's records folder (benchmarks/results/<sweep>)")
    parser.add_argument("--out", default=None, help="where to write (default: sweep_dir)")
    parser.add_argument("--results-md", default=None, metavar="PATH",
                        help="records folder only: also write the table into the 'comparison' "
                        "section of this markdown file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--section", default="comparison",
                        help="the section of --results-md to write (default %(default)s)")
    parser.add_argument("--readme", default=None, metavar="PATH",
                        help="records folder only: also write the headline table into the "
                        "'headline' section of this markdown file (e.g. README.md)")
    args = parser.parse_args(argv)
    folder = Path(args.sweep_dir)
    try:
        if folder.is_dir() and ((folder / "plan.json").is_file() or any(
                p.suffix == ".json" for p in folder.iterdir())):
            result = write(folder, Path(args.out) if args.out else folder)
            if args.results_md:
                cmd = " ".join(["dst-report", *(argv if argv is not None else sys.argv[1:])])
                replace_section(Path(args.results_md), args.section,
                                f"## {result['title']} (generated)\n\n"
                                f"Command: `{cmd}`\n\n"
                                + result["markdown"].split("\n", 1)[1].lstrip())
            if args.readme and result["headline"]:
                cmd = " ".join(["dst-report", *(argv if argv is not None else sys.argv[1:])])
                replace_section(Path(args.readme), "headline", headline_text(result, cmd))
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

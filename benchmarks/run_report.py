"""Put one training run into RESULTS.md: accuracy curve, per-layer density plot, summary.

Run: python benchmarks/run_report.py runs/subset_dsr_d0.1 --name subset_dsr_d0.1
(reads the run's metrics.jsonl, summary.json, density_history.csv and .hydra/overrides.yaml)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _results import HERE, machine, table, write_section

from dst.checkpoint import atomic_write
from dst.runlog import plot_density_csv


def plot_curves(metrics: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, [m["train_acc"] for m in metrics], label="train acc (augmented)")
    ax.plot(ep, [m["test_acc1"] for m in metrics], label="test acc top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(png, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", required=True, help="section name and file prefix")
    args = ap.parse_args()
    run = args.run_dir
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"run_report: {summary_path} not found: is the run finished?")
    summary = json.loads(summary_path.read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    overrides = (run / ".hydra" / "overrides.yaml").read_text().splitlines()
    cmd = "dst-train " + " ".join(o.lstrip("- ").strip() for o in overrides if o.strip())
    curve = HERE / f"{args.name}_accuracy.png"
    plot_curves(metrics, curve, f"{summary['model']} {summary['method']} density "
                                f"{summary['density']} on {summary['data']}")
    density_png = HERE / f"{args.name}_density.png"
    if (run / "density_history.csv").is_file():
        plot_density_csv(run / "density_history.csv", density_png,
                         f"{summary['method']}: per-layer density over training")
        shutil.copyfile(run / "density_history.csv", HERE / f"{args.name}_density.csv")
    rows = [{"epoch": m["epoch"], "lr": f"{m['lr']:.4g}", "train loss": f"{m['train_loss']:.3f}",
             "train acc": f"{m['train_acc']:.2f}", "test acc1": f"{m['test_acc1']:.2f}",
             "test acc5": f"{m['test_acc5']:.2f}", "pool density": f"{m['pool_density']:.4f}",
             "epoch s": f"{m['time']:.0f}"} for m in metrics
            if m["epoch"] % 5 == 0 or m["epoch"] in (1, len(metrics))]
    keys = ["final_test_acc1", "best_test_acc1", "params_nonzero", "params_dense",
            "model_density", "pool_density", "flops_ratio", "flops_ratio_final", "wall_time",
            "engine_steps"]
    facts = "\n".join(f"- {k}: {summary[k]:.4g}" if isinstance(summary[k], float) else
                      f"- {k}: {summary[k]}" for k in keys if k in summary)
    md = (f"## Training run: {args.name}\n\nCommand: `{cmd}`  \nMachine: {machine()}\n\n"
          f"{facts}\n\n{table(rows, list(rows[0]))}\n\n![accuracy]({curve.name})\n"
          + (f"![density]({density_png.name})\n" if density_png.exists() else ""))
    write_section(f"run-{args.name}", md)
    print(md)


if __name__ == "__main__":
    main()

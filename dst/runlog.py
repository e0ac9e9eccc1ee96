"""What a run writes: metrics.jsonl, summary.json, TensorBoard, per-layer density history + plot,
updates.csv (weights pruned and grown at each mask update).

Only rank 0 writes; every file is written atomically or appended line by line.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .checkpoint import atomic_write


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLog:
    def __init__(self, out_dir: Path, *, enabled: bool = True, tensorboard: bool = True,
                 layer_names: list[str] | None = None, layer_sizes: list[int] | None = None):
        self.dir = Path(out_dir)
        self.enabled = enabled
        self.layer_names = layer_names or []
        self.layer_sizes = layer_sizes or []
        self.metrics_path = self.dir / "metrics.jsonl"
        self.density_path = self.dir / "density_history.csv"
        self.updates_path = self.dir / "updates.csv"  # weights moved per update
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional at import time

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    # -- resume: keep history up to the checkpoint ---------------------------------------------
    def truncate(self, epoch: int, step: int, source: Path | None = None) -> None:
        """Keep metrics of epochs <= ``epoch`` and density rows of steps <= ``step`` (copied
        from ``source`` run dir when resuming from another run)."""
        if not self.enabled:
            return
        src_dir = Path(source) if source is not None else self.dir
        src = src_dir / "metrics.jsonl"
        lines = src.read_text().splitlines() if src.is_file() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] <= epoch]
        atomic_write(self.metrics_path, lambda p: p.write_text("".join(f"{ln}\n" for ln in kept)))
        for path in (self.density_path, self.updates_path):  # per-update rows: by step
            csrc = src_dir / path.name
            if not csrc.is_file():
                continue
            with csrc.open() as f:
                rows = list(csv.reader(f))
            kept_rows = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]

            def write(p: Path, rows=kept_rows) -> None:
                with p.open("w", newline="") as f:
                    csv.writer(f).writerows(rows)

            atomic_write(path, write)

    # -- per epoch / per update ----------------------------------------------------------------
    def epoch(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self._tb.add_scalar(k, v, metrics["epoch"])
            self._tb.flush()

    def density(self, step: int, epoch: int, active: dict[str, int]) -> None:
        """A row of density_history.csv: each sparse layer's density from ``step`` on."""
        if not self.enabled or not self.layer_names:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        new = not self.density_path.is_file()
        with self.density_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", *self.layer_names])
            w.writerow([step, epoch, *(f"{active[n] / s:.6g}" for n, s in
                                       zip(self.layer_names, self.layer_sizes, strict=True))])

    def update(self, report, epoch: int) -> None:
        if not self.enabled or not self.layer_names:
            return
        self.density(report.step, epoch, report.active)
        new = not self.updates_path.is_file()
        with self.updates_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "pruned", "grown", "active"])
            w.writerow([report.step, epoch, report.pruned, report.grown,
                        sum(report.active.values())])
        if self._tb is not None:
            self._tb.add_scalar("sparsity/pruned", report.pruned, report.step)
            for k, v in report.method.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"sparsity/{k}", v, report.step)

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        text = json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2)
        atomic_write(self.dir / "summary.json", lambda p: p.write_text(text + "\n"))
        self.plot_density()
        if self._tb is not None:
            self._tb.close()

    def plot_density(self) -> Path | None:
        """density_history.png: per-layer density over training steps."""
        if not self.enabled or not self.density_path.is_file():
            return None
        return plot_density_csv(self.density_path, self.dir / "density_history.png")


def plot_density_csv(csv_path: Path, png_path: Path, title: str | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(csv_path).open() as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return None
    header, data = rows[0], rows[1:]
    steps = [int(r[0]) for r in data]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    names = header[2:]
    for j, name in enumerate(names):
        ax.plot(steps, [float(r[2 + j]) for r in data], color=cmap(j / max(len(names) - 1, 1)),
                lw=1.2, label=name if len(names) <= 12 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("layer density (active / size)")
    ax.set_title(title or "Per-layer density over training (early layers dark, late yellow)")
    if len(names) <= 12:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(Path(png_path), lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return Path(png_path)

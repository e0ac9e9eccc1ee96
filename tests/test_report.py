"""dst-report on fake run directories: grouping, mean ± sd, FLOPs from density history, files."""

import csv
import json
import statistics
import subprocess
import sys

import pytest

from dst.report import build_report, main
from dst.runs import Group, plot_styles, train_flops_ratio, x_factors

MACS = {"stem": 100, "a": 100, "b": 300}
HISTORY = "step,epoch,a,b\n20,1,0.2,0.1\n60,2,0.1,0.2\n"


def fake_run(path, method, acc, *, density=0.1, finished=True, history=False, **extra):
    path.mkdir(parents=True)
    summary = {"finished": finished, "method": method, "density": density, "seed": 0,
               "final_test_acc1": acc, "best_test_acc1": acc + 1, "params_nonzero": 161242,
               "params_dense": 1467610, "model_density": 0.1099, "pool_density": density,
               "flops_ratio": 0.25, "wall_time": 100.0, "epochs": 2, "steps": 100,
               "model": "wrn", "data": "npz", "distribution": "uniform", **extra}
    (path / "summary.json").write_text(json.dumps(summary))
    if history:
        summary["layer_macs_dense"] = MACS
        (path / "summary.json").write_text(json.dumps(summary))
        (path / "density_history.csv").write_text(HISTORY)


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for seed, (acc, wall) in enumerate([(90.0, 100.0), (91.0, 110.0), (93.5, 120.0)]):
        fake_run(root / f"dsr_d0.1_s{seed}", "dsr", acc, history=True, wall_time=wall)
    fake_run(root / "static_d0.1_s0", "static", 88.0, flops_ratio=0.1)
    fake_run(root / "static_erk_d0.1_s0", "static", 89.0, distribution="erk")
    fake_run(root / "nested" / "dense_d1_s0", "dense", 94.0, density=None, params_nonzero=1467610,
             model_density=1.0, flops_ratio=1.0)
    fake_run(root / "set_d0.1_s0", "set", 80.0, finished=False)
    (root / "rigl_d0.1_s0").mkdir()
    (root / "rigl_d0.1_s0" / "metrics.jsonl").write_text("{}\n")
    return root


def test_flops_ratio_is_the_step_weighted_mean_of_the_history(sweep):
    row1 = (0.2 * 100 + 0.1 * 300 + 1.0 * 100) / 500  # stem is dense
    row2 = (0.1 * 100 + 0.2 * 300 + 1.0 * 100) / 500
    expected = (0.25 * 20 + row1 * 40 + row2 * 40) / 100  # initial ratio until the first row
    summary = json.loads((sweep / "dsr_d0.1_s0" / "summary.json").read_text())
    assert train_flops_ratio(sweep / "dsr_d0.1_s0", summary) == pytest.approx(expected)
    summary.pop("steps")
    assert train_flops_ratio(sweep / "dsr_d0.1_s0", summary) == pytest.approx((row1 + row2) / 2)
    assert train_flops_ratio(sweep / "static_d0.1_s0", {"flops_ratio": 0.1}) == 0.1


def test_report_table_values_and_files(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert "6 runs in 4 groups (2 skipped)" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    accs = [90.0, 91.0, 93.5]
    mean, sd = sum(accs) / 3, statistics.stdev(accs)
    assert (mean, round(sd, 2)) == (91.5, 1.80)  # sample sd by hand: sqrt(6.5 / 2)
    row = next(ln for ln in md.splitlines() if ln.startswith("| dsr |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["dsr", "0.1", "3", "91.50 ± 1.80", "161,242", "0.1099", "0.306",
                     "1.8 min"]
    assert "| static | 0.1 | 1 | 88.00 ± - |" in md
    assert "| static (erk) | 0.1 | 1 | 89.00 ± - |" in md
    assert "| dense | 1 | 1 | 94.00 ± - | 1,467,610 |" in md
    skipped = next(ln for ln in md.splitlines() if ln.startswith("skipped:"))
    assert "set_d0.1_s0 (not finished)" in skipped and "rigl_d0.1_s0 (no summary.json)" in skipped
    with (out / "report.csv").open() as f:
        rows = {(r["method"], r["density"]): r for r in csv.DictReader(f)}
    dsr = rows[("dsr", "0.1")]
    assert dsr["n"] == "3" and float(dsr["acc_mean"]) == pytest.approx(mean)
    assert float(dsr["acc_sd"]) == pytest.approx(sd, abs=1e-4)
    assert float(dsr["best_acc_mean"]) == pytest.approx(mean + 1)
    assert rows[("static", "0.1")]["acc_sd"] == "-"
    for name in ("acc_vs_params.png", "dsr_layer_density.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp files left


def test_report_defaults_to_the_sweep_dir(sweep):
    result = build_report(sweep)
    assert (sweep / "report.md").is_file() and len(result["groups"]) == 4


def test_empty_or_missing_dir_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dst-report: error: no finished run") and err.count("\n") == 1
    fake_run(tmp_path / "half" / "dsr_s0", "dsr", 50.0, finished=False)
    assert main([str(tmp_path / "half")]) == 2
    assert "skipped: dsr_s0 (not finished)" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "dst.report", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is not a directory" in r.stderr


def test_plot_keeps_methods_of_one_density_apart_and_distinct():
    """13 methods at density 0.1 once drew on top of each other, with colours repeating after
    10: each label now has its own (colour, marker), and methods sharing a density sit 2 %
    apart around their parameter count; a method alone at its density keeps its position."""
    labels = [f"m{i}" for i in range(13)]
    styles = plot_styles(labels)
    assert len({c for c, _ in styles.values()}) == 13  # tab20 colours: none repeats
    assert styles["m0"] == (0, "o") and styles["m1"] == (2, "s") and styles["m10"] == (1, "<")
    f = x_factors([Group("dsr", 0.1), Group("set", 0.1), Group("static", 0.1),
                   Group("dense", 1.0), Group("dsr", 0.2), Group("set", 0.2)])
    assert f == pytest.approx({("dsr", 0.1): 0.98, ("set", 0.1): 1.0, ("static", 0.1): 1.02,
                               ("dense", 1.0): 1.0, ("dsr", 0.2): 0.99, ("set", 0.2): 1.01})

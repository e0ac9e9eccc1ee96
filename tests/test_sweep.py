"""benchmarks/sweep.py --dry-run: every method x density x seed, with the right seed counts."""

import importlib.util
import shlex
import sys
from collections import Counter

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("bench_sweep", REPO / "benchmarks" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules["bench_sweep"] = sweep  # dataclasses look their module up
spec.loader.exec_module(sweep)


def run_dirs(lines):
    out = {}
    for line in lines:
        args = shlex.split(line)
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        out[kv["hydra.run.dir"].rsplit("/", 1)[1]] = kv
    return out


def test_dry_run_covers_every_method_density_and_seed(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep.main(["--dry-run", "--densities", "0.1", "0.2", "--seeds-main", "3",
                       "--seeds-rest", "2", "--epochs", "7", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    runs = run_dirs(lines)
    assert len(lines) == len(runs) == 3 + 2 * (3 * 3 + 2 * 7)
    expected = {f"dense_d1_s{s}" for s in range(3)}
    for d in ("0.1", "0.2"):
        expected |= {f"{m}_d{d}_s{s}" for m in ("dsr", "static", "set") for s in range(3)}
        expected |= {f"{m}_d{d}_s{s}" for m in sweep.REST for s in range(2)}
    assert set(runs) == expected
    per_method = Counter(name.rsplit("_d", 1)[0] for name in runs)
    assert per_method["dsr"] == per_method["set"] == 6 and per_method["dense"] == 3
    assert all(per_method[m] == 4 for m in sweep.REST)
    for name, kv in runs.items():
        assert kv["trainer.epochs"] == "7" and kv["seed"] == name.rsplit("_s", 1)[1]
        assert kv["data"] == "npz" and kv["data.path"].endswith("cifar10_subset.npz")
        if not name.startswith("dense"):
            assert kv["sparsity.density"] == name.split("_d")[-1].split("_s")[0]
    assert runs["static_erk_d0.1_s1"]["sparsity"] == "static"
    assert runs["static_erk_d0.1_s1"]["sparsity.distribution"] == "erk"
    assert runs["snip_d0.2_s0"]["sparsity"] == "snip"
    # static_from_mask trains the DSR mask of the same density and seed, after that run
    names = list(runs)
    fm = runs["static_from_mask_d0.2_s1"]
    assert fm["sparsity.init.source"] == str((out / "dsr_d0.2_s1").resolve())
    assert names.index("dsr_d0.2_s1") < names.index("static_from_mask_d0.2_s1")
    assert runs["gmp_d0.1_s0"]["sparsity.init_from"] == str((out / "dense_d1_s0").resolve())
    assert names.index("dense_d1_s0") < names.index("gmp_d0.1_s0")


def test_resume_skips_finished_runs_and_bad_options_exit(tmp_path, capsys):
    args = sweep.parse_args(["--densities", "0.1", "--seeds-main", "1", "--seeds-rest", "0",
                             "--methods", "dsr", "--out", str(tmp_path)])
    jobs = sweep.plan(args)
    assert [j.name for j in jobs] == ["dsr_d0.1_s0"]
    (tmp_path / "dsr_d0.1_s0").mkdir()
    (tmp_path / "dsr_d0.1_s0" / "summary.json").write_text('{"finished": true}')
    assert sweep.execute(jobs, tmp_path) == []
    assert "done already, skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        sweep.parse_args(["--seeds-main", "1", "--seeds-rest", "2"])
    assert e.value.code == 2
    assert "--seeds-rest must not exceed --seeds-main" in capsys.readouterr().err

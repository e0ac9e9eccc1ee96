"""benchmarks/sweep.py: the plan (priority, hashes, dependencies), records that persist and are
skipped on the next run, budgets, and the GPU script's plan."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import REPO

from dst.records import canonical_config, config_hash, load_records, machine_of

spec = importlib.util.spec_from_file_location("bench_sweep", REPO / "benchmarks" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules["bench_sweep"] = sweep  # dataclasses look their module up
spec.loader.exec_module(sweep)


def _plan(tmp_path, *extra):
    return sweep.plan(sweep.parse_args(["--results", str(tmp_path / "res"), "--work",
                                        str(tmp_path / "work"), *extra]))


def test_plan_order_counts_and_dependencies(tmp_path):
    jobs = _plan(tmp_path, "--densities", "0.2", "0.1", "--seeds-main", "3", "--seeds-rest",
                 "2")
    names = [j.name for j in jobs]
    # density 0.1 (the first): dense x 3, 5 sparse main methods x 3, 10 others x 2 (the 2x
    # baselines and dsr_kernel included); density 0.2: 5 sparse main + 7 others (no dense, no
    # 2x, no dsr_kernel) x 2
    assert len(names) == len(set(names)) == 3 + 5 * 3 + 10 * 2 + (5 + 7) * 2
    per_method = Counter(j.method for j in jobs)
    assert per_method["dense"] == 3 and per_method["dsr"] == 5 and per_method["lottery"] == 4
    assert per_method["rigl"] == 5 and per_method["dsr_structured"] == 4
    assert per_method["static_2x"] == per_method["thin_dense_2x"] == 2
    # density 0.1 first; within it every method of seed 0 before any of seed 1
    assert all(j.density in (0.1, 1.0) for j in jobs[:38])
    first_s1 = next(i for i, j in enumerate(jobs) if j.seed == 1)
    assert {j.method for j in jobs[:first_s1]} == set(sweep.MAIN + sweep.REST)
    assert [j.name for j in jobs if j.seed == 2] == [
        f"{m}_d{1 if m == 'dense' else 0.1}_s2" for m in sweep.MAIN]
    # the 2x baselines: twice the epochs, the rest of the preset as the 1x one
    two = next(j for j in jobs if j.method == "static_2x")
    one = next(j for j in jobs if j.name == two.name.replace("_2x", ""))
    assert two.epochs == 60 and "trainer.epochs=60" in two.overrides
    assert "trainer.epochs=30" in one.overrides and two.hash != one.hash
    assert sorted(set(two.overrides) ^ set(one.overrides)) == ["trainer.epochs=30",
                                                              "trainer.epochs=60"]
    by = {j.name: j for j in jobs}
    fm, gmp, lot = by["static_from_mask_d0.2_s1"], by["gmp_d0.1_s0"], by["lottery_d0.1_s1"]
    dsr = by["dsr_d0.2_s1"]
    assert fm.needs == {"dsr_d0.2_s1": "masks"} and dsr.provides == "masks"
    assert f"sparsity.init.source={tmp_path / 'res' / 'artifacts' / dsr.key}.masks.pt" \
        in fm.overrides
    assert any(o.startswith("sparsity.init_from=") and o.endswith(
        f"{by['dense_d1_s0'].key}.weights.pt") for o in gmp.overrides)
    assert f"sparsity.rewind={sweep.TICKET_REWIND}" in lot.overrides
    assert by["dense_d1_s2"].provides is None  # no seed-2 run needs the dense weights
    assert names.index("dsr_d0.2_s1") < names.index("static_from_mask_d0.2_s1")


def test_hashes_name_the_preset_not_the_machine(tmp_path):
    a = {j.name: j.hash for j in _plan(tmp_path, "--densities", "0.1", "--seeds-main", "1",
                                       "--seeds-rest", "1")}
    b = {j.name: j.hash for j in _plan(tmp_path / "elsewhere", "--densities", "0.1",
                                       "--seeds-main", "1", "--seeds-rest", "1", "--set",
                                       "trainer.device=cuda", "--threads", "7")}
    c = {j.name: j.hash for j in _plan(tmp_path, "--densities", "0.1", "--seeds-main", "1",
                                       "--seeds-rest", "1", "--epochs", "29")}
    assert a == b  # other folders, device and threads: the same experiment
    assert all(a[n] != c[n] for n in a)  # another epoch count: another preset
    assert len(set(a.values())) == len(a)


def test_canonical_config_drops_volatile_keys_and_path_folders():
    cfg = {"trainer": {"epochs": 3, "device": "cuda", "num_threads": 4},
           "data": {"path": "/a/b/subset.npz", "batch_size": 100},
           "sparsity": {"init": {"source": "/x/dsr_d0.1_s0-abc.masks.pt"}}, "hydra": {"x": 1}}
    assert canonical_config(cfg) == {"trainer": {"epochs": 3},
                                     "data": {"path": "subset.npz", "batch_size": 100},
                                     "sparsity": {"init": {"source": "dsr_d0.1_s0-abc.masks.pt"}}}
    moved = {**cfg, "data": {"path": "/elsewhere/subset.npz", "batch_size": 100}}
    assert config_hash(moved) == config_hash(cfg)
    # a new option defaulting to null (a no-op) keeps every existing preset's hash
    assert config_hash({**cfg, "trainer": {**cfg["trainer"], "new_knob": None}}) == \
        config_hash(cfg)
    assert config_hash({**cfg, "seed": 1}) != config_hash(cfg)


def test_estimates_come_from_this_machines_records():
    job = sweep.Job("dsr_d0.1_s0", "dsr", 0.1, 0, [])
    rec = {"method": "dsr", "cpu_model": "X", "gpu_model": None, "threads": 2, "jobs": 1,
           "wall_time": 600.0, "epochs": [{}] * 10}  # 60 s per epoch
    other = {**rec, "method": "set", "wall_time": 1200.0}  # 120 s per epoch
    assert sweep.estimate_minutes(job, [rec, other], "X", 2, 1, 30) == pytest.approx(30.0)
    set_job = sweep.Job("set_d0.1_s0", "set", 0.1, 0, [])
    assert sweep.estimate_minutes(set_job, [rec, other], "X", 2, 1, 30) == pytest.approx(60.0)
    snip = sweep.Job("snip_d0.1_s0", "snip", 0.1, 0, [])  # no snip record: any method's median
    assert sweep.estimate_minutes(snip, [rec, other], "X", 2, 1, 30) == pytest.approx(45.0)
    # another CPU or another thread split: no evidence, the default per 30 epochs
    assert sweep.estimate_minutes(job, [rec], "Y", 2, 1, 15, default=40) == pytest.approx(20.0)
    assert sweep.estimate_minutes(job, [rec], "X", 1, 2, 30, default=40) == pytest.approx(40.0)
    assert machine_of({**rec, "gpu_model": "NVIDIA H200"}) == "NVIDIA H200"


def test_a_method_new_to_this_cpu_is_scaled_from_another_cpus_records():
    # CPU A: static 60 s and thin dense 20 s per epoch; CPU B (here) has only thin dense, at
    # 30 s: B is 1.5x slower, so static_2x (static's time) at 60 epochs: 60 * 1.5 * 60 s = 90 min
    base = {"gpu_model": None, "threads": 1, "jobs": 2, "epochs": [{}] * 10}
    recs = [{**base, "method": "static", "cpu_model": "A", "wall_time": 600.0},
            {**base, "method": "thin_dense", "cpu_model": "A", "wall_time": 200.0},
            {**base, "method": "thin_dense_2x", "cpu_model": "B", "wall_time": 300.0}]
    job = sweep.Job("static_2x_d0.1_s0", "static_2x", 0.1, 0, [], 60)
    # the 2x run counts as thin dense here (its preset), shared with A's thin dense
    assert sweep.estimate_minutes(job, recs, "B", 1, 2, 60) == pytest.approx(90.0)


def test_jobs_auto_follows_this_cpus_measurement(tmp_path):
    table = tmp_path / "jobs.csv"
    table.write_text("jobs,threads_per_job,sec_per_step,steps_per_hour_total,cpu\n"
                     "1,2,0.95,3784,AMD EPYC (avx512)\n2,1,1.53,4698,AMD EPYC (avx512)\n"
                     "1,2,0.48,7452,Xeon (avx512)\n2,1,0.95,7580,Xeon (avx512)\n")
    assert sweep.default_jobs("AMD EPYC (avx512)", 2, table) == 2  # 4698 / 3784 = 1.24
    assert sweep.default_jobs("Xeon (avx512)", 2, table) == 1  # 1.02: a tie, one run
    assert sweep.default_jobs("AMD EPYC (avx2)", 2, table) == 1  # not measured here
    assert sweep.default_jobs("AMD EPYC (avx512)", 2, tmp_path / "none.csv") == 1
    assert sweep.default_jobs("AMD EPYC (avx512)", 4, table) == 1  # no 4-run measurement
    from dst.environment import isa_of
    assert isa_of({"fma", "avx", "avx2", "avx512f", "avx512bw"}) == "avx512"
    assert isa_of({"sse4_2", "avx", "avx2"}) == "avx2"
    assert isa_of({"sse4_2"}) == "" and isa_of(set()) == ""
    rec = {"cpu_model": "AMD EPYC", "gpu_model": None}
    assert machine_of({**rec, "cpu_isa": "avx2"}) == "AMD EPYC (avx2)"
    assert machine_of(rec) == "AMD EPYC"  # a record from before the field


def _tiny_npz(path):
    g = np.random.default_rng(0)
    np.savez(path, train_x=g.integers(0, 255, (100, 3, 16, 16), dtype=np.uint8),
             train_y=g.integers(0, 10, 100), test_x=g.integers(0, 255, (20, 3, 16, 16),
                                                              dtype=np.uint8),
             test_y=g.integers(0, 10, 20))


@pytest.mark.slow
def test_runs_are_recorded_once_and_dependencies_read_artifacts(tmp_path):
    data = tmp_path / "tiny.npz"
    _tiny_npz(data)
    args = ["--model", "resnet20", "--epochs", "2", "--densities", "0.1", "--seeds-main", "1",
            "--seeds-rest", "1", "--methods", "dsr", "static_from_mask", "--data-path",
            str(data), "--set", "data.batch_size=10", "--set", "trainer.limit_eval_batches=1",
            "--results", str(tmp_path / "res"), "--work", str(tmp_path / "work"),
            "--no-report", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args],
                           capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    records, bad = load_records(tmp_path / "res")
    assert not bad and sorted(r["name"] for r in records) == ["dsr_d0.1_s0",
                                                              "static_from_mask_d0.1_s0"]
    dsr = next(r for r in records if r["method"] == "dsr")
    assert dsr["updates"] > 0 and dsr["moved_per_update_mean"] > 0
    assert len(dsr["epochs"]) == 2 and dsr["final_test_acc1"] is not None
    assert dsr["cpu_model"] and dsr["torch"] and dsr["config"]["seed"] == 0
    masks = tmp_path / "res" / dsr["artifacts"]["masks"]["file"]
    assert masks.is_file()
    fm = next(r for r in records if r["method"] == "static_from_mask")
    assert fm["final_layer_density"] == dsr["final_layer_density"]  # DSR's final mask
    plan = json.loads((tmp_path / "res" / "plan.json").read_text())["runs"]
    assert [p["status"] for p in plan] == ["recorded", "recorded"]
    # the run folders are scratch: without them the records still count
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args,
                            "--work", str(tmp_path / "other_machine")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "running" not in again.stdout
    # a provider recorded without its artifact (a sweep whose --methods left the dependent out)
    # runs again before the dependent; its new record keeps the old one's figures
    masks.unlink()
    (tmp_path / "res" / f"{fm['name']}-{fm['config_hash']}.json").unlink()
    dry = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args,
                          "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert f"# {dsr['name']}-{dsr['config_hash']}: recorded, runs again: its masks" in dry.stdout
    third = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args,
                            "--work", str(tmp_path / "third_machine")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "dsr_d0.1_s0: recorded, but runs again" in third.stdout
    records, bad = load_records(tmp_path / "res")
    assert not bad and len(records) == 2 and masks.is_file()
    redo = next(r for r in records if r["method"] == "dsr")
    assert redo["replaces"] == [{k: dsr.get(k) for k in ("final_test_acc1", "best_test_acc1",
                                "git_commit", "cpu_model", "cpu_isa", "wall_time")}]
    fm = next(r for r in records if r["method"] == "static_from_mask")
    assert fm["final_layer_density"] == redo["final_layer_density"]


def test_gpu_script_plans_the_density_01_matrix_with_the_cpu_hashes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_sweep.sh"), "--dry-run",
                          "--results", str(tmp_path / "res")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    heads = [ln[2:].split(":")[0] for ln in out.stdout.splitlines() if ln.startswith("# ")]
    cmds = [ln for ln in out.stdout.splitlines() if not ln.startswith("#")]
    # 6 main methods x 5 seeds, 10 others x 3
    assert len(heads) == 6 * 5 + 10 * 3 and all("trainer.device=cuda" in c for c in cmds)
    cpu = {j.key for j in _plan(tmp_path, "--densities", "0.1")}
    assert set(heads) == cpu


def test_a_narrower_invocation_keeps_the_rest_of_the_plan(tmp_path):
    wide = sweep.parse_args(["--results", str(tmp_path / "res"), "--densities", "0.1", "0.2",
                             "--seeds-main", "1", "--seeds-rest", "1"])
    jobs = sweep.plan(wide)
    sweep.write_plan(wide, jobs, set())
    narrow = sweep.parse_args(["--results", str(tmp_path / "res"), "--densities", "0.1",
                               "--seeds-main", "1", "--seeds-rest", "1"])
    few = sweep.plan(narrow)
    sweep.write_plan(narrow, few, {few[0].key}, running={few[1].name})
    runs = {r["name"]: r for r in
            json.loads((tmp_path / "res" / "plan.json").read_text())["runs"]}
    assert set(runs) == {j.name for j in jobs}  # the density-0.2 runs are still planned
    assert runs[few[0].name]["status"] == "recorded"
    assert runs[few[1].name]["status"] == "running"
    assert runs["dsr_d0.2_s0"]["status"] == "to run"
    # a run marked running by a sweep that has ended (or an entry without its owner) is
    # "to run" again; one whose sweep still lives (here: this process) stays running
    plan = json.loads((tmp_path / "res" / "plan.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for r in plan["runs"]:
        if r["name"] == "dsr_d0.2_s0":
            r.update(status="running", owner=f"{socket.gethostname()}:{dead}")
        if r["name"] == "set_d0.2_s0":
            r.update(status="running")
        if r["name"] == "static_d0.2_s0":
            r.update(status="running", owner=f"{socket.gethostname()}:{os.getpid()}")
    (tmp_path / "res" / "plan.json").write_text(json.dumps(plan))
    sweep.write_plan(narrow, few, {few[0].key})
    runs = {r["name"]: r for r in
            json.loads((tmp_path / "res" / "plan.json").read_text())["runs"]}
    assert runs["dsr_d0.2_s0"]["status"] == runs["set_d0.2_s0"]["status"] == "to run"
    assert runs["static_d0.2_s0"]["status"] == "running"

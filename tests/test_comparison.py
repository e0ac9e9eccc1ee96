"""dst-report on sweep records: cells, paired differences, missing runs, presets kept apart."""

import json

from dst.comparison import paired, sources, table, wall_table, write
from dst.records import RECORD_VERSION
from dst.report import main as report_main


def rec(method, density, seed, acc, h="h1", **kw):
    return {"record_version": RECORD_VERSION, "name": f"{method}_d{density:g}_s{seed}",
            "method": method, "density": density, "seed": seed, "config_hash": h,
            "final_test_acc1": acc, "params_nonzero": 1000 if method != "dense" else 10000,
            "model_density": 0.1, "moved_per_update_mean": 50.0 if method == "dsr" else 0.0,
            "train_flops_ratio": 0.1, "wall_time": 600.0, "git_commit": "abc",
            "cpu_model": "cpu", "config": {"model": {"name": "wrn28_2"}}, **kw}


def test_paired_difference_over_shared_seeds_only():
    dsr = [rec("dsr", 0.1, 0, 70.0), rec("dsr", 0.1, 1, 72.0), rec("dsr", 0.1, 2, 71.0)]
    static = [rec("static", 0.1, 0, 66.0), rec("static", 0.1, 1, 69.0)]
    mean, sd, n = paired(dsr, static)
    # seeds 0, 1: 70 - 66 = 4, 72 - 69 = 3 -> mean 3.5, sd sqrt(((0.5)^2 * 2) / 1) = 0.7071
    assert n == 2 and abs(mean - 3.5) < 1e-12 and abs(sd - 0.70710678) < 1e-6


def test_table_marks_missing_cells_and_keeps_other_presets_apart(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    records = [rec("dsr", 0.1, 0, 70.0), rec("dsr", 0.1, 1, 72.0), rec("static", 0.1, 0, 66.0),
               rec("dense", 1.0, 0, 80.0), rec("set", 0.1, 0, 50.0, h="old"),
               rec("dsr_structured", 0.1, 0, 69.0, dense_macs_ratio_final=0.5,
                   channels={"a": [8, 16], "b": [24, 32]})]
    for r in records:
        (res / f"{r['name']}-{r['config_hash']}.json").write_text(json.dumps(r))
    plan = [{"name": r["name"], "method": r["method"], "density": r["density"],
             "seed": r["seed"], "hash": "h1", "status": "recorded"}
            for r in records[:4] + records[5:]]
    plan += [{"name": "static_d0.1_s1", "method": "static", "density": 0.1, "seed": 1,
              "hash": "h1", "status": "running"},
             {"name": "set_d0.1_s0", "method": "set", "density": 0.1, "seed": 0, "hash": "h1",
              "status": "to run"}]
    (res / "plan.json").write_text(json.dumps({"runs": plan}))
    md_file = tmp_path / "RESULTS.md"
    md_file.write_text("# Results\n\n<!-- BEGIN comparison -->\nold\n<!-- END comparison -->\n"
                       "\n## Other section\n")
    assert report_main([str(res), "--out", str(tmp_path / "out"), "--results-md",
                        str(md_file)]) == 0
    section = md_file.read_text()
    assert "\nold\n" not in section and section.endswith("## Other section\n")
    assert f"Command: `dst-report {res} --out" in section and "| dsr | 0.1 | 2/2 |" in section
    md = (tmp_path / "out" / "comparison.md").read_text()
    rows = {}  # the first table's rows (the paper table below repeats some names)
    for ln in md.splitlines():
        if ln.startswith("| ") and (" | 0.1 | " in ln or ln.startswith("| dense | 1 |")):
            rows.setdefault(ln.split(" | ")[0].strip("| "), ln)
    assert "| 71.00 ± 1.41 |" in rows["dsr"] and "(reference)" in rows["dsr"]
    assert "| 1/2 | 66.00 |" in rows["static"] and "| 4.00 (n=1) |" in rows["static"]
    assert "1 running" in rows["static"]
    assert "| 0/1 | — |" in rows["set"] and "1 to run" in rows["set"]  # the old preset's
    assert "50.00" not in rows["set"] and "set_d0.1_s0-old" in md  # record is listed apart
    assert "-10.00 (n=1) (d 0.1)" in rows["dense"]  # 70 - 80 on seed 0
    assert "| dsr | 93.59 | 71.00 ± 1.41 |" in md
    assert "| 1.00 (n=1) |" in rows["dsr_structured"]  # 70 - 69 on seed 0
    # kept 8/16 and 24/32 of the channels: mean 0.625
    assert ("dsr_structured at density 0.1: the final model's dense MACs are 0.500x the full "
            "model's, 0.62 of the inner channels kept (n=1)") in md
    assert (tmp_path / "out" / "comparison_acc_vs_params.png").stat().st_size > 1000
    # five current records of 600 s each, no jobs/threads recorded; the old preset's left out
    assert "| cpu | not recorded | 5 | 10.0 | 10.0-10.0 |" in md
    assert write(res, tmp_path / "out2")["stale"][0]["config_hash"] == "old"


def test_runs_started_from_another_run_show_its_training_on_top():
    art = "/x/results/sweep/artifacts/"
    lottery = {"sparsity": {"ticket_from": art + "dense_d1_s0-cd283d63b826.weights.pt",
                            "rounds": 3}}
    from_mask = {"sparsity": {"init": {"source": art + "dsr_d0.1_s0-b2cb0c46bd7a.masks.pt"}}}
    structured = {"sparsity": {"x": [art + "dsr_structured_d0.2_s1-00ff.masks.pt"]}}
    assert sources(lottery) == ["dense"] and sources(from_mask) == ["dsr"]
    assert sources(structured) == ["dsr_structured"]
    assert sources({"sparsity": {"init_from": "/data/mine.pt", "name": "dsr"}}) == []
    cell = {"records": [rec("lottery", 0.1, 0, 75.0, config=lottery)], "planned": 2,
            "status": ["recorded", "to run"]}
    _, rows = table({("lottery", 0.1): cell})
    assert rows[0][8] == "0.100 + dense run"


def test_wall_time_is_broken_out_by_machine_and_runs_at_once():
    recs = [rec("dsr", 0.1, 0, 70.0, wall_time=600.0, cpu_model="AMD EPYC", cpu_isa="avx512",
                jobs=2, threads=1),
            rec("static", 0.1, 0, 70.0, wall_time=2400.0, cpu_model="AMD EPYC",
                cpu_isa="avx512", jobs=2, threads=1),
            rec("set", 0.1, 0, 70.0, wall_time=1200.0, cpu_model="AMD EPYC", cpu_isa="avx512",
                jobs=2, threads=1),
            rec("dsr", 0.1, 1, 70.0, wall_time=900.0, cpu_model="Xeon", jobs=1, threads=2),
            rec("dense", 1.0, 0, 70.0, wall_time=300.0, cpu_model="Xeon"),
            rec("gmp", 0.1, 0, 70.0, wall_time=None, cpu_model="Xeon", jobs=1, threads=2)]
    head, rows = wall_table(recs)
    assert head[1:4] == ["runs at once x threads", "runs", "median min / run"]
    # EPYC: 10, 40, 20 min -> median 20, range 10-40; Xeon 1 x 2: 15 min (gmp has no wall
    # time); Xeon without jobs/threads: 5 min, listed apart
    assert rows == [["AMD EPYC (avx512)", "2 x 1", "3", "20.0", "10.0-40.0"],
                    ["Xeon", "1 x 2", "1", "15.0", "15.0-15.0"],
                    ["Xeon", "not recorded", "1", "5.0", "5.0-5.0"]]


def test_report_prints_paired_t_p_and_holm_and_the_readme_headline(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    # DSR - static per seed: 1, 2, 3 -> t = 2 sqrt 3, p = 1 - sqrt(12/14) = 0.0742 (2 df);
    # DSR - set per seed: 3, 1 -> t = 2, p = 1 - 2 atan(2) / pi = 0.2952 (1 df);
    # DSR - dense: one seed, no test. Holm over the two tests: 2 x 0.0742 = 0.1484, then
    # max(0.1484, 1 x 0.2952) = 0.2952
    records = [rec("dsr", 0.1, s, a) for s, a in enumerate((71.0, 72.0, 73.0))]
    records += [rec("static", 0.1, s, a) for s, a in enumerate((70.0, 70.0, 70.0))]
    records += [rec("set", 0.1, 0, 68.0), rec("set", 0.1, 1, 71.0), rec("dense", 1.0, 0, 75.0)]
    for r in records:
        (res / f"{r['name']}-{r['config_hash']}.json").write_text(json.dumps(r))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- BEGIN headline -->\nold\n<!-- END headline -->\n\nrest\n")
    assert report_main([str(res), "--out", str(tmp_path / "out"), "--readme",
                        str(readme)]) == 0
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "### Paired tests at density 0.1 (DSR − X; Holm over the 2 tests)" in md
    assert "| static | 3 | 2.00 ± 1.00 | 3.46 | 0.074 | 0.148 |" in md
    assert "| set | 2 | 2.00 ± 1.41 | 2.00 | 0.295 | 0.295 |" in md
    assert "| dense | 1 | -4.00 | — | — | — |" in md
    head = readme.read_text()
    assert "\nold\n" not in head and head.endswith("\nrest\n")
    assert "| static | 70.00 ± 0.00 (n=3) | +2.00, p 0.148 |" in head
    assert "| dsr | 72.00 ± 1.00 (n=3) | (reference) |" in head

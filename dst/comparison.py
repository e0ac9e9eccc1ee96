"""The method comparison from committed sweep records (``benchmarks/results/<sweep>/``).

Per method x density: recorded / planned seeds, mean ± sd of the final test accuracy, the
paired difference DSR − X over the seeds both have, non-zero parameters, weights moved per
update, train FLOPs; cells not recorded yet are marked (running / to run), never left blank.
Only records of the plan's config hash enter a cell; records of other presets are listed apart.
Writes ``comparison.md``, ``comparison.csv``, ``comparison_acc_vs_params.png`` and
``comparison_dsr_density.png``. ``dst-report <records folder>`` runs it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import tempfile
from pathlib import Path

from .checkpoint import atomic_write
from .records import load_records, machine_of
from .runs import Group, ReportError, Run, group_runs, plot_acc_vs_params
from .stats import Paired, holm, paired_t

# Mostafa & Wang (ICML 2019) Table 2 and Dettmers & Zettlemoyer (SNFS): WRN-28-2 on the full
# CIFAR-10, 90 % sparse (our density 0.1), 200 epochs, mean of 5 seeds
PAPER_D01 = {"dsr": 93.59, "snfs": 93.61, "set": 93.28, "static": 92.04, "dense": 94.70}
ORDER = ("dense", "thin_dense", "thin_dense_2x", "static", "static_2x", "static_erk", "snip",
         "static_from_mask", "lottery", "gmp", "set", "rigl", "snfs", "dsr_structured",
         "dsr_kernel", "dsr")


def _mean_sd(v: list[float]) -> tuple[float | None, float | None]:
    if not v:
        return None, None
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None


def _pm(mean, sd, spec=".2f") -> str:
    if mean is None:
        return "—"
    return f"{mean:{spec}} ± {sd:{spec}}" if sd is not None else f"{mean:{spec}}"


def load_plan(folder: Path) -> list[dict]:
    path = folder / "plan.json"
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def cells(records: list[dict], plan: list[dict]) -> tuple[dict, list[dict]]:
    """{(method, density): {"records", "planned", "status"}} over the plan's hashes (or every
    record's own when there is no plan), and the records of other hashes."""
    wanted = {(p["name"], p["hash"]) for p in plan}
    current = [r for r in records if not plan or (r["name"], r["config_hash"]) in wanted]
    stale = [r for r in records if plan and (r["name"], r["config_hash"]) not in wanted]
    out: dict[tuple[str, float], dict] = {}
    for p in plan:
        c = out.setdefault((p["method"], p["density"]), {"records": [], "planned": 0,
                                                        "status": []})
        c["planned"] += 1
        c["status"].append(p.get("status", "to run"))
    for r in current:
        c = out.setdefault((r["method"], r["density"]), {"records": [], "planned": 0,
                                                        "status": []})
        c["records"].append(r)
        c["planned"] = max(c["planned"], len(c["records"]))
    return out, stale


def differences(dsr: list[dict], other: list[dict]) -> list[float]:
    """DSR − X of the final accuracy, per seed both recorded (in seed order)."""
    a = {r["seed"]: r["final_test_acc1"] for r in dsr}
    return [a[r["seed"]] - r["final_test_acc1"]
            for r in sorted(other, key=lambda r: r["seed"]) if r["seed"] in a]


def paired(dsr: list[dict], other: list[dict]) -> tuple[float | None, float | None, int]:
    """DSR − X of the final accuracy over the seeds both recorded: (mean, sd, n)."""
    diffs = differences(dsr, other)
    mean, sd = _mean_sd(diffs)
    return mean, sd, len(diffs)


def tests(cell_map: dict) -> dict[float, list[tuple[str, Paired, float | None]]]:
    """Per DSR density: (X, the paired t test of DSR − X, its Holm-adjusted p over the
    comparisons at that density) for every other method recorded there (dense included)."""
    out = {}
    for d in sorted(d for (m, d), c in cell_map.items() if m == "dsr" and c["records"]):
        dsr = cell_map[("dsr", d)]["records"]
        rows = []
        for key in sorted(cell_map, key=_order):
            m, dd = key
            if m == "dsr" or not (dd == d or m == "dense"):
                continue
            diffs = differences(dsr, cell_map[key]["records"])
            if diffs:
                rows.append((m, paired_t(diffs)))
        adjusted = holm([t.p for _, t in rows])
        out[d] = [(m, t, a) for (m, t), a in zip(rows, adjusted, strict=True)]
    return out


def _p(v: float | None) -> str:
    return "—" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def tests_markdown(cell_map: dict) -> list[str]:
    md = []
    for d, rows in tests(cell_map).items():
        m = sum(t.p is not None for _, t, _ in rows)
        md += ["", f"### Paired tests at density {d:g} (DSR − X; Holm over the {m} tests)", "",
               *_md_table(["X", "n", "DSR − X", "t", "p", "p (Holm)"], [
                   [x, str(t.n), _pm(t.mean, t.sd), "—" if t.t is None else f"{t.t:.2f}",
                    _p(t.p), _p(a)] for x, t, a in rows])]
    return md


def _order(key):
    m, d = key
    return (0 if m == "dense" else 1, d, ORDER.index(m) if m in ORDER else len(ORDER), m)


_ARTIFACT = re.compile(r"([A-Za-z0-9_]+?)_d[0-9.]+_s[0-9]+-[0-9a-f]+\.(?:weights|masks)\.pt$")


def sources(node) -> list[str]:
    """The methods whose runs a record's config starts from: the sweep's artifacts (a trained
    dense run's weights, DSR's final masks) named anywhere in it, e.g. ``["dense"]``."""
    if isinstance(node, dict):
        return sorted({m for v in node.values() for m in sources(v)})
    if isinstance(node, list):
        return sorted({m for v in node for m in sources(v)})
    found = _ARTIFACT.search(node) if isinstance(node, str) else None
    return [found.group(1)] if found else []


def table(cell_map: dict) -> tuple[list[str], list[list[str]]]:
    head = ["method", "density", "seeds", "test acc (%)", "DSR − X (paired)", "params non-zero",
            "model density", "moved / update", "train FLOPs", "min / run", "status"]
    rows = []
    dsr_by_density = {d: c["records"] for (m, d), c in cell_map.items() if m == "dsr"}
    for key in sorted(cell_map, key=_order):
        (m, d), c = key, cell_map[key]
        recs = c["records"]
        acc = _mean_sd([r["final_test_acc1"] for r in recs])
        pairs = []
        if m != "dsr":  # dense (density 1) pairs with DSR at every density
            for dd, drecs in sorted(dsr_by_density.items()):
                if m != "dense" and dd != d:
                    continue
                pm, psd, n = paired(drecs, recs)
                if n:
                    label = f" (d {dd:g})" if m == "dense" else ""
                    pairs.append(f"{_pm(pm, psd)} (n={n}){label}")
        todo = [s for s in c["status"] if s != "recorded"]
        status = "complete" if not todo and recs else ", ".join(
            f"{todo.count(s)} {s}" for s in sorted(set(todo))) or "—"
        def mean(k, recs=recs):
            ok = recs and all(isinstance(r.get(k), (int, float)) for r in recs)
            return statistics.fmean(r[k] for r in recs) if ok else None

        moved = mean("moved_per_update_mean")
        flops = mean("train_flops_ratio")
        extra = sources([r.get("config", {}) for r in recs])
        rows.append([
            m, f"{d:g}", f"{len(recs)}/{c['planned']}", _pm(*acc),
            "; ".join(pairs) if pairs else ("—" if m != "dsr" else "(reference)"),
            "—" if mean("params_nonzero") is None else f"{round(mean('params_nonzero')):,}",
            "—" if mean("model_density") is None else f"{mean('model_density'):.4f}",
            "—" if moved is None else (f"{moved:,.0f}" if moved else "0 (static)"),
            "—" if flops is None else f"{flops:.3f}" + "".join(f" + {m} run" for m in extra),
            "—" if mean("wall_time") is None else f"{mean('wall_time') / 60:.1f}", status])
    return head, rows


def wall_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Wall minutes per run by machine and runs at once (``jobs`` x ``threads``): the table's
    ``min / run`` mixes them, and a 2-at-once run on 2 cores takes about twice as long."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if not isinstance(r.get("wall_time"), (int, float)):
            continue
        jobs, threads = r.get("jobs"), r.get("threads")
        how = f"{jobs} x {threads}" if jobs and threads else "not recorded"
        groups.setdefault((machine_of(r), how), []).append(r["wall_time"] / 60)
    head = ["machine", "runs at once x threads", "runs", "median min / run", "range"]
    rows = [[m, how, str(len(v)), f"{statistics.median(v):.1f}",
             f"{min(v):.1f}-{max(v):.1f}"] for (m, how), v in sorted(groups.items())]
    return head, rows


def _md_table(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def ordering_sentence(cell_map: dict) -> str:
    """Where the subset orders DSR's peers at density 0.1 unlike the paper (full CIFAR-10)."""
    ours = {m: statistics.fmean(r["final_test_acc1"] for r in c["records"])
            for (m, d), c in cell_map.items() if c["records"] and m in PAPER_D01
            and (d == 0.1 or m == "dense")}
    if len(ours) < 2:
        return "Too few methods recorded at density 0.1 to compare their order with the paper."
    mine = sorted(ours, key=lambda m: -ours[m])
    paper = sorted(ours, key=lambda m: -PAPER_D01[m])
    text = (f"Order on the subset: {' > '.join(mine)}; in the paper: {' > '.join(paper)}"
            f"{' (the same)' if mine == paper else ''}.")
    return text


def structured_sentence(cell_map: dict) -> str | None:
    """How far structured runs cut their model down: the final dense MACs per image against
    the full model's, and the inner channels kept (records with ``dense_macs_ratio_final``)."""
    parts = []
    for (m, d), c in sorted(cell_map.items(), key=lambda kv: _order(kv[0])):
        recs = [r for r in c["records"] if isinstance(r.get("dense_macs_ratio_final"),
                                                       (int, float))]
        if not recs:
            continue
        macs = statistics.fmean(r["dense_macs_ratio_final"] for r in recs)
        kept = [k / n for r in recs for k, n in (r.get("channels") or {}).values()]
        share = f", {statistics.fmean(kept):.2f} of the inner channels kept" if kept else ""
        parts.append(f"{m} at density {d:g}: the final model's dense MACs are {macs:.3f}x the "
                     f"full model's{share} (n={len(recs)})")
    return ("After slimming: " + "; ".join(parts) + ".") if parts else None


def headline(cell_map: dict) -> str:
    """The short table for the README: per method, the test accuracy at each density (mean ±
    sd, seeds) and DSR − X with its Holm-adjusted p."""
    dens = sorted({d for (m, d), c in cell_map.items() if m != "dense" and c["records"]})
    by = {d: {m: (t, a) for m, t, a in rows} for d, rows in tests(cell_map).items()}
    head = ["method"] + [f"{h} at density {d:g}" for d in dens for h in
                         ("test acc (%)", "DSR − X, p (Holm)")]
    rows = []
    for key in sorted(cell_map, key=_order):
        m, d = key
        if m != "dense" and d != dens[0]:
            continue
        row = [m]
        for dd in dens:
            c = cell_map.get(key if m == "dense" else (m, dd))
            recs = c["records"] if c else []
            acc = _mean_sd([r["final_test_acc1"] for r in recs])
            row.append(f"{_pm(*acc)} (n={len(recs)})" if recs else "—")
            t, a = by.get(dd, {}).get(m, (None, None))
            row.append("(reference)" if m == "dsr" else "—" if t is None else
                       f"{t.mean:+.2f}, p {_p(a)}")
        rows.append(row)
    return "\n".join(_md_table(head, rows))


def write(folder: Path, out_dir: Path, title: str | None = None) -> dict:
    folder = Path(folder)
    records, bad = load_records(folder)
    plan = load_plan(folder)
    if not records and not plan:
        raise ReportError(f"no sweep record (*.json) and no plan.json in {folder}")
    cell_map, stale = cells(records, plan)
    out = Path(out_dir)
    head, rows = table(cell_map)
    current = [r for c in cell_map.values() for r in c["records"]]
    commits = sorted({str(r.get("git_commit")) for r in current})
    cpus = sorted({machine_of(r) for r in current})
    any_rec = current[0] if current else None
    cfg = (any_rec or {}).get("config", {})
    data = Path(str(cfg.get("data", {}).get("path") or cfg.get("data", {}).get("name", "?")))
    title = title or (f"Comparison {folder.name}: {data.name}, "
                      f"{cfg.get('trainer', {}).get('epochs', '?')} epochs")
    md = [f"# {title}", "",
          f"Generated by `dst-report {folder} --out {out}` from {len(current)} committed "
          f"records ({len(stale)} of other presets left out{', ' if bad else ''}"
          f"{', '.join(bad)}).", "", *_md_table(head, rows), "",
          "test acc: final top-1 on the 1,017 test images, mean ± sample sd over seeds. DSR − X: "
          "per seed, DSR's accuracy minus X's at the same density and seed (dense: at each "
          "DSR density), mean ± sd over the seeds both have. moved / update: weights pruned "
          "(= grown) per mask update, measured. train FLOPs: the run's training MACs over the "
          "dense model's, averaged over training; '+ dense run' (or '+ dsr run'): the run "
          "starts from that run's trained weights or final masks, whose training comes on "
          "top. min / run: wall minutes, mean over machines (per machine below). "
          "status: seeds still to run or running.", *tests_markdown(cell_map), "",
          "t: Student's paired t of DSR − X over the seeds both have (n − 1 degrees of "
          "freedom); p: two-sided; p (Holm): Holm's step-down correction over the tests at "
          "that density.", "",
          "## Against the paper (WRN-28-2, full CIFAR-10, 200 epochs, 90 % sparse)", "",
          "| method | paper | ours at density 0.1 (subset) |", "|---|---|---|"]
    for m, p in PAPER_D01.items():
        c = cell_map.get((m, 1.0 if m == "dense" else 0.1))
        ours = _pm(*_mean_sd([r["final_test_acc1"] for r in c["records"]])) if c else "—"
        md.append(f"| {m} | {p:.2f} | {ours} |")
    slimmed = structured_sentence(cell_map)
    md += ["", ordering_sentence(cell_map), *(["", slimmed] if slimmed else []), "",
           f"Commits: {', '.join(commits) or '—'}. Machines: {', '.join(cpus) or '—'}."]
    wall_head, wall_rows = wall_table(current)
    if wall_rows:
        md += ["", "Wall time per run, by machine and runs at once (min / run above averages "
               "over these):", "", *_md_table(wall_head, wall_rows)]
    if stale:
        md += ["", "Records of other presets (not in the table): " + ", ".join(
            f"{r['name']}-{r['config_hash']}" for r in stale)]
    files = [out / "comparison.md", out / "comparison.csv"]
    atomic_write(files[0], lambda p: p.write_text("\n".join(md) + "\n"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([head, *rows])
    atomic_write(files[1], lambda p: p.write_text(buf.getvalue()))
    files += plots(cell_map, out, title)
    return {"cells": cell_map, "stale": stale, "files": files, "markdown": "\n".join(md),
            "title": title,
            "headline": headline(cell_map) if any(m == "dsr" for m, _ in cell_map) else ""}


def plots(cell_map: dict, out: Path, title: str) -> list[Path]:
    groups: list[Group] = []
    for (m, d), c in cell_map.items():
        runs = [Run(Path(r["name"]), r, m, d, r.get("train_flops_ratio")) for r in c["records"]]
        if runs:
            groups.append(Group(m, d, runs))
    files = []
    if groups:
        png = out / "comparison_acc_vs_params.png"
        plot_acc_vs_params(group_runs([r for g in groups for r in g.runs]), png, title)
        files.append(png)
    dsr = sorted((r for (m, _), c in cell_map.items() if m == "dsr" for r in c["records"]
                  if r.get("density_history")), key=lambda r: (r["density"], r["seed"]))
    if dsr:
        from .runlog import plot_density_csv

        h = dsr[0]["density_history"]
        names = list(h["layers"])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "h.csv"
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "epoch", *names])
                for i, step in enumerate(h["step"]):
                    w.writerow([step, "", *(h["layers"][n][i] for n in names)])
            png = plot_density_csv(path, out / "comparison_dsr_density.png",
                                   title=f"DSR per-layer density over training ({dsr[0]['name']})")
        files += [png] if png else []
    return files

"""Mutation check of the rule tests: does each single wrong rule turn the tests red?

Each mutation below replaces one exact snippet of the code with a plausible mistake (a rule of
docs/methods.md broken in one place). For every mutation the harness copies ``dst/``,
``tests/``, ``conf/`` and ``pyproject.toml`` to a scratch directory, applies the replacement
there (never in the working tree) and runs the mutation's test files with pytest, the scratch
copy first on the import path. A mutation is KILLED when a test fails, SURVIVED when all pass
(a hole in the tests) and ERROR when pytest could not run the tests (e.g. the mutant does not
import: such a mutation checks nothing and must be rewritten).

Before the mutations, the same test files run once on an unmutated copy: they must pass, and the
``dst`` they import must be the scratch copy's.

    python tests/mutate.py                # every mutation; exit status 1 unless all are killed
    python tests/mutate.py --list         # names, files and test files
    python tests/mutate.py dsr_grow_equal snfs_grow_random   # only these

Equivalent mutants (no behaviour change, e.g. SNFS's momentum average with another constant
``alpha``: the growth scores are only ranked and compared in proportion) are left out on purpose.
The snippets must match the code exactly once: when the code changes, update the snippet.
This file is not collected by pytest (its name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("dst", "tests", "conf", "pyproject.toml")
TIMEOUT_S = 300  # per pytest run; the slowest set takes a few seconds

RULES = "tests/test_rules.py"
RULES_B = "tests/test_rules_baselines.py"
GROWTH = "tests/test_growth.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


M = Mutation
MUTATIONS = [
    # ------------------------------------------------------------------ DSR (docs/methods.md#rules)
    M("dsr_grow_equal", "dst/methods/dsr.py",
      "weights=[float(s) for s in survivors]", "weights=[1.0 for s in survivors]",
      (RULES, "tests/test_dsr.py"), "regrowth shared equally instead of by survivors R_l"),
    M("dsr_grow_by_count_before_pruning", "dst/methods/dsr.py",
      "survivors = [st.n_active - k for st, k in", "survivors = [st.n_active for st, k in",
      (RULES, "tests/test_dsr.py"), "regrowth by active counts before pruning, not survivors"),
    M("dsr_prune_at_threshold", "dst/methods/dsr.py",
      "k = min(int(torch.count_nonzero(mag < h)), st.n_active - 1)",
      "k = min(int(torch.count_nonzero(mag <= h)), st.n_active - 1)",
      (RULES, "tests/test_dsr.py"), "prunes |w| <= H instead of the strict |w| < H"),
    M("dsr_halve_at_band_edge", "dst/methods/dsr.py",
      "if pruned > (1 + self.tolerance) * n_p:", "if pruned >= (1 + self.tolerance) * n_p:",
      (RULES, "tests/test_dsr.py"), "H halves at K == (1+δ)·N_p (the rule is K > (1+δ)·N_p)"),
    M("dsr_double_at_band_edge", "dst/methods/dsr.py",
      "elif pruned < (1 - self.tolerance) * n_p:", "elif pruned <= (1 - self.tolerance) * n_p:",
      (RULES, "tests/test_dsr.py"), "H doubles at K == (1-δ)·N_p (the rule is K < (1-δ)·N_p)"),
    M("dsr_halve_becomes_double", "dst/methods/dsr.py",
      "self.threshold = h / 2", "self.threshold = h * 2",
      (RULES, "tests/test_dsr.py"), "too many pruned raises H instead of lowering it"),
    M("dsr_regrow_just_pruned", "dst/methods/dsr.py",
      "    reallocates = True\n", "    reallocates = True\n    regrow_pruned = True\n",
      (RULES, "tests/test_dsr.py"), "growth may take positions pruned in the same step"),
    # ------------------------------------------------------------------ structured DSR
    M("structured_linear_ramp", "dst/methods/dsr_structured.py",
      "(1 - (1 - p) ** 3)", "p", ("tests/test_structured.py",),
      "channels removed on a linear ramp instead of Zhu & Gupta's cubic one"),
    M("structured_round_half_up", "dst/methods/dsr_structured.py",
      "math.floor(frac * n_original + 1e-9)", "round(frac * n_original)",
      ("tests/test_structured.py",), "removed channel count rounded instead of floored"),
    M("structured_producer_only_score", "dst/methods/dsr_structured.py",
      "umm = (rows.sum(1) + cols.sum(1))", "umm = (rows.sum(1) + 0 * cols.sum(1))",
      ("tests/test_structured.py",), "channel score ignores the consumer's column"),
    M("structured_remove_highest", "dst/channels.py",
      "gone = select(scores, k, st.kept.to(scores.device)).tolist()",
      "gone = select(scores, k, st.kept.to(scores.device), largest=True).tolist()",
      ("tests/test_structured.py",), "removes the channels of highest score, not lowest"),
    M("structured_freed_not_regrown", "dst/update.py",
      "total = sum(pruned) + sum(freed)", "total = sum(pruned)",
      ("tests/test_structured.py",), "removed channels' weights are not regrown: budget falls"),
    M("structured_momentum_not_cut", "dst/cut.py",
      "                state[k] = cut_tensor(v, dim, keep)\n",
      "                state[k] = v.narrow(dim, 0, keep.numel()).clone()\n",
      ("tests/test_structured.py",), "optimizer state cut by position, not by kept channel"),
    # ------------------------------------------------------------------ SET
    M("set_prune_signed", "dst/methods/set.py",
      "st.values.abs()", "st.values",
      (RULES, "tests/test_engine.py"), "prunes the most negative weights, not the smallest |w|"),
    M("fraction_count_rounds_down", "dst/methods/base.py",
      "return int(fraction * n + 0.5)", "return int(fraction * n)",
      (RULES,), "per-layer prune count floor(f·n) instead of round half up"),
    # ------------------------------------------------------------------ RigL
    M("rigl_constant_fraction", "dst/methods/rigl.py",
      "super().__init__(prune_fraction, decay)", 'super().__init__(prune_fraction, "constant")',
      (RULES, "tests/test_engine.py"), "(c) prune fraction held constant instead of cosine"),
    M("decay_ignored", "dst/methods/base.py",
      "self._fraction = decayed(self.prune_fraction, self.decay, ctx.step, ctx.stop_step)",
      "self._fraction = self.prune_fraction",
      (RULES, "tests/test_engine.py"), "RigL and SNFS both prune a constant fraction"),
    M("cosine_is_linear", "dst/schedules.py",
      "return fraction * 0.5 * (1.0 + math.cos(math.pi * t))", "return fraction * (1.0 - t)",
      (RULES, "tests/test_engine.py"), "the cosine decay computes a linear one"),
    M("rigl_grow_random", "dst/methods/rigl.py",
      'GrowPlan(scores=[grad_magnitude(st, "RigL") for st in ctx.layers])',
      "GrowPlan(scores=[None] * len(ctx.layers))",
      (RULES, "tests/test_engine.py"), "grows at random instead of by |dense gradient|"),
    M("rigl_grow_signed_gradient", "dst/methods/base.py",
      "return state.dense_grad.abs()", "return state.dense_grad",
      (RULES, "tests/test_engine.py"), "grows by the signed gradient, not its magnitude"),
    M("rigl_no_regrow_just_pruned", "dst/methods/rigl.py",
      "regrow_pruned = True", "regrow_pruned = False",
      (RULES, "tests/test_engine.py"), "a just-pruned weight may not be regrown at once"),
    # ------------------------------------------------------------------ SNFS
    M("snfs_constant_fraction", "dst/methods/snfs.py",
      "super().__init__(prune_fraction, decay)", 'super().__init__(prune_fraction, "constant")',
      (RULES, "tests/test_engine.py"), "(d) prune fraction held constant instead of cosine"),
    M("snfs_grow_random", "dst/methods/snfs.py",
      "return GrowPlan(scores=scores, weights=weights)",
      "return GrowPlan(scores=[None] * len(scores), weights=weights)",
      (RULES, "tests/test_engine.py"), "(e) grows at random instead of by |momentum|"),
    M("snfs_redistribute_equally", "dst/methods/snfs.py",
      "return GrowPlan(scores=scores, weights=weights)",
      "return GrowPlan(scores=scores, weights=[1.0] * len(weights))",
      (RULES, "tests/test_engine.py"), "(f) regrowth shared equally, not by mean |momentum|"),
    M("snfs_mean_over_all_positions", "dst/methods/snfs.py",
      "weights = [float(s.index_select(0, st.active.to(s.device)).mean())",
      "weights = [float(s.mean())",
      (RULES, "tests/test_engine.py"), "mean |momentum| over every position, not the active"),
    M("snfs_momentum_without_memory", "dst/methods/snfs.py",
      "buf.mul_(self.momentum)", "buf.mul_(0.0)",
      (RULES, "tests/test_engine.py"), "momentum forgets the past: the last gradient only"),
    M("snfs_grow_signed_momentum", "dst/methods/snfs.py",
      "scores = [buf.abs() for buf in self._buffers]",
      "scores = [buf.clone() for buf in self._buffers]",
      (RULES, "tests/test_engine.py"), "grows by signed momentum, not its magnitude"),
    # ------------------------------------------------------------------ ERK
    M("erk_uniform", "dst/distributions.py",
      "raw = [sum(s) / math.prod(s) for s in shapes]", "raw = [1.0 for s in shapes]",
      (RULES_B, "tests/test_convert.py"), "ERK gives every layer the same density"),
    M("erk_no_cap", "dst/distributions.py",
      "over = [i for i in free if raw[i] * scale > 1.0]", "over = []",
      (RULES_B, "tests/test_convert.py"), "ERK densities not capped at 1"),
    # ------------------------------------------------------------------ SNIP
    M("snip_magnitude_only", "dst/baselines/snip.py",
      "out[name] = (w * g.to(w.device)).abs()", "out[name] = (w + 0 * g.to(w.device)).abs()",
      (RULES_B, "tests/test_baselines.py"), "saliency |w| instead of |w · g|"),
    M("snip_last_batch_only", "dst/baselines/snip.py",
      "model.zero_grad(set_to_none=True)\n            loss_fn(",
      "model.zero_grad(set_to_none=True)\n            for _, m in layers:\n"
      "                m.pop_dense_grad()\n            loss_fn(",
      (RULES_B, "tests/test_baselines.py"), "gradient of the last batch, not the sum"),
    # ------------------------------------------------------------------ GMP
    M("gmp_quadratic", "dst/methods/gmp.py",
      "min(ctx.step / ctx.last_update, 1.0)) ** 3", "min(ctx.step / ctx.last_update, 1.0)) ** 2",
      (RULES_B, "tests/test_engine.py"), "pruning schedule (1 - t/T)^2 instead of cubic"),
    # ------------------------------------------------------------------ lottery ticket
    M("lottery_keep_smallest", "dst/baselines/lottery.py",
      "torch.sort(scores, descending=True, stable=True)",
      "torch.sort(scores, descending=False, stable=True)",
      (RULES_B, "tests/test_baselines.py"), "keeps the smallest weights"),
    M("lottery_global_is_per_layer", "dst/baselines/lottery.py",
      'if scope == "layer":', "if True:",
      (RULES_B, "tests/test_baselines.py"), "scope='global' ranks each layer on its own"),
    M("lottery_no_rewind", "dst/baselines/lottery.py",
      "            m.storage.load_dense_(w)", "            pass",
      (RULES_B, "tests/test_baselines.py"), "survivors keep trained values, not initial ones"),
    # ------------------------------------------------------------------ thin dense
    M("thin_tie_goes_wider", "dst/baselines/thin.py",
      'if match == "closest" and target_params - c_lo <= c_hi - target_params:',
      'if match == "closest" and target_params - c_lo < c_hi - target_params:',
      ("tests/test_baselines.py",), "equally close counts resolved to the wider model"),
    M("thin_at_least_is_closest", "dst/baselines/thin.py",
      'if match == "closest" and target_params - c_lo <= c_hi - target_params:',
      "if target_params - c_lo <= c_hi - target_params:",
      ("tests/test_baselines.py",), "match='at_least' may end below the sparse model's count"),
    M("thin_target_counts_dense_params", "dst/baselines/thin.py",
      'return int(param_counts(model)["params_nonzero"])',
      'return int(param_counts(model)["params_dense"])',
      ("tests/test_baselines.py",), "thin target = dense parameter count, not non-zeros"),
    # ------------------------------------------------------------------ static_from_mask
    M("static_from_mask_preset_dynamic", "conf/sparsity/static_from_mask.yaml",
      "  _target_: dst.methods.Static", "  _target_: dst.methods.SET",
      (RULES_B, "tests/test_from_mask.py"), "the preset keeps changing the source's mask"),
    M("from_mask_original_is_fresh", "dst/baselines/from_mask.py",
      'if self.init == "original":', "if False:",
      (RULES_B, "tests/test_from_mask.py"), "init='original' keeps the fresh weights"),
    # ------------------------------------------------------------------ where weights grow
    M("sampler_permutation_lowest_free", "dst/allocate.py",
      "        return free[torch.randperm(free.numel(), generator=gen)[:count]]",
      "        return free[:count]", (GROWTH,),
      "grown weights placed at the lowest free positions (permutation path)"),
    M("sampler_rejection_lowest_accepted", "dst/allocate.py",
      "draws = draws.index_select(0, torch.randperm(draws.numel(), generator=gen)[:need])",
      "draws = draws[:need]", (GROWTH,),
      "the lowest of the accepted draws kept, not a random subset (rejection path)"),
    M("sampler_rejection_misses_last", "dst/allocate.py",
      "draws = torch.randint(numel, (", "draws = torch.randint(numel - 1, (", (GROWTH,),
      "the last position can never be drawn"),
    M("sampler_rejection_keeps_repeats", "dst/allocate.py",
      "draws = draws[~torch.isin(draws, picked)]", "draws = draws", (GROWTH,),
      "a later round may draw a position an earlier round took"),
    M("growth_stream_ignores_step", "dst/update.py",
      "rng.generator(seed, step, st.index)", "rng.generator(seed, 0, st.index)", (GROWTH,),
      "the random stream for growth does not depend on the step"),
    M("growth_stream_ignores_layer", "dst/update.py",
      "rng.generator(seed, step, st.index)", "rng.generator(seed, step, 0)", (GROWTH,),
      "every layer grows from the same random stream"),
    M("residue_stream_is_layer_zero", "dst/update.py",
      "RESIDUE_LAYER = -1", "RESIDUE_LAYER = 0", (GROWTH,),
      "the allocation's residue draws from layer 0's growth stream"),
    M("key_ignores_order", "dst/rng.py",
      "        h = _splitmix64(h ^ (int(p) & _MASK64))",
      "        h ^= _splitmix64(int(p) & _MASK64)", (GROWTH,),
      "(seed, step, layer) mixed order-free: (1, 2, 3) and (1, 3, 2) share a stream"),
    M("key_drops_sign", "dst/rng.py",
      "h ^ (int(p) & _MASK64)", "h ^ (abs(int(p)) & _MASK64)", (GROWTH,),
      "layer -1 (the residue) and layer 1 share a stream"),
    M("splitmix_wrong_constant", "dst/rng.py",
      "0xBF58476D1CE4E5B9", "0xBF58476D1CE4E5B8", (GROWTH,),
      "the mixer is not SplitMix64: every mask differs from the recorded runs'"),
    # ------------------------------------------------------------------ block granularity
    M("dsr_counts_units_not_weights", "dst/methods/dsr.py",
      "pruned = sum(o.count * st.unit_size for o, st", "pruned = sum(o.count for o, st",
      ("tests/test_units.py",), "DSR's N_p compared with pruned units, not weights"),
    M("unit_score_is_a_sum", "dst/units.py",
      "        return out / self.size\n", "        return out\n", ("tests/test_units.py",),
      "a unit scored by the sum of its |w|, not the mean, against the threshold"),
    M("units_grown_in_part", "dst/units.py",
      "    grown = grid.elements(grown_units).to(st_elements.active.device)",
      "    grown = grid.elements(grown_units)[::2].to(st_elements.active.device)",
      ("tests/test_units.py",), "only part of a grown unit becomes active"),
    # ------------------------------------------------------------------ the engine
    M("ties_by_position", "dst/selection.py",
      "key = ties if flat is None else flat.index_select(0, ties)", "key = ties",
      ("tests/test_exactness.py",), "ties at the cut broken by position in the cache, not by "
      "flat index: a resumed run prunes other weights"),
    M("threshold_trusted_unchecked", "dst/selection.py",
      "        if int(torch.count_nonzero(chosen)) == k:\n", "        if True:\n",
      ("tests/test_exactness.py", RULES), "a method's threshold taken as the cut without "
      "checking that exactly k scores lie under it"),
    M("native_nonzero_skips_chunk_tail", "dst/kernels/_native.c",
      "        for (; i < hi; ++i)\n            if (mask[i]) {",
      "        for (; i + 1 < hi; ++i)\n            if (mask[i]) {",
      ("tests/test_native.py",), "the native index pass drops the last byte of a chunk's tail"),
    M("native_nonzero_reads_low_bits_only", "dst/kernels/_native.c",
      "    w |= w >> 4;\n", "",
      ("tests/test_native.py",), "the native index pass misses bytes whose set bits are high"),
    M("native_unique_ignores_blocked", "dst/kernels/_native.c",
      "        if (!blocked[d])\n", "",
      ("tests/test_native.py", "tests/test_dsr.py"), "the growth sampler accepts blocked draws"),
    M("native_fill_keeps_version", "dst/kernels/native.py",
      "    increment_version(t)  #", "    pass  #",
      ("tests/test_native.py", "tests/test_engine.py"), "a native fill leaves the mask's version, "
      "so the cached active set goes stale"),
    M("compact_repack_keeps_pruned_state", "dst/storage/compact.py",
      "            t.index_fill_(0, zero_slots, 0)", "            pass",
      ("tests/test_invariants.py",), "a compact re-pack leaves the pruned weight's value and "
      "optimizer state in the slot a grown weight takes"),
    M("compact_repack_drops_reused_slots", "dst/storage/compact.py",
      "        keep[ch.prune_pos[g:]] = False", "        keep[ch.prune_pos[:k - g]] = False",
      ("tests/test_invariants.py", "tests/test_engine.py"), "a compact re-pack drops the slots "
      "grown weights took instead of the surplus pruned ones"),
    M("all_finite_reads_max_only", "dst/storage/flat.py",
      "return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))",
      "return bool(torch.isfinite(hi))",
      ("tests/test_exactness.py",), "the finite check misses a -inf weight or gradient"),
    M("skipped_step_not_noticed", "dst/engine.py",
      "return self._hook is None or self._optimizer_steps != self._steps_seen", "return True",
      ("tests/test_exactness.py",), "an fp16 overflow (skipped optimizer step) still updates"),
    M("dense_grad_not_masked", "dst/storage/dense.py",
      "        mask_zero_(weight.grad, st.mask)", "        pass",
      ("tests/test_invariants.py",), "the dense format's inactive gradients are not zeroed: "
      "momentum and decay move inactive weights"),
    M("hooks_not_reattached", "dst/storage/dense.py",
      "        if not w.requires_grad or (self._hooks is not None and self._hooks[0]() is w):\n"
      "            return\n",
      "        if not w.requires_grad or self.__dict__.get('_seen'):\n            return\n"
      "        self.__dict__['_seen'] = True\n",
      ("tests/test_invariants.py",), "a deep-copied model's weights never get their hooks"),
]


def copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.so")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def apply(root: Path, m: Mutation) -> None:
    path = root / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutation {m.name}: the snippet {m.old!r} occurs {n} times in "
                         f"{m.file} (expected exactly once): update tests/mutate.py to the code")
    path.write_text(text.replace(m.old, m.new))


def env_for(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def pytest_run(root: Path, tests) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        p = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s"
    return p.returncode, p.stdout + p.stderr


def first_failure(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("FAILED ") or line.startswith("ERROR "):
            return line.split(" - ")[0]
    return out.strip().splitlines()[-1] if out.strip() else ""


def baseline(chosen: list[Mutation]) -> None:
    """The chosen test files pass on an unmutated copy, and import that copy's ``dst``."""
    tests = sorted({t for m in chosen for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="dst-mutate-") as tmp:
        root = Path(tmp)
        copy_repo(root)
        where = subprocess.run([sys.executable, "-c", "import dst; print(dst.__file__)"],
                               cwd=root, env=env_for(root), capture_output=True, text=True)
        got = Path(where.stdout.strip() or "?").resolve()
        if root.resolve() not in got.parents:
            raise SystemExit(f"the scratch copy is not what gets imported: dst from {got} "
                             f"{where.stderr.strip()}")
        rc, out = pytest_run(root, tests)
        if rc != 0:
            raise SystemExit(f"the tests fail without any mutation ({first_failure(out)}):\n"
                             f"{out[-3000:]}")
    print(f"baseline: {len(tests)} test files pass on an unmutated copy (dst imported from it)")


def run(m: Mutation) -> str:
    with tempfile.TemporaryDirectory(prefix="dst-mutate-") as tmp:
        root = Path(tmp)
        copy_repo(root)
        apply(root, m)
        t0 = time.perf_counter()
        rc, out = pytest_run(root, m.tests)
        dt = time.perf_counter() - t0
    if rc == 1:
        verdict, detail = "KILLED", first_failure(out)
    elif rc == 0:
        verdict, detail = "SURVIVED", "all tests pass with the wrong rule"
    elif rc == -1:
        verdict, detail = "KILLED", out  # a hang is detected too
    else:
        verdict, detail = "ERROR", f"pytest exit {rc}: {first_failure(out)}"
    print(f"{verdict:8s} {m.name:34s} {dt:5.1f}s  {detail}", flush=True)
    if verdict == "ERROR":
        print(out[-2000:])
    return verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutations (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run of the test files")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    assert len(set(names)) == len(names), "duplicate mutation names"
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:34s} {m.file:32s} {' '.join(m.tests)}\n{'':34s} {m.why}")
        return 0
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; see --list")
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    with tempfile.TemporaryDirectory() as tmp:  # every snippet matches before anything runs
        for m in chosen:
            copy_target = Path(tmp) / m.name / m.file
            copy_target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / m.file, copy_target)
            apply(Path(tmp) / m.name, m)
    t0 = time.perf_counter()
    if not args.no_baseline:
        baseline(chosen)
    verdicts = [run(m) for m in chosen]
    killed = verdicts.count("KILLED")
    print(f"\n{killed}/{len(chosen)} mutations killed in {time.perf_counter() - t0:.0f} s")
    bad = [m.name for m, v in zip(chosen, verdicts, strict=True) if v != "KILLED"]
    if bad:
        print(f"not killed: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

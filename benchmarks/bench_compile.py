"""A compiled training step against the eager one, across mask updates: WRN-28-2 at density
0.1 (batch 64, 32 x 32) in both formats, DSR updating the masks every 5 steps, torch.compile
with its default backend. Compilation happens in the warm-up; the timed steps include updates,
so a recompilation would show. Interleaved, best of N.

    python benchmarks/bench_compile.py [--repeats 5]     # benchmarks/compile.csv, RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import HERE, command, machine, table, write_csv, write_section  # noqa: E402

import dst  # noqa: E402
from dst.models import build_model  # noqa: E402


def setup(fmt: str, compiled: bool):
    torch.manual_seed(0)
    model = build_model("wrn", 10, depth=28, widen_factor=2)
    dst.sparsify_(model, 0.1, format=fmt,
                  filter_fn=dst.convert.paper_filter(model, dense_fc=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = dst.SparseEngine(model, opt, dst.methods.DSR(), update_every=5)
    run = torch.compile(model) if compiled else model
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def step():
        opt.zero_grad()
        F.cross_entropy(run(x), y).backward()
        opt.step()
        engine.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block (2 updates)")
    args = p.parse_args()
    rows = []
    for fmt in ("dense", "compact"):
        steps = {"eager": setup(fmt, False), "compiled": setup(fmt, True)}
        for f in steps.values():  # warm-up: compilation, first updates
            for _ in range(args.steps):
                f()
        best = {k: float("inf") for k in steps}
        for _ in range(args.repeats):
            for k, f in steps.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    f()
                best[k] = min(best[k], (time.perf_counter() - t) / args.steps)
        rows.append({"format": fmt, "eager_ms": round(1e3 * best["eager"], 1),
                     "compiled_ms": round(1e3 * best["compiled"], 1),
                     "speedup": round(best["eager"] / best["compiled"], 3)})
        print(rows[-1], flush=True)
    write_csv(HERE / "compile.csv", rows)
    write_section("compile", "## torch.compile across mask updates (generated)\n\n"
                  f"Command: `{command()}`. Machine: {machine()}.\n\n"
                  "WRN-28-2 training step at density 0.1 (batch 64), DSR updating every 5 "
                  f"steps, mean over blocks of {args.steps} steps, best of {args.repeats}, "
                  "interleaved; speedup = eager / compiled.\n\n"
                  + table(rows, ["format", "eager_ms", "compiled_ms", "speedup"]))


if __name__ == "__main__":
    main()

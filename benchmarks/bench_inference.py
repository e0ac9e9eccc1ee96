"""Sparse inference (dst.inference.to_inference) against the dense model, under
torch.inference_mode: ResNet-50 at density 0.1 (batch 1 and 32, 224 x 224) and WRN-28-2 at
density 0.1 (batch 1, 32 x 32), every conv and linear layer sparse (the paper's filter keeps
stems and shortcuts dense: both rows are given). Interleaved, best of N.

    python benchmarks/bench_inference.py [--repeats 7]   # benchmarks/inference.csv, RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import HERE, command, machine, table, write_csv, write_section  # noqa: E402

import dst  # noqa: E402
from dst.inference import to_inference  # noqa: E402
from dst.models import build_model  # noqa: E402


def best(fns: dict, x, repeats: int) -> dict[str, float]:
    """Best seconds of each function, the candidates interleaved."""
    out = {k: float("inf") for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f(x)
        for _ in range(repeats):
            for k, f in fns.items():
                t = time.perf_counter()
                f(x)
                out[k] = min(out[k], time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    cases = [("ResNet-50", lambda: torchvision.models.resnet50(), False, 1, 224),
             ("ResNet-50", lambda: torchvision.models.resnet50(), False, 32, 224),
             ("WRN-28-2", lambda: build_model("wrn", 10, depth=28, widen_factor=2), True, 1, 32)]
    rows = []
    for name, make, dense_fc, batch, size in cases:
        for filt in ("all", "paper"):
            torch.manual_seed(0)
            dense = make().eval()
            model = make().eval()
            fn = (lambda n, m: True) if filt == "all" else \
                dst.convert.paper_filter(model, dense_fc=dense_fc)
            dst.sparsify_(model, 0.1, filter_fn=fn)
            inf = to_inference(model)
            x = torch.randn(batch, 3, size, size)
            t = best({"dense": dense, "inference": inf}, x, args.repeats)
            rows.append({"model": name, "batch": batch, "filter": filt,
                         "dense_ms": round(1e3 * t["dense"], 2),
                         "inference_ms": round(1e3 * t["inference"], 2),
                         "speedup": round(t["dense"] / t["inference"], 3)})
            print(rows[-1], flush=True)
    write_csv(HERE / "inference.csv", rows)
    write_section("inference", "## Sparse inference (generated)\n\n"
                  f"Command: `{command()}`. Machine: {machine()}.\n\n"
                  "`to_inference` at density 0.1 against the dense model, "
                  "`torch.inference_mode`, interleaved, best of "
                  f"{args.repeats}; speedup = dense / inference time. `all`: every conv and "
                  "linear layer sparse; `paper`: stems, shortcuts (and WRN's head) dense.\n\n"
                  + table(rows, ["model", "batch", "filter", "dense_ms", "inference_ms",
                                 "speedup"]))


if __name__ == "__main__":
    main()

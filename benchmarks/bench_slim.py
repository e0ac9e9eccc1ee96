"""Structured DSR after slimming: one training step against the dense model.

WRN-28-2 (batch 100, 32x32, the subset recipe's batch) and ResNet-50 (batch 8, 224x224; 64 on
a GPU) at density 0.1 (90 % of the pool sparse), channels_last, SGD with Nesterov momentum
and weight decay: forward, backward, optimizer step. Variants, interleaved (A, B, C, ...), best
of ``--repeats``:

* ``dense``: the plain torch model;
* ``unstructured``: DSR's layers in the dense format (what ``sparsity=dsr`` trains);
* ``slimmed c=X``: ``sparsity=dsr_structured`` with ``channel_sparsity=X`` once its ramp is
  done: a DSRStructured engine removes the channels (its real update, the lowest unit mean
  magnitude first) and cuts the layers down; the steps then run the smaller dense kernels.

    python benchmarks/bench_slim.py --repeats 5
    python benchmarks/bench_slim.py --device cuda --repeats 10   # benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _results import HERE, command, machine, table, write_csv, write_section

import dst
from dst.models import build_model

MODELS = {"wrn28_2": (100, 32, 10, True), "resnet50": (8, 224, 1000, False)}
CUDA_BATCH = {"wrn28_2": 100, "resnet50": 64}  # a GPU needs more work per step


def batch_of(name: str, device: torch.device) -> int:
    return CUDA_BATCH[name] if device.type == "cuda" else MODELS[name][0]


def build(name: str, channel_sparsity: float | None, device: torch.device):
    _, hw, classes, dense_fc = MODELS[name]
    batch = batch_of(name, device)
    torch.manual_seed(0)
    model = build_model(name, classes)
    if channel_sparsity is not None:
        dst.sparsify_(model, 0.1, filter_fn=dst.convert.paper_filter(model, dense_fc=dense_fc))
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x = torch.randn(batch, 3, hw, hw, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    if channel_sparsity:  # one real structured update removes every channel the ramp would
        method = dst.methods.DSRStructured(channel_sparsity=channel_sparsity, ramp=(0, 0.5))
        engine = dst.SparseEngine(model, opt, method, update_every=1, stop_step=2, check=True)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()
    params = sum(p.numel() for p in model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step, params


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, fractions: list[float], repeats: int, inner: int, device) -> list[dict]:
    variants = {"dense": None, "unstructured": 0.0}
    variants.update({f"slimmed c={c:g}": c for c in fractions})
    fns, sizes = {}, {}
    for k, c in variants.items():
        fns[k], sizes[k] = build(name, c, device)
    for f in fns.values():
        f()
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            sync(device)
            best[k] = min(best[k], (time.perf_counter() - t0) / inner)
    goal = {"wrn28_2": ">= 1.5", "resnet50": ">= 1.3"}[name]
    rows = []
    for k in variants:
        rows.append({"model": name, "batch": batch_of(name, device), "variant": k,
                     "ms": round(best[k] * 1e3, 1),
                     "speed-up vs dense": round(best["dense"] / best[k], 3),
                     "goal": goal if k.startswith("slimmed") else "-",
                     "params (dense size)": f"{sizes[k]:,}", "device": device.type})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.6])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        inner = 3 if name == "wrn28_2" or device.type == "cuda" else 1
        rows += bench(name, args.fractions, args.repeats, inner, device)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_csv(HERE / f"slim{suffix}.csv", rows)
    cols = ["model", "batch", "variant", "ms", "speed-up vs dense", "goal", "params (dense size)"]
    write_section(f"slim{suffix}", f"### Structured DSR after slimming: training step vs dense "
                  f"({device.type})\n\n`{command()}` on {machine()}. Density 0.1 (pool 90 % "
                  f"sparse); best of {args.repeats} interleaved trials.\n\n" + table(rows, cols))


if __name__ == "__main__":
    main()

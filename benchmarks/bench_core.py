"""Core micro-benchmarks (issue: core library).

1. One training step of WRN-28-2 (batch 64, channels_last) with sparse layers in the ``dense``
   format at density 0.1 / the same model with plain torch layers (goal <= 1.05 on CPU).
2. One DSR update on the ResNet-50 pool (22.7 M weights, density 0.1), both formats
   (goal <= 150 ms on CPU).
3. Bytes of sparse-layer parameters + gradients + SGD momentum + indices (int32), ``compact``
   format at density 0.1 / dense params + grads + momentum (goal <= 0.14), for WRN-28-2 and
   ResNet-50.

Run: python benchmarks/bench_core.py            (writes core.csv and its RESULTS.md section)
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from _results import HERE, command, machine, table, timeit, write_csv, write_section

import dst
from dst.models import build_model


def step_time(model, batch: int, repeats: int) -> float:
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return timeit(step, warmup=3, repeats=repeats)


def bench_step(batch: int, repeats: int, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    plain = build_model("wrn28_2")
    sparse = copy.deepcopy(plain)
    dst.sparsify_(sparse, 0.1, filter_fn=dst.paper_filter(sparse, dense_fc=True))
    t_plain, t_sparse = [], []
    for _ in range(rounds):  # interleave to cancel drift
        t_plain.append(step_time(plain, batch, repeats))
        t_sparse.append(step_time(sparse, batch, repeats))
    tp, ts = min(t_plain), min(t_sparse)
    return [{"benchmark": "wrn28_2 train step (dense format, d=0.1) / plain",
             "value": round(ts / tp, 3), "unit": "ratio", "goal": "<= 1.05",
             "detail": f"sparse {ts * 1e3:.1f} ms vs plain {tp * 1e3:.1f} ms, batch {batch}"}]


def bench_dsr_update(fmt: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000)
    dst.sparsify_(model, 0.1, filter_fn=dst.paper_filter(model, dense_fc=False), format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():  # give the optimizer its momentum buffers
        p.grad = torch.zeros_like(p)
    opt.step()
    engine = dst.SparseEngine(model, opt, dst.methods.DSR(prune_target=0.1), update_every=1)
    pool = sum(m.numel_dense for _, m in dst.sparse_layers(model))

    def update():
        # what the optimizer's step hook records after a real step (the engine skips a step
        # the optimizer did not take); the optimizer step itself is not part of the update
        engine._count_optimizer_step()
        engine.step()

    t = timeit(update, warmup=2, repeats=repeats)
    return {"benchmark": f"DSR update, ResNet-50 pool, {fmt} format", "value": round(t * 1e3, 1),
            "unit": "ms", "goal": "<= 150",
            "detail": f"pool {pool:,}, budget {engine.budget:,}, N_p 10% of budget"}


def bench_memory(name: str, num_classes: int, dense_fc: bool) -> dict:
    sizes = {}
    for fmt in ("dense", "compact"):
        torch.manual_seed(0)
        model = build_model(name, num_classes=num_classes)
        dst.sparsify_(model, 0.1, filter_fn=dst.paper_filter(model, dense_fc=dense_fc),
                      format=fmt)
        layers = [m for _, m in dst.sparse_layers(model)]
        params = [m.weight for m in layers] if fmt == "dense" else [model.dst_bank]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        nbytes = sum(p.numel() * p.element_size() for p in params)
        nbytes += sum(p.grad.numel() * p.grad.element_size() for p in params)
        nbytes += sum(t.numel() * t.element_size() for p in params
                      for t in opt.state[p].values() if torch.is_tensor(t))
        index = sum(m.indices.numel() * m.indices.element_size() for m in layers) \
            if fmt == "compact" else sum(m.mask.numel() * m.mask.element_size() for m in layers)
        sizes[fmt] = (nbytes, index)
    (dense, mask), (compact, idx) = sizes["dense"], sizes["compact"]
    return {"benchmark": f"{name} sparse-layer params+grads+momentum+indices, compact / dense, "
                         "d=0.1",
            "value": round((compact + idx) / dense, 4), "unit": "ratio", "goal": "<= 0.14",
            "detail": f"compact {compact / 2**20:.2f} MiB + {idx / 2**20:.2f} MiB indices "
                      f"({round(compact / dense, 4)} without them) vs dense "
                      f"{dense / 2**20:.2f} MiB (+{mask / 2**20:.2f} MiB masks)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--only-dsr-update", action="store_true",
                    help="time only the DSR updates (print only; for A/B runs of two checkouts "
                         "with PYTHONPATH=<checkout>)")
    args = ap.parse_args()
    if args.only_dsr_update:
        print(dst.__file__)
        print(table([bench_dsr_update(fmt, args.repeats) for fmt in ("dense", "compact")],
                    ["benchmark", "value", "unit", "goal", "detail"]))
        return
    rows = bench_step(args.batch, args.repeats, args.rounds)
    rows += [bench_dsr_update(fmt, args.repeats) for fmt in ("dense", "compact")]
    rows += [bench_memory("wrn28_2", 10, True), bench_memory("resnet50", 1000, False)]
    md = table(rows, ["benchmark", "value", "unit", "goal", "detail"])
    print(md)
    if not args.no_write:
        for r in rows:
            r["machine"], r["command"] = machine(), command()
        write_csv(HERE / "core.csv", rows)
        write_section("core", f"## Core library (CPU)\n\nCommand: `{command()}`  \n"
                              f"Machine: {machine()}\n\n{md}\n")


if __name__ == "__main__":
    main()

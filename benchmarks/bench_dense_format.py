"""The dense storage format against plain torch layers (no per-step mask passes).

1. SparseLinear 2048x2048, batch 128, ``format="dense"``, ``backend="dense"``, forward +
   ``loss.backward()`` accumulating into ``.grad`` (what training does) against ``nn.Linear``
   at 90 % and 95 % sparsity; beside it the old way (a ``weight * mask`` product per forward)
   and the parts of the dense format: ``F.linear`` on a plain parameter (nn.Linear's math:
   how far two identical computations differ here) and the same with the in-place gradient
   mask pass as a post-accumulate hook (the dense format's only extra work).
2. The same layer with ``backend="auto"`` against ``backend="dense"``, both formats.
3. One training step (forward, backward, SGD with Nesterov momentum and weight decay) of a
   sparse model in the dense format at density 0.1 against the same model with plain layers:
   WRN-28-2 (batch 64, channels_last) and a transformer-style MLP block (512 -> 2048 -> 512,
   GELU, 4096 tokens).

Trials interleave the variants (A, B, A, B, ...) and take the best of each.

    python benchmarks/bench_dense_format.py --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from _results import HERE, command, machine, table, write_csv, write_section
from torch import nn

import dst
from dst.kernels.native import mask_zero_
from dst.models import build_model

DEV = torch.device("cpu")  # --device


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def _best(fns: dict, repeats: int, inner: int) -> dict[str, float]:
    for f in fns.values():  # warm-up
        f()
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            _sync()
            best[k] = min(best[k], (time.perf_counter() - t0) / inner)
    return best


def _mask_hook(mask):
    def hook(p):
        mask_zero_(p.grad, mask)
    return hook


def bench_linear(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(128, 2048, device=DEV)
    rows = []
    for s in (0.9, 0.95):
        ref = nn.Linear(2048, 2048).to(DEV)
        sp = dst.SparseLinear(2048, 2048, density=1 - s).to(DEV)  # dense format and backend
        old_w = nn.Parameter(sp.weight.detach().clone())
        mask = sp.mask

        def step(fwd, params):
            def run():
                for p in params:
                    p.grad = None
                fwd(x).sum().backward()
            return run

        plain_w = nn.Parameter(sp.weight.detach().clone())  # the parts of the dense format
        hooked_w = nn.Parameter(sp.weight.detach().clone())
        hooked_w.register_post_accumulate_grad_hook(_mask_hook(mask))
        fns = {"nn.Linear": step(ref, [ref.weight, ref.bias]),
               "SparseLinear dense format": step(sp, [sp.weight, sp.bias]),
               "old: weight * mask per forward": step(
                   lambda z, w=old_w, m=mask, b=sp.bias: F.linear(z, w * m, b),
                   [old_w, sp.bias]),
               "parts: F.linear (nn.Linear's math, the noise floor)": step(
                   lambda z, w=plain_w, b=sp.bias: F.linear(z, w, b), [plain_w, sp.bias]),
               "parts: F.linear + the in-place gradient mask pass": step(
                   lambda z, w=hooked_w, b=sp.bias: F.linear(z, w, b), [hooked_w, sp.bias])}
        best = _best(fns, repeats, 5)
        for k in list(fns)[1:]:
            rows.append({"benchmark": f"SparseLinear 2048x2048, batch 128, s={s}: {k}",
                         "ms": round(best[k] * 1e3, 2),
                         "vs nn.Linear": round(best["nn.Linear"] / best[k], 3),
                         "goal": ">= 0.95" if k.startswith("SparseLinear") else "-",
                         "detail": f"nn.Linear {best['nn.Linear'] * 1e3:.2f} ms"})
            print(rows[-1], flush=True)
    return rows


def bench_auto(repeats: int) -> list[dict]:
    """SparseLinear 2048x2048, batch 128: backend=auto against backend=dense, both formats
    (auto decides on its first forward; the timed steps run what it picked)."""
    torch.manual_seed(0)
    x = torch.randn(128, 2048, device=DEV)
    rows = []
    for s in (0.9, 0.95):
        for fmt in ("dense", "compact"):
            fns = {}
            for backend in ("dense", "auto"):
                m = dst.SparseLinear(2048, 2048, density=1 - s, format=fmt,
                                     backend=backend).to(DEV)
                params = list(m.parameters())

                def run(m=m, params=params):
                    for p in params:
                        p.grad = None
                    m(x).sum().backward()
                fns[backend] = run
                fns[backend]()  # auto decides here
                if backend == "auto":
                    picked = m.backend_used
            best = _best(fns, repeats, 5)
            rows.append({"benchmark": f"SparseLinear 2048x2048, batch 128, s={s}, {fmt} "
                                      f"format: auto (picked {picked}) / dense backend",
                         "ms": round(best["auto"] * 1e3, 2),
                         "vs nn.Linear": round(best["auto"] / best["dense"], 3),
                         "goal": "<= 1.03", "detail": f"dense backend "
                                                      f"{best['dense'] * 1e3:.2f} ms"})
            print(rows[-1], flush=True)
    return rows


class MLPBlock(nn.Module):
    def __init__(self, d: int = 512, hidden: int = 2048):
        super().__init__()
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def _train_step(model, x, y, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return run


def bench_steps(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    wrn = build_model("wrn28_2", num_classes=10).to(DEV, memory_format=torch.channels_last)
    x = torch.randn(64, 3, 32, 32, device=DEV).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=DEV)
    mlp = MLPBlock().to(DEV)
    tokens = torch.randn(4096, 512, device=DEV)
    cases = [("WRN-28-2 train step, batch 64", wrn, x, y, F.cross_entropy,
              lambda m: dst.paper_filter(m, dense_fc=True)),
             ("MLP block 512-2048-512 train step, 4096 tokens", mlp, tokens, tokens,
              F.mse_loss, lambda m: None)]
    for name, model, xb, yb, loss_fn, filt in cases:
        sparse = copy.deepcopy(model)
        dst.sparsify_(sparse, 0.1, filter_fn=filt(sparse))
        sparse = sparse.to(memory_format=torch.channels_last) if xb.dim() == 4 else sparse
        best = _best({"plain": _train_step(model, xb, yb, loss_fn),
                      "sparse": _train_step(sparse, xb, yb, loss_fn)}, repeats, 1)
        rows.append({"benchmark": f"{name}: dense-format sparse (d=0.1) / plain",
                     "ms": round(best["sparse"] * 1e3, 1),
                     "vs nn.Linear": round(best["sparse"] / best["plain"], 3),
                     "goal": "<= 1.05", "detail": f"plain {best['plain'] * 1e3:.1f} ms"})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (its section says which)")
    args = ap.parse_args()
    global DEV
    DEV = torch.device(args.device)
    rows = bench_linear(args.repeats) + bench_auto(args.repeats) + bench_steps(args.repeats)
    md = table(rows, ["benchmark", "ms", "vs nn.Linear", "goal", "detail"]).replace(
        "vs nn.Linear", "ratio")
    print(md)
    if not args.no_write:
        for r in rows:
            r["machine"], r["command"] = machine(), command()
        where = "CPU" if DEV.type == "cpu" else f"CUDA {torch.cuda.get_device_name(DEV)}"
        suffix = "" if DEV.type == "cpu" else "-cuda"
        write_csv(HERE / f"dense_format{suffix}.csv", rows)
        write_section(f"dense-format{suffix}", f"## Dense format vs plain layers ({where})\n\n"
                      "Command: "
                      f"`{command()}`  \nMachine: {machine()}\n\nratio: for the SparseLinear "
                      "rows against nn.Linear, nn.Linear's time / this one's (higher is "
                      "faster); for auto, auto / dense backend, and for training steps, "
                      f"sparse / plain (lower is faster).\n\n{md}\n")


if __name__ == "__main__":
    main()

"""Sparse-kernel benchmarks (issue: sparse kernels and the compact format's memory).

* ``layers``: per-layer fwd+bwd time, dense-format masked kernels vs the CSR backend, on WRN-28-2
  and ResNet-50 layer shapes at 80/90/95/98 % sparsity, with the backend ``auto`` picks.
* ``goal``: SparseLinear 2048x2048 at batch 128 with the CSR backend vs nn.Linear, fwd+bwd
  (the issue's goal: >= 1.4x at 90 %, >= 2.5x at 95 %), with the native CPU kernels and with
  PyTorch's (MKL) for comparison.
* ``kxk``: the shift-and-SpMM formulation of a 3x3 conv (9 CSR products on shifted views, no
  im2col) against the dense conv, forward only (if the forward alone loses, fwd+bwd loses too).
* ``step``: one ResNet-50 and one WRN-28-2 training step at s = 0.9 with ``backend=auto`` /
  ``backend=dense``.
* ``memory``: bytes of parameters + gradients + SGD momentum and peak RSS of a training step,
  compact vs dense format, ResNet-50 at density 0.2 and 0.1 (each in a fresh process).

Run: python benchmarks/bench_kernels.py [layers kxk step memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial

import torch
import torch.nn.functional as F
from _results import HERE, command, machine, table, timeit, write_csv, write_section
from torch import nn

import dst
from dst.kernels import backends, native
from dst.kernels.csr import CSRStructure, csr_linear
from dst.models import build_model

SPARSITIES = (0.8, 0.9, 0.95, 0.98)
# (model, name, kind, c_in, c_out, k, stride, input hw, batch)
SHAPES = [
    ("wrn28_2", "block 3x3 32", "conv", 32, 32, 3, 1, 32, 64),
    ("wrn28_2", "block 3x3 64", "conv", 64, 64, 3, 1, 16, 64),
    ("wrn28_2", "block 3x3 128", "conv", 128, 128, 3, 1, 8, 64),
    ("wrn28_2", "shortcut 1x1 64->128 s2", "conv", 64, 128, 1, 2, 16, 64),
    ("resnet50", "1x1 64->256 @56", "conv", 64, 256, 1, 1, 56, 8),
    ("resnet50", "1x1 256->64 @56", "conv", 256, 64, 1, 1, 56, 8),
    ("resnet50", "1x1 512->128 @28", "conv", 512, 128, 1, 1, 28, 8),
    ("resnet50", "1x1 1024->256 @14", "conv", 1024, 256, 1, 1, 14, 8),
    ("resnet50", "1x1 256->1024 @14", "conv", 256, 1024, 1, 1, 14, 8),
    ("resnet50", "1x1 2048->512 @7", "conv", 2048, 512, 1, 1, 7, 8),
    ("resnet50", "1x1 512->2048 @7", "conv", 512, 2048, 1, 1, 7, 8),
    ("resnet50", "3x3 64 @56", "conv", 64, 64, 3, 1, 56, 8),
    ("resnet50", "3x3 256 @14", "conv", 256, 256, 3, 1, 14, 8),
    ("resnet50", "fc 2048->1000", "linear", 2048, 1000, 1, 1, 1, 8),
]


def make_layer(kind, c_in, c_out, k, stride, density, backend):
    torch.manual_seed(0)
    if kind == "linear":
        return dst.SparseLinear(c_in, c_out, density=density, backend=backend)
    return dst.SparseConv2d(c_in, c_out, k, stride=stride, padding=k // 2, density=density,
                            backend=backend)


def bench_layers(repeats: int) -> list[dict]:
    rows = []
    for model, name, kind, c_in, c_out, k, stride, hw, batch in SHAPES:
        x = torch.randn(batch, c_in) if kind == "linear" else torch.randn(batch, c_in, hw, hw)
        for s in SPARSITIES:
            dense = make_layer(kind, c_in, c_out, k, stride, 1 - s, "dense")
            t_dense = min(backends._time_fwd_bwd(dense, x, [dense.weight, dense.bias])
                          for _ in range(repeats))
            row = {"model": model, "layer": name, "input": "x".join(map(str, x.shape)),
                   "sparsity": s, "dense_ms": round(t_dense * 1e3, 2)}
            if backends.csr_eligible(dense):
                csr = make_layer(kind, c_in, c_out, k, stride, 1 - s, "csr")
                t_csr = min(backends._time_fwd_bwd(csr, x, [csr.weight, csr.bias])
                            for _ in range(repeats))
                row["csr_ms"] = round(t_csr * 1e3, 2)
                row["speedup"] = round(t_dense / t_csr, 2)
                row["auto"] = "csr" if t_csr <= (1 - backends.MIN_GAIN) * t_dense else "dense"
            else:
                row.update(csr_ms="-", speedup="-", auto="dense (not eligible)")
            rows.append(row)
            print(row, flush=True)
    return rows


def _timed(m, x, params, torch_kernels: bool) -> float:
    """fwd+bwd time; ``torch_kernels``: with the native CPU kernels switched off (MKL's)."""
    saved = native.usable
    if torch_kernels:
        native.usable = lambda *tensors: False
    try:
        return backends._time_fwd_bwd(m, x, params)
    finally:
        native.usable = saved


def bench_goal(repeats: int) -> list[dict]:
    """SparseLinear 2048x2048 at batch 128 vs nn.Linear, fwd+bwd (the issue's goal)."""
    torch.manual_seed(0)
    x = torch.randn(128, 2048)
    ref = nn.Linear(2048, 2048)
    rows = []
    for s in (0.9, 0.95):
        layers = {"nn.Linear": (ref, [ref.weight, ref.bias], False)}
        for fmt in ("dense", "compact"):
            m = dst.SparseLinear(2048, 2048, density=1 - s, format=fmt, backend="csr")
            p = [m.weight if fmt == "dense" else m.values, m.bias]
            layers[f"{fmt} + csr"] = (m, p, False)
            layers[f"{fmt} + csr, PyTorch kernels"] = (m, p, True)
        times = {k: [] for k in layers}
        for _ in range(repeats):  # interleaved rounds, best of each
            for k, (m, p, off) in layers.items():
                times[k].append(_timed(m, x, p, off))
        best = {k: min(v) for k, v in times.items()}
        for k in list(layers)[1:]:
            rows.append({"layer": "SparseLinear 2048x2048, batch 128", "sparsity": s,
                         "variant": k, "ms": round(best[k] * 1e3, 2),
                         "nn_linear_ms": round(best["nn.Linear"] * 1e3, 2),
                         "speedup_vs_nn_linear": round(best["nn.Linear"] / best[k], 2),
                         "goal": ">= 1.4" if s == 0.9 else ">= 2.5"})
            print(rows[-1], flush=True)
    return rows


def shift_spmm_conv3x3(x_cl: torch.Tensor, structs, values) -> torch.Tensor:
    """3x3, stride 1, padding 1 conv as 9 CSR products on shifted views of channels-last x."""
    n, c, h, w = x_cl.shape
    xp = F.pad(x_cl, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # N, H+2, W+2, C
    out = None
    for tap, (s, v) in enumerate(zip(structs, values, strict=True)):
        kh, kw = divmod(tap, 3)
        cols = xp[:, kh:kh + h, kw:kw + w, :].reshape(n * h * w, c)
        y = csr_linear(cols, v, s)
        out = y if out is None else out.add_(y)
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def bench_kxk(repeats: int) -> list[dict]:
    rows = []
    for _, name, kind, c_in, c_out, k, _, hw, batch in SHAPES:
        if k != 3:
            continue
        x = torch.randn(batch, c_in, hw, hw).to(memory_format=torch.channels_last)
        for s in SPARSITIES:
            layer = make_layer(kind, c_in, c_out, k, 1, 1 - s, "dense")
            w = layer.dense_weight()
            taps = [layer.mask[:, :, i // 3, i % 3].contiguous() for i in range(9)]
            structs = [CSRStructure.from_mask(m) for m in taps]
            values = [st.gather(w[:, :, i // 3, i % 3].contiguous())
                      for i, st in enumerate(structs)]
            with torch.no_grad():
                ref = F.conv2d(x, w, layer.bias, padding=1)
                got = shift_spmm_conv3x3(x, structs, values) + layer.bias.view(1, -1, 1, 1)
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
                t_dense = timeit(partial(F.conv2d, x, w, layer.bias, padding=1),
                                 repeats=repeats)
                t_shift = timeit(partial(shift_spmm_conv3x3, x, structs, values),
                                 repeats=repeats)
            rows.append({"layer": name, "input": "x".join(map(str, x.shape)), "sparsity": s,
                         "dense_fwd_ms": round(t_dense * 1e3, 2),
                         "shift_spmm_fwd_ms": round(t_shift * 1e3, 2),
                         "speedup": round(t_dense / t_shift, 2)})
            print(rows[-1], flush=True)
    return rows


def _step_time(name: str, batch: int, backend: str, repeats: int) -> tuple[float, list]:
    backends.clear_decisions()
    torch.manual_seed(0)
    classes, hw = (1000, 224) if name == "resnet50" else (10, 32)
    model = build_model(name, num_classes=classes).to(memory_format=torch.channels_last)
    dst.sparsify_(model, 0.1, filter_fn=dst.paper_filter(model, dense_fc=False), backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, hw, hw).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    t = timeit(step, warmup=2, repeats=repeats)
    return t, [m.backend_used for _, m in dst.sparse_layers(model)]


def bench_step(batch: int, repeats: int) -> list[dict]:
    """One training step at s = 0.9, channels_last: backend=auto vs the dense format."""
    rows = []
    for name, b in (("resnet50", batch), ("wrn28_2", 64)):
        times = {}
        for backend in ("dense", "auto", "dense", "auto"):  # interleaved, best of two rounds
            t, picks = _step_time(name, b, backend, repeats)
            times[backend] = min(t, times.get(backend, float("inf")))
        rows.append({"benchmark": f"{name} train step, s=0.9, batch {b}, channels_last",
                     "dense_ms": round(times["dense"] * 1e3, 1),
                     "auto_ms": round(times["auto"] * 1e3, 1),
                     "auto_over_dense": round(times["auto"] / times["dense"], 3),
                     "auto_csr_layers": f"{picks.count('csr')}/{len(picks)}"})
        print(rows[-1], flush=True)
    return rows


MEMORY_CHILD = r"""
import json, resource, sys, torch, torch.nn.functional as F
import dst
from dst.models import build_model
fmt, density, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def hwm_kib():
    # VmHWM is this process's own peak; ru_maxrss also counts the parent's peak at fork
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.manual_seed(0)
model = build_model("resnet50", num_classes=1000)
dst.sparsify_(model, density, filter_fn=dst.paper_filter(model, dense_fc=False), format=fmt)
layers = [m for _, m in dst.sparse_layers(model)]
sparse_params = [m.weight for m in layers] if fmt == "dense" else [model.dst_bank]
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
base = hwm_kib()
x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
for _ in range(2):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
peak = hwm_kib()
def nbytes(ts): return sum(t.numel() * t.element_size() for t in ts)
state = [t for p in sparse_params for t in opt.state[p].values() if torch.is_tensor(t)]
all_state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
out = {"sparse_pgm": nbytes(sparse_params) * 2 + nbytes(state),
       "model_pgm": nbytes(list(model.parameters())) * 2 + nbytes(all_state),
       "peak_rss_mib": peak / 1024, "rss_before_step_mib": base / 1024}
print(json.dumps(out))
"""


def bench_memory(batches: list[int]) -> list[dict]:
    rows = []
    for batch, density in [(b, d) for b in batches for d in (0.2, 0.1)]:
        res = {}
        for fmt in ("dense", "compact"):
            r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, fmt, str(density),
                                str(batch)], capture_output=True, text=True, check=True)
            res[fmt] = json.loads(r.stdout.strip().splitlines()[-1])
        d, c = res["dense"], res["compact"]
        rows.append({
            "model": "ResNet-50", "sparsity": round(1 - density, 2),
            "sparse layers p+g+m, compact/dense": round(c["sparse_pgm"] / d["sparse_pgm"], 3),
            "sparse MiB dense": round(d["sparse_pgm"] / 2**20, 1),
            "sparse MiB compact": round(c["sparse_pgm"] / 2**20, 1),
            "whole model p+g+m MiB dense": round(d["model_pgm"] / 2**20, 1),
            "whole model p+g+m MiB compact": round(c["model_pgm"] / 2**20, 1),
            "peak RSS MiB dense": round(d["peak_rss_mib"]),
            "peak RSS MiB compact": round(c["peak_rss_mib"]), "batch": batch})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["layers", "goal", "kxk", "step", "memory"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-batch", type=int, default=8)
    ap.add_argument("--memory-batch", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    head = f"Command: `{command()}`  \nMachine: {machine()}\n"
    for part in args.parts:
        if part == "layers":
            rows = bench_layers(args.repeats)
            md = table(rows, ["model", "layer", "input", "sparsity", "dense_ms", "csr_ms",
                              "speedup", "auto"])
        elif part == "goal":
            rows = bench_goal(max(args.repeats, 5))
            md = table(rows, list(rows[0]))
        elif part == "kxk":
            rows = bench_kxk(args.repeats)
            md = table(rows, list(rows[0]))
        elif part == "step":
            rows = bench_step(args.step_batch, args.repeats)
            md = table(rows, list(rows[0]))
        elif part == "memory":
            rows = bench_memory(args.memory_batch)
            md = table(rows, list(rows[0]))
        else:
            raise SystemExit(f"unknown part {part!r}; valid: layers, goal, kxk, step, memory")
        for r in rows:
            r["machine"], r["command"] = machine(), command()
        write_csv(HERE / f"kernels_{part}.csv", rows)
        write_section(f"kernels-{part}", f"## Kernels: {part} ({device})\n\n{head}\n{md}\n")
        print(md)


if __name__ == "__main__":
    main()

"""Benchmark: dense nn.Linear / 1x1 nn.Conv2d vs CSR SpMM (dst.kernels.csr), forward + backward.

Times one training step of a layer (forward, backward to input, weight/values and bias):
warm-up, then the median of ``--repeats`` timed steps (``time.perf_counter``, with
``torch.cuda.synchronize`` on GPU).  The CSR structure is built once outside the timed region,
as in training, where it changes only when the mask does.  Conv inputs are NCHW unless
``--channels-last`` (on CPU, NCHW takes csr_conv1x1's copy-free per-sample path).  Prints a
markdown table and optionally writes a CSV that records the machine and the command line.

Example:
    python benchmarks/bench_csr.py --sizes 2048x2048 --batch 128 \
        --sparsities 0.8 0.9 0.95 0.98 --repeats 20 --device cpu --csv benchmarks/_tmp/csr.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from dst.kernels import CSRStructure, csr_conv1x1, csr_linear

# (in_channels, out_channels, height/width) of ResNet-50 1x1 convolutions.
RESNET50_1X1 = [(256, 64, 56), (64, 256, 56), (1024, 256, 14), (2048, 512, 7)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``step()`` in milliseconds."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _random_mask(shape, sparsity: float, device, gen: torch.Generator) -> torch.Tensor:
    """Mask with exactly round((1 - sparsity) * numel) active entries."""
    numel = 1
    for d in shape:
        numel *= d
    k = max(1, round((1.0 - sparsity) * numel))
    idx = torch.randperm(numel, generator=gen)[:k]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[idx] = True
    return mask.view(shape).to(device)


def _make_step(forward, params, x, grad):
    def step():
        for p in params:
            p.grad = None
        x.grad = None
        forward(x).backward(grad)

    return step


def bench_linear(out_f, in_f, batch, sparsities, args, device, gen):
    dtype = getattr(torch, args.dtype)
    layer = nn.Linear(in_f, out_f, device=device, dtype=dtype)
    x = torch.randn(batch, in_f, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, out_f, device=device, dtype=dtype)
    dense_ms = time_step(
        _make_step(layer, list(layer.parameters()), x, grad), device, args.warmup, args.repeats
    )
    rows = []
    for sp in sparsities:
        mask = _random_mask((out_f, in_f), sp, device, gen)
        s = CSRStructure.from_mask(mask)
        values = s.gather(layer.weight.detach()).clone().requires_grad_(True)
        bias = layer.bias.detach().clone().requires_grad_(True)
        fwd = lambda inp, s=s, v=values, b=bias: csr_linear(inp, v, s, b)
        csr_ms = time_step(
            _make_step(fwd, [values, bias], x, grad), device, args.warmup, args.repeats
        )
        rows.append(("linear", f"{out_f}x{in_f}", batch, sp, s.nnz, dense_ms, csr_ms))
    return rows


def bench_conv1x1(cin, cout, hw, batch, sparsities, args, device, gen):
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    conv = nn.Conv2d(cin, cout, 1, bias=False, device=device, dtype=dtype)
    conv = conv.to(memory_format=fmt)
    x = torch.randn(batch, cin, hw, hw, device=device, dtype=dtype).to(memory_format=fmt)
    x.requires_grad_(True)
    grad = torch.randn(batch, cout, hw, hw, device=device, dtype=dtype).to(memory_format=fmt)
    dense_ms = time_step(
        _make_step(conv, list(conv.parameters()), x, grad), device, args.warmup, args.repeats
    )
    rows = []
    for sp in sparsities:
        mask = _random_mask((cout, cin), sp, device, gen)
        s = CSRStructure.from_mask(mask)
        values = s.gather(conv.weight.detach()).clone().requires_grad_(True)
        fwd = lambda inp, s=s, v=values: csr_conv1x1(inp, v, s)
        csr_ms = time_step(_make_step(fwd, [values], x, grad), device, args.warmup, args.repeats)
        shape = f"{cin}->{cout}@{hw}x{hw}"
        rows.append(("conv1x1", shape, batch, sp, s.nnz, dense_ms, csr_ms))
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["2048x2048"], help="OUTxIN linear shapes")
    p.add_argument("--batch", type=int, default=128, help="rows of the linear input")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.95, 0.98])
    p.add_argument("--repeats", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--conv-batch", type=int, default=8, help="batch of the 1x1 conv inputs")
    p.add_argument("--no-conv", action="store_true", help="skip the ResNet-50 1x1 convs")
    p.add_argument("--channels-last", action="store_true", help="channels_last conv inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", default=None, help="write results to this CSV path")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    results = []
    for size in args.sizes:
        out_f, in_f = (int(v) for v in size.lower().split("x"))
        results += bench_linear(out_f, in_f, args.batch, args.sparsities, args, device, gen)
    if not args.no_conv:
        for cin, cout, hw in RESNET50_1X1:
            results += bench_conv1x1(
                cin, cout, hw, args.conv_batch, args.sparsities, args, device, gen
            )

    machine = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "processor": platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "dtype": args.dtype,
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    records = []
    print(
        f"device={machine['device']} processor={machine['processor']} "
        f"torch={machine['torch_version']} threads={machine['num_threads']}"
    )
    print("| kind | shape | batch | sparsity | nnz | dense ms | csr ms | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, shape, batch, sp, nnz, dense_ms, csr_ms in results:
        speedup = dense_ms / csr_ms
        print(
            f"| {kind} | {shape} | {batch} | {sp:.2f} | {nnz} | {dense_ms:.2f} | "
            f"{csr_ms:.2f} | {speedup:.2f}x |"
        )
        records.append(
            {
                "kind": kind,
                "shape": shape,
                "batch": batch,
                "sparsity": sp,
                "nnz": nnz,
                "dense_ms": round(dense_ms, 4),
                "csr_ms": round(csr_ms, 4),
                "speedup": round(speedup, 4),
                "repeats": args.repeats,
                **machine,
            }
        )
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        print(f"wrote {args.csv}")
    return records


if __name__ == "__main__":
    main()

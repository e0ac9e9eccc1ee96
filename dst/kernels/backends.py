"""Per-layer compute backends: ``dense`` (masked dense kernels), ``csr`` (sparse kernels:
Linear, 1x1 convs and stride-1 k x k convs on CPU; groups=1, no dilation, zero padding) and
``auto`` (time both on the real input the first time a shape is seen, and again after a mask
update moved the layer's density by more than ``RETUNE_RATIO``: forward + backward accumulating
into ``.grad`` as training does, the two interleaved, best of ``REPEATS`` after ``WARMUP``;
switch to CSR only for a >= ``MIN_GAIN`` speed-up, so a tie or noise keeps dense; decisions
cached across identical layers and logged per layer in ``autotune_log``)."""

from __future__ import annotations

import time
import warnings

import torch
from torch import Tensor, nn

from .._checks import check_choice
from . import conv
from .csr import CSRStructure, csr_conv1x1, csr_linear

BACKENDS = ("dense", "csr", "auto")
MIN_GAIN = 0.15  # csr must be at least 15 % faster than dense
RETUNE_RATIO = 1.25  # re-time after the density changed by more than 25 % (either way)
WARMUP, REPEATS = 2, 5
_DECISIONS: dict[tuple, tuple[str, float, float]] = {}


def _conv_padding(layer) -> tuple[int, int] | None:
    """Numeric (ph, pw) of a conv layer, or None for asymmetric 'same' padding."""
    p = layer.padding
    if p == "valid":
        return (0, 0)
    if p == "same":
        k = tuple(layer.kernel_size)
        return None if any(d % 2 == 0 for d in k) else ((k[0] - 1) // 2, (k[1] - 1) // 2)
    return tuple(int(v) for v in p)


def _is_pointwise(layer) -> bool:
    return tuple(layer.kernel_size) == (1, 1) and _conv_padding(layer) == (0, 0)


def csr_eligible(layer: nn.Module) -> bool:
    """Linear layers; convs with groups=1, dilation 1 and zero padding that are 1x1 without
    padding (any stride: CSR SpMM) or have stride 1 (direct sparse k x k conv, CPU only)."""
    if isinstance(layer, nn.Linear):
        return True
    if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
        return False
    if _conv_padding(layer) is None:
        return False
    return _is_pointwise(layer) or tuple(layer.stride) == (1, 1)


def runnable(layer, x: Tensor) -> bool:
    """Whether the csr backend can run this layer on this input (k x k convs: CPU only)."""
    return isinstance(layer, nn.Linear) or _is_pointwise(layer) or conv.runnable(x)


def clear_decisions() -> None:
    _DECISIONS.clear()


# ----------------------------------------------------------------------------- csr routing
def _structure(layer) -> CSRStructure:
    """The layer's CSR structure, rebuilt only when its active set changed (values in the
    storage's order: a compact layer's bank slots)."""
    storage = layer.storage
    key = storage.csr_key()
    cached = layer.__dict__.get("_csr_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    struct = storage.csr_structure()
    layer.__dict__["_csr_cache"] = (key, struct)
    return struct


def csr_forward(layer, x: Tensor) -> Tensor:
    struct = _structure(layer)
    values = layer.storage.csr_values(struct)
    if isinstance(layer, nn.Linear):
        return csr_linear(x, values, struct, layer.bias)
    if _is_pointwise(layer):
        return csr_conv1x1(x, values, struct, layer.bias, stride=tuple(layer.stride))
    ksize, pad = tuple(layer.kernel_size), _conv_padding(layer)
    plans = layer.__dict__.get("_conv_plans")
    if plans is None or plans[0] is not struct:  # per structure, then per input width
        plans = layer.__dict__["_conv_plans"] = (struct, {})
    width = x.shape[-1] + 2 * pad[1]
    if width not in plans[1]:
        plans[1][width] = conv.ConvPlan.build(struct, ksize, width)
    return conv.csr_conv2d(x, values, struct, layer.bias, ksize, pad, plans[1][width])


# ----------------------------------------------------------------------------- autotune
def _time_candidates(fns: dict, x: Tensor, params: list[Tensor]) -> dict[str, float]:
    """Best-of-``REPEATS`` time of each candidate's forward + backward, the candidates
    interleaved (A, B, A, B, ...) after ``WARMUP`` rounds, with the backward realized as in
    training: ``.backward()`` accumulating into the parameters' ``.grad`` (hooks included),
    and the input's gradient computed only when the real input requires one.
    The parameters' gradients are saved before and restored after; forward only without
    autograd."""
    backward = torch.is_grad_enabled()
    xt = x.detach().requires_grad_(backward and x.requires_grad and x.is_floating_point())
    sync = x.device.type == "cuda"
    saved = [p.grad for p in params]
    best = {k: float("inf") for k in fns}
    try:
        for i in range(WARMUP + REPEATS):
            for name, fn in fns.items():
                for p in params:
                    p.grad = None
                xt.grad = None
                if sync:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                out = fn(xt)
                if backward:
                    out.float().sum().backward()
                if sync:
                    torch.cuda.synchronize(x.device)
                if i >= WARMUP:
                    best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return best


def _time_fwd_bwd(fn, x: Tensor, params: list[Tensor]) -> float:
    """Best time of ``fn`` forward + backward as a hidden layer's (the input's gradient
    included; see :func:`_time_candidates`), for the kernel benchmarks."""
    xg = x.detach().requires_grad_(x.is_floating_point())
    return _time_candidates({"fn": fn}, xg, params)["fn"]


def _input_key(layer, x: Tensor) -> tuple:
    dev = x.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    return (type(layer).__name__, tuple(layer.weight_shape), tuple(getattr(layer, "stride", ())),
            tuple(x.shape), x.dtype, str(x.device), amp, cl, layer.storage.kind,
            torch.is_grad_enabled())


def choose(layer, x: Tensor) -> str:
    """The backend this forward should use ('dense' or 'csr')."""
    if layer.backend == "csr":
        if runnable(layer, x):
            return "csr"
        if not layer.__dict__.get("_warned_not_runnable"):
            layer.__dict__["_warned_not_runnable"] = True
            warnings.warn(f"{type(layer).__name__}{tuple(layer.weight_shape)}: backend='csr' for "
                          f"k x k convs runs on the native CPU kernels only; this {x.device.type} "
                          f"{x.dtype} input uses the dense kernels", stacklevel=3)
        return "dense"
    if layer.backend == "dense" or not csr_eligible(layer) or not runnable(layer, x):
        return "dense"
    density = layer.density
    key = _input_key(layer, x)
    tuned = layer.__dict__.setdefault("_tuned", {})
    seen = tuned.get(key)
    if seen is not None and 1 / RETUNE_RATIO <= density / seen[0] <= RETUNE_RATIO:
        return seen[1]
    gkey = (*key, round(density, 3))
    if gkey not in _DECISIONS:
        params = [layer.storage.param]
        if layer.bias is not None:
            params.append(layer.bias)
        t = _time_candidates({"dense": layer._dense_forward,
                              "csr": lambda z: csr_forward(layer, z)}, x, params)
        t_dense, t_csr = t["dense"], t["csr"]
        pick = "csr" if t_csr <= (1 - MIN_GAIN) * t_dense else "dense"  # ties keep dense
        _DECISIONS[gkey] = (pick, t_dense, t_csr)
    pick, t_dense, t_csr = _DECISIONS[gkey]
    if tuned.get(key, (None, None))[:2] != (density, pick):
        layer.__dict__.setdefault("autotune_log", []).append(
            {"input": list(x.shape), "grad": torch.is_grad_enabled(),
             "density": round(density, 4), "dense_ms": round(t_dense * 1e3, 3),
             "csr_ms": round(t_csr * 1e3, 3), "pick": pick})
    tuned[key] = (density, pick, t_dense, t_csr)
    return pick


def check_backend(layer, backend: str) -> str:
    """``backend`` after checking it is known and, for ``"csr"``, that the layer is eligible."""
    check_choice(backend, BACKENDS, "backend")
    if backend == "csr" and not csr_eligible(layer):
        raise ValueError("backend='csr' serves Linear layers and convs with groups=1, "
                         "dilation 1 and zero padding that are 1x1 without padding or have "
                         "stride 1; use 'auto' or 'dense' for this "
                         f"{type(layer).__name__} (kernel {getattr(layer, 'kernel_size', '')}, "
                         f"stride {getattr(layer, 'stride', '')})")
    return backend


def run(layer, x: Tensor) -> Tensor:
    """A sparse layer's forward on its backend (``"csr"``/``"auto"`` layers record the kernel
    used per call and mode in ``backend_used`` / ``backend_calls`` for the run summary)."""
    if layer.backend == "dense":
        return layer._dense_forward(x)
    used = "dense" if layer.capture_grad else choose(layer, x)
    layer.backend_used = used
    mode = "train" if torch.is_grad_enabled() else "no_grad"
    calls = layer.__dict__.setdefault("backend_calls", {}).setdefault(mode, {})
    calls[used] = calls.get(used, 0) + 1
    return csr_forward(layer, x) if used == "csr" else layer._dense_forward(x)

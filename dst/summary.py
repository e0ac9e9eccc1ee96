"""A model summary: per-layer shape, density, active count, dense or sparse; FLOPs per image."""

from __future__ import annotations

from torch import nn

from .convert import _unwrap, sparse_layers
from .models.flops import count_flops


def param_counts(model: nn.Module) -> dict:
    """Parameter counts of the dense-equivalent model and the non-zero ones (cheap)."""
    model = _unwrap(model)
    sparse = [m for _, m in sparse_layers(model)]
    storage = {id(m.storage.param) for m in sparse}
    other = sum(p.numel() for p in model.parameters() if id(p) not in storage)
    pool = sum(m.numel_dense for m in sparse)
    active = sum(m.n_active for m in sparse)
    return {"params_dense": other + pool, "params_nonzero": other + active,
            "model_density": (other + active) / (other + pool), "pool_size": pool,
            "pool_active": active, "pool_density": active / pool if pool else 1.0,
            "sparse_layers": len(sparse)}


def model_summary(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, dict]:
    """Return (a printable table, a dict of totals incl. MACs per image, dense vs sparse)."""
    model = _unwrap(model)
    sparse = dict(sparse_layers(model))
    lines = [f"{'layer':<34} {'shape':<22} {'size':>10} {'active':>10} {'density':>8}  "
             "kind (backend)"]
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if name in sparse:
            shape, size, n = m.weight_shape, m.numel_dense, m.n_active
            kind = f"sparse/{m.format} ({_backend_note(m)})"
        else:
            shape, size, kind = tuple(m.weight.shape), m.weight.numel(), "dense"
            n = size
        lines.append(f"{name:<34} {str(tuple(shape)):<22} {size:>10,} {n:>10,} "
                     f"{n / size:>8.4f}  {kind}")
    totals = param_counts(model)
    was_training = model.training
    ids = {id(m) for m in sparse.values()}
    per_layer = count_flops(model, (1, *input_shape))
    fd = sum(per_layer.values())
    fs = sum(count_flops(model, (1, *input_shape),
                         density_of=lambda m: m.density if id(m) in ids else 1.0).values())
    model.train(was_training)
    totals.update(flops_dense=int(fd), flops_sparse=int(fs), flops_ratio=fs / fd if fd else 1.0,
                  layer_macs_dense=per_layer)
    lines.append(
        f"parameters: {totals['params_nonzero']:,} non-zero of {totals['params_dense']:,} dense "
        f"(model density {totals['model_density']:.4f}; pool {totals['pool_active']:,}/"
        f"{totals['pool_size']:,} = {totals['pool_density']:.4f})")
    lines.append(f"MACs per image: sparse {fs:,} vs dense {fd:,} ({totals['flops_ratio']:.3f}x)")
    return "\n".join(lines), totals


def _backend_note(m) -> str:
    """``csr``, ``dense``, or for ``auto`` what training forwards ran so far (``auto: csr``)."""
    train = m.__dict__.get("backend_calls", {}).get("train")
    if m.backend != "auto" or not train:
        return m.backend
    if len(train) == 1:
        return f"auto: {next(iter(train))}"
    return "auto: " + " ".join(f"{k} {v}" for k, v in sorted(train.items()))


def layer_backends(model: nn.Module) -> dict[str, dict]:
    """Per sparse layer: its ``backend`` setting and, for ``csr``/``auto`` layers, how many
    forwards ran on each kernel, with and without autograd (``auto`` may pick differently for
    training and evaluation, and again after the engine moved the layer's density), e.g.
    ``{"backend": "auto", "train": {"csr": 1490, "dense": 10}, "no_grad": {"dense": 90}}``,
    and for ``auto`` layers each decision (input shape, density, dense and csr ms, pick).
    Counts start at 0 in each process."""
    out = {}
    for n, m in sparse_layers(model):
        out[n] = {"backend": m.backend, **m.__dict__.get("backend_calls", {})}
        if m.__dict__.get("autotune_log"):  # auto: every decision with its timings
            out[n]["autotune"] = list(m.__dict__["autotune_log"])
    return out

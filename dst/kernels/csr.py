"""CSR sparse-dense products with a hand-written backward (the ``csr`` backend).

Operands are laid out feature-major, ``y^T = W @ x^T``, so each sparse row touches whole
contiguous rows of the dense operand.  A step costs one SpMM forward, one SpMM with the cached
transposed structure (:class:`~dst.kernels.structure.CSRStructure`; values read through its
permutation, nothing re-transposed per step) and one SDDMM for the gradient of the active
values only.  On CPU in float32 these run on the native OpenMP kernels of
:mod:`dst.kernels.native` (2-3x faster than MKL's on the 2048x2048 layer); everything else, or a
machine without a C compiler, uses ``torch.addmm`` on CSR tensors (MKL / cuSPARSE) and
``torch.sparse.sampled_addmm``.

Dtypes: float32 and float64 are computed in their own precision on CPU and CUDA.  float16 /
bfloat16 (plain inputs or an autocast region) are computed in float32 and cast back to the
low-precision dtype, on CPU (MKL has no half kernels) and on CUDA alike (PyTorch's CUDA
``sampled_addmm`` only dispatches float/double; its half SpMM asks cuSPARSE for a half compute
type and has not been checked on a GPU here).  Under autocast the output has the autocast
dtype, like ``F.linear``; float64 is left alone.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from . import native
from .structure import CSRStructure, _csr, _same_device

__all__ = ["CSRStructure", "CSRLinearFunction", "csr_linear", "csr_conv1x1"]

_PER_SAMPLE_MIN_HW = 512  # H*W from which contiguous NCHW 1x1 convs run per sample on CPU
_SDDMM_CHUNK = 1 << 22  # max elements of the batched-SDDMM temporary in the NCHW conv path
# dtypes computed in their own precision per device type; everything else goes through float32.
_COMPUTE_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64)}


def _spmm(s: CSRStructure, values: torch.Tensor, b: torch.Tensor, transpose: bool = False):
    """``W @ b`` (or ``W^T @ b``) for row-major ``b`` (K, M) or a batch (n, K, M).

    Native kernels when :func:`native.usable`; else ``torch.addmm`` into an uninitialised output
    with ``beta=0`` (``torch.sparse.mm`` zero-fills and copies its result first: ~2.5x slower
    for tall-skinny products), per batch entry.
    """
    if transpose:
        crow, col, perm = s.t_crow_indices, s.t_col_indices, s.perm
    else:
        crow, col, perm = s.crow_indices, s.col_indices, s.order
    if native.usable(col, values, b):
        return native.spmm(crow, col, values, b, perm)
    a = s.to_sparse_csr_t(values) if transpose else s.to_sparse_csr(values)
    out = b.new_empty(*b.shape[:-2], a.shape[0], b.shape[-1])
    for o, bi in zip(out.view(-1, *out.shape[-2:]), b.view(-1, *b.shape[-2:]), strict=True):
        torch.addmm(o, a, bi, beta=0.0, out=o)
    return out


def _sddmm(s: CSRStructure, a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """Values of ``a @ bt^T`` at the active positions, in values order.

    ``a`` is (out, M) or (k, out, M), ``bt`` is (in, M) or (k, in, M), both row-major; a batch
    is summed over ``k`` (in chunks that bound the (chunk, nnz) temporary on the MKL path).
    """
    if native.usable(s.col_indices, a, bt):
        return native.sddmm(s.crow_indices, s.col_indices, a, bt, s.order)
    if a.dim() == 2:
        a, bt = a.unsqueeze(0), bt.unsqueeze(0)
    out = a.new_zeros(s.nnz)
    step = max(1, _SDDMM_CHUNK // max(s.nnz, 1))
    for i in range(0, a.shape[0], step):
        ai, bi = a[i : i + step], bt[i : i + step].transpose(1, 2)
        k = ai.shape[0]
        crow, col = s.crow_indices.expand(k, -1), s.col_indices.expand(k, -1)
        pattern = _csr(crow, col, ai.new_zeros(k, s.nnz), (k, *s.shape))
        out += torch.sparse.sampled_addmm(pattern, ai, bi, beta=0.0).values().sum(0)
    return out if s.order is None else torch.empty_like(out).index_copy_(0, s.order, out)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The active autocast dtype for ``device_type`` ("cpu"/"cuda"), or None."""
    if device_type not in ("cpu", "cuda"):
        return None
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: no device_type arguments
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _no_autocast(device_type: str):
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _resolve_dtypes(x: torch.Tensor, values: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(output dtype, compute dtype) for an op on ``x`` with weight ``values``."""
    out_dtype = torch.promote_types(x.dtype, values.dtype)
    if not out_dtype.is_floating_point:
        raise TypeError(f"csr kernels need floating inputs, got {x.dtype} and {values.dtype}")
    amp = _autocast_dtype(x.device.type)
    if amp is not None and out_dtype != torch.float64:
        out_dtype = amp
    own = _COMPUTE_DTYPES.get(x.device.type, (torch.float32, torch.float64))
    compute = out_dtype if out_dtype in own else torch.float32
    return out_dtype, compute


class CSRLinearFunction(torch.autograd.Function):
    """``y = x2d @ W^T (+ bias)`` with ``W`` given by ``(structure, values)``.

    Inputs share one dtype and device with ``structure`` (:func:`csr_linear` handles dtypes,
    autocast and leading dims).  Everything runs feature-major, ``y^T = W @ x^T`` with row-major
    (in, M) / (out, M) operands: MKL copies column-major operands and its column-major SpMM is
    ~2x slower.  ``x2d`` is therefore cheapest as the transpose of a contiguous (in, M) tensor,
    and the returned ``y`` is the (M, out) transpose of a contiguous tensor.  Backward:
    ``grad_x^T = W^T @ g^T`` (cached transpose), ``grad_values`` by SDDMM, ``grad_bias``.
    ``x^T`` is saved only when ``values`` needs a gradient.
    """

    @staticmethod
    def forward(ctx, x2d, values, structure, bias):
        m = x2d.shape[0]
        with _no_autocast(x2d.device.type):
            xt = x2d.t().contiguous()
            if structure.nnz == 0 or m == 0:
                yt = xt.new_zeros(structure.shape[0], m)
            else:
                yt = _spmm(structure, values, xt)
            if bias is not None:
                yt.add_(bias.unsqueeze(1))
        ctx.structure = structure
        needs = ctx.needs_input_grad
        ctx.save_for_backward(xt if needs[1] else None, values if needs[0] else None)
        return yt.t()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xt, values = ctx.saved_tensors
        s: CSRStructure = ctx.structure
        needs, m = ctx.needs_input_grad, grad_out.shape[0]
        empty = s.nnz == 0 or m == 0
        grad_x = grad_values = grad_bias = None
        with _no_autocast(grad_out.device.type):
            gt = grad_out.t().contiguous()  # (out, M) row-major
            if needs[0]:
                grad_x = (
                    gt.new_zeros(m, s.shape[1])
                    if empty
                    else _spmm(s, values, gt, transpose=True).t()
                )
            if needs[1]:
                grad_values = gt.new_zeros(s.nnz) if empty else _sddmm(s, gt, xt)
            if needs[3]:
                grad_bias = gt.sum(1)
        return grad_x, grad_values, None, grad_bias


def _finish(y: torch.Tensor, dtype: torch.dtype, fmt: torch.memory_format) -> torch.Tensor:
    """``y`` as ``dtype``, contiguous in ``fmt``, with at most one copy."""
    return y.contiguous(memory_format=fmt) if y.dtype == dtype else y.to(dtype, memory_format=fmt)


def _check(features: int, device, values: torch.Tensor, structure: CSRStructure, bias) -> None:
    rows, cols = structure.shape
    if values.dim() != 1 or values.numel() != structure.nnz:
        raise ValueError(
            f"values must be 1-D with nnz={structure.nnz} entries, got {tuple(values.shape)}"
        )
    if features != cols:
        raise ValueError(f"input has {features} features, structure expects {cols}")
    if bias is not None and tuple(bias.shape) != (rows,):
        raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")
    for name, dev in (("input", device), ("values", values.device), ("bias", bias)):
        dev = dev.device if isinstance(dev, torch.Tensor) else dev
        if dev is not None and not _same_device(dev, structure.device):
            msg = f"{name} is on {dev} but the CSR structure is on {structure.device}"
            raise ValueError(msg + "; call structure.to(device)")


def csr_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    structure: CSRStructure,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse ``F.linear``: ``x (..., in) -> (..., out)`` with ``W = (structure, values)``.

    float16/bfloat16 and autocast are computed in float32 and returned in the low-precision
    (autocast) dtype; see the module docstring.  The output is contiguous.
    """
    _check(x.shape[-1] if x.dim() else 0, x.device, values, structure, bias)
    rows, cols = structure.shape
    out_dtype, compute = _resolve_dtypes(x, values)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, cols).to(compute)
    b = bias.to(compute) if bias is not None else None
    y = CSRLinearFunction.apply(x2d, values.to(compute), structure, b)
    return _finish(y, out_dtype, torch.contiguous_format).reshape(*lead, rows)


class _CSRConv1x1NCHW(torch.autograd.Function):
    """1x1 conv on contiguous NCHW input with no layout copies (CPU path of csr_conv1x1).

    ``y[n] = W @ x[n]`` with ``x[n]`` a row-major (C, H*W) slice, written straight into the
    NCHW output (one batched SpMM); backward likewise, and ``grad_values`` by one SDDMM summed
    over samples.  3-4x faster than the permute path on ResNet-50 56x56 layers (CPU).
    """

    @staticmethod
    def forward(ctx, x, values, structure, bias):
        n, c, h, w = x.shape
        rows = structure.shape[0]
        with _no_autocast(x.device.type):
            if structure.nnz == 0 or x.numel() == 0:
                y = x.new_zeros(n, rows, h, w)
            else:
                y = _spmm(structure, values, x.view(n, c, h * w)).view(n, rows, h, w)
            if bias is not None:
                y.add_(bias.view(1, rows, 1, 1))
        ctx.structure = structure
        needs = ctx.needs_input_grad
        ctx.save_for_backward(x if needs[1] else None, values if needs[0] else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, values = ctx.saved_tensors
        s: CSRStructure = ctx.structure
        (rows, cols), needs = s.shape, ctx.needs_input_grad
        g = grad_out.contiguous()
        n, hw = g.shape[0], g.shape[2] * g.shape[3]
        empty = s.nnz == 0 or g.numel() == 0
        grad_x = grad_values = grad_bias = None
        with _no_autocast(g.device.type):
            if needs[0]:
                grad_x = (
                    g.new_zeros(n, cols, *g.shape[2:])
                    if empty
                    else _spmm(s, values, g.view(n, rows, hw), transpose=True).view(
                        n, cols, *g.shape[2:])
                )
            if needs[1]:
                grad_values = (
                    g.new_zeros(s.nnz) if empty else _sddmm(s, g.view(n, rows, hw), x.flatten(2))
                )
            if needs[3]:
                grad_bias = g.sum((0, 2, 3))
        return grad_x, grad_values, None, grad_bias


def _per_sample_path(x: torch.Tensor) -> bool:
    """Whether a contiguous-NCHW 1x1 conv uses the per-sample path (CPU, large feature maps)
    or the feature-major one (one copy each way, but long rows for the SpMM).  Measured on
    ResNet-50/WRN shapes on CPU: feature-major wins up to 16x16 (up to 2.8x at 7x7), the
    per-sample path from 28x28 on; 20x20 is a tie."""
    return x.device.type == "cpu" and x.shape[2] * x.shape[3] >= _PER_SAMPLE_MIN_HW


def csr_conv1x1(
    x: torch.Tensor,
    values: torch.Tensor,
    structure: CSRStructure,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Sparse 1x1 convolution (groups=1, no padding) on an (N, C, H, W) input.

    ``structure`` is built from the (out, in[, 1, 1]) weight mask; stride is applied by
    slicing.  The output is contiguous in the input's memory format.  Contiguous NCHW input on
    CPU with large feature maps takes a per-sample path with no layout copies; everything else
    (small maps, channels_last input, CUDA) is laid out feature-major as (C, N*H*W) (one
    copy), multiplied by :class:`CSRLinearFunction` and copied back (one copy).  Dtype
    handling as in :func:`csr_linear`.
    """
    if x.dim() != 4:
        raise ValueError(f"csr_conv1x1 expects a 4-D NCHW input, got shape {tuple(x.shape)}")
    _check(x.shape[1], x.device, values, structure, bias)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    channels_last = (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
    if sh != 1 or sw != 1:
        x = x[:, :, ::sh, ::sw]
    n, c, h, w = x.shape
    out_dtype, compute = _resolve_dtypes(x, values)
    v = values.to(compute)
    b = bias.to(compute) if bias is not None else None
    if not channels_last and _per_sample_path(x):
        y = _CSRConv1x1NCHW.apply(x.to(compute).contiguous(), v, structure, b)
        return y.to(out_dtype)
    # (C, N*H*W): copied here for NCHW input; a column-major view for channels_last, which
    # the Function copies to row-major.  One copy either way.
    xt = x.to(compute).transpose(0, 1).reshape(c, n * h * w)
    y = CSRLinearFunction.apply(xt.t(), v, structure, b)
    yt = y.t().reshape(structure.shape[0], n, h, w).transpose(0, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return _finish(yt, out_dtype, fmt)

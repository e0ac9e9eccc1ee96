"""CSR sparse-dense kernels with a hand-written backward.

Active values of a masked weight are ``weight.flatten()[mask.flatten().nonzero().squeeze(1)]``
(sorted flat index, row-major).  :class:`CSRStructure` holds everything that depends only on
the mask (CSR of ``W``, CSR of ``W^T`` and the value permutation between them); indices come
from the mask, never from non-zero values, so a regrown weight that is exactly zero still gets
its gradient.  A step costs one SpMM forward, one SpMM + one SDDMM
(``torch.sparse.sampled_addmm``, values out in ``values`` order) and one ``index_select``
backward; nothing is re-transposed per step.

Dtypes: float32 and float64 are computed natively on CPU and CUDA.  float16 / bfloat16 (plain
inputs or an autocast region) are computed in float32 and cast back to the low-precision dtype,
on CPU (MKL has no half kernels) and on CUDA alike (PyTorch's CUDA ``sampled_addmm`` only
dispatches float/double; its half SpMM asks cuSPARSE for a half compute type and has not been
checked on a GPU here).  Under autocast the output has the autocast dtype, like ``F.linear``;
float64 is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

import torch
from torch.autograd.function import once_differentiable

__all__ = ["CSRStructure", "CSRCache", "CSRLinearFunction", "csr_linear", "csr_conv1x1"]

# Creating CSR tensors triggers a one-off "beta state" UserWarning; it carries no information
# for users of this module.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

_INT32_MAX = 2**31 - 1
_SDDMM_CHUNK = 1 << 22  # max elements of the batched-SDDMM temporary in the NCHW conv path
# dtypes computed natively per device type; everything else goes through float32.
_NATIVE_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64)}


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


@dataclasses.dataclass(frozen=True)
class CSRStructure:
    """Sparsity structure of a 2-D (out_features, in_features) mask, in CSR form.

    Attributes:
        shape: ``(rows, cols)`` of ``W``.
        crow_indices, col_indices: CSR indices of ``W`` (``index_dtype``).
        t_crow_indices, t_col_indices: CSR indices of ``W^T`` (i.e. CSC of ``W``).
        perm: int64, ``values_t = values.index_select(0, perm)`` are the values of ``W^T`` in
            its CSR order.
        flat_indices: int64 sorted flat positions of the active entries of the mask.
    """

    shape: tuple[int, int]
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    t_crow_indices: torch.Tensor
    t_col_indices: torch.Tensor
    perm: torch.Tensor
    flat_indices: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, index_dtype: torch.dtype | None = None) -> CSRStructure:
        """Build the structure from a bool mask.

        A mask with more than two dims (e.g. a conv weight mask ``(out, in, kh, kw)``) is
        viewed as ``(out, in * kh * kw)``, which keeps the row-major value order.
        ``index_dtype`` defaults to int32 whenever the sizes fit (no measurable difference on
        CPU/MKL, half the memory, and the cuSPARSE-preferred type), else int64.
        """
        if mask.dim() < 2:
            raise ValueError(f"mask must have at least 2 dims, got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be bool, got {mask.dtype}")
        rows, cols = int(mask.shape[0]), math.prod(int(d) for d in mask.shape[1:])
        flat = mask.reshape(-1).nonzero().squeeze(1)
        nnz = int(flat.numel())
        if index_dtype is None:
            index_dtype = torch.int32 if max(nnz, rows, cols) <= _INT32_MAX else torch.int64
        if index_dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index_dtype must be int32 or int64, got {index_dtype}")
        row_idx = torch.div(flat, cols, rounding_mode="floor") if cols else flat
        col_idx = flat - row_idx * cols
        # W^T in CSR = entries sorted by (col, row); keys are unique, so argsort is exact.
        perm = torch.argsort(col_idx * rows + row_idx)
        idx = (_offsets(row_idx, rows), col_idx, _offsets(col_idx, cols), row_idx[perm])
        return cls((rows, cols), *(t.to(index_dtype) for t in idx), perm, flat)

    @property
    def nnz(self) -> int:
        return int(self.col_indices.numel())

    @property
    def device(self) -> torch.device:
        return self.col_indices.device

    @property
    def index_dtype(self) -> torch.dtype:
        return self.col_indices.dtype

    def to(self, device: torch.device | str) -> CSRStructure:
        """Return the structure on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if _same_device(self.device, device):
            return self
        tensors = (getattr(self, f.name) for f in dataclasses.fields(self)[1:])
        return CSRStructure(self.shape, *(t.to(device) for t in tensors))

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """Active values of a dense tensor with the mask's numel, in values order."""
        return dense.reshape(-1).index_select(0, self.flat_indices)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Dense ``shape`` tensor with ``values`` at the active positions, zeros elsewhere."""
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_copy(0, self.flat_indices, values).view(self.shape)

    def to_sparse_csr(self, values: torch.Tensor) -> torch.Tensor:
        """``W`` as a ``torch.sparse_csr`` tensor."""
        return _csr(self.crow_indices, self.col_indices, values, self.shape)

    def to_sparse_csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """``W^T`` as a ``torch.sparse_csr`` tensor from values in ``W``'s order (one gather)."""
        values_t = values.index_select(0, self.perm)
        return _csr(self.t_crow_indices, self.t_col_indices, values_t, self.shape[::-1])


def _offsets(idx: torch.Tensor, n: int) -> torch.Tensor:
    """CSR offsets (length n + 1) from per-entry row ids."""
    counts = torch.bincount(idx, minlength=n)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _spmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for CSR ``a`` and row-major ``b``.

    ``torch.sparse.mm`` allocates a zero-filled result and copies it once more before calling
    MKL; ``addmm`` into an uninitialised output with ``beta=0`` (which ignores the output's
    contents, NaNs included) skips both and is ~2.5x faster for tall-skinny products.
    """
    out = b.new_empty(a.shape[0], b.shape[1])
    return torch.addmm(out, a, b, beta=0.0, out=out)


def _sddmm(s: CSRStructure, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Values of ``a @ b`` at the active positions, in ``values`` order.

    ``a`` is (out, M) or (k, out, M), ``b`` is (M, in) or (k, M, in) with ``b``'s transpose
    row-major (what the CPU kernel wants); a batch is summed over ``k``.
    """
    crow, col, batch = s.crow_indices, s.col_indices, a.shape[:-2]
    if batch:
        crow, col = crow.expand(*batch, -1), col.expand(*batch, -1)
    pattern = _csr(crow, col, a.new_zeros(*batch, s.nnz), (*batch, *s.shape))
    out = torch.sparse.sampled_addmm(pattern, a, b, beta=0.0).values()
    return out.sum(0) if batch else out


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != "cuda" or b.type != "cuda":
        return a.type == b.type
    current = torch.cuda.current_device
    return (current() if a.index is None else a.index) == (
        current() if b.index is None else b.index
    )


class CSRCache:
    """Caches a :class:`CSRStructure` and rebuilds it only when ``version`` changes.

    The owner bumps ``version`` whenever it changes the mask (prune/regrow).  If the mask moved
    to another device without a version change the cached structure is moved, not rebuilt.
    """

    def __init__(self, index_dtype: torch.dtype | None = None) -> None:
        self.index_dtype = index_dtype
        self.structure: CSRStructure | None = None
        self.version: int | None = None
        self.builds = 0

    def get(self, mask: torch.Tensor, version: int) -> CSRStructure:
        s = self.structure
        if s is None or version != self.version:
            s = CSRStructure.from_mask(mask, self.index_dtype)
            self.version = version
            self.builds += 1
        elif not _same_device(s.device, mask.device):
            s = s.to(mask.device)
        self.structure = s
        return s

    def clear(self) -> None:
        self.structure = None
        self.version = None


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
    native = _NATIVE_DTYPES.get(x.device.type, (torch.float32, torch.float64))
    compute = out_dtype if out_dtype in native else torch.float32
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
                yt = _spmm(structure.to_sparse_csr(values), xt)
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
                    else _spmm(s.to_sparse_csr_t(values), gt).t()
                )
            if needs[1]:
                grad_values = gt.new_zeros(s.nnz) if empty else _sddmm(s, gt, xt.t())
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

    Per sample, ``y[n] = W @ x[n]`` with ``x[n]`` a row-major (C, H*W) slice written straight
    into the NCHW output; backward likewise, and ``grad_values`` by a batched SDDMM over chunks
    of samples.  3-4x faster than the permute path on ResNet-50 56x56 layers (CPU).
    """

    @staticmethod
    def forward(ctx, x, values, structure, bias):
        n, c, h, w = x.shape
        rows = structure.shape[0]
        y = x.new_empty(n, rows, h, w)
        with _no_autocast(x.device.type):
            if structure.nnz == 0 or y.numel() == 0:
                y.zero_()
            else:
                wcsr = structure.to_sparse_csr(values)
                for i in range(n):
                    yi = y[i].view(rows, h * w)
                    torch.addmm(yi, wcsr, x[i].view(c, h * w), beta=0.0, out=yi)
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
        todo = 0 if s.nnz == 0 or g.numel() == 0 else n
        grad_x = grad_values = grad_bias = None
        with _no_autocast(g.device.type):
            if needs[0]:
                grad_x = (g.new_empty if todo else g.new_zeros)(n, cols, *g.shape[2:])
                wt = s.to_sparse_csr_t(values) if todo else None
                for i in range(todo):
                    gi = grad_x[i].view(cols, hw)
                    torch.addmm(gi, wt, g[i].view(rows, hw), beta=0.0, out=gi)
            if needs[1]:
                grad_values = g.new_zeros(s.nnz)
                step = max(1, _SDDMM_CHUNK // max(s.nnz, 1))  # bounds the (step, nnz) temp
                for i in range(0, todo, step):
                    gb, xb = g[i : i + step].flatten(2), x[i : i + step].flatten(2)
                    grad_values += _sddmm(s, gb, xb.transpose(1, 2))
            if needs[3]:
                grad_bias = g.sum((0, 2, 3))
        return grad_x, grad_values, None, grad_bias


def _per_sample_path(x: torch.Tensor) -> bool:
    """Whether contiguous-NCHW 1x1 convs use the per-sample path (CPU) or feature-major."""
    return x.device.type == "cpu"


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
    CPU takes a per-sample path with no layout copies; channels_last input and CUDA (one
    cuSPARSE call rather than N small ones) are laid out feature-major as (C, N*H*W) (one
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

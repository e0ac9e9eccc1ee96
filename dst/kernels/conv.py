"""Direct sparse k x k convolution (stride 1, groups 1, zero padding) on the native CPU kernels.

No im2col: the input is zero-padded into buffers of row-flattened feature maps, one row per
channel per block of samples (``(blocks, C, nb * Hp * Wp + slack)``; see :class:`_CSRConvKxK`).
An active weight ``(o, c, i, j)`` then adds ``v * xpad[c]`` shifted by ``i * Wp + j`` to
``y[o]`` over the output maps laid out with the *padded* width (the ``Wp - Wo`` extra columns
per row are dropped), which is one SpMM whose entries carry a column offset: ``col = c``,
``off = i * Wp + j``.  Backward: the input gradient is the same product with the transposed
structure and negated offsets on a zero-padded copy of the output gradient, and the weight
gradient an SDDMM with the same offsets, both only over active weights.  Work grows with the
number of non-zeros, not with ``C * k * k``.

Only CPU with the native kernels (:func:`runnable`); inputs of other float dtypes are computed
in float32 and returned in their dtype (like :func:`~dst.kernels.csr.csr_linear`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.autograd.function import once_differentiable

from . import native
from .csr import _no_autocast, _resolve_dtypes
from .structure import CSRStructure

__all__ = ["ConvPlan", "csr_conv2d", "runnable"]


def runnable(x: torch.Tensor) -> bool:
    """Whether :func:`csr_conv2d` can run on this input (CPU, not float64, native kernels)."""
    return x.device.type == "cpu" and x.dtype != torch.float64 and native.available()


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """Per-entry channel indices and offsets of a structure for one padded input width."""

    kernel_size: tuple[int, int]
    padded_width: int
    chan: torch.Tensor  # int32 (nnz,): input channel of each CSR entry of W
    off: torch.Tensor  # int64 (nnz,): i * Wp + j
    t_crow: torch.Tensor  # int32 (C + 1,): per input channel, over W^T's entries
    t_row: torch.Tensor  # int32 (nnz,): output channel of each W^T entry
    t_off: torch.Tensor  # int64 (nnz,): -(i * Wp + j)

    @classmethod
    def build(cls, s: CSRStructure, kernel_size: tuple[int, int], padded_width: int) -> ConvPlan:
        kh, kw = kernel_size
        kk, wp = kh * kw, padded_width
        if s.shape[1] % kk:
            raise ValueError(f"structure with {s.shape[1]} columns is not (C * {kh} * {kw})")
        col = s.col_indices.long()
        tap = col % kk
        off = (tap // kw) * wp + tap % kw
        counts = s.t_crow_indices[1:] - s.t_crow_indices[:-1]
        t_tap = torch.arange(s.shape[1]).remainder(kk).repeat_interleave(counts.long())
        return cls(
            (kh, kw), wp, (col // kk).to(torch.int32), off,
            s.t_crow_indices[::kk].contiguous(), s.t_col_indices.to(torch.int32),
            -((t_tap // kw) * wp + t_tap % kw),
        )


def _geometry(x_shape, kernel_size, padding):
    n, c, h, w = x_shape
    (kh, kw), (ph, pw) = kernel_size, padding
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = hp - kh + 1, wp - kw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input {h}x{w} with padding {padding} is smaller than the kernel")
    return hp, wp, ho, wo


_BLOCK_PIXELS = 1024  # samples are folded into one row until it holds about this many pixels


def _samples_per_block(n: int, plane: int) -> int:
    """The largest divisor of ``n`` whose padded maps fit in ``_BLOCK_PIXELS`` (at least 1)."""
    return max(d for d in range(1, n + 1) if n % d == 0 and (d == 1 or d * plane <= _BLOCK_PIXELS))


class _CSRConvKxK(torch.autograd.Function):
    """Buffers are (blocks, channels, pixels): each channel row of a block holds the zero-padded
    maps of ``nb`` samples back to back (small maps make long rows; large maps stay one sample
    per block, which keeps a block's input in cache).  Shifted reads never reach from one map
    into another map's valid region: they land in padding or in dropped columns."""

    @staticmethod
    def forward(ctx, x, values, structure, bias, plan, padding, out_format):
        n, c, h, w = x.shape
        (kh, kw), (ph, pw), rows = plan.kernel_size, padding, structure.shape[0]
        hp, wp, ho, wo = _geometry(x.shape, plan.kernel_size, padding)
        nb = _samples_per_block(n, hp * wp)
        blocks, m = n // nb, nb * hp * wp
        xbuf = x.new_zeros(blocks, c, m + (kh - 1) * wp + kw - 1)  # slack: the largest offset
        xv = xbuf[..., :m].view(blocks, c, nb, hp, wp)[..., ph : ph + h, pw : pw + w]
        xv.copy_(x.reshape(blocks, nb, c, h, w).transpose(1, 2))
        y = native.spmm(structure.crow_indices, plan.chan, values, xbuf, structure.order,
                        plan.off, m=m)
        out = torch.empty((n, rows, ho, wo), dtype=x.dtype, memory_format=out_format)
        yv = y.view(blocks, rows, nb, hp, wp)[..., :ho, :wo].transpose(1, 2)
        out.view(blocks, nb, rows, ho, wo).copy_(yv)
        if bias is not None:
            out.add_(bias.view(1, rows, 1, 1))
        ctx.structure, ctx.plan, ctx.padding, ctx.x_shape = structure, plan, padding, x.shape
        ctx.in_format, ctx.nb = out_format, nb
        ctx.save_for_backward(xbuf if ctx.needs_input_grad[1] else None, values)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xbuf, values = ctx.saved_tensors
        s, plan, (ph, pw), nb = ctx.structure, ctx.plan, ctx.padding, ctx.nb
        n, c, h, w = ctx.x_shape
        (kh, kw), rows = plan.kernel_size, s.shape[0]
        hp, wp, ho, wo = _geometry(ctx.x_shape, plan.kernel_size, ctx.padding)
        blocks, m = n // nb, nb * hp * wp
        front = (kh - 1) * wp + kw - 1  # the most negative offset of the transposed product
        gbuf = grad_out.new_zeros(blocks, rows, front + m)
        gv = gbuf[..., front:].view(blocks, rows, nb, hp, wp)[..., :ho, :wo]
        gv.copy_(grad_out.reshape(blocks, nb, rows, ho, wo).transpose(1, 2))
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            gx = native.spmm(plan.t_crow, plan.t_row, values, gbuf[..., front:], s.perm,
                             plan.t_off, m=m)
            grad_x = torch.empty((n, c, h, w), dtype=gx.dtype, memory_format=ctx.in_format)
            gxv = gx.view(blocks, c, nb, hp, wp)[..., ph : ph + h, pw : pw + w]
            grad_x.view(blocks, nb, c, h, w).copy_(gxv.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_values = native.sddmm(s.crow_indices, plan.chan, gbuf[..., front:], xbuf,
                                       s.order, plan.off)
        if ctx.needs_input_grad[3]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_values, None, grad_bias, None, None, None


def csr_conv2d(x: torch.Tensor, values: torch.Tensor, structure: CSRStructure,
               bias: torch.Tensor | None, kernel_size: tuple[int, int],
               padding: tuple[int, int], plan: ConvPlan | None = None) -> torch.Tensor:
    """Sparse ``F.conv2d(x, W, bias, stride=1, padding=padding)`` with ``W = (structure,
    values)``, ``structure`` built from the (out, in, kh, kw) mask.  The output is contiguous in
    the input's memory format.  ``plan``: a cached :class:`ConvPlan` for this input width."""
    if x.dim() != 4:
        raise ValueError(f"csr_conv2d expects a 4-D NCHW input, got shape {tuple(x.shape)}")
    if not runnable(x):
        raise RuntimeError(
            "backend='csr' for k x k convolutions runs on the native CPU kernels only (CPU, "
            f"float32/16; got {x.device.type} {x.dtype}, native kernels "
            f"{'loaded' if native.available() else 'unavailable'}); use backend='auto' or "
            "'dense' for this layer"
        )
    kh, kw = kernel_size
    if structure.index_dtype != torch.int32:
        raise ValueError("csr_conv2d needs int32 structure indices")
    if x.shape[1] * kh * kw != structure.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, structure expects "
                         f"{structure.shape[1] // (kh * kw)}")
    wp = x.shape[3] + 2 * padding[1]
    if plan is None or plan.padded_width != wp or plan.kernel_size != (kh, kw):
        plan = ConvPlan.build(structure, (kh, kw), wp)
    channels_last = (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out_dtype, _ = _resolve_dtypes(x, values)
    with _no_autocast("cpu"):
        b = bias.float() if bias is not None else None
        y = _CSRConvKxK.apply(x.float(), values.float(), structure, b, plan, tuple(padding), fmt)
    return y if y.dtype == out_dtype else y.to(out_dtype)

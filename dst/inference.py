"""Sparse inference: :func:`to_inference` turns a trained sparse model into eval-only modules
that run CSR kernels, registered as the torch custom op ``dst::csr_mm`` so that
``torch.compile`` and ``torch.export`` trace them without graph breaks.

A Linear layer computes ``W x`` as a CSR product; a convolution as the CSR product of ``W``
(viewed as ``[out, in · k · k]``) with the unfolded input (``F.unfold``; a 1 × 1 stride-1
convolution needs no unfolding). Grouped convolutions stay dense. On the CPU the product is dst's
native OpenMP kernel (float32, int32 indices), elsewhere ``torch.sparse``. Outputs equal the
dense model's to float rounding (within 1e-5, relative).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import SparseMultiheadAttention
from .convert import BANK_NAME, _set_submodule, _unwrap, sparse_layers
from .kernels import native
from .layers import SparseConv2d, SparseLinear


@torch.library.custom_op("dst::csr_mm", mutates_args=())
def csr_mm(crow: Tensor, col: Tensor, values: Tensor, b: Tensor, rows: int) -> Tensor:
    """``S @ b`` for the CSR matrix ``S`` (``rows`` × K: ``crow``, ``col``, ``values``) and
    ``b`` of shape (K, L) or (n, K, L)."""
    if native.usable(col, values, b):
        return native.spmm(crow, col, values, b)
    s = torch.sparse_csr_tensor(crow.long(), col.long(), values, size=(rows, b.shape[-2]))
    if b.dim() == 2:
        return (s @ b).contiguous()
    return torch.stack([s @ bi for bi in b]).contiguous()


@csr_mm.register_fake
def _csr_mm_fake(crow, col, values, b, rows):
    return b.new_empty(*b.shape[:-2], rows, b.shape[-1])


def _csr(layer) -> tuple[Tensor, Tensor, Tensor]:
    """(crow, col, values) of the layer's weight viewed as [out, rest], row-major."""
    w = layer.dense_weight().detach()
    mask = layer.mask.reshape(w.shape[0], -1).to(w.device)
    counts = mask.sum(1)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    col = mask.nonzero()[:, 1].to(torch.int32)
    values = w.reshape(w.shape[0], -1)[mask].contiguous()
    return crow, col, values


class InferenceLinear(nn.Module):
    """``y = W x + b`` with ``W`` in CSR (eval only)."""

    def __init__(self, layer: SparseLinear):
        super().__init__()
        crow, col, values = _csr(layer)
        self.out_features, self.in_features = layer.weight_shape
        self.register_buffer("crow", crow)
        self.register_buffer("col", col)
        self.register_buffer("values", values)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        b = x.reshape(-1, self.in_features).t().contiguous()
        y = csr_mm(self.crow, self.col, self.values, b, self.out_features).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class InferenceConv2d(nn.Module):
    """A convolution as ``W`` (CSR, ``[out, in · k · k]``) times the unfolded input (eval only;
    zero padding, one group)."""

    def __init__(self, layer: SparseConv2d):
        super().__init__()
        crow, col, values = _csr(layer)
        self.out_channels = layer.weight_shape[0]
        self.kernel_size, self.stride = tuple(layer.kernel_size), tuple(layer.stride)
        self.padding, self.dilation = tuple(layer.padding), tuple(layer.dilation)
        self.register_buffer("crow", crow)
        self.register_buffer("col", col)
        self.register_buffer("values", values)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            cols = x.reshape(n, x.shape[1], h * w).contiguous()
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = csr_mm(self.crow, self.col, self.values, cols, self.out_channels)
        y = y.reshape(n, self.out_channels, ho, wo)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y


def _servable(layer) -> bool:
    if isinstance(layer, SparseLinear):
        return True
    return layer.groups == 1 and layer.padding_mode == "zeros" and \
        not isinstance(layer.padding, str)


def to_inference(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` whose sparse Linear and convolution layers run CSR
    kernels (:class:`InferenceLinear`, :class:`InferenceConv2d`). Attention projections, which
    torch's attention reads as tensors, and grouped convolutions become dense torch layers."""
    out = copy.deepcopy(_unwrap(model)).eval()
    in_attention = {f"{n}.{c}" for n, m in out.named_modules()
                    if isinstance(m, SparseMultiheadAttention) for c, _ in m.named_children()}
    for name, layer in sparse_layers(out):
        if name in in_attention or not _servable(layer):
            _set_submodule(out, name, layer.to_dense())
        elif isinstance(layer, SparseLinear):
            _set_submodule(out, name, InferenceLinear(layer))
        else:
            _set_submodule(out, name, InferenceConv2d(layer))
    out._parameters.pop(BANK_NAME, None)
    for name, m in list(out.named_modules()):
        if isinstance(m, SparseMultiheadAttention) and name:
            _set_submodule(out, name, m.to_torch())
    for p in out.parameters():
        p.requires_grad_(False)
    return out


INFERENCE_MODULES = (InferenceLinear, InferenceConv2d)

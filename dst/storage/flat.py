"""Flat (row-major) indexing of weights in any memory format, and dense materialization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..kernels.native import flat_nonzero, index_fill_

__all__ = ["all_finite", "flat_fill_", "flat_get", "flat_nonzero", "index_dtype", "materialize"]


def flat_get(t: Tensor, idx: Tensor) -> Tensor:
    """``t.flatten()[idx]`` in logical (row-major) order, for any memory format."""
    if t.is_contiguous():
        return t.view(-1).index_select(0, idx)
    return t[torch.unravel_index(idx, t.shape)]


def flat_fill_(t: Tensor, idx: Tensor, value: float | bool) -> None:
    """``t.flatten()[idx] = value`` in place, for any memory format."""
    if idx.numel() == 0:
        return
    if t.is_contiguous():
        index_fill_(t.view(-1), idx, value)
    else:
        t.index_put_(torch.unravel_index(idx, t.shape), torch.tensor(value, dtype=t.dtype,
                                                                      device=t.device))


def all_finite(t: Tensor) -> bool:
    """No NaN or infinity in ``t``: one min/max pass (NaN propagates through both), no
    temporary of ``t``'s size (``isfinite(t).all()`` took 13.5 ms against 0.27 ms on 2.3 M
    float32 values, one thread of an AMD EPYC with AVX-512)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def index_dtype(numel: int) -> torch.dtype:
    """The dtype of a compact layer's flat indices: int32 wherever they fit (half the bytes
    of int64 per active weight), int64 for weights of 2**31 entries or more."""
    return torch.int32 if numel < 2**31 else torch.int64


def materialize(values: Tensor, indices: Tensor, shape: Sequence[int],
                dtype: torch.dtype | None = None) -> Tensor:
    """Dense tensor of ``shape`` with ``values`` at flat ``indices`` and zeros elsewhere."""
    dtype = dtype or values.dtype
    numel = 1
    for s in shape:
        numel *= s
    w = values.new_zeros(numel, dtype=dtype)
    w.index_copy_(0, indices if indices.dtype == torch.int64 else indices.long(),
                  values.to(dtype))
    return w.view(*shape)

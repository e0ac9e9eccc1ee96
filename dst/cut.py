"""Cutting a tensor or a parameter down to some of its channels, optimizer state included
(the tensor work of structured slimming, :mod:`dst.slim`; storage uses it too). A leaf module:
it imports torch only."""

from __future__ import annotations

import torch
from torch import Tensor


def cut_tensor(t: Tensor, dim: int, keep: Tensor) -> Tensor:
    out = t.index_select(dim, keep.to(t.device))
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
            memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def cut_param_(param: Tensor, dim: int, keep: Tensor, optimizer=None) -> None:
    """Keep the entries ``keep`` of ``param`` along ``dim`` (same Parameter object, so the
    optimizer still holds it), with its gradient and every optimizer state of its shape."""
    if optimizer is not None:
        state = optimizer.state.get(param, {})
        for k, v in list(state.items()):
            if torch.is_tensor(v) and v.shape == param.shape:
                state[k] = cut_tensor(v, dim, keep)
    grad, param.grad = param.grad, None
    new = cut_tensor(param.data, dim, keep)
    # a graph still alive (the last step's loss) keeps the parameter's gradient accumulator,
    # which would check the next gradients against the old shape; autograd drops it when the
    # dtype changes, so pass through another dtype
    param.data = new.to(torch.float64 if new.dtype != torch.float64 else torch.float32)
    param.data = new
    if grad is not None:
        param.grad = cut_tensor(grad, dim, keep)

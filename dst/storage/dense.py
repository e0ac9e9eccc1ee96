"""The dense storage: the torch weight, inactive entries exactly zero, plus a bool mask.

There is no ``weight * mask`` per forward: the kernels use the weight as is, and the backward
zeroes the inactive entries of its gradient in place (a post-accumulate hook; a one-pass native
kernel on CPU float32), so SGD (momentum, Nesterov, weight decay), Adam and AdamW leave the
inactive weights at zero. While a method asks for the full gradient, a second hook captures it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cut import cut_param_, cut_tensor
from ..kernels.native import mask_zero_
from ..kernels.structure import CSRStructure
from .base import Change, Storage
from .flat import flat_fill_, flat_get, flat_nonzero


def _capture_hook(storage_ref, grad: Tensor) -> None:
    st = storage_ref()
    if st is not None and st.layer.capture_grad:
        st.keep_grad(grad)


def _zero_inactive_grad(storage_ref, weight: Tensor) -> None:
    st = storage_ref()
    if st is not None and weight.grad is not None:
        mask_zero_(weight.grad, st.mask)


def zero_state_(optimizer, param: Tensor, idx: Tensor) -> None:
    """Zero every optimizer state tensor of ``param``'s shape at flat positions ``idx``."""
    if optimizer is None or idx.numel() == 0:
        return
    for v in optimizer.state.get(param, {}).values():
        if torch.is_tensor(v) and v.shape == param.shape:
            flat_fill_(v, idx, 0)


class DenseStorage(Storage):
    kind = "dense"
    can_cut = True

    def __init__(self, layer, mask: Tensor):
        self._hooks: list | None = None  # [weakref to the hooked weight]
        self._active: tuple | None = None  # (mask key, sorted active indices)
        self._count: tuple | None = None  # (mask key, active count)
        layer.register_buffer("mask", mask.to(layer.weight.device))
        super().__init__(layer)
        with torch.no_grad():
            layer.weight.mul_(layer.mask)

    def __getstate__(self):
        """Pickles and deep copies leave the hook bookkeeping behind: the copy's weight is a
        new object and gets its own hooks on its first forward."""
        return {**self.__dict__, "_hooks": None}

    # -- the view -----------------------------------------------------------------------------
    @property
    def param(self) -> Tensor:
        return self.layer.weight

    @property
    def mask(self) -> Tensor:
        return self.layer._buffers["mask"]

    def csr_key(self) -> tuple:
        m = self.mask
        return (m.data_ptr(), m._version, m.device)

    @property
    def n_active(self) -> int:
        """Counted once per mask change (auto layers read it on every forward)."""
        key = self.csr_key()
        if self._active is not None and self._active[0] == key:
            return int(self._active[1].numel())
        if self._count is None or self._count[0] != key:
            self._count = (key, int(torch.count_nonzero(self.mask)))
        return self._count[1]

    def active_indices(self) -> Tensor:
        """In flat-index order always (rebuilt from the mask after any change), so nothing
        depends on the history of the cache."""
        key = self.csr_key()
        if self._active is None or self._active[0] != key:
            self._active = (key, flat_nonzero(self.mask))
        return self._active[1]

    def active_values(self, indices: Tensor | None = None) -> Tensor:
        idx = self.active_indices() if indices is None else indices
        return flat_get(self.layer.weight.detach(), idx)

    def dense_weight(self) -> Tensor:
        return self.layer.weight.detach()

    def set_mask_(self, mask: Tensor) -> None:
        """Optimizer state of deactivated weights is not touched: build the optimizer after
        this, or zero it (a stale momentum would move an inactive weight)."""
        with torch.no_grad():
            self.mask.copy_(mask)
            self.layer.weight.mul_(self.mask)

    def load_dense_(self, weight: Tensor) -> None:
        with torch.no_grad():
            w = weight.to(self.mask.device).reshape(self.mask.shape)
            self.layer.weight.copy_((w * self.mask).to(self.layer.weight.dtype))

    # -- compute ------------------------------------------------------------------------------
    def kernel_weight(self) -> Tensor:
        w = self.layer._parameters["weight"]
        self.hook_weight(w)
        return w

    def hook_weight(self, w: Tensor) -> None:
        """Give the weight object its two gradient hooks once: zero the inactive entries of its
        accumulated gradient, and capture the full gradient while the layer asks for it. They
        sit on the tensor, so a model reading ``layer.weight`` itself (``F.linear(x,
        layer.weight)``) gets them as the layer's forward does."""
        if not w.requires_grad or (self._hooks is not None and self._hooks[0]() is w):
            return
        me = weakref.ref(self)
        w.register_post_accumulate_grad_hook(functools.partial(_zero_inactive_grad, me))
        w.register_hook(functools.partial(_capture_hook, me))
        self._hooks = [weakref.ref(w)]

    def weight_view(self) -> Tensor:
        return self.kernel_weight()

    def linear(self, x: Tensor) -> Tensor:
        return F.linear(x, self.kernel_weight(), self.layer.bias)

    def conv2d(self, x: Tensor) -> Tensor:
        return self.layer._conv_forward(x, self.kernel_weight(), self.layer.bias)

    def csr_structure(self) -> CSRStructure:
        return CSRStructure.from_mask(self.mask.reshape(self.layer.weight_shape[0], -1))

    def csr_values(self, structure: CSRStructure) -> Tensor:
        return flat_get(self.layer.weight, structure.flat_indices)  # grads reach the weight

    # -- the engine's side --------------------------------------------------------------------
    def occupied(self, active: Tensor, unblock: Tensor | None) -> Tensor:
        if unblock is None:
            return self.mask.reshape(-1)  # read-only use; unchanged until the commit
        return super().occupied(active, unblock)

    def cut_(self, dim: int, keep: Tensor, optimizer=None) -> None:
        """Keep the channels ``keep`` along ``dim`` of the weight, its mask and optimizer
        state (structured slimming, :mod:`dst.slim`)."""
        cut_param_(self.layer.weight, dim, keep, optimizer)
        self.layer._buffers["mask"] = cut_tensor(self.mask, dim, keep)
        self._active = self._count = None

    def check(self, name: str) -> None:
        assert not bool(self.layer.weight.detach()[~self.mask].any()), \
            f"{name}: inactive weight != 0"

    def commit_group(self) -> object:
        return self

    def commit(self, changes: Sequence[Change], optimizer) -> None:
        for ch in changes:
            pruned = ch.active.index_select(0, ch.prune_pos)
            grown = ch.grown.to(pruned.device)
            changed = torch.cat([pruned, grown])
            with torch.no_grad():
                flat_fill_(self.mask, pruned, False)
                flat_fill_(self.mask, grown, True)
                flat_fill_(self.layer.weight, changed, 0.0)
            zero_state_(optimizer, self.layer.weight, changed)
            # the mask changed in place: the active indices are rebuilt from it on next use

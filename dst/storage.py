"""Storage formats behind the sparse layers.

``dense``   the torch weight, inactive entries held at exactly zero, plus a bool ``mask`` buffer.
``compact`` only the active values (in a flat :class:`SparseBank`) plus their flat
            ``indices`` (unique, in slot order, not sorted; int32 where they fit);
            parameters, gradients and optimizer state grow with the number of non-zeros.
            The forward materializes one layer's dense weight inside a custom autograd
            function and drops it; the backward rebuilds it, so no dense weight is kept alive
            between forward and backward.

The engine edits masks only through :func:`commit`, which also zeroes the optimizer state of every
position that changed (dense) or re-packs the bank and every optimizer state tensor of its shape
with one gather (compact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ----------------------------------------------------------------------------- flat indexing
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
        t.view(-1).index_fill_(0, idx, value)
    else:
        t.index_put_(torch.unravel_index(idx, t.shape), torch.tensor(value, dtype=t.dtype,
                                                                      device=t.device))


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


# ----------------------------------------------------------------------------- the bank
class SparseBank:
    """One flat parameter holding the active values of several compact layers, back to back.

    Its size is the budget and never changes, so the optimizer and DDP see one fixed parameter;
    a reallocation re-packs it in place. The parameter is registered on ``owner`` under ``name``
    (the model as ``dst_bank`` when shared, the layer as ``values`` when private); the bank itself
    is a plain object so it never joins a module's forward (e.g. in ``nn.Sequential``).
    """

    def __init__(self, owner: nn.Module, name: str, layers: Sequence[nn.Module]):
        self.owner = owner
        self.name = name
        self._members = list(layers)
        self._layout_version = 0
        self._offsets_cache: tuple[int, list[int]] | None = None
        for i, layer in enumerate(self._members):
            object.__setattr__(layer, "_bank", self)
            object.__setattr__(layer, "_bank_slot", i)

    @property
    def values(self) -> nn.Parameter:
        return self.owner._parameters[self.name]

    def replace_values(self, values: Tensor) -> None:
        """Register a new parameter (a new size): build the optimizer after this."""
        setattr(self.owner, self.name, nn.Parameter(values))
        self.bump()

    def bump(self) -> None:
        """Invalidate cached offsets (call after any member's ``indices`` changed size)."""
        self._layout_version += 1

    def offsets(self) -> list[int]:
        if self._offsets_cache is None or self._offsets_cache[0] != self._layout_version:
            offs, total = [], 0
            for layer in self._members:
                offs.append(total)
                total += layer.indices.numel()
            if total != self.values.numel():
                raise RuntimeError(
                    f"compact bank holds {self.values.numel()} values but its layers index "
                    f"{total}: the state_dict loaded does not match this model's layout")
            self._offsets_cache = (self._layout_version, offs)
        return self._offsets_cache[1]

    def slice_of(self, layer: nn.Module) -> Tensor:
        off = self.offsets()[layer._bank_slot]
        return self.values[off: off + layer.indices.numel()]

    def __repr__(self) -> str:
        return f"SparseBank(size={self.values.numel()}, layers={len(self._members)})"


# ----------------------------------------------------------------------------- autocast dtype
def _compute_dtype(x: Tensor, param_dtype: torch.dtype) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(x.dtype, param_dtype)


class _CompactConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, indices, shape, conv_args, capture):
        dtype = _compute_dtype(x, values.dtype)
        w = materialize(values, indices, shape, dtype)
        xin = x.to(dtype)
        b = None if bias is None else bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(xin, w, b, *conv_args)
        ctx.save_for_backward(xin, values, indices)
        ctx.meta = (shape, conv_args, dtype, x.dtype, bias, capture)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xin, values, indices = ctx.saved_tensors
        shape, (stride, padding, dilation, groups), dtype, x_dtype, bias, capture = ctx.meta
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        need_w = need_v or capture is not None
        w = materialize(values, indices, shape, dtype)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out.to(dtype), xin, w, [shape[0]] if bias is not None else None,
            list(stride), list(padding), list(dilation), False, [0, 0], groups,
            [need_x, need_w, need_b and bias is not None])
        g_values = None
        if need_w:
            if capture is not None:
                capture(gw)
            g_values = gw.reshape(-1).index_select(0, indices).to(values.dtype)
        g_bias = gb.to(bias.dtype) if (need_b and bias is not None) else None
        return (gx.to(x_dtype) if need_x else None, g_values if need_v else None, g_bias,
                None, None, None, None)


class _CompactLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, indices, shape, capture):
        dtype = _compute_dtype(x, values.dtype)
        w = materialize(values, indices, shape, dtype)
        xin = x.to(dtype)
        b = None if bias is None else bias.to(dtype)
        out = F.linear(xin, w, b)
        ctx.save_for_backward(xin, values, indices)
        ctx.meta = (shape, dtype, x.dtype, bias, capture)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xin, values, indices = ctx.saved_tensors
        shape, dtype, x_dtype, bias, capture = ctx.meta
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        g = grad_out.to(dtype)
        gx = g_values = gb = None
        if need_x:
            w = materialize(values, indices, shape, dtype)
            gx = (g @ w).to(x_dtype)
        if need_v or capture is not None:
            gw = g.reshape(-1, shape[0]).t() @ xin.reshape(-1, shape[1])
            if capture is not None:
                capture(gw)
            g_values = gw.reshape(-1).index_select(0, indices).to(values.dtype)
        if need_b and bias is not None:
            gb = g.reshape(-1, shape[0]).sum(0).to(bias.dtype)
        return gx, g_values if need_v else None, gb, None, None, None


def compact_conv2d(x: Tensor, values: Tensor, bias: Tensor | None, indices: Tensor,
                   shape: Sequence[int], stride, padding, dilation, groups: int,
                   capture: Callable[[Tensor], None] | None = None) -> Tensor:
    return _CompactConv2d.apply(x, values, bias, indices, tuple(shape),
                                (tuple(stride), tuple(padding), tuple(dilation), groups), capture)


def compact_linear(x: Tensor, values: Tensor, bias: Tensor | None, indices: Tensor,
                   shape: Sequence[int], capture: Callable[[Tensor], None] | None = None) -> Tensor:
    return _CompactLinear.apply(x, values, bias, indices, tuple(shape), capture)


# ----------------------------------------------------------------------------- commit
@dataclass
class Change:
    """One layer's edit: ``active`` the flat indices before, ``prune_pos`` positions
    *within* ``active`` to deactivate, ``grown`` new flat indices (currently inactive)."""

    layer: nn.Module
    active: Tensor
    prune_pos: Tensor
    grown: Tensor


def _zero_state_(optimizer, param: Tensor, idx: Tensor) -> None:
    if optimizer is None or idx.numel() == 0:
        return
    for v in optimizer.state.get(param, {}).values():
        if torch.is_tensor(v) and v.shape == param.shape:
            flat_fill_(v, idx, 0)


def _commit_dense(ch: Change, optimizer) -> None:
    layer = ch.layer
    pruned = ch.active.index_select(0, ch.prune_pos)
    grown = ch.grown.to(pruned.device)
    with torch.no_grad():
        flat_fill_(layer.mask, pruned, False)
        flat_fill_(layer.mask, grown, True)
        flat_fill_(layer.weight, pruned, 0.0)
        flat_fill_(layer.weight, grown, 0.0)
    _zero_state_(optimizer, layer.weight, torch.cat([pruned, grown]))
    # the mask changed in place, so the layer's cached active indices are rebuilt from it on
    # the next use: always in flat-index order, as after a load_state_dict (no history)


def _repacked_layer(ch: Change, offset: int) -> tuple[Tensor, Tensor]:
    """A compact layer's new indices and, per new slot, its old bank slot (-1: grown, zero).

    Grown weights take the slots of pruned ones in place; surplus pruned slots are dropped and
    surplus grown weights appended, so indices stay unique but are not kept sorted."""
    n, k, g = ch.active.numel(), ch.prune_pos.numel(), ch.grown.numel()
    idx = ch.active.clone()
    src = torch.arange(offset, offset + n, device=idx.device)
    grown = ch.grown.to(idx.device, idx.dtype)
    reuse = ch.prune_pos[: min(k, g)]
    idx[reuse] = grown[: reuse.numel()]
    src[reuse] = -1
    if k > g:  # drop the pruned slots nobody took
        keep = torch.ones(n, dtype=torch.bool, device=idx.device)
        keep[ch.prune_pos[g:]] = False
        idx, src = idx[keep], src[keep]
    elif g > k:
        extra = grown[k:]
        idx = torch.cat([idx, extra])
        src = torch.cat([src, torch.full_like(extra, -1, dtype=src.dtype)])
    return idx, src


def _commit_bank(bank: SparseBank, changes: dict[int, Change], optimizer) -> None:
    offsets = bank.offsets()
    srcs, new_indices = [], []
    for slot, layer in enumerate(bank._members):
        ch = changes.get(slot)
        if ch is None:
            n = layer.indices.numel()
            srcs.append(torch.arange(offsets[slot], offsets[slot] + n, device=layer.indices.device))
            new_indices.append(layer.indices)
        else:
            idx, src = _repacked_layer(ch, offsets[slot])
            new_indices.append(idx)
            srcs.append(src)
    src = torch.cat(srcs).to(bank.values.device)
    if src.numel() != bank.values.numel():
        raise RuntimeError(f"re-pack changes the compact budget ({bank.values.numel()} -> "
                           f"{src.numel()}); all layers of a bank must be updated together")
    valid = src >= 0
    gather = src.clamp(min=0)

    def repack_(t: Tensor) -> None:
        t.copy_(t.index_select(0, gather).masked_fill_(~valid, 0))

    with torch.no_grad():
        repack_(bank.values.data)
        if optimizer is not None:
            for v in optimizer.state.get(bank.values, {}).values():
                if torch.is_tensor(v) and v.shape == bank.values.shape:
                    repack_(v)
    for layer, idx in zip(bank._members, new_indices, strict=True):
        layer.indices = idx
    bank.bump()


def commit(changes: Sequence[Change], optimizer=None) -> None:
    """Apply every layer's change; new weights and their optimizer state are exactly zero."""
    banks: dict[int, tuple[SparseBank, dict[int, Change]]] = {}
    for ch in changes:
        if ch.layer.format == "dense":
            _commit_dense(ch, optimizer)
        else:
            bank = ch.layer._bank
            banks.setdefault(id(bank), (bank, {}))[1][ch.layer._bank_slot] = ch
    for bank, chs in banks.values():
        _commit_bank(bank, chs, optimizer)

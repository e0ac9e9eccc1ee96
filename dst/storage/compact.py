"""The compact storage: only the active values (a slice of one flat :class:`SparseBank`
shared by the compact layers) plus their flat indices (unique, in slot order, not sorted;
int32 where they fit), so parameters, gradients, optimizer state and indices grow with the
number of non-zeros. The forward materializes one layer's dense weight inside a custom
autograd function and drops it; the backward rebuilds it, so no dense weight is kept alive
between forward and backward. A reallocation re-packs the bank in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.structure import CSRStructure
from .bank import SparseBank
from .base import Change, Storage
from .flat import flat_get, index_dtype, materialize


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


def _repack_layer(ch: Change) -> tuple[Tensor, Tensor | None, int]:
    """A compact layer's new indices, the bool of its old slots kept (None: all) and the number
    of slots appended. Grown weights take the slots of pruned ones in place; surplus pruned
    slots are dropped and surplus grown weights appended, so indices stay unique but are not
    kept sorted."""
    k, g = ch.prune_pos.numel(), ch.grown.numel()
    idx = ch.active.clone()
    grown = ch.grown.to(idx.device, idx.dtype)
    reuse = ch.prune_pos[: min(k, g)]
    idx[reuse] = grown[: reuse.numel()]
    if k > g:
        keep = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
        keep[ch.prune_pos[g:]] = False
        return idx[keep], keep, 0
    return (torch.cat([idx, grown[k:]]), None, g - k) if g > k else (idx, None, 0)


def _commit_bank(bank: SparseBank, changes: dict[int, Change], optimizer) -> None:
    """Re-pack the bank in the layout of :func:`_repack_layer`: the values and every optimizer
    state tensor of the bank's shape are zeroed at the pruned slots (grown weights start at 0
    there), then, where a layer's count changed, rebuilt from contiguous pieces of the old bank
    (dropped slots left out, zeros appended)."""
    offsets = bank.offsets()
    new_indices, zero_slots, pieces = [], [], []  # pieces: (start, stop, kept, appended)
    for slot, layer in enumerate(bank._members):
        ch, start, n = changes.get(slot), offsets[slot], layer.indices.numel()
        if ch is None:
            new_indices.append(layer.indices)
            pieces.append((start, start + n, None, 0))
            continue
        idx, keep, appended = _repack_layer(ch)
        new_indices.append(idx)
        zero_slots.append(ch.prune_pos.to(bank.values.device) + start)
        pieces.append((start, start + n, keep, appended))
    size = sum(int(i.numel()) for i in new_indices)
    if size != bank.values.numel():
        raise RuntimeError(f"re-pack changes the compact budget ({bank.values.numel()} -> "
                           f"{size}); all layers of a bank must be updated together")
    zero_slots = torch.cat(zero_slots) if zero_slots else None
    moved = any(keep is not None or appended for _, _, keep, appended in pieces)

    def repack_(t: Tensor) -> None:
        if zero_slots is not None:
            t.index_fill_(0, zero_slots, 0)
        if not moved:
            return
        parts = []
        for start, stop, keep, appended in pieces:
            parts.append(t[start:stop] if keep is None else t[start:stop][keep.to(t.device)])
            if appended:
                parts.append(t.new_zeros(appended))
        t.copy_(torch.cat(parts))

    with torch.no_grad():
        repack_(bank.values.data)
        if optimizer is not None:
            for v in optimizer.state.get(bank.values, {}).values():
                if torch.is_tensor(v) and v.shape == bank.values.shape:
                    repack_(v)
    counts = [int(layer.indices.numel()) for layer in bank._members]
    for layer, idx in zip(bank._members, new_indices, strict=True):
        layer.indices = idx
    if counts != [int(i.numel()) for i in new_indices]:
        bank.bump()  # the offsets moved; unchanged ones keep their cache (and compiled graphs)


def _explicit_padding(x: Tensor, padding: str, kernel_size, dilation):
    if padding == "valid":
        return x, (0, 0)
    pads = []  # 'same': total = d*(k-1), left = total // 2 (torch's rule)
    for k, d in zip(reversed(kernel_size), reversed(dilation), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads), (0, 0)


class CompactStorage(Storage):
    kind = "compact"
    fixed_size = True  # its values are a slice of a bank of fixed size

    def __init__(self, layer, mask: Tensor):
        super().__init__(layer)
        self.bank: SparseBank | None = None
        self.slot = 0
        weight = layer._parameters["weight"]  # the dense one, until it goes below
        idx = mask.reshape(-1).nonzero().squeeze(1).to(weight.device, index_dtype(mask.numel()))
        values = flat_get(weight.detach(), idx).clone()
        del layer.weight
        layer.register_buffer("indices", idx)
        layer.values = nn.Parameter(values)
        SparseBank(layer, "values", [layer])  # a private bank until sparsify_ shares one

    # -- the view -----------------------------------------------------------------------------
    @property
    def param(self) -> Tensor:
        return self.bank.values

    @property
    def indices(self) -> Tensor:
        return self.layer._buffers["indices"]

    @property
    def n_active(self) -> int:
        return int(self.indices.numel())

    def active_indices(self) -> Tensor:
        return self.indices

    def active_values(self, indices: Tensor | None = None) -> Tensor:
        return self.bank.slice_of(self.layer)  # a view, in slot order

    @property
    def mask(self) -> Tensor:
        idx = self.indices
        return materialize(torch.ones_like(idx, dtype=torch.bool), idx, self.layer.weight_shape)

    def dense_weight(self) -> Tensor:
        return materialize(self.active_values().detach(), self.indices, self.layer.weight_shape)

    def layer_attribute(self, name: str):
        if name == "mask":  # derived on demand
            return self.mask
        if name == "weight":
            return self.weight_view()
        return super().layer_attribute(name)

    def weight_view(self) -> Tensor:
        """The full weight built on access (a dense tensor of the weight's size, zeros at
        inactive positions) that gradients flow through into the bank's values; while the
        layer asks for full gradients, the gradient w.r.t. this tensor is captured (a tensor
        hook). Costs one dense weight and one scatter per read: read it once per forward."""
        w = materialize(self.active_values(), self.indices, self.layer.weight_shape)
        if w.requires_grad and self.layer.capture_grad:
            w.register_hook(self._capture_view_grad)
        return w

    def _capture_view_grad(self, g: Tensor) -> None:
        self.keep_grad(g)

    def set_mask_(self, mask: Tensor) -> None:
        """A layer sharing its bank must keep its active count (use :func:`dst.set_masks_`
        on the whole model before building the optimizer instead)."""
        idx = mask.reshape(-1).nonzero().squeeze(1).to(self.indices.dtype)
        if idx.numel() != self.indices.numel() and len(self.bank._members) > 1:
            raise ValueError("set_mask_ would change the size of a shared compact bank; "
                             "use dst.set_masks_(model, masks) before creating the optimizer")
        with torch.no_grad():
            values = flat_get(self.dense_weight(), idx)
            self.layer.indices = idx
            if values.numel() == self.bank.values.numel():
                self.bank.values.data.copy_(values)
                self.bank.bump()
            else:
                self.bank.replace_values(values)

    def set_masks_together(self, masks: dict) -> None:
        """Any active counts: the bank is rebuilt (build the optimizer after this)."""
        parts = []
        for m in self.bank._members:
            st = m.storage
            if m in masks:
                idx = masks[m].reshape(-1).nonzero().squeeze(1).to(st.indices.dtype)
                parts.append((idx, flat_get(st.dense_weight(), idx)))
            else:
                parts.append((st.indices, st.active_values().detach()))
        for m, (idx, _) in zip(self.bank._members, parts, strict=True):
            m.indices = idx
        self.bank.replace_values(torch.cat([v for _, v in parts]).clone())

    def load_state_dict_pre(self, state_dict, prefix: str) -> None:
        """Follow a checkpoint's active count (indices, and the values of a private bank)."""
        key = prefix + "indices"
        if key in state_dict and state_dict[key].shape != self.indices.shape:
            self.layer.indices = torch.empty_like(state_dict[key], device=self.indices.device,
                                                  dtype=self.indices.dtype)
            self.bank.bump()
        vkey = prefix + "values"
        if self.bank.owner is self.layer and vkey in state_dict \
                and state_dict[vkey].shape != self.bank.values.shape:
            self.bank.replace_values(torch.empty_like(state_dict[vkey],
                                                      device=self.bank.values.device))

    def reset_parameters(self) -> None:
        """Torch's default init law, drawn on a dense temporary."""
        w = torch.empty(self.layer.weight_shape, device=self.indices.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        with torch.no_grad():
            self.active_values().copy_(flat_get(w, self.indices))
            bias = self.layer.bias
            if bias is not None:
                fan_in = math.prod(self.layer.weight_shape[1:])
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(bias, -bound, bound)

    # -- compute ------------------------------------------------------------------------------
    def _capture(self):
        return self.keep_grad if self.layer.capture_grad else None

    def linear(self, x: Tensor) -> Tensor:
        layer = self.layer
        return compact_linear(x, self.active_values(), layer.bias, self.indices,
                              layer.weight_shape, self._capture())

    def conv2d(self, x: Tensor) -> Tensor:
        layer = self.layer
        padding = layer.padding
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            padding = (0, 0)
        elif isinstance(padding, str):
            x, padding = _explicit_padding(x, padding, layer.kernel_size, layer.dilation)
        return compact_conv2d(x, self.active_values(), layer.bias, self.indices,
                              layer.weight_shape, layer.stride, padding, layer.dilation,
                              layer.groups, self._capture())

    def csr_key(self) -> tuple:
        idx = self.indices
        return (idx.data_ptr(), idx._version, idx.numel(), idx.device)

    def csr_structure(self) -> CSRStructure:
        return CSRStructure.from_indices(self.indices, self.layer.weight_shape)

    def csr_values(self, structure: CSRStructure) -> Tensor:
        return self.active_values()  # slot order = the structure's values order

    # -- the engine's side --------------------------------------------------------------------
    def commit_group(self) -> object:
        return self.bank

    def commit(self, changes: Sequence[Change], optimizer) -> None:
        _commit_bank(self.bank, {ch.layer.storage.slot: ch for ch in changes}, optimizer)

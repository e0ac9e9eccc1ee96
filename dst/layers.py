"""Drop-in sparse layers: ``SparseConv2d`` and ``SparseLinear``.

Each subclasses the torch layer it replaces, keeps its constructor and adds keyword-only
``density`` and ``format``. The set of active weights is the layer's ``mask``; only
:class:`dst.SparseEngine` (or an explicit ``set_mask_``) changes it.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import FORMATS, check_choice, check_density
from .distributions import budget_for
from .kernels.backends import BACKENDS, choose, csr_eligible, csr_forward
from .kernels.native import mask_zero_
from .storage import (
    SparseBank,
    compact_conv2d,
    compact_linear,
    flat_get,
    index_dtype,
    materialize,
)


def random_mask(shape, count: int, generator: torch.Generator | None = None,
                device=None) -> Tensor:
    """A bool tensor of ``shape`` with exactly ``count`` True entries at uniformly random places."""
    numel = math.prod(shape)
    idx = torch.randperm(numel, generator=generator)[:count]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[idx] = True
    return mask.view(*shape).to(device)


def _capture_hook(layer_ref, grad: Tensor) -> None:
    layer = layer_ref()
    if layer is not None and layer._capture_grad:
        layer._store_dense_grad(grad)


def _zero_inactive_grad(layer_ref, weight: Tensor) -> None:
    layer = layer_ref()
    if layer is not None and weight.grad is not None and "mask" in layer._buffers:
        mask_zero_(weight.grad, layer._buffers["mask"])


class SparseMixin:
    """Shared logic of the sparse layers (formats, masks, conversion)."""

    _capture_grad: bool = False

    # -- set-up ---------------------------------------------------------------------------
    def _setup_sparse(self, density: float, format: str, mask: Tensor | None,
                      generator: torch.Generator | None, backend: str = "dense") -> None:
        density = check_density(density)
        check_choice(format, FORMATS, "format")
        self.set_backend(backend)
        shape = tuple(self.weight.shape)
        if mask is None:
            mask = random_mask(shape, budget_for(density, [self.weight.numel()]), generator)
        mask = self._check_mask(mask, shape)
        self.format = format
        self.weight_shape = shape
        self._dense_grad: Tensor | None = None
        with torch.no_grad():
            if format == "dense":
                self.register_buffer("mask", mask.to(self.weight.device))
                self.weight.mul_(self.mask)
            else:
                idx = mask.reshape(-1).nonzero().squeeze(1).to(
                    self.weight.device, index_dtype(mask.numel()))
                values = flat_get(self.weight.detach(), idx).clone()
                del self.weight
                self.register_buffer("indices", idx)
                self.values = nn.Parameter(values)
                SparseBank(self, "values", [self])

    def set_backend(self, backend: str) -> None:
        """``"dense"`` (masked dense kernels), ``"csr"`` (sparse kernels: Linear, 1x1 convs, and
        stride-1 k x k convs on CPU; groups=1, no dilation, zero padding) or ``"auto"`` (timed
        per layer on the real input; CSR only where >= 15 % faster)."""
        check_choice(backend, BACKENDS, "backend")
        if backend == "csr" and not csr_eligible(self):
            raise ValueError("backend='csr' serves Linear layers and convs with groups=1, "
                             "dilation 1 and zero padding that are 1x1 without padding or have "
                             "stride 1; use 'auto' or 'dense' for this "
                             f"{type(self).__name__} (kernel {getattr(self, 'kernel_size', '')}, "
                             f"stride {getattr(self, 'stride', '')})")
        self.backend = backend
        self.backend_used = "dense"

    @staticmethod
    def _check_mask(mask: Tensor, shape) -> Tensor:
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight {shape}")
        mask = mask.to(torch.bool)
        if not bool(mask.any()):
            raise ValueError("a sparse layer needs at least one active weight; the mask is empty")
        return mask

    # -- the public view ----------------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if self.__dict__.get("format") != "compact":
                raise
            if name == "mask":  # compact layers store indices; the mask is derived on demand
                idx = self._buffers["indices"]
                return materialize(torch.ones_like(idx, dtype=torch.bool), idx, self.weight_shape)
            if name == "weight":
                raise AttributeError(
                    "a compact-format sparse layer keeps no dense `weight`; use "
                    "layer.dense_weight(), layer.active_values() or layer.to_dense()") from None
            raise

    @property
    def n_active(self) -> int:
        """Active weights (dense format: counted once per mask change; ``auto`` layers read it
        on every forward, and summing a large bool mask costs milliseconds)."""
        if self.format == "compact":
            return int(self.indices.numel())
        key = self._mask_key()
        cache = self.__dict__.get("_active_cache")
        if cache is not None and cache[0] == key:
            return int(cache[1].numel())
        count = self.__dict__.get("_count_cache")
        if count is None or count[0] != key:
            count = (key, int(torch.count_nonzero(self._buffers["mask"])))
            self.__dict__["_count_cache"] = count
        return count[1]

    @property
    def numel_dense(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def density(self) -> float:
        return self.n_active / self.numel_dense

    def active_indices(self) -> Tensor:
        """Flat (row-major) indices of the active weights, unique: in flat-index order for the
        dense format (cached until the mask changes), in bank slot order for the compact one."""
        if self.format == "compact":
            return self.indices
        key = self._mask_key()
        cache = self.__dict__.get("_active_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        idx = self._buffers["mask"].reshape(-1).view(torch.uint8).nonzero().squeeze(1)
        self.__dict__["_active_cache"] = (key, idx)
        return idx

    def _mask_key(self) -> tuple:
        """Changes whenever the mask does (storage or in-place version)."""
        m = self._buffers["mask"]
        return (m.data_ptr(), m._version, m.device)

    def active_values(self, indices: Tensor | None = None) -> Tensor:
        """Values of the active weights, in the order of :meth:`active_indices` (a view for
        compact layers)."""
        if self.format == "compact":
            return self._bank.slice_of(self)
        idx = self.active_indices() if indices is None else indices
        return flat_get(self.weight.detach(), idx)

    def dense_weight(self) -> Tensor:
        """The full weight with zeros at inactive positions (a copy for compact layers)."""
        if self.format == "compact":
            return materialize(self.active_values().detach(), self.indices, self.weight_shape)
        return self.weight.detach()

    def set_mask_(self, mask: Tensor) -> None:
        """Replace the active set. Kept positions keep their values, new ones start at 0.

        For compact layers sharing a bank with others, the active count must not change (use
        :func:`dst.set_masks_` on the whole model before building the optimizer instead)."""
        mask = self._check_mask(mask.to(self.active_indices().device), self.weight_shape)
        with torch.no_grad():
            if self.format == "dense":
                self.mask.copy_(mask)
                self.weight.mul_(self.mask)
                return
            idx = mask.reshape(-1).nonzero().squeeze(1).to(self.indices.dtype)
            if idx.numel() != self.indices.numel() and len(self._bank._members) > 1:
                raise ValueError("set_mask_ would change the size of a shared compact bank; "
                                 "use dst.set_masks_(model, masks) before creating the optimizer")
            values = flat_get(self.dense_weight(), idx)
            self.indices = idx
            if values.numel() == self._bank.values.numel():
                self._bank.values.data.copy_(values)
                self._bank.bump()
            else:
                self._bank.replace_values(values)

    # -- dense-gradient capture (for methods growing by gradient or momentum) -----------------
    def _store_dense_grad(self, g: Tensor) -> None:
        g = g.detach().reshape(-1).float()
        self._dense_grad = g.clone() if self._dense_grad is None else self._dense_grad + g

    def pop_dense_grad(self) -> Tensor | None:
        """The gradient w.r.t. the full weight captured since the last call (flat), or None."""
        g, self._dense_grad = self._dense_grad, None
        return g

    def _masked_weight(self) -> Tensor:
        """The dense-format weight as the kernels use it, with no per-step product: inactive
        entries are exactly zero and stay zero because the backward zeroes their gradient in
        place (a post-accumulate hook), so SGD (momentum, Nesterov, weight decay), Adam and
        AdamW leave them at zero. While a method asks for the full gradient, a second hook
        captures it. The hooks are tied to the weight object: a deep copy, an unpickled model or
        a replaced parameter gets its own."""
        w = self.weight
        if not w.requires_grad:
            return w
        hooks = self.__dict__.get("_weight_hooks")
        if hooks is None or hooks[0]() is not w:  # a new weight object: hook it
            me = weakref.ref(self)
            hooks = self.__dict__["_weight_hooks"] = [weakref.ref(w), None]
            w.register_post_accumulate_grad_hook(functools.partial(_zero_inactive_grad, me))
        if self._capture_grad and hooks[1] is None:
            hooks[1] = w.register_hook(functools.partial(_capture_hook, weakref.ref(self)))
        elif not self._capture_grad and hooks[1] is not None:
            hooks[1].remove()
            hooks[1] = None
        return w

    def __getstate__(self):
        """Pickling and deep copies leave the hook bookkeeping behind (the copy's weight is a
        new object and gets its own hooks on its first forward)."""
        state = dict(super().__getstate__())
        state.pop("_weight_hooks", None)
        return state

    def _capture(self):
        return self._store_dense_grad if self._capture_grad else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.format == "compact":
            key = prefix + "indices"
            if key in state_dict and state_dict[key].shape != self.indices.shape:
                self.indices = torch.empty_like(state_dict[key], device=self.indices.device,
                                                dtype=self.indices.dtype)
                self._bank.bump()
            vkey = prefix + "values"  # a private bank follows the checkpoint's count
            if self._bank.owner is self and vkey in state_dict \
                    and state_dict[vkey].shape != self.values.shape:
                self._bank.replace_values(torch.empty_like(state_dict[vkey],
                                                           device=self.values.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        if getattr(self, "format", None) != "compact":
            super().reset_parameters()
            if "mask" in self._buffers:
                with torch.no_grad():
                    self.weight.mul_(self.mask)
            return
        # same law as torch's default init, drawn on a dense temporary
        w = torch.empty(self.weight_shape, device=self.indices.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        with torch.no_grad():
            self.active_values().copy_(flat_get(w, self.indices))
            if self.bias is not None:
                fan_in = math.prod(self.weight_shape[1:])
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, density={self.density:.4f}, "
                f"n_active={self.n_active}, format={self.format}, backend={self.backend}")

    def to_dense(self) -> nn.Module:
        """A plain torch layer with the same outputs (inactive weights are zeros)."""
        w = self.dense_weight()
        twin = self._torch_cls(**self._kwargs_of(self), device="meta", dtype=w.dtype)
        twin.weight = nn.Parameter(w.detach().clone().contiguous())
        if self.bias is not None:
            twin.bias = nn.Parameter(self.bias.detach().clone())
        return twin.to(device=w.device)

    @classmethod
    def from_dense(cls, module: nn.Module, density: float = 1.0, *, format: str = "dense",
                   mask: Tensor | None = None, generator: torch.Generator | None = None,
                   backend: str = "dense"):
        """A sparse copy of a torch layer keeping its weights at the active positions."""
        if not isinstance(module, cls._torch_cls):
            raise TypeError(f"{cls.__name__}.from_dense expects a {cls._torch_cls.__name__}, "
                            f"got {type(module).__name__}")
        probe = cls.__new__(cls)
        cls._torch_cls.__init__(probe, **cls._kwargs_of(module), device="meta")
        probe.weight = nn.Parameter(module.weight.detach().clone())
        if module.bias is not None:
            probe.bias = nn.Parameter(module.bias.detach().clone())
        probe.train(module.training)
        probe._setup_sparse(density, format, mask, generator, backend)
        return probe

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "dense":
            return self._dense_forward(x)
        used = "dense" if self._capture_grad else choose(self, x)
        self.backend_used = used  # counted per mode for the run summary (csr / auto layers)
        mode = "train" if torch.is_grad_enabled() else "no_grad"
        calls = self.__dict__.setdefault("backend_calls", {}).setdefault(mode, {})
        calls[used] = calls.get(used, 0) + 1
        return csr_forward(self, x) if used == "csr" else self._dense_forward(x)


class SparseConv2d(SparseMixin, nn.Conv2d):
    """``nn.Conv2d`` with a fixed budget of active weights. Grouped, depthwise, dilated and
    non-zero padding modes work as in torch."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 density: float = 1.0, format: str = "dense", mask: Tensor | None = None,
                 generator: torch.Generator | None = None, backend: str = "dense"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._setup_sparse(density, format, mask, generator, backend)

    _torch_cls = nn.Conv2d

    @staticmethod
    def _kwargs_of(m: nn.Conv2d) -> dict:
        return dict(in_channels=m.in_channels, out_channels=m.out_channels,
                    kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                    dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                    padding_mode=m.padding_mode)

    def _dense_forward(self, x: Tensor) -> Tensor:
        if self.format == "dense":
            return self._conv_forward(x, self._masked_weight(), self.bias)
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        elif isinstance(padding, str):
            x, padding = _explicit_padding(x, padding, self.kernel_size, self.dilation)
        return compact_conv2d(x, self.active_values(), self.bias, self.indices,
                              self.weight_shape, self.stride, padding, self.dilation,
                              self.groups, self._capture())


def _explicit_padding(x: Tensor, padding: str, kernel_size, dilation):
    if padding == "valid":
        return x, (0, 0)
    pads = []  # 'same': total = d*(k-1), left = total // 2 (torch's rule)
    for k, d in zip(reversed(kernel_size), reversed(dilation), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads), (0, 0)


class SparseLinear(SparseMixin, nn.Linear):
    """``nn.Linear`` with a fixed budget of active weights."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 density: float = 1.0, format: str = "dense", mask: Tensor | None = None,
                 generator: torch.Generator | None = None, backend: str = "dense"):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._setup_sparse(density, format, mask, generator, backend)

    _torch_cls = nn.Linear

    @staticmethod
    def _kwargs_of(m: nn.Linear) -> dict:
        return dict(in_features=m.in_features, out_features=m.out_features,
                    bias=m.bias is not None)

    def _dense_forward(self, x: Tensor) -> Tensor:
        if self.format == "dense":
            return F.linear(x, self._masked_weight(), self.bias)
        return compact_linear(x, self.active_values(), self.bias, self.indices,
                              self.weight_shape, self._capture())


SPARSE_LAYERS = (SparseConv2d, SparseLinear)

"""Drop-in sparse layers: ``SparseConv2d`` and ``SparseLinear``.

Each subclasses the torch layer it replaces, keeps its constructor and adds keyword-only
``density``, ``format`` and ``backend``. A layer holds one storage object (``layer.storage``,
see :mod:`dst.storage`) that owns its values and active set; the layer delegates to it. Only
:class:`dst.SparseEngine` (or an explicit ``set_mask_``) changes the active set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import FORMATS, check_choice, check_density
from .distributions import budget_for
from .kernels.backends import BACKENDS, choose, csr_eligible, csr_forward
from .storage import KINDS, Storage


def random_mask(shape, count: int, generator: torch.Generator | None = None,
                device=None) -> Tensor:
    """A bool tensor of ``shape`` with exactly ``count`` True entries at uniformly random places."""
    numel = math.prod(shape)
    idx = torch.randperm(numel, generator=generator)[:count]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[idx] = True
    return mask.view(*shape).to(device)


class SparseMixin:
    """What both sparse layers add to their torch twin (a storage, the backends, conversion)."""

    _capture_grad: bool = False  # set by the engine while its method wants the full gradient
    storage: Storage

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
        self.storage = KINDS[format](self, mask)

    def set_backend(self, backend: str) -> None:
        """``"dense"`` (the dense kernels), ``"csr"`` (sparse kernels: Linear, 1x1 convs, and
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

    # -- the public view (the storage's) ------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            storage = self.__dict__.get("storage")
            if storage is None:
                raise
            if name == "mask":  # a compact storage derives it on demand
                return storage.mask
            if name == "weight":
                raise AttributeError(
                    "a compact-format sparse layer keeps no dense `weight`; use "
                    "layer.dense_weight(), layer.active_values() or layer.to_dense()") from None
            raise

    @property
    def n_active(self) -> int:
        return self.storage.n_active

    @property
    def numel_dense(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def density(self) -> float:
        return self.n_active / self.numel_dense

    def active_indices(self) -> Tensor:
        """Flat (row-major) indices of the active weights, unique (dense format: in flat
        order; compact: in bank slot order)."""
        return self.storage.active_indices()

    def active_values(self, indices: Tensor | None = None) -> Tensor:
        """Values of the active weights, in the order of :meth:`active_indices` (a view for
        compact layers)."""
        return self.storage.active_values(indices)

    def dense_weight(self) -> Tensor:
        """The full weight with zeros at inactive positions (a copy for compact layers)."""
        return self.storage.dense_weight()

    def set_mask_(self, mask: Tensor) -> None:
        """Replace the active set. Kept positions keep their values, new ones start at 0."""
        mask = self._check_mask(mask.to(self.active_indices().device), self.weight_shape)
        self.storage.set_mask_(mask)

    # -- dense-gradient capture (for methods growing by gradient or momentum) -----------------
    def _store_dense_grad(self, g: Tensor) -> None:
        g = g.detach().reshape(-1).float()
        self._dense_grad = g.clone() if self._dense_grad is None else self._dense_grad + g

    def pop_dense_grad(self) -> Tensor | None:
        """The gradient w.r.t. the full weight captured since the last call (flat), or None."""
        g, self._dense_grad = self._dense_grad, None
        return g

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        hook = getattr(self.storage, "load_state_dict_pre", None)
        if hook is not None:
            hook(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        storage = self.__dict__.get("storage")
        if storage is None or not hasattr(storage, "reset_parameters"):
            super().reset_parameters()
            if storage is not None:
                storage.set_mask_(storage.mask)  # inactive weights back to zero
            return
        storage.reset_parameters()

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
        return self.storage.conv2d(x)


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
        return self.storage.linear(x)


SPARSE_LAYERS = (SparseConv2d, SparseLinear)

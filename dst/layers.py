"""Drop-in sparse layers: ``SparseConv2d`` and ``SparseLinear``.

Each subclasses the torch layer it replaces, keeps its constructor and adds keyword-only
``density``, ``format`` and ``backend``. A layer holds one storage object (``layer.storage``,
see :mod:`dst.storage`) that owns its values and active set, and delegates to it; the kernels
are chosen by :mod:`dst.kernels.backends`. Only :class:`dst.SparseEngine` (or an explicit
``set_mask_``) changes the active set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import twins
from .distributions import random_mask
from .kernels import backends
from .storage import Storage, attach, check_mask
from .units import UnitGrid, check_block

__all__ = ["SPARSE_LAYERS", "SparseConv2d", "SparseLinear", "SparseMixin"]


class SparseMixin:
    """What both sparse layers add to their torch twin (a storage, the backends, conversion)."""

    capture_grad: bool = False  # set while a method wants the full gradient (pop_dense_grad)
    block = None  # the units weights are pruned and grown in (dst.units): None = single weights
    storage: Storage
    _torch_cls: type[nn.Module]  # the torch layer replaced, its constructor's arguments and
    _init_args: tuple[str, ...]  # the storage method of its dense kernel
    _dense_op: str

    def _setup_sparse(self, density: float, format: str, mask: Tensor | None,
                      generator: torch.Generator | None, backend: str = "dense",
                      block=None) -> None:
        self.set_backend(backend)
        block = check_block(block)
        if block is not None:
            grid = UnitGrid(tuple(self.weight.shape), block)
            if mask is None:
                n = math.floor(density * grid.n_units + 0.5)
                if n < 1:
                    raise ValueError(f"density {density} leaves this layer less than one unit "
                                     f"of {grid.size} weights ({grid.n_units} units): raise the "
                                     "density or use a smaller block")
                mask = grid.expand(random_mask((grid.n_units,), n, generator))
            else:
                grid.units_of_mask(mask)  # whole units, or ValueError
            self.block = block
        attach(self, density, format, mask, generator)

    @property
    def units(self) -> UnitGrid:
        """The unit grid of this layer's weight at its ``block`` (cached per shape)."""
        key = (tuple(self.weight_shape), self.block)
        cached = self.__dict__.get("_unit_grid")
        if cached is None or cached[0] != key:
            cached = (key, UnitGrid(*key))
            self.__dict__["_unit_grid"] = cached
        return cached[1]

    def set_backend(self, backend: str) -> None:
        """``"dense"``, ``"csr"`` or ``"auto"``; see :mod:`dst.kernels.backends`."""
        self.backend = backends.check_backend(self, backend)
        self.backend_used = "dense"

    def forward(self, x: Tensor) -> Tensor:
        return backends.run(self, x)

    def _dense_forward(self, x: Tensor) -> Tensor:  # storage.linear or storage.conv2d
        return getattr(self.storage, self._dense_op)(x)

    def __getattr__(self, name: str):
        if name == "weight":  # the layer's forward and functional uses alike
            storage = self.__dict__.get("storage")
            if storage is not None:
                return storage.weight_view()
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "storage" not in self.__dict__:
                raise
        return self.storage.layer_attribute(name)  # e.g. a compact layer's mask

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
        """Flat (row-major) indices of the active weights, unique (dense format: ascending;
        compact: in bank slot order)."""
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
        device = self.active_indices().device
        self.storage.set_mask_(check_mask(mask.to(device), self.weight_shape))

    def pop_dense_grad(self) -> Tensor | None:
        """The gradient w.r.t. the full weight captured since the last call (flat), or None."""
        return self.storage.pop_dense_grad()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.storage.load_state_dict_pre(state_dict, prefix)  # e.g. follow a saved size
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        storage = self.__dict__.get("storage")
        if storage is None:  # torch's __init__, before the storage exists
            return super().reset_parameters()
        storage.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, density={self.density:.4f}, "
                f"n_active={self.n_active}, format={self.format}, backend={self.backend}")

    def to_dense(self) -> nn.Module:
        """A plain torch layer with the same outputs (inactive weights are zeros)."""
        return twins.dense_twin(self)

    @classmethod
    def from_dense(cls, module: nn.Module, density: float = 1.0, *, format: str = "dense",
                   mask: Tensor | None = None, generator: torch.Generator | None = None,
                   backend: str = "dense", block=None):
        """A sparse copy of a torch layer keeping its weights at the active positions."""
        return twins.sparse_twin(cls, module, density, format, mask, generator, backend, block)


class SparseConv2d(SparseMixin, nn.Conv2d):
    """``nn.Conv2d`` with a fixed budget of active weights. Grouped, depthwise, dilated and
    non-zero padding modes work as in torch."""

    _torch_cls, _dense_op = nn.Conv2d, "conv2d"
    _init_args = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                  "groups", "padding_mode")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 density: float = 1.0, format: str = "dense", mask: Tensor | None = None,
                 generator: torch.Generator | None = None, backend: str = "dense", block=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._setup_sparse(density, format, mask, generator, backend, block)


class SparseLinear(SparseMixin, nn.Linear):
    """``nn.Linear`` with a fixed budget of active weights."""

    _torch_cls, _dense_op = nn.Linear, "linear"
    _init_args = ("in_features", "out_features")

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 density: float = 1.0, format: str = "dense", mask: Tensor | None = None,
                 generator: torch.Generator | None = None, backend: str = "dense", block=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._setup_sparse(density, format, mask, generator, backend, block)


SPARSE_LAYERS = (SparseConv2d, SparseLinear)

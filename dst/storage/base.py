"""The interface every storage kind offers its layer, the engine and the methods."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .flat import flat_get


def check_mask(mask: Tensor, shape) -> Tensor:
    """``mask`` as bool, after checking it fits a weight of ``shape`` and is not empty."""
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(shape)}")
    mask = mask.to(torch.bool)
    if not bool(mask.any()):
        raise ValueError("a sparse layer needs at least one active weight; the mask is empty")
    return mask


@dataclass
class Change:
    """One layer's edit: ``active`` the flat indices before, ``prune_pos`` positions
    *within* ``active`` to deactivate, ``grown`` new flat indices (currently inactive)."""

    layer: nn.Module
    active: Tensor
    prune_pos: Tensor
    grown: Tensor


def occupied_positions(numel: int, active: Tensor, unblock: Tensor | None) -> Tensor:
    """Flat bool over ``numel`` positions: True at ``active``, except the positions of
    ``active`` listed in ``unblock``."""
    b = torch.zeros(numel, dtype=torch.bool, device=active.device)
    b.index_fill_(0, active.long(), True)
    if unblock is not None and unblock.numel():
        b.index_fill_(0, active.index_select(0, unblock.to(active.device)).long(), False)
    return b


class Storage(ABC):
    """Owns a sparse layer's values and active set (the tensors stay registered on the layer,
    so ``state_dict`` keys are the layer's), its kernels for the dense backend, the commit of
    a prune/grow change with the optimizer state, and the view the engine reads."""

    kind = "storage"
    can_cut = False  # can remove whole channels (structured slimming, ``cut_``)
    fixed_size = False  # the active count of a layer may change on its own (shrinking methods)
    bank = None  # the shared flat parameter of compact layers

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.dense_grad: Tensor | None = None  # captured while ``layer.capture_grad`` is set
        layer.storage = self

    # -- dense-gradient capture (methods growing by gradient or momentum) --------------------
    def keep_grad(self, g: Tensor) -> None:
        """Add a gradient w.r.t. the full weight to the captured one (flat, float32)."""
        g = g.detach().reshape(-1).float()
        self.dense_grad = g.clone() if self.dense_grad is None else self.dense_grad + g

    def pop_dense_grad(self) -> Tensor | None:
        g, self.dense_grad = self.dense_grad, None
        return g

    def reset_parameters(self) -> None:
        """Torch's init law for the layer's values (inactive weights stay zero)."""
        self.layer._torch_cls.reset_parameters(self.layer)
        self.set_mask_(self.mask)

    def load_state_dict_pre(self, state_dict, prefix: str) -> None:  # noqa: B027 - a no-op
        """Before the layer loads ``state_dict``: adapt to it (e.g. a saved active count)."""

    # -- the view -----------------------------------------------------------------------------
    @property
    @abstractmethod
    def param(self) -> Tensor:
        """The parameter the optimizer updates for this layer's weights."""

    @property
    @abstractmethod
    def n_active(self) -> int: ...

    @abstractmethod
    def active_indices(self) -> Tensor:
        """Flat (row-major) indices of the active weights, unique."""

    @abstractmethod
    def active_values(self, indices: Tensor | None = None) -> Tensor:
        """Values of the active weights, in the order of :meth:`active_indices`."""

    @property
    @abstractmethod
    def mask(self) -> Tensor:
        """Bool tensor of the weight's shape: the active set."""

    @abstractmethod
    def dense_weight(self) -> Tensor:
        """The full weight with zeros at inactive positions (detached)."""

    @abstractmethod
    def weight_view(self) -> Tensor:
        """What ``layer.weight`` gives: the full weight, differentiable into the storage."""

    def layer_attribute(self, name: str):
        """An attribute the layer lacks, answered by its storage (or AttributeError)."""
        raise AttributeError(f"{type(self.layer).__name__!r} object has no attribute {name!r}")

    @abstractmethod
    def set_mask_(self, mask: Tensor) -> None:
        """Replace the active set; kept positions keep their values, new ones start at 0."""

    def set_masks_together(self, masks: dict) -> None:
        """Set the masks (``{layer: bool mask}``) of layers of this storage's commit group."""
        for layer, mask in masks.items():
            layer.storage.set_mask_(mask)

    def load_dense_(self, weight: Tensor) -> None:
        """Take the values at the active positions from a dense ``weight`` of this shape."""
        with torch.no_grad():
            values = self.active_values()
            values.copy_(flat_get(weight.to(values.device).contiguous(),
                                  self.active_indices()).to(values.dtype))

    # -- compute ------------------------------------------------------------------------------
    @abstractmethod
    def linear(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def conv2d(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def csr_key(self) -> tuple:
        """Changes whenever the active set does (the CSR structure's cache key)."""

    @abstractmethod
    def csr_structure(self):
        """A :class:`dst.kernels.CSRStructure` of the active set (values in storage order)."""

    @abstractmethod
    def csr_values(self, structure) -> Tensor:
        """The values the CSR kernels read, in ``structure``'s values order."""

    # -- the engine's side --------------------------------------------------------------------
    def occupied(self, active: Tensor, unblock: Tensor | None) -> Tensor:
        """Flat bool of positions growth may not use: the active ones, except the positions of
        ``active`` listed in ``unblock`` (just pruned ones that may be regrown)."""
        return occupied_positions(self.layer.numel_dense, active, unblock)

    def cut_(self, dim: int, keep: Tensor, optimizer=None) -> None:
        """Keep only the channels ``keep`` along ``dim`` (structured slimming)."""
        raise NotImplementedError(f"the {self.kind} format cannot remove channels; structured "
                                  "sparsity (dsr_structured) needs format='dense'")

    def check(self, name: str) -> None:  # noqa: B027 - nothing beyond the engine's checks
        """Storage-specific invariants (AssertionError when broken)."""

    @abstractmethod
    def commit_group(self) -> object:
        """Changes of layers with the same group are committed together (one call)."""

    @abstractmethod
    def commit(self, changes: Sequence[Change], optimizer) -> None:
        """Apply the changes of one group; new weights and their optimizer state are 0."""

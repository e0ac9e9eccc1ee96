"""Storage kinds behind the sparse layers: one object per layer (``layer.storage``) owns the
values and the active set, the dense-backend kernels, the commit of a prune/grow change with the
optimizer state, and the view the engine and the methods read. No code outside this package
tests a format string.

``dense``   (:class:`DenseStorage`) the torch weight, inactive entries exactly zero, a bool mask.
``compact`` (:class:`CompactStorage`) only the active values, in one flat :class:`SparseBank`
            for all compact layers, plus int32 flat indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import FORMATS, check_choice, check_density
from ..distributions import budget_for, random_mask
from .bank import SparseBank
from .base import Change, Storage, check_mask
from .compact import CompactStorage, compact_conv2d, compact_linear
from .dense import DenseStorage, zero_state_
from .flat import flat_fill_, flat_get, index_dtype, materialize

KINDS: dict[str, type[Storage]] = {"dense": DenseStorage, "compact": CompactStorage}


def attach(layer: nn.Module, density: float, format: str, mask: Tensor | None,
           generator: torch.Generator | None) -> Storage:
    """Give ``layer`` its storage of kind ``format`` (and its ``format`` and ``weight_shape``):
    ``mask`` as the active set, or a uniformly random one of ``round(density * numel)`` weights
    (at least one) drawn from ``generator``."""
    density = check_density(density)
    layer.format = check_choice(format, FORMATS, "format")
    layer.weight_shape = shape = tuple(layer.weight.shape)
    if mask is None:
        mask = random_mask(shape, budget_for(density, [layer.weight.numel()]), generator)
    return KINDS[format](layer, check_mask(mask, shape))


def commit(changes: Sequence[Change], optimizer=None) -> None:
    """Apply every layer's change, the changes of one group (a compact bank) together; new
    weights and their optimizer state are exactly zero."""
    groups: dict[int, list[Change]] = {}
    for ch in changes:
        groups.setdefault(id(ch.layer.storage.commit_group()), []).append(ch)
    for chs in groups.values():
        chs[0].layer.storage.commit(chs, optimizer)


def set_masks(masks: dict) -> None:
    """Set several layers' masks (``{layer: bool mask of its weight's shape}``), those of one
    group (a compact bank) together."""
    groups: dict[int, dict] = {}
    for layer, mask in masks.items():
        groups.setdefault(id(layer.storage.commit_group()), {})[layer] = mask
    for group in groups.values():
        next(iter(group)).storage.set_masks_together(group)


__all__ = ["KINDS", "Change", "attach", "CompactStorage", "DenseStorage", "SparseBank", "Storage",
           "check_mask",
           "commit", "compact_conv2d", "compact_linear", "flat_fill_", "flat_get", "index_dtype",
           "materialize", "set_masks", "zero_state_"]

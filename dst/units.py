"""Granularity: the units a layer's weights are pruned and grown in.

``block`` on a sparse layer (and ``sparsify_``) picks them:

* ``None`` — single weights (the default);
* ``"kernel"`` — the whole k × k kernel of one (output, input) channel pair, as the DSR paper's
  kernel-level variant (the authors' ``--sub-kernel-granularity 2``); one weight for a Linear or
  1 × 1 layer;
* ``(bh, bw)`` — a tile of ``bh`` output by ``bw`` input channels; for a k × k conv the tile
  spans the whole kernel (``bh · bw · k · k`` weights).

Masks stay element masks with whole units on or off. In the 2-D view of a weight (rows: output
channels; columns: input channels × kernel positions) unit ``u = r · (I / bw) + c`` covers rows
``r·bh ..`` and input channels ``c·bw ..``. The update works on units (:func:`unit_state`): a
unit's score is the mean of its weights' |w| (or |gradient|), counts are in units, and the
changes go back to the layer as whole units (:func:`element_change`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .storage.base import occupied_positions


def check_block(block):
    """``block`` normalised: None, "kernel" or a (bh, bw) tuple of positive ints."""
    if block is None or block == "kernel":
        return block
    if isinstance(block, str):
        raise ValueError(f"block must be None, 'kernel' or a tile (bh, bw), got {block!r}")
    try:
        bh, bw = (int(v) for v in block)
    except (TypeError, ValueError):
        raise ValueError(f"block must be None, 'kernel' or a tile (bh, bw), got {block!r}") \
            from None
    if bh < 1 or bw < 1 or (bh, bw) != tuple(block):
        raise ValueError(f"a tile (bh, bw) needs positive ints, got {block!r}")
    return (bh, bw)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class UnitGrid:
    """The units of a weight of ``shape`` (``[O, I, kh, kw]`` or ``[O, I]``) at ``block``."""

    def __init__(self, shape, block):
        block = check_block(block)
        self.shape = tuple(shape)
        self.out, self.inp = self.shape[0], self.shape[1]
        self.inner = math.prod(self.shape[2:]) if len(self.shape) > 2 else 1
        bh, bw = (1, 1) if block in (None, "kernel") else block
        if block is None:
            self.inner_unit = 1  # a single weight: the unit is one kernel position
        else:
            self.inner_unit = self.inner
        if self.out % bh or self.inp % bw:
            raise ValueError(
                f"tile {block} does not divide the weight {self.shape}: bh must divide "
                f"{self.out} ({_divisors(self.out)}) and bw {self.inp} ({_divisors(self.inp)})")
        self.bh, self.bw = bh, bw
        self.rows = self.out // bh
        self.cols = self.inp // bw * (self.inner // self.inner_unit)
        self.n_units = self.rows * self.cols
        self.size = bh * bw * self.inner_unit

    def unit_of(self, flat: Tensor) -> Tensor:
        """The unit of each flat weight index."""
        flat = flat.long()
        row_len = self.inp * self.inner
        row, col = flat // row_len, flat % row_len
        ch, pos = col // self.inner, col % self.inner
        per_ch = self.inner // self.inner_unit
        c = (ch // self.bw) * per_ch + pos // self.inner_unit
        return (row // self.bh) * self.cols + c

    def elements(self, units: Tensor) -> Tensor:
        """The flat weight indices of ``units``, ascending."""
        units = units.long().reshape(-1)
        per_ch = self.inner // self.inner_unit
        r, c = units // self.cols, units % self.cols
        ch0, pos0 = (c // per_ch) * self.bw, (c % per_ch) * self.inner_unit
        dev = units.device
        rows = r[:, None, None, None] * self.bh + torch.arange(self.bh, device=dev)[None, :, None,
                                                                                    None]
        chs = ch0[:, None, None, None] + torch.arange(self.bw, device=dev)[None, None, :, None]
        pos = pos0[:, None, None, None] + torch.arange(self.inner_unit,
                                                       device=dev)[None, None, None, :]
        flat = rows * (self.inp * self.inner) + chs * self.inner + pos
        return flat.reshape(-1).sort().values

    def expand(self, unit_mask: Tensor) -> Tensor:
        """A bool weight mask from a bool mask over units."""
        mask = torch.zeros(math.prod(self.shape), dtype=torch.bool, device=unit_mask.device)
        mask[self.elements(unit_mask.reshape(-1).nonzero().squeeze(1))] = True
        return mask.view(self.shape)

    def units_of_mask(self, mask: Tensor) -> Tensor:
        """The bool unit mask of an element mask made of whole units (ValueError otherwise)."""
        flat = mask.reshape(-1).bool()
        counts = torch.zeros(self.n_units, dtype=torch.long, device=flat.device)
        counts.index_add_(0, self.unit_of(flat.nonzero().squeeze(1)),
                          torch.ones(int(flat.sum()), dtype=torch.long, device=flat.device))
        if bool(((counts != 0) & (counts != self.size)).any()):
            raise ValueError(f"the mask is not made of whole units of {self.size} weights "
                             f"(block over a weight of shape {self.shape})")
        return counts == self.size

    def means(self, flat_values: Tensor, flat_index: Tensor | None = None) -> Tensor:
        """Per unit, the mean of |values| at ``flat_index`` (all positions when None)."""
        v = flat_values.detach().abs().float().reshape(-1)
        idx = flat_index if flat_index is not None else torch.arange(v.numel(),
                                                                     device=v.device)
        out = torch.zeros(self.n_units, dtype=torch.float32, device=v.device)
        out.index_add_(0, self.unit_of(idx).to(v.device), v)
        return out / self.size


def unit_state(st, grid: UnitGrid):
    """The method's view of layer ``st`` (a :class:`LayerState` over weights) over units."""
    units = grid.unit_of(st.active).unique()  # sorted: the canonical order
    means = grid.means(st.values, st.active)
    grad = None if st.dense_grad is None else grid.means(st.dense_grad)
    return replace(st, active=units, values=means.index_select(0, units.to(means.device)),
                   numel=grid.n_units, dense_grad=grad, unit_size=grid.size, grid=grid)


def element_change(st_elements, st_units, prune_units: Tensor, grown_units: Tensor):
    """(positions within the layer's active weights to prune, flat weights to grow) from the
    unit-level choice: ``prune_units`` are positions within ``st_units.active``."""
    grid = st_units.grid
    gone = st_units.active.index_select(0, prune_units.to(st_units.active.device))
    unit = grid.unit_of(st_elements.active)
    prune_pos = torch.isin(unit, gone.to(unit.device)).nonzero().squeeze(1)
    grown = grid.elements(grown_units).to(st_elements.active.device)
    return prune_pos, grown


def occupied_units(st, unblock: Tensor | None) -> Tensor:
    """Units growth may not use: the active ones, except the positions in ``unblock``."""
    return occupied_positions(st.numel, st.active, unblock)

"""Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019); rules: docs/methods.md#dsr."""

from __future__ import annotations

import math

import torch

from .._checks import check_fraction
from .base import GrowPlan, Method, Prune, UpdateContext


class DSR(Method):
    """Global adaptive magnitude threshold H; regrowth ∝ survivors; random zero-init growth.

    ``prune_target`` (N_p): a float in (0, 1] is a fraction of the budget, an int an absolute
    count (the paper: 20,000 for WRN-28-2, 400,000 for ResNet-50). H halves when more than
    (1+tolerance)·N_p were pruned and doubles when fewer than (1−tolerance)·N_p.
    """

    name = "dsr"
    reallocates = True

    def __init__(self, prune_target: float | int = 0.1, threshold: float = 1e-3,
                 tolerance: float = 0.1):
        if isinstance(prune_target, bool) or not isinstance(prune_target, (int, float)):
            raise ValueError(f"prune_target must be a fraction in (0, 1] or a count >= 1, "
                             f"got {prune_target!r}")
        if isinstance(prune_target, int) and prune_target < 1:
            raise ValueError(f"prune_target as a count must be >= 1, got {prune_target}")
        if isinstance(prune_target, float):
            check_fraction(prune_target, "prune_target (a fraction of the budget)")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.prune_target = prune_target
        self.threshold = float(threshold)  # H: the value used at the next update
        self.tolerance = float(tolerance)
        self._last: dict = {}

    def target_count(self, budget: int) -> int:
        if isinstance(self.prune_target, int):
            return self.prune_target
        return max(1, int(self.prune_target * budget + 0.5))

    def prune(self, ctx: UpdateContext):
        h = self.threshold
        orders = []
        for st in ctx.layers:
            mag = st.values.abs()
            k = min(int(torch.count_nonzero(mag < h)), st.n_active - 1)
            orders.append(Prune(mag, k, h))
        # N_p counts weights; a unit of several weights (dst.units) counts its size
        pruned = sum(o.count * st.unit_size for o, st in zip(orders, ctx.layers,
                                                             strict=True))
        n_p = self.target_count(ctx.budget)
        if pruned > (1 + self.tolerance) * n_p:
            self.threshold = h / 2
        elif pruned < (1 - self.tolerance) * n_p:
            self.threshold = h * 2
        self._last = {"threshold_used": h, "pruned": pruned, "target": n_p}
        return orders

    def grow(self, ctx: UpdateContext, pruned: list[int]) -> GrowPlan:
        survivors = [st.n_active - k for st, k in zip(ctx.layers, pruned, strict=True)]
        return GrowPlan(scores=[None] * len(ctx.layers), weights=[float(s) for s in survivors])

    def state(self) -> dict:
        return {"threshold": self.threshold, **self._last}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "last": dict(self._last)}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])
        self._last = dict(state.get("last") or {})  # the last update's figures, for reports

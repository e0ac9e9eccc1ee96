"""Rigging the Lottery (Evci et al., ICML 2020)."""

from __future__ import annotations

from .._checks import check_choice, check_fraction
from ..schedules import DECAYS, decayed
from .base import GrowPlan, Method, UpdateContext, fraction_count, grad_magnitude


class RigL(Method):
    """Prune the smallest |w|, grow where the dense gradient is largest, per layer; the fraction
    decays (cosine by default) to 0 at the engine's ``stop_step``. Dense gradients are computed
    only on update steps."""

    name = "rigl"
    dense_grad = "update"
    regrow_pruned = True

    def __init__(self, prune_fraction: float = 0.3, decay: str = "cosine"):
        self.prune_fraction = check_fraction(prune_fraction, "prune_fraction")
        self.decay = check_choice(decay, DECAYS, "decay")
        self._fraction = self.prune_fraction

    def prune(self, ctx: UpdateContext):
        self._fraction = decayed(self.prune_fraction, self.decay, ctx.step, ctx.stop_step)
        return [(st.values.abs(), fraction_count(self._fraction, st.n_active))
                for st in ctx.layers]

    def grow(self, ctx: UpdateContext, pruned: list[int]) -> GrowPlan:
        return GrowPlan(scores=[grad_magnitude(st, "RigL") for st in ctx.layers])

    def state(self) -> dict:
        return {"fraction": self._fraction}

"""Rigging the Lottery (Evci et al., ICML 2020)."""

from __future__ import annotations

from .base import DecayedMagnitudePrune, GrowPlan, UpdateContext, grad_magnitude


class RigL(DecayedMagnitudePrune):
    """Prune the smallest |w|, grow where the dense gradient is largest, per layer; the fraction
    decays (cosine by default) to 0 at the engine's ``stop_step``. Dense gradients are computed
    only on update steps."""

    name = "rigl"
    dense_grad = "update"
    regrow_pruned = True

    def __init__(self, prune_fraction: float = 0.3, decay: str = "cosine"):
        super().__init__(prune_fraction, decay)

    def grow(self, ctx: UpdateContext, pruned: list[int]) -> GrowPlan:
        return GrowPlan(scores=[grad_magnitude(st, "RigL") for st in ctx.layers])

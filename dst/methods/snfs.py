"""Sparse momentum / SNFS (Dettmers & Zettlemoyer, 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DecayedMagnitudePrune, GrowPlan, UpdateContext


class SNFS(DecayedMagnitudePrune):
    """Prune the smallest |w| per layer; share the regrowth across layers by the mean momentum
    magnitude of their active weights; grow where momentum magnitude is largest. The momentum is
    an exponential average (``momentum``) of dense gradients, kept by the method; the engine
    feeds it only the gradients of steps the optimizer really took."""

    supports_blocks = False  # its momentum is kept per weight

    name = "snfs"
    reallocates = True
    dense_grad = "always"
    regrow_pruned = True

    def __init__(self, prune_fraction: float = 0.5, decay: str = "cosine",
                 momentum: float = 0.9):
        super().__init__(prune_fraction, decay)
        if not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
                and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1) (1 would never update the average), "
                             f"got {momentum!r}")
        self.momentum = float(momentum)
        self._buffers: list[Tensor] = []

    def observe(self, step: int, grads: list[Tensor]) -> None:
        if not self._buffers:
            self._buffers = [torch.zeros_like(g) for g in grads]
        for buf, g in zip(self._buffers, grads, strict=True):
            buf.mul_(self.momentum).add_(g, alpha=1.0 - self.momentum)

    def prune(self, ctx: UpdateContext):
        if not self._buffers:
            raise RuntimeError("SNFS has seen no gradient yet: call loss.backward() and "
                               "engine.step() every step")
        return super().prune(ctx)

    def grow(self, ctx: UpdateContext, pruned: list[int]) -> GrowPlan:
        scores = [buf.abs() for buf in self._buffers]
        weights = [float(s.index_select(0, st.active.to(s.device)).mean())
                   for s, st in zip(scores, ctx.layers, strict=True)]
        return GrowPlan(scores=scores, weights=weights)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "momentum_buffers": [b.clone() for b in self._buffers]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._buffers = [b.clone() for b in state.get("momentum_buffers", [])]

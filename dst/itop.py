"""The in-time over-parameterization rate (Liu et al., ICML 2021): the share of a model's pool
positions that have been active at some point of training. A dynamic method explores more of the
pool than a static one (whose rate stays at its density); the rate is kept by a hook every
engine installs and saved with the engine's state, so a resumed run reports what an uninterrupted
one would."""

from __future__ import annotations

import torch
from torch import nn

from .methods.base import EngineHook


class ExplorationTracker(EngineHook):
    """Positions ever active, per sparse layer (flat bool), updated after every mask update.
    A layer whose shape changes (structured slimming) is tracked in its current shape: its
    removed channels leave the count and the pool with it."""

    def __init__(self):
        self.ever: list[torch.Tensor] = []

    def attach(self, model: nn.Module, engine) -> None:
        self.ever = [m.mask.reshape(-1).detach().to("cpu", copy=True) for _, m in engine.layers]

    def after_update(self, engine, step: int) -> None:
        for i, (_, m) in enumerate(engine.layers):
            now = m.mask.reshape(-1).detach().cpu()
            self.ever[i] = now.clone() if now.numel() != self.ever[i].numel() else \
                self.ever[i] | now

    @property
    def rate(self) -> float:
        total = sum(e.numel() for e in self.ever)
        return sum(int(e.sum()) for e in self.ever) / total if total else float("nan")

    def state_dict(self) -> dict:
        return {"ever_active": [e.clone() for e in self.ever]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("ever_active")
        if saved is None:  # a checkpoint from before the rate was kept: start from now
            return
        if len(saved) != len(self.ever):
            raise ValueError(f"engine state tracks {len(saved)} layers, this engine "
                             f"{len(self.ever)}")
        self.ever = [e.to(torch.bool).clone() for e in saved]

"""Structured DSR's channel removal: a hook the engine calls before each mask update.

The method (:class:`dst.methods.DSRStructured`) scores channels (``Method.channels``); this hook
picks the channels to remove with the engine's canonical selection, cuts the layers down
(:func:`dst.slim.slim_`, optimizer state included) and reports the active weights it freed per
layer, which the engine regrows with the weights the method pruned, so the budget stays exact.
"""

from __future__ import annotations

import torch
from torch import nn

from .methods.base import ChannelState, EngineHook, UpdateContext
from .selection import select
from .slim import KEPT, attach_, channel_active, find_channel_groups, slim_


class ChannelRemoval(EngineHook):
    """Removes the channels a ``removes_channels`` method asks for at each update. ``groups``
    are the model's channel groups (:func:`dst.slim.find_channel_groups`), ``n_channels`` their
    original channel counts (saved with the engine: the model may arrive slimmed)."""

    def __init__(self):
        self.groups, self.n_channels = [], []
        self._model = None

    def attach(self, model: nn.Module, engine) -> None:
        name = type(engine.method).__name__
        if not engine.method.reallocates:
            raise ValueError(f"{name} removes channels, so it must reallocate their weights")
        self.groups = find_channel_groups(model)
        if not self.groups:
            raise ValueError(f"{name} found no channel group: no sparse Conv2d/Linear whose "
                             "output channels reach one other sparse layer through BatchNorm "
                             "and activations only (see dst.slim)")
        names = {g.producer for g in self.groups} | {g.consumer for g in self.groups}
        layers = dict(engine.layers)
        if not all(layers[n].storage.can_cut for n in names):
            raise ValueError(f"{name} cuts layers down, which the compact format cannot: use "
                             "format='dense'")
        attach_(model, self.groups)
        self._model = model
        self.n_channels = [layers[g.producer].weight_shape[0] for g in self.groups]

    @torch.no_grad()
    def before_update(self, engine, step: int) -> list[int]:
        """Remove the channels the method asks for (pruning their weights, cutting the layers
        down); returns the active weights freed per layer."""
        index = {n: i for i, (n, _) in enumerate(engine.layers)}
        layers = dict(engine.layers)
        groups = [ChannelState(i, g.producer, layers[g.producer], layers[g.consumer],
                               layers[g.producer]._buffers[KEPT], n)
                  for i, (g, n) in enumerate(zip(self.groups, self.n_channels, strict=True))]
        ctx = UpdateContext(step, engine.stop_step, engine.budget, engine.seed, [],
                            engine._last_update())
        freed = [0] * len(engine.layers)
        for g, st, (scores, k) in zip(self.groups, groups, engine.method.channels(ctx, groups),
                                      strict=True):
            k = max(0, min(int(k), st.n_channels - 1))
            gone = select(scores, k, st.kept.to(scores.device)).tolist()
            gone.sort(key=lambda c: (float(scores[c]), int(st.kept[c])))
            per_p, per_c = channel_active(st.producer, 0), channel_active(st.consumer, 1)
            while gone and (int(per_p[gone].sum()) >= st.producer.n_active
                            or int(per_c[gone].sum()) >= st.consumer.n_active):
                gone.pop()  # a layer keeps at least one weight: spare the best-scored channel
            if not gone:
                continue
            freed[index[g.producer]] += int(per_p[gone].sum())
            freed[index[g.consumer]] += int(per_c[gone].sum())
            drop = torch.zeros(st.n_channels, dtype=torch.bool)
            drop[gone] = True
            slim_(self._model, g, (~drop).nonzero().squeeze(1), engine.optimizer)
        return freed

    def state_dict(self) -> dict:
        return {"channels": list(self.n_channels)}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("channels", ())) != len(self.groups):
            raise ValueError("engine state has no channel counts for this structured method's "
                             "channel groups")
        self.n_channels = [int(n) for n in state["channels"]]


def channel_removal(engine) -> ChannelRemoval | None:
    """The engine's channel-removal hook (structured DSR), or None."""
    return next((h for h in getattr(engine, "hooks", ()) if isinstance(h, ChannelRemoval)), None)

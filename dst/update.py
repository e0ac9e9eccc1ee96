"""The one budget-preserving mask update: prune what the method scores lowest, grow the freed
budget (per layer, or shared across layers by the method's weights) at free positions, commit.

Where new weights go: a method's growth scores pick the highest-scoring free positions
(canonical ties); without scores the positions are uniform among a layer's free ones, drawn from
a generator keyed by (seed, step, layer) (:mod:`dst.rng`), so they are the same in every process
and on resume, and independent between updates and layers. The allocation's rounding residue
draws from the key (seed, step, -1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from . import rng
from .allocate import allocate, sample_free
from .methods.base import GrowPlan, LayerState, Prune, UpdateContext
from .selection import select
from .storage import Change, commit
from .storage.flat import all_finite
from .units import element_change, occupied_units, unit_state

RESIDUE_LAYER = -1  # rng key of the allocation's random residue


def check_finite(tensors, step: int, what: str) -> None:
    for t in tensors:
        if t is not None and not all_finite(t):
            raise FloatingPointError(
                f"a {what} of a sparse layer is not finite at optimizer step {step}: training "
                "diverged (NaN/inf loss). Lower the learning rate; with fp16 AMP use a "
                "GradScaler, whose skipped steps the engine ignores")


@dataclass
class UpdateReport:
    step: int
    pruned: int
    grown: int
    active: dict[str, int]
    pruned_per_layer: dict[str, int]
    grown_per_layer: dict[str, int]
    method: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _occupied(st: LayerState, unblock: Tensor | None) -> Tensor:
    if st.grid is not None:
        return occupied_units(st, unblock)
    return st.layer.storage.occupied(st.active, unblock)


def grow_positions(states: list[LayerState], prune_pos: list[Tensor], freed: list[int],
                   plan: GrowPlan, method, seed: int, step: int) -> list[Tensor]:
    """Per layer, the flat positions the update grows. Each layer regrows what it pruned
    (``plan.weights`` None) or the pruned total plus ``freed`` is shared out in proportion to
    ``plan.weights`` (:func:`dst.allocate.allocate`); a layer with too few free positions may
    regrow just-pruned ones (still zero). Positions: the highest ``plan.scores`` among the free
    ones, or uniform among them (keyed by (seed, step, layer))."""
    regrow = method.regrow_pruned
    pruned = [int(p.numel()) for p in prune_pos]
    blocked, capacity = [], []
    for st, pos in zip(states, prune_pos, strict=True):
        blocked.append(_occupied(st, pos if regrow else None))
        capacity.append(st.numel - st.n_active + (int(pos.numel()) if regrow else 0))
    total = sum(pruned) + sum(freed)
    if method.shrinks:
        counts, short = [0] * len(states), []
    elif plan.weights is None:
        counts = pruned
        short = [i for i, (c, k) in enumerate(zip(capacity, pruned, strict=True)) if k > c]
    else:
        counts, short = None, []
        if sum(capacity) < total:
            short = list(range(len(states)))
    for i in short:  # too few free positions: allow regrowing just-pruned ones (still zero)
        if not regrow:
            blocked[i] = _occupied(states[i], prune_pos[i])
            capacity[i] += int(prune_pos[i].numel())
    if counts is None:
        counts = allocate(total, plan.weights, capacity, rng.generator(seed, step, RESIDUE_LAYER))
    out = []
    for st, b, g, scores, cap in zip(states, blocked, counts, plan.scores, capacity,
                                     strict=True):
        if scores is None:
            grown = sample_free(b, g, rng.generator(seed, step, st.index), n_free=cap)
        elif g:
            s = scores.reshape(-1).to(b.device).masked_fill(b, float("-inf"))
            grown = select(s, g, largest=True)
        else:
            grown = torch.empty(0, dtype=torch.long)
        out.append(grown.to(st.active.device))
    return out


@torch.no_grad()
def update(engine, t: int, grads: list[Tensor | None] | None,
           freed: list[int]) -> tuple[UpdateReport, list[LayerState], list[int]]:
    """One mask update of ``engine``'s layers at step ``t`` (``freed``: active weights its hooks
    already removed per layer, regrown with the pruned ones). Returns the report, the layers'
    states before the update and the count pruned per layer."""
    weights = []  # each layer over its weights; ``states``: as the method sees it (units)
    for i, (name, m) in enumerate(engine.layers):
        active = m.active_indices()
        weights.append(LayerState(i, name, m, active, m.active_values(active).detach(),
                                  m.numel_dense, None if grads is None else grads[i]))
    check_finite([st.values for st in weights], t, "weight")
    states = [st if st.layer.block is None else unit_state(st, st.layer.units)
              for st in weights]
    ctx = UpdateContext(t, engine.stop_step, engine.budget, engine.seed, states,
                        engine._last_update())
    prune_pos = []
    for st, order in zip(states, engine.method.prune(ctx), strict=True):
        scores, k, below = Prune(*order)
        k = max(0, min(int(k), st.n_active - 1))
        prune_pos.append(select(scores, k, st.active, below=below))
    pruned = [int(p.numel()) for p in prune_pos]
    plan = engine.method.grow(ctx, pruned)
    grown = grow_positions(states, prune_pos, freed, plan, engine.method, engine.seed, t)
    for i, (st, w) in enumerate(zip(states, weights, strict=True)):
        if st.grid is not None:  # whole units back to weights
            prune_pos[i], grown[i] = element_change(w, st, prune_pos[i], grown[i])
    commit([Change(st.layer, st.active, pos, g)
            for st, pos, g in zip(weights, prune_pos, grown, strict=True)], engine.optimizer)
    pruned = [int(p.numel()) for p in prune_pos]
    counts = [int(g.numel()) for g in grown]
    states = weights
    names = [st.name for st in states]
    report = UpdateReport(
        step=t, pruned=sum(pruned) + sum(freed), grown=sum(counts),
        active={st.name: st.n_active - k + g for st, k, g in zip(states, pruned, counts,
                                                                 strict=True)},
        pruned_per_layer={n: k + f for n, k, f in zip(names, pruned, freed, strict=True)},
        grown_per_layer=dict(zip(names, counts, strict=True)),
        method=engine.method.state())
    return report, states, pruned

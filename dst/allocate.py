"""Integer allocation of grown weights across layers and uniform sampling of free positions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels.native import unique_unblocked
from .storage.flat import flat_nonzero


def _pick(candidates: list[int], gen: torch.Generator) -> int:
    return candidates[int(torch.randint(len(candidates), (1,), generator=gen))]


def allocate(total: int, weights: Sequence[float], capacity: Sequence[int],
             gen: torch.Generator) -> list[int]:
    """Share ``total`` new weights among layers in proportion to ``weights``.

    G_l = round(remaining * w_l / sum w); the rounding residue goes to one randomly chosen layer
    (a negative residue is taken one at a time from random layers that got some). A layer without
    enough free positions (``capacity``) grows what it can and the rest is shared out again by the
    same proportions among the others, until exactly ``total`` are placed.
    """
    n = len(weights)
    if total > sum(capacity):
        raise ValueError(f"cannot grow {total} weights: only {sum(capacity)} free positions")
    grown = [0] * n
    remaining = total
    while remaining > 0:
        open_ = [i for i in range(n) if capacity[i] > grown[i]]
        w = [max(float(weights[i]), 0.0) if i in open_ else 0.0 for i in range(n)]
        if sum(w) <= 0.0:  # nothing to be proportional to: share equally among open layers
            w = [1.0 if i in open_ else 0.0 for i in range(n)]
        s = sum(w)
        share = [math.floor(remaining * wi / s + 0.5) for wi in w]
        residue = remaining - sum(share)
        if residue > 0:
            share[_pick([i for i in open_ if w[i] > 0], gen)] += residue
        while residue < 0:
            share[_pick([i for i in range(n) if share[i] > 0], gen)] -= 1
            residue += 1
        share = [min(share[i], capacity[i] - grown[i]) for i in range(n)]
        grown = [g + s_ for g, s_ in zip(grown, share, strict=True)]
        remaining -= sum(share)
    return grown


def sample_free(blocked: Tensor, count: int, gen: torch.Generator,
                n_free: int | None = None) -> Tensor:
    """``count`` distinct flat positions drawn uniformly among those where ``blocked`` is False.

    Draws on the CPU from ``gen``: rejection sampling when free positions are plentiful (the set
    of distinct accepted draws is exchangeable, so a random subset of it is uniform), a
    permutation of the free positions otherwise. ``n_free`` saves a count when known."""
    blocked = blocked.reshape(-1).cpu()
    numel = blocked.numel()
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    if n_free is None:
        n_free = numel - int(torch.count_nonzero(blocked))
    if count > n_free:
        raise ValueError(f"cannot draw {count} positions: only {n_free} free")
    if n_free < 4 * count or numel < 4096:
        free = flat_nonzero(~blocked)
        return free[torch.randperm(free.numel(), generator=gen)[:count]]
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < count:
        need = count - picked.numel()
        draws = torch.randint(numel, (int(need * numel / n_free * 1.3) + 64,), generator=gen)
        draws = unique_unblocked(draws, blocked)  # the distinct free ones, ascending
        if picked.numel():
            draws = draws[~torch.isin(draws, picked)]
        if draws.numel() > need:
            draws = draws.index_select(0, torch.randperm(draws.numel(), generator=gen)[:need])
        picked = torch.cat([picked, draws])
    return picked

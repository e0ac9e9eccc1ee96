"""The canonical selection every update uses: the k lowest (or highest) scores, ties broken by
the smaller flat weight index, so a selection never depends on the order a cache or bank holds
the weights in."""

from __future__ import annotations

import torch
from torch import Tensor

from .storage.flat import flat_nonzero


def select(scores: Tensor, k: int, flat: Tensor | None = None, *,
           largest: bool = False, below: float | None = None) -> Tensor:
    """Positions of the ``k`` lowest (``largest``: highest) ``scores``, ascending.

    The canonical rule: among equal scores at the cut, the smaller flat index wins (``flat[i]``
    is the flat weight index of position ``i``; the position itself when ``flat`` is None), so
    the selected set never depends on the order a cache or bank holds the weights in. ``below``
    (lowest only): a threshold the method cut at; when exactly ``k`` scores lie under it, they
    are the answer (no tie reaches the cut) and the k-th value is never computed."""
    n = scores.numel()
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if k >= n:
        return torch.arange(n, device=scores.device)
    if bool(scores.max().isnan()):  # NaN propagates through max; one pass, no temporary
        raise FloatingPointError("a sparsity score is NaN: the weights or gradients are not "
                                 "finite (the loss diverged); lower the learning rate")
    if below is not None and not largest:
        chosen = scores < below
        if int(torch.count_nonzero(chosen)) == k:
            return flat_nonzero(chosen)
    s = scores.neg() if largest else scores
    kth = torch.kthvalue(s, k).values
    chosen = s <= kth
    if int(torch.count_nonzero(chosen)) > k:  # equal scores at the cut: the rule decides
        chosen = s < kth
        ties = flat_nonzero(s == kth)
        key = ties if flat is None else flat.index_select(0, ties)
        chosen[ties.index_select(0, key.argsort()[:k - int(chosen.sum())])] = True
    return flat_nonzero(chosen)

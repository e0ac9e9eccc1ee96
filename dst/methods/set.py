"""Sparse Evolutionary Training (Mocanu et al., 2018)."""

from __future__ import annotations

from .._checks import check_fraction
from .base import Method, UpdateContext, fraction_count


class SET(Method):
    """Each layer prunes ``prune_fraction`` of its smallest-magnitude active weights and regrows
    the same count at uniformly random free positions (new weights at zero)."""

    name = "set"

    def __init__(self, prune_fraction: float = 0.3):
        self.prune_fraction = check_fraction(prune_fraction, "prune_fraction")

    def prune(self, ctx: UpdateContext):
        return [(st.values.abs(), fraction_count(self.prune_fraction, st.n_active))
                for st in ctx.layers]

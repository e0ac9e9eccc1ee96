"""Gradual magnitude pruning (Zhu & Gupta, 2017): the "compressed sparse" baseline."""

from __future__ import annotations

from .._checks import DISTRIBUTIONS, check_choice, check_density
from ..distributions import layer_counts
from .base import GrowPlan, Method, UpdateContext


class GMP(Method):
    """Prune the smallest |w| of each layer towards ``final_density`` on the cubic schedule
    d_t = d_f + (d_0 - d_f)(1 - t/T)^3, T being the engine's last update before ``stop_step``
    (so the target is met exactly at that update). Nothing is regrown: the budget falls from the
    layers' density at the first update (usually 1, a dense start) to the target."""

    supports_blocks = False  # per-weight pruning toward per-layer counts

    name = "gmp"
    shrinks = True
    needs_stop_step = True  # the cubic schedule ends at the last update before stop_step

    def __init__(self, final_density: float = 0.1, distribution: str = "uniform"):
        self.final_density = check_density(final_density, "final_density")
        self.distribution = check_choice(distribution, DISTRIBUTIONS, "distribution")
        self._start: list[int] = []
        self._final: list[int] = []
        self._last: dict = {}

    def prune(self, ctx: UpdateContext):
        if ctx.last_update is None:
            raise ValueError("GMP needs the engine's stop_step (the end of pruning)")
        if not self._start:
            self._start = [st.n_active for st in ctx.layers]
            shapes = [tuple(st.layer.weight_shape) for st in ctx.layers]
            final = layer_counts(shapes, self.final_density, self.distribution)
            self._final = [min(f, s) for f, s in zip(final, self._start, strict=True)]
        frac = (1.0 - min(ctx.step / ctx.last_update, 1.0)) ** 3
        orders = []
        for st, n0, nf in zip(ctx.layers, self._start, self._final, strict=True):
            target = int(round(nf + (n0 - nf) * frac))
            orders.append((st.values.abs(), max(0, st.n_active - target)))
        self._last = {"target_density_fraction": frac}
        return orders

    def grow(self, ctx: UpdateContext, pruned: list[int]) -> GrowPlan:
        return GrowPlan(scores=[None] * len(ctx.layers))

    def state(self) -> dict:
        return dict(self._last)

    def state_dict(self) -> dict:
        return {"start": list(self._start), "final": list(self._final),
                "last": dict(self._last)}

    def load_state_dict(self, state: dict) -> None:
        self._start, self._final = list(state["start"]), list(state["final"])
        self._last = dict(state.get("last") or {})

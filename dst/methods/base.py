"""The plug-in protocol: a method returns scores and counts; only the engine edits masks.

One signature per role:

* ``prune(ctx) -> list[(scores, count)]``: per layer, a score for each *active* weight (aligned
  with ``LayerState.active``; lowest pruned first) and how many to prune. The engine clips the
  count so a layer keeps at least one weight. A method that pruned by a threshold may return
  :class:`Prune` ``(scores, count, below)``: exactly the scores under ``below`` are the ``count``
  lowest, which spares the engine the selection (checked; it selects as usual otherwise).
* ``grow(ctx, pruned) -> GrowPlan``: per layer, a score over *all* positions (highest grown
  first) or ``None`` for uniform random growth; and optionally per-layer ``weights`` to share the
  pruned total across layers in proportion (reallocating methods). Without weights each layer
  regrows exactly what it pruned.
* A method with ``shrinks = True`` (gradual magnitude pruning) only prunes; the engine's budget
  follows it down.
* ``channels(ctx, groups) -> list[(scores, count)]`` (methods with ``removes_channels``): per
  channel group (:mod:`dst.slim`), a score for each current channel (lowest removed first) and
  how many to remove now. The engine's channel-removal hook (:mod:`dst.channels`) prunes the
  removed channels' weights, cuts the layers down and adds the freed weights to what the update
  regrows.
* ``observe(step, grads)``: called every step with dense gradients when ``dense_grad ==
  "always"`` (e.g. to keep a momentum of them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor, nn

from .._checks import check_choice, check_fraction
from ..schedules import DECAYS, decayed


@dataclass
class LayerState:
    """What a method may read of one sparse layer at an update."""

    index: int
    name: str
    layer: nn.Module
    active: Tensor  # flat indices of active weights (unique; sorted for dense layers)
    values: Tensor  # their values, same order (detached)
    numel: int
    dense_grad: Tensor | None = None  # flat gradient w.r.t. the full weight, when captured
    unit_size: int = 1  # weights per unit (block granularity: positions are units, dst.units)
    grid: object = None  # the layer's dst.units.UnitGrid when it is pruned in units

    @property
    def n_active(self) -> int:
        return int(self.active.numel())


@dataclass
class UpdateContext:
    step: int
    stop_step: int | None
    budget: int
    seed: int
    layers: list[LayerState] = field(default_factory=list)
    last_update: int | None = None  # the last update step before stop_step (None: no stop)


@dataclass
class ChannelState:
    """What a method may read of one channel group (:class:`dst.slim.ChannelGroup`)."""

    index: int
    name: str  # the producer's name
    producer: nn.Module  # its output channels...
    consumer: nn.Module  # ...are this layer's input channels
    kept: Tensor  # original ids of the current channels, ascending
    n_original: int

    @property
    def n_channels(self) -> int:
        return int(self.kept.numel())


class EngineHook:
    """Work the engine runs around each update besides pruning and growing (structured DSR's
    channel removal, :class:`dst.channels.ChannelRemoval`; ``SparseEngine(hooks=...)``).

    ``attach`` runs once when the engine is built; ``before_update`` at each update, before the
    method prunes, and returns the active weights it removed per layer (the engine regrows them
    with the pruned ones, so the budget stays exact); ``after_update`` after the commit;
    ``state_dict`` entries are saved with the engine's."""

    def attach(self, model: nn.Module, engine) -> None:  # noqa: B027 - optional
        """Set up for ``engine`` (checks that fail before the first batch belong here)."""

    def before_update(self, engine, step: int) -> list[int]:
        return [0] * len(engine.layers)

    def after_update(self, engine, step: int) -> None:  # noqa: B027 - optional
        """Called after each update's commit (e.g. to follow the masks)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - stateless by default
        """Restore what :meth:`state_dict` returned (from the engine's whole state)."""


class Prune(NamedTuple):
    """One layer's prune order: the ``count`` lowest ``scores`` go. ``below``, if given, is the
    method's threshold: the scores under it are exactly those ``count`` (then no tie can reach
    the cut, and the engine selects them with one comparison instead of a k-th value)."""

    scores: Tensor
    count: int
    below: float | None = None


@dataclass
class GrowPlan:
    scores: list[Tensor | None]
    weights: list[float] | None = None


def fraction_count(fraction: float, n: int) -> int:
    """round(fraction * n) (half up)."""
    return int(fraction * n + 0.5)


class Method(ABC):
    """Base class of the sparsity methods (defaults: a per-layer method, no dense gradients)."""

    name = "method"
    reallocates = False  # per-layer counts may change (DSR, SNFS)
    dense_grad = "never"  # "never" | "update" (on update steps) | "always" (every step)
    regrow_pruned = False  # may a weight pruned in this update be grown again at once?
    changes_masks = True
    shrinks = False  # prunes without regrowing: the budget falls (gradual magnitude pruning)
    supports_blocks = True  # can prune and grow in units of several weights (dst.units)
    needs_stop_step = False  # its schedule ends at the engine's stop_step (a decay, GMP)
    removes_channels = False  # structured: also removes whole channels (``channels``)

    def observe(self, step: int, grads: list[Tensor]) -> None:  # noqa: B027 - optional hook
        """Per-step hook (only called when ``dense_grad == "always"``); default: nothing."""

    @abstractmethod
    def prune(self, ctx: UpdateContext) -> list[tuple[Tensor, int] | Prune]:
        """Per layer: (a score for each active weight, how many of the lowest to prune)."""

    def grow(self, ctx: UpdateContext, pruned: list[int]) -> GrowPlan:
        return GrowPlan(scores=[None] * len(ctx.layers))

    def channels(self, ctx: UpdateContext, groups: list[ChannelState]) -> list[tuple[Tensor, int]]:
        """Per channel group: (a score per current channel, how many of the lowest to remove);
        only called when ``removes_channels``."""
        raise NotImplementedError(f"{type(self).__name__} sets removes_channels but does not "
                                  "define channels()")

    def state(self) -> dict:
        """Method state for update reports (e.g. DSR's threshold)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - stateless by default
        """Restore what :meth:`state_dict` returned; default: nothing to restore."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def grad_magnitude(state: LayerState, method: str) -> Tensor:
    if state.dense_grad is None:
        raise RuntimeError(f"{method} grows by gradient but no dense gradient was captured for "
                           f"layer {state.name!r}: call loss.backward() before engine.step()")
    return state.dense_grad.abs()


class DecayedMagnitudePrune(Method):
    """Per layer, prune the smallest |w| by a fraction that decays (``decay``) from
    ``prune_fraction`` to 0 at the engine's ``stop_step`` (RigL, SNFS)."""

    def __init__(self, prune_fraction: float, decay: str):
        self.prune_fraction = check_fraction(prune_fraction, "prune_fraction")
        self.decay = check_choice(decay, DECAYS, "decay")
        self._fraction = self.prune_fraction

    @property
    def needs_stop_step(self) -> bool:
        return self.decay != "constant"

    def prune(self, ctx: UpdateContext):
        self._fraction = decayed(self.prune_fraction, self.decay, ctx.step, ctx.stop_step)
        return [(st.values.abs(), fraction_count(self._fraction, st.n_active))
                for st in ctx.layers]

    def state(self) -> dict:
        return {"fraction": self._fraction}

    def state_dict(self) -> dict:
        return {"fraction": self._fraction}

    def load_state_dict(self, state: dict) -> None:
        self._fraction = float(state.get("fraction", self.prune_fraction))

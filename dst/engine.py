"""The engine: when masks change (schedule, real optimizer steps, hooks, state); the update
itself is :mod:`dst.update`. Methods only supply scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .channels import ChannelRemoval
from .convert import sparse_layers
from .itop import ExplorationTracker
from .methods.base import EngineHook, Method
from .schedules import PeriodSchedule, as_schedule
from .selection import select  # noqa: F401 - dst.engine.select: the canonical rule, re-exported
from .update import UpdateReport, check_finite, update


class SparseEngine:
    """Updates the masks of ``model``'s sparse layers with ``method`` on a schedule.

    Call :meth:`step` after every ``optimizer.step()``; it returns an :class:`UpdateReport` on
    update steps and ``None`` otherwise. ``update_every`` is an int, a list of
    ``(start_step, period)`` pairs or a :class:`PeriodSchedule`; no update happens at or after
    ``stop_step``. All randomness is keyed by (seed, step, layer), so every process with the same
    seed makes the same masks. ``check=True`` verifies the invariants after each update.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 method: Method, *, update_every, stop_step: int | None = None, seed: int = 0,
                 check: bool = False, hooks: Sequence[EngineHook] = ()):
        if not isinstance(method, Method):
            raise ValueError(f"method must be a dst.methods.Method (DSR, SET, RigL, SNFS, Static),"
                             f" got {method!r}")
        bad = [h for h in hooks if not isinstance(h, EngineHook)]
        if bad:
            raise ValueError(f"hooks must be dst.methods.base.EngineHook instances, got {bad!r}")
        self.layers = sparse_layers(model)
        if not self.layers:
            raise ValueError("the model has no sparse layer: call dst.sparsify_(model, density) "
                             "first")
        self.schedule: PeriodSchedule = as_schedule(update_every)
        if stop_step is not None and (isinstance(stop_step, bool) or int(stop_step) < 0):
            raise ValueError(f"stop_step must be a step count >= 0 or None, got {stop_step!r}")
        self.stop_step = None if stop_step is None else int(stop_step)
        self.optimizer = optimizer
        self.method = method
        self.seed = int(seed)
        self.check_invariants = check
        self.step_count = 0
        self.skipped_steps = 0
        self._hook_optimizer(optimizer)
        banks = {id(m.storage.bank) for _, m in self.layers if m.storage.bank is not None}
        if method.shrinks and any(m.storage.fixed_size for _, m in self.layers):
            raise ValueError(f"{type(method).__name__} removes weights for good and the compact "
                             "format keeps a fixed-size bank: use format='dense' (a pruning run "
                             "starts dense anyway)")
        if method.reallocates and len(banks) > 1:
            raise ValueError(f"{type(method).__name__} moves weights between layers, but the "
                             "compact layers hold separate banks: build them with "
                             "dst.sparsify_(..., format='compact') or call dst.share_bank_(model)"
                             " before creating the optimizer")
        self._check_blocks()
        self._check_schedule()
        self.exploration = ExplorationTracker()  # the in-time over-parameterization rate
        self.hooks = [*([ChannelRemoval()] if method.removes_channels else []), *hooks,
                      self.exploration]
        for hook in self.hooks:
            hook.attach(model, self)
        self.reset_budget()
        self._arm(self.step_count + 1)

    def _check_blocks(self) -> None:
        """Block granularity (dst.units): a method that can work in units, and for one that
        moves weights between layers, one unit size (so the budget stays exact in weights)."""
        blocked = [n for n, m in self.layers if m.block is not None]
        if not blocked:
            return
        name = type(self.method).__name__
        if not self.method.supports_blocks:
            raise ValueError(f"{name} cannot prune and grow in blocks (layers {blocked[:3]}...):"
                             " use DSR, SET, RigL or Static, or block=None")
        sizes = {m.units.size if m.block is not None else 1 for _, m in self.layers}
        if self.method.reallocates and len(sizes) > 1:
            raise ValueError(f"{name} moves weights between layers, whose units differ in size "
                             f"({sorted(sizes)} weights): the budget could not stay exact. Keep "
                             "layers of another unit size dense (filter_fn, e.g. the paper's "
                             "filter for WRN-28-2) or pick a block that gives one size")

    # -- schedule -----------------------------------------------------------------------------
    def _check_schedule(self) -> None:
        """Errors that would otherwise surface at the first update, minutes into a run."""
        if not self.method.changes_masks:
            return
        name = type(self.method).__name__
        if self.stop_step is None:
            if self.method.needs_stop_step:
                raise ValueError(f"{self.method!r} needs the engine's stop_step (the step its "
                                 "schedule ends at, e.g. 75 % of training): pass stop_step=... "
                                 "or, where it decays a fraction, decay='constant'")
        elif self._last_update() is None:
            raise ValueError(f"{name} would never update: no update step of {self.schedule} "
                             f"comes before stop_step={self.stop_step}; shorten the period, "
                             "move the stop later, or use Static() for a fixed mask")

    def is_update_step(self, step: int) -> bool:
        if not self.method.changes_masks:
            return False
        if self.stop_step is not None and step >= self.stop_step:
            return False
        return self.schedule.is_update(step)

    def reset_budget(self) -> None:
        """Take the layers' current active counts as the budget (after masks were set outside
        the engine, e.g. a lottery-ticket pruning round)."""
        self.layer_budget = [m.n_active for _, m in self.layers]
        self.budget = sum(self.layer_budget)

    def _last_update(self) -> int | None:
        if self.stop_step is None:
            return None
        return self.schedule.last_update_before(self.stop_step)

    def _arm(self, next_step: int) -> None:
        mode = self.method.dense_grad
        on = mode == "always" or (mode == "update" and self.is_update_step(next_step))
        for _, m in self.layers:
            m.capture_grad = on

    def _dense_grads(self) -> list[Tensor | None]:
        grads = [m.pop_dense_grad() for _, m in self.layers]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for g in grads:
                if g is not None:  # identical growth scores on every rank
                    dist.all_reduce(g)
                    g.div_(world)
        return grads

    # -- real optimizer steps -----------------------------------------------------------------
    def _count_optimizer_step(self, *_args) -> None:
        self._optimizer_steps += 1

    def _hook_optimizer(self, optimizer) -> None:
        """Count real optimizer steps: ``GradScaler.step`` skips ``optimizer.step()`` when the
        gradients hold inf/NaN, and then the step hook does not run."""
        self._optimizer_steps = self._steps_seen = 0
        self._hook = None
        if isinstance(optimizer, torch.optim.Optimizer):
            self._hook = optimizer.register_step_post_hook(self._count_optimizer_step)

    def optimizer_stepped(self) -> bool:
        """Did the optimizer step since the last :meth:`step`? (True without an optimizer.)"""
        return self._hook is None or self._optimizer_steps != self._steps_seen

    # -- the update ---------------------------------------------------------------------------
    def step(self) -> UpdateReport | None:
        """Advance one optimizer step; update the masks when the schedule says so.

        When the optimizer did not step since the last call (an fp16 AMP overflow: the
        ``GradScaler`` skipped it), nothing happens: the step is not counted, no statistic is
        recorded, the gradients captured for it are dropped, and an update due now is taken at
        the next real step. ``skipped_steps`` counts such calls."""
        if not self.optimizer_stepped():
            self.skipped_steps += 1
            for _, m in self.layers:
                m.pop_dense_grad()
            return None
        self._steps_seen = self._optimizer_steps
        self.step_count += 1
        t = self.step_count
        report = None
        if self.method.dense_grad == "always":
            grads = self._dense_grads()
            if any(g is None for g in grads):
                raise RuntimeError(f"{type(self.method).__name__} needs a gradient every step: "
                                   "call loss.backward() before engine.step()")
            check_finite(grads, t, "gradient")
            self.method.observe(t, grads)
            if self.is_update_step(t):
                report = self._update(t, grads)
        elif self.is_update_step(t):
            grads = self._dense_grads() if self.method.dense_grad == "update" else None
            if grads is not None:
                check_finite(grads, t, "gradient")
            report = self._update(t, grads)
        self._arm(t + 1)
        return report

    def _update(self, t: int, grads: list[Tensor | None] | None) -> UpdateReport:
        freed = [0] * len(self.layers)  # weights the hooks pruned (removed channels)
        for hook in self.hooks:
            freed = [a + b for a, b in zip(freed, hook.before_update(self, t), strict=True)]
        report, states, pruned = update(self, t, grads, freed)
        for hook in self.hooks:
            hook.after_update(self, t)
        if self.method.shrinks:
            self.layer_budget = [st.n_active - k for st, k in zip(states, pruned, strict=True)]
            self.budget = sum(self.layer_budget)
        if self.check_invariants:
            self.check()
        return report

    # -- invariants ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise AssertionError unless the budget and index invariants hold."""
        counts = [m.n_active for _, m in self.layers]
        assert sum(counts) == self.budget, f"budget {self.budget} != active {sum(counts)}"
        if not self.method.reallocates:
            assert counts == self.layer_budget, "a per-layer method changed a layer's count"
        for (name, m), c in zip(self.layers, counts, strict=True):
            assert c >= 1, f"layer {name} has no active weight"
            idx = m.active_indices()
            assert idx.numel() == c
            assert torch.unique(idx).numel() == c, f"{name}: duplicated indices"
            assert int(idx.min()) >= 0 and int(idx.max()) < m.numel_dense, f"{name}: out of range"
            m.storage.check(name)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step_count, "seed": self.seed, "budget": self.budget,
                "layer_budget": list(self.layer_budget),
                "layers": [n for n, _ in self.layers], "method": type(self.method).__name__,
                "method_state": self.method.state_dict(),
                **{k: v for hook in self.hooks for k, v in hook.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the engine (load the model's state_dict, which holds the masks, first)."""
        names = [n for n, _ in self.layers]
        if state.get("layers") != names:
            raise ValueError("engine state is for other sparse layers: "
                             f"{state.get('layers')} != {names}")
        if state.get("method") != type(self.method).__name__:
            raise ValueError(f"engine state was saved with method {state.get('method')!r}, "
                             f"this engine runs {type(self.method).__name__!r}")
        active = sum(m.n_active for _, m in self.layers)
        if state["budget"] != active:
            raise ValueError(f"engine state budget {state['budget']} != active weights {active}: "
                             "load the model's state_dict (masks) before the engine's")
        for hook in self.hooks:
            hook.load_state_dict(state)
        self.step_count = int(state["step"])
        self.seed = int(state["seed"])
        self.budget = int(state["budget"])
        self.layer_budget = list(state["layer_budget"])
        self.method.load_state_dict(state["method_state"])
        self._arm(self.step_count + 1)

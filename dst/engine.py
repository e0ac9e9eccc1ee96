"""The one budget-preserving mask update; methods only supply scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import rng
from .allocate import allocate, sample_free
from .convert import sparse_layers
from .methods.base import ChannelState, LayerState, Method, Prune, UpdateContext
from .schedules import PeriodSchedule, as_schedule
from .slim import KEPT, attach_, channel_active, find_channel_groups, slim_
from .storage import Change, commit
from .storage.flat import all_finite, flat_nonzero

_RESIDUE_LAYER = -1  # rng key for the allocation's random residue


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


def _check_finite(tensors, step: int, what: str) -> None:
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
                 check: bool = False):
        if not isinstance(method, Method):
            raise ValueError(f"method must be a dst.methods.Method (DSR, SET, RigL, SNFS, Static),"
                             f" got {method!r}")
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
        self._check_schedule()
        self.groups, self.n_channels = [], []
        if method.removes_channels:
            self._setup_channels(model)
        self.reset_budget()
        self._arm(self.step_count + 1)

    def _setup_channels(self, model: nn.Module) -> None:
        name = type(self.method).__name__
        if not self.method.reallocates:
            raise ValueError(f"{name} removes channels, so it must reallocate their weights")
        self.groups = find_channel_groups(model)
        if not self.groups:
            raise ValueError(f"{name} found no channel group: no sparse Conv2d/Linear whose "
                             "output channels reach one other sparse layer through BatchNorm "
                             "and activations only (see dst.slim)")
        names = {g.producer for g in self.groups} | {g.consumer for g in self.groups}
        layers = dict(self.layers)
        if not all(layers[n].storage.can_cut for n in names):
            raise ValueError(f"{name} cuts layers down, which the compact format cannot: use "
                             "format='dense'")
        attach_(model, self.groups)
        self._model = model
        self.n_channels = [layers[g.producer].weight_shape[0] for g in self.groups]

    @torch.no_grad()
    def _remove_channels(self, t: int) -> list[int]:
        """Remove the channels the method asks for (pruning their weights, cutting the layers
        down); returns the active weights freed per layer."""
        index = {n: i for i, (n, _) in enumerate(self.layers)}
        layers = dict(self.layers)
        groups = [ChannelState(i, g.producer, layers[g.producer], layers[g.consumer],
                               layers[g.producer]._buffers[KEPT], n)
                  for i, (g, n) in enumerate(zip(self.groups, self.n_channels, strict=True))]
        ctx = UpdateContext(t, self.stop_step, self.budget, self.seed, [], self._last_update())
        freed = [0] * len(self.layers)
        for g, st, (scores, k) in zip(self.groups, groups, self.method.channels(ctx, groups),
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
            slim_(self._model, g, (~drop).nonzero().squeeze(1), self.optimizer)
        return freed

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
            _check_finite(grads, t, "gradient")
            self.method.observe(t, grads)
            if self.is_update_step(t):
                report = self._update(t, grads)
        elif self.is_update_step(t):
            grads = self._dense_grads() if self.method.dense_grad == "update" else None
            if grads is not None:
                _check_finite(grads, t, "gradient")
            report = self._update(t, grads)
        self._arm(t + 1)
        return report

    @torch.no_grad()
    def _update(self, t: int, grads: list[Tensor | None] | None) -> UpdateReport:
        freed = self._remove_channels(t) if self.groups else [0] * len(self.layers)
        states = []
        for i, (name, m) in enumerate(self.layers):
            active = m.active_indices()
            states.append(LayerState(i, name, m, active, m.active_values(active).detach(),
                                     m.numel_dense, None if grads is None else grads[i]))
        _check_finite([st.values for st in states], t, "weight")
        ctx = UpdateContext(t, self.stop_step, self.budget, self.seed, states,
                            self._last_update())
        orders = self.method.prune(ctx)
        prune_pos = []
        for st, order in zip(states, orders, strict=True):
            scores, k, below = Prune(*order)
            k = max(0, min(int(k), st.n_active - 1))
            prune_pos.append(select(scores, k, st.active, below=below))
        pruned = [int(p.numel()) for p in prune_pos]
        plan = self.method.grow(ctx, pruned)
        regrow = self.method.regrow_pruned
        blocked, capacity = [], []
        for st, pos in zip(states, prune_pos, strict=True):
            blocked.append(st.layer.storage.occupied(st.active, pos if regrow else None))
            capacity.append(st.numel - st.n_active + (int(pos.numel()) if regrow else 0))
        total = sum(pruned) + sum(freed)  # channels removed free their weights too
        if self.method.shrinks:
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
                blocked[i] = states[i].layer.storage.occupied(states[i].active, prune_pos[i])
                capacity[i] += int(prune_pos[i].numel())
        if counts is None:
            counts = allocate(total, plan.weights, capacity,
                              rng.generator(self.seed, t, _RESIDUE_LAYER))
        changes = []
        for st, pos, b, g, scores, cap in zip(states, prune_pos, blocked, counts, plan.scores,
                                              capacity, strict=True):
            if scores is None:
                grown = sample_free(b, g, rng.generator(self.seed, t, st.index),
                                    n_free=cap)
            elif g:
                s = scores.reshape(-1).to(b.device).masked_fill(b, float("-inf"))
                grown = select(s, g, largest=True)
            else:
                grown = torch.empty(0, dtype=torch.long)
            changes.append(Change(st.layer, st.active, pos, grown.to(st.active.device)))
        commit(changes, self.optimizer)
        if self.method.shrinks:
            self.layer_budget = [st.n_active - k for st, k in zip(states, pruned, strict=True)]
            self.budget = sum(self.layer_budget)
        if self.check_invariants:
            self.check()
        names = [st.name for st in states]
        return UpdateReport(
            step=t, pruned=total, grown=sum(counts),
            active={st.name: st.n_active - k + g for st, k, g in zip(states, pruned, counts,
                                                                     strict=True)},
            pruned_per_layer={n: k + f for n, k, f in zip(names, pruned, freed, strict=True)},
            grown_per_layer=dict(zip(names, counts, strict=True)),
            method=self.method.state())

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
                **({"channels": list(self.n_channels)} if self.groups else {})}

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
        if self.groups:  # the original channel counts (the model may arrive slimmed)
            if len(state.get("channels", ())) != len(self.groups):
                raise ValueError("engine state has no channel counts for this structured "
                                 "method's channel groups")
            self.n_channels = [int(n) for n in state["channels"]]
        self.step_count = int(state["step"])
        self.seed = int(state["seed"])
        self.budget = int(state["budget"])
        self.layer_budget = list(state["layer_budget"])
        self.method.load_state_dict(state["method_state"])
        self._arm(self.step_count + 1)

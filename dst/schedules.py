"""When the engine updates masks (period schedules) and how much (fraction decay)."""

from __future__ import annotations

import math
from collections.abc import Sequence


class PeriodSchedule:
    """Update every ``period`` steps, the period changing at given steps.

    ``milestones`` is a list of ``(start_step, period)`` pairs, the first starting at 0, e.g.
    DSR's CIFAR recipe at 500 steps/epoch: ``[(0, 100), (12500, 200), (40000, 400), (70000, 800)]``.
    Step ``t`` (1-based count of optimizer steps) is an update step when ``t % period(t) == 0``.
    """

    def __init__(self, milestones: Sequence[Sequence[int]]):
        pairs = []
        for item in milestones:
            if isinstance(item, dict):
                item = (item.get("start"), item.get("period"))
            if len(item) != 2:
                raise ValueError(f"each milestone must be (start_step, period), got {item!r}")
            start, period = (int(v) for v in item)
            if period < 1 or start < 0:
                raise ValueError(f"milestone {item!r}: need start_step >= 0 and period >= 1")
            pairs.append((start, period))
        if not pairs or pairs[0][0] != 0:
            raise ValueError("the first milestone must start at step 0, e.g. [(0, 100)]")
        if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:], strict=False)):
            raise ValueError(f"milestone start steps must increase strictly, got {pairs}")
        self.milestones = pairs

    @classmethod
    def from_epochs(cls, milestones: Sequence[Sequence[int]], steps_per_epoch: int):
        """Same, with start given in epochs: ``[(0, 100), (25, 200), ...]``."""
        return cls([(int(e) * steps_per_epoch, p) for e, p in milestones])

    def period(self, step: int) -> int:
        current = self.milestones[0][1]
        for start, period in self.milestones:
            if step >= start:
                current = period
        return current

    def is_update(self, step: int) -> bool:
        return step > 0 and step % self.period(step) == 0

    def last_update_before(self, stop: int) -> int | None:
        """The last update step < ``stop`` (None if there is none)."""
        bounds = [m[0] for m in self.milestones[1:]] + [stop]
        for (start, period), end in reversed(list(zip(self.milestones, bounds, strict=True))):
            end = min(end, stop)
            t = ((end - 1) // period) * period  # largest multiple of period below end
            if t >= max(start, 1):
                return t
        return None

    def __repr__(self) -> str:
        return f"PeriodSchedule({self.milestones})"


def as_schedule(update_every) -> PeriodSchedule:
    if isinstance(update_every, PeriodSchedule):
        return update_every
    if isinstance(update_every, bool):
        raise ValueError(f"update_every must be an int >= 1 or a schedule, got {update_every!r}")
    if isinstance(update_every, int):
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        return PeriodSchedule([(0, update_every)])
    if isinstance(update_every, Sequence) and not isinstance(update_every, str):
        return PeriodSchedule(update_every)
    raise ValueError("update_every must be an int >= 1, a list of (start_step, period) pairs or "
                     f"a PeriodSchedule, got {update_every!r}")


DECAYS = ("constant", "cosine", "linear")


def decayed(fraction: float, decay: str | None, step: int, stop_step: int | None) -> float:
    """``fraction`` at ``step`` under ``decay`` towards 0 at ``stop_step``."""
    if decay in (None, "constant"):
        return fraction
    if stop_step is None:
        raise ValueError(f"decay={decay!r} needs the engine's stop_step")
    t = min(max(step / stop_step, 0.0), 1.0)
    if decay == "cosine":
        return fraction * 0.5 * (1.0 + math.cos(math.pi * t))
    if decay == "linear":
        return fraction * (1.0 - t)
    raise ValueError(f"unknown decay {decay!r}; valid choices: {', '.join(DECAYS)}")

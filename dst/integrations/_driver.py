"""What both callbacks share: build the engine on the trainer's optimizer, step it after each
real optimizer step, and turn its state and reports into checkpoint entries and log values."""

from __future__ import annotations

import torch
from torch import nn

from ..engine import SparseEngine
from ..methods.base import Method
from ..summary import param_counts


def innermost(optimizer):
    """The torch optimizer inside framework wrappers (accelerate's ``AcceleratedOptimizer``),
    whose ``step`` the engine's step counter hooks."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class EngineDriver:
    """Holds the engine's arguments until the trainer has built the model's optimizer; the
    engine counts real optimizer steps itself (a step a GradScaler skipped waits)."""

    def __init__(self, method: Method, *, update_every, stop_step: int | None = None,
                 seed: int = 0, check: bool = False, log_prefix: str = "dst/"):
        if not isinstance(method, Method):
            raise ValueError(f"method must be a dst.methods.Method (DSR, SET, RigL, SNFS, "
                             f"Static), got {method!r}")
        self.method = method
        self.kwargs = {"update_every": update_every, "stop_step": stop_step, "seed": seed,
                       "check": check}
        self.prefix = log_prefix
        self.engine: SparseEngine | None = None
        self._pending: dict | None = None  # engine state restored before the engine exists
        self.last_report = None

    def build(self, model: nn.Module, optimizer) -> SparseEngine:
        self.engine = SparseEngine(model, innermost(optimizer), self.method, **self.kwargs)
        if self._pending is not None:
            self.engine.load_state_dict(self._pending)
            self._pending = None
        return self.engine

    def after_step(self):
        """Call once per optimizer step of the trainer (an accumulation cycle's end); returns
        the update report on update steps."""
        if self.engine is None:
            raise RuntimeError("the sparse engine is not built yet: the callback builds it when "
                               "training starts")
        self.last_report = self.engine.step()
        return self.last_report

    def metrics(self, model: nn.Module) -> dict[str, float]:
        counts = param_counts(model)
        out = {"pool_density": counts["pool_density"], "model_density": counts["model_density"],
               "itop_rate": self.engine.exploration.rate}
        if self.last_report is not None:
            out["moved_per_update"] = float(self.last_report.pruned)
        return {self.prefix + k: float(v) for k, v in out.items()}

    def state_dict(self) -> dict:
        if self.engine is None:
            return {} if self._pending is None else dict(self._pending)
        return self.engine.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.engine is None:
            self._pending = dict(state)
        else:
            self.engine.load_state_dict(state)

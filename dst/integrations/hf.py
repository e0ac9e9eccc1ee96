"""A Hugging Face ``TrainerCallback`` that drives :class:`dst.SparseEngine`.

    dst.sparsify_(model, 0.1)                           # before the Trainer builds its optimizer
    cb = SparseTraining(dst.methods.DSR(), update_every=100, stop_step=9000)
    trainer = transformers.Trainer(model=model, args=args, callbacks=[cb], ...)
    cb.attach(trainer)                                  # optional: log through trainer.log
    trainer.train()                                     # or train(resume_from_checkpoint=...)

The engine is built on the trainer's optimizer when training begins and steps at the end of each
optimizer step (``on_step_end``: once per ``gradient_accumulation_steps`` batches; a step an
fp16 scaler skipped waits). Each checkpoint folder gets ``dst_engine.pt`` (written when the
trainer saves); resuming from that folder restores the engine exactly, the masks riding in the
model's weights. On update steps the callback logs ``dst/pool_density``, ``dst/model_density``,
``dst/itop_rate`` and ``dst/moved_per_update``: through ``trainer.log`` (every reporter) after
:meth:`SparseTraining.attach`, else into ``state.log_history``.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback

from ..checkpoint import CheckpointError, atomic_write, safe_load
from ..methods.base import Method
from ._driver import EngineDriver

STATE_FILE = "dst_engine.pt"


class SparseTraining(TrainerCallback):
    def __init__(self, method: Method, *, update_every, stop_step: int | None = None,
                 seed: int = 0, check: bool = False):
        self.driver = EngineDriver(method, update_every=update_every, stop_step=stop_step,
                                   seed=seed, check=check)
        self.trainer = None

    @property
    def engine(self):
        return self.driver.engine

    def attach(self, trainer) -> SparseTraining:
        """Log through ``trainer.log`` (so every reporter of the trainer sees the values)."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None:
            raise RuntimeError("SparseTraining found no optimizer at the start of training")
        self.driver.build(model, optimizer)
        if state.global_step > 0:  # resumed: the checkpoint folder of this step holds the engine
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if not path.is_file():
                raise CheckpointError(f"resuming at step {state.global_step}, but {path} does not "
                                      "exist: resume from a checkpoint folder written with this "
                                      "callback")
            self.driver.load_state_dict(safe_load(path))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        report = self.driver.after_step()
        if report is None:
            return
        values = self.driver.metrics(model)
        if self.trainer is not None:
            self.trainer.log(values)
        else:
            state.log_history.append({**values, "step": state.global_step})

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and self.driver.engine is not None and int(
                os.environ.get("RANK", "0")) == 0:
            import torch

            state_dict = self.driver.state_dict()
            atomic_write(folder / STATE_FILE, lambda p: torch.save(state_dict, p))

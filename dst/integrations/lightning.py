"""A Lightning ``Callback`` that drives :class:`dst.SparseEngine`.

    model = MyLightningModule()
    dst.sparsify_(model.net, 0.1)                       # before the optimizers are configured
    cb = SparseTraining(dst.methods.DSR(), update_every=100, stop_step=9000)
    lightning.Trainer(callbacks=[cb], ...).fit(model)

The engine is built on the trainer's first optimizer when training starts and steps after each
real optimizer step (with ``accumulate_grad_batches``, once per accumulation cycle; a step an
fp16 scaler skipped waits). Its state is saved in the trainer's checkpoints (the callback's
``state_dict``), so ``fit(ckpt_path=...)`` resumes it exactly; the masks ride in the model's
``state_dict``. On update steps it logs ``dst/pool_density``, ``dst/model_density``,
``dst/itop_rate`` and ``dst/moved_per_update`` to the trainer's loggers.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from ..methods.base import Method
from ._driver import EngineDriver


class SparseTraining(Callback):
    def __init__(self, method: Method, *, update_every, stop_step: int | None = None,
                 seed: int = 0, check: bool = False):
        self.driver = EngineDriver(method, update_every=update_every, stop_step=stop_step,
                                   seed=seed, check=check)
        self._seen_steps = 0

    @property
    def engine(self):
        return self.driver.engine

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.optimizers:
            raise RuntimeError("SparseTraining needs an optimizer: configure_optimizers "
                               "returned none")
        if len(trainer.optimizers) > 1:
            raise RuntimeError("SparseTraining drives one optimizer; the module configures "
                               f"{len(trainer.optimizers)}")
        self.driver.build(pl_module, trainer.optimizers[0])
        self._seen_steps = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._seen_steps:
            return  # an accumulation step: the optimizer has not stepped
        self._seen_steps = trainer.global_step
        report = self.driver.after_step()
        if report is not None:
            pl_module.log_dict(self.driver.metrics(pl_module), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"engine": self.driver.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.driver.load_state_dict(state_dict.get("engine") or {})

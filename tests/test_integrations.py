"""The Lightning and Hugging Face callbacks with the real libraries on a tiny model: the engine
steps once per optimizer step (gradient accumulation), logs to the trainer, and a resume from
the trainer's checkpoint restores it exactly (masks, threshold, step counts, exploration)."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dst
from dst.checkpoint import CheckpointError
from dst.methods import DSR


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    dst.sparsify_(net, 0.3, filter_fn=lambda n, m: True, seed=seed)
    return net


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def _same_end(a_net, a_engine, b_net, b_engine):
    assert a_engine.step_count == b_engine.step_count
    sa, sb = a_engine.state_dict(), b_engine.state_dict()
    assert sa["method_state"] == sb["method_state"] and sa["budget"] == sb["budget"]
    assert all(torch.equal(x, y) for x, y in zip(sa["ever_active"], sb["ever_active"],
                                                 strict=True))
    for (n, x), (_, y) in zip(dst.sparse_layers(a_net), dst.sparse_layers(b_net), strict=True):
        assert torch.equal(x.mask, y.mask) and torch.equal(x.dense_weight(), y.dense_weight()), n


def test_lightning_callback_steps_logs_and_resumes_exactly(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from dst.integrations.lightning import SparseTraining

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, _i):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    def fit(root, ckpt=None):
        cb = SparseTraining(DSR(prune_target=6), update_every=2, seed=5)
        trainer = L.Trainer(
            max_steps=8, accumulate_grad_batches=2, accelerator="cpu", deterministic=True,
            logger=CSVLogger(root), log_every_n_steps=1, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[cb, ModelCheckpoint(
                dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1)])
        module = Module()
        trainer.fit(module, loader, ckpt_path=ckpt)
        return module, cb, trainer

    module, cb, trainer = fit(tmp_path / "a")
    # 8 batches per epoch, 2 per optimizer step: 8 steps in 2 epochs; updates at steps 2, 4, ...
    assert cb.engine.step_count == 8 and trainer.current_epoch == 2
    assert cb.engine.budget == sum(m.n_active for _, m in dst.sparse_layers(module.net))
    assert cb.engine.exploration.rate > 0.3  # DSR moved weights
    logged = (tmp_path / "a").rglob("metrics.csv")
    assert any("dst/itop_rate" in p.read_text() for p in logged)
    first = sorted((tmp_path / "a" / "ckpt").glob("*.ckpt"))[0]  # the end of epoch 1: step 4
    assert "step=4" in first.name
    module2, cb2, _ = fit(tmp_path / "b", ckpt=first)
    _same_end(module.net, cb.engine, module2.net, cb2.engine)


def test_hf_callback_steps_logs_and_resumes_exactly(tmp_path):
    transformers = pytest.importorskip("transformers")

    from dst.integrations.hf import STATE_FILE, SparseTraining

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    x, y = _data()
    rows = [{"x": x[i], "labels": int(y[i])} for i in range(len(y))]

    def train(out, resume=None):
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=8, per_device_train_batch_size=8,
            gradient_accumulation_steps=2, learning_rate=0.1, lr_scheduler_type="constant",
            optim="sgd", save_strategy="steps", save_steps=4, logging_steps=100,
            report_to=[], use_cpu=True, seed=0, data_seed=0, remove_unused_columns=False,
            dataloader_num_workers=0, disable_tqdm=True)
        model = Net()
        cb = SparseTraining(DSR(prune_target=6), update_every=2, seed=5)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                       callbacks=[cb])
        cb.attach(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return model, cb, trainer

    model, cb, trainer = train(tmp_path / "a")
    assert cb.engine.step_count == 8  # 16 batches, 2 per optimizer step
    assert (tmp_path / "a" / "checkpoint-4" / STATE_FILE).is_file()
    assert any("dst/itop_rate" in h for h in trainer.state.log_history)
    # resume in another output folder from a copy of the straight run's step-4 checkpoint
    shutil.copytree(tmp_path / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4")
    model2, cb2, _ = train(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-4"))
    _same_end(model.net, cb.engine, model2.net, cb2.engine)
    # a checkpoint folder without the engine's state: one clear error, not a silent fresh engine
    shutil.copytree(tmp_path / "a" / "checkpoint-4", tmp_path / "c" / "checkpoint-4")
    (tmp_path / "c" / "checkpoint-4" / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="dst_engine.pt does not exist"):
        train(tmp_path / "c", resume=str(tmp_path / "c" / "checkpoint-4"))

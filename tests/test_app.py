"""The training app: config composition, CLI smoke runs, resume equality, DDP, bad overrides."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dst.app import run
from dst.train import CONF_DIR

QUICK = ["model=resnet20", "data=synthetic", "data.n_train=96", "data.n_test=64",
         "data.batch_size=32", "data.image_size=16", "trainer.tensorboard=false",
         "trainer.progress=false"]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def cfg_of(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = cfg_of([f"experiment={name}"])
    assert cfg.trainer.epochs >= 1 and cfg.sparsity.name in {"dsr", "dense", "static"}
    if name.startswith("wrn28_2_cifar10_dsr_s"):
        s = int(name[-2:]) / 100
        assert cfg.sparsity.density == pytest.approx(1 - s)
        assert list(cfg.sparsity.schedule.period[1]) == [25, 200]
        assert cfg.sparsity.schedule.period_unit == "step"
        assert cfg.sparsity.schedule.stop == 190 and cfg.sparsity.method.prune_target == 20000
    if name.startswith("resnet50"):
        assert cfg.sparsity.filter == "paper_sparse_fc"
        assert cfg.sparsity.method.prune_target == 400000


@pytest.mark.parametrize("sparsity", ["dense", "static", "dsr", "set", "rigl", "snfs"])
def test_each_sparsity_preset_trains(sparsity, tmp_path):
    cfg = cfg_of([*QUICK, f"sparsity={sparsity}", "trainer.epochs=2", "trainer.debug_checks=true"])
    if cfg.sparsity.schedule is not None:
        cfg.sparsity.schedule.unit = "step"
        cfg.sparsity.schedule.period_unit = "step"
        cfg.sparsity.schedule.period = [[0, 1]]
        cfg.sparsity.schedule.stop = 5
    summary = run(cfg, tmp_path)
    assert summary["finished"] and summary["epochs"] == 2
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env == summary["environment"]  # resolved versions and the machine, per run
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] and env["cpu_model"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    m = [json.loads(x) for x in lines]
    assert [x["epoch"] for x in m] == [1, 2] and m[-1]["step"] == 6
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc1", "test_acc5",
                "active_weights", "model_density", "pool_density", "time"):
        assert m[-1][key] is not None
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "model_summary.txt").read_text().count("\n") > 10
    if sparsity == "dense":
        assert summary["pool_size"] == 0 and summary["model_density"] == 1.0
    else:
        assert summary["pool_density"] == pytest.approx(0.1, abs=1e-3)
    if sparsity not in ("dense", "static"):
        assert (tmp_path / "density_history.csv").is_file()
        assert (tmp_path / "density_history.png").stat().st_size > 1000


def _metrics(path: Path):
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        d.pop("time"), d.pop("wall")
        out.append(d)
    return out


# dsr_structured: channels removed at steps 2 (before the checkpoint at step 3) and 4 (after)
@pytest.mark.parametrize(("method", "fmt", "extra", "updates"), [
    ("dsr", "dense", ["sparsity.schedule.stop=null"], ["2", "4", "6"]),
    ("dsr", "compact", ["sparsity.schedule.stop=null"], ["2", "4", "6"]),
    ("dsr_structured", "dense", ["sparsity.schedule.stop=6", "sparsity.method.ramp=[0,1]"],
     ["2", "4"]),
])
def test_resume_is_exact(tmp_path, method, fmt, extra, updates):
    common = [*QUICK, f"sparsity={method}", f"sparsity.format={fmt}", "trainer.epochs=2",
              "sparsity.schedule.unit=step", "sparsity.schedule.period_unit=step",
              "sparsity.schedule.period=[[0,2]]", *extra, "optim.optimizer.lr=0.05"]
    straight = tmp_path / "straight"
    run(cfg_of(common), straight)
    split = tmp_path / "split"
    first = run(cfg_of([*common, "trainer.stop_after=1"]), split)
    assert first == {"finished": False, "epoch": 1}
    run(cfg_of([*common, "trainer.resume=true"]), split)
    assert _metrics(straight) == _metrics(split)
    a = torch.load(straight / "checkpoints/last.pt", weights_only=False)
    b = torch.load(split / "checkpoints/last.pt", weights_only=False)
    assert a["engine"]["step"] == b["engine"]["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # density rows were kept up to the checkpoint and continued
    rows = (split / "density_history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == updates


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(tmp_path):
    common = [*QUICK, "sparsity=static", "trainer.epochs=1"]
    run(cfg_of(common), tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="corrupt or not a torch file"):
        run(cfg_of([*common, "trainer.epochs=2", "trainer.resume=true"]), tmp_path)
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_mismatched_checkpoint_is_refused(tmp_path):
    run(cfg_of([*QUICK, "sparsity=static", "trainer.epochs=1"]), tmp_path)
    with pytest.raises(Exception, match="different sparsity"):
        run(cfg_of([*QUICK, "sparsity=static", "sparsity.density=0.2", "trainer.epochs=2",
                    "trainer.resume=true"]), tmp_path)


def _cli(args, tmp_path, env=None, timeout=240):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dst.train", *args,
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=tmp_path)


def test_cli_smoke_run(tmp_path):
    r = _cli([*QUICK, "sparsity=dsr", "trainer.epochs=1", "sparsity.schedule.unit=step",
              "sparsity.schedule.period_unit=step", "sparsity.schedule.period=[[0,1]]",
              "sparsity.schedule.stop=3"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["finished"]
    assert "epoch 1/1" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("args,expected", [
    (["model=nope"], "Could not find 'model/nope'"),
    (["sparsity.density=1.5"], "sparsity.density must be in (0, 1], got 1.5"),
    (["data=npz", "data.path=/nonexistent/x.npz"], "/nonexistent/x.npz"),
    (["data=npz"], "missing value for data.path"),
    (["sparsity.densty=0.1"], "Key 'densty' is not in struct"),
    (["sparsity=magic"], "Could not find 'sparsity/magic'"),
    (["sparsity=dense", "sparsity.density=0.1"], "sparsity.density=0.1 would be ignored"),
    (["sparsity=dense", "sparsity.format=compact"], "sparsity=dense does not use sparsity.format"),
    (["sparsity=static", "sparsity.schedule={unit:step}"], "does not use sparsity.schedule"),
    (["sparsity=snip", "sparsity.distribution=erk"], "does not use sparsity.distribution"),
    (["+sparsity.method.prune_fraction=0.3"], "dst.methods.DSR does not take that option"),
    (["sparsity=rigl", "sparsity.schedule.stop=null"], "needs the engine's stop_step"),
    (["sparsity=snfs", "sparsity.method.momentum=1.0"], "momentum must be in [0, 1)"),
    # 3 steps: DSR's periods in epochs put no update before the stop at 95 %
    ([], "DSR would never update"),
])
def test_bad_overrides_exit_nonzero_with_a_clear_line(args, expected, tmp_path):
    base = [a for a in QUICK if not a.startswith("data")] if "data=npz" in args else QUICK
    r = _cli([*base, *args, "trainer.epochs=1"], tmp_path)
    assert r.returncode != 0
    assert expected in r.stderr, r.stderr[-2000:]
    log = tmp_path / "train.log"  # detected before the first batch
    assert not log.is_file() or "epoch 1/1" not in log.read_text()


# rigl: DDP with dense gradients all-reduced for growth; dsr_structured: layers cut down during
# training (gradients averaged by the optimizer hook instead of DDP's fixed buckets)
DDP_METHOD = {"rigl": ["sparsity.schedule.stop=null", "sparsity.method.decay=constant"],
              "dsr_structured": ["sparsity.schedule.stop=8", "sparsity.method.ramp=[0,1]"]}


@pytest.mark.parametrize("method", sorted(DDP_METHOD))
def test_ddp_two_gloo_processes_end_bit_identical(tmp_path, method):
    args = [*QUICK, "data.n_train=256", f"sparsity={method}", "trainer.epochs=2",
            "sparsity.schedule.unit=step", "sparsity.schedule.period_unit=step",
            "sparsity.schedule.period=[[0,1]]", *DDP_METHOD[method], "trainer.device=cpu",
            "trainer.debug_checks=true"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "dst.train", *args,
                        f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    fps = s["replica_fingerprints"]
    assert len(fps) == 2 and fps[0] == fps[1]
    assert s["engine_steps"] == 2 * 4  # 256 images / 2 ranks / batch 32 = 4 steps per epoch
    if method == "dsr_structured":  # last update at step 7 of the ramp's 8: C/2·(1 − (1/8)³)
        # = 7.98, 15.97, 31.94 of resnet20's 16, 32, 64 inner channels -> 7, 15, 31 removed
        assert [kept for kept, _ in s["channels"].values()] == [9] * 3 + [17] * 3 + [33] * 3
        # densities against the model asked for: the budget is 10 % of the full pool
        assert s["pool_density"] == pytest.approx(0.1, abs=1e-3)
        assert s["params_dense_slimmed"] < s["params_dense"]


def _short(cfg):
    if cfg.sparsity.schedule is not None:
        cfg.sparsity.schedule.unit = "step"
        cfg.sparsity.schedule.period_unit = "step"
        cfg.sparsity.schedule.period = [[0, 1]]
        cfg.sparsity.schedule.stop = 5
    return cfg


@pytest.mark.parametrize("name", ["snip", "thin_dense", "gmp"])
def test_baseline_presets_train(name, tmp_path):
    summary = run(_short(cfg_of([*QUICK, f"sparsity={name}", "trainer.epochs=2",
                                 "trainer.debug_checks=true"])), tmp_path)
    assert summary["finished"] and summary["method"] == name
    if name == "thin_dense":
        thin = summary["thin"]
        assert abs(thin["params"] - thin["target_params"]) <= 0.05 * thin["target_params"]
        assert summary["params_dense"] == thin["params"]
    else:  # snip: exact budget from the start; gmp: reaches it at its last update (step 4)
        assert summary["pool_density"] == pytest.approx(0.1, abs=1e-3)


def test_static_from_mask_reproduces_the_source_masks(tmp_path):
    src = tmp_path / "dsr"
    run(_short(cfg_of([*QUICK, "sparsity=dsr", "trainer.epochs=1"])), src)
    dst_dir = tmp_path / "static"
    for init in ("fresh", "original"):
        run(cfg_of([*QUICK, "sparsity=static_from_mask", f"sparsity.init.source={src}",
                    f"sparsity.init.init={init}", "trainer.epochs=1"]), dst_dir / init)
        a = torch.load(src / "checkpoints/last.pt", weights_only=False)["model"]
        b = torch.load(dst_dir / init / "checkpoints/last.pt", weights_only=False)["model"]
        masks = [k for k in a if k.endswith(".mask")]
        assert masks and all(torch.equal(a[k], b[k]) for k in masks)


def test_lottery_rounds_prune_and_rewind(tmp_path):
    summary = run(cfg_of([*QUICK, "sparsity=lottery", "sparsity.rounds=2",
                          "trainer.epochs=1"]), tmp_path)
    m = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in m] == [0, 1, 2]
    dens = [x["pool_density"] for x in m]
    assert dens[0] == 1.0 and dens[1] == pytest.approx(0.1 ** 0.5, abs=2e-3)
    assert dens[2] == pytest.approx(0.1, abs=1e-3)
    assert summary["lottery_densities"][-1] == 0.1


def test_lottery_resume_across_a_round_boundary_is_exact(tmp_path):
    common = [*QUICK, "sparsity=lottery", "sparsity.rounds=1", "trainer.epochs=1"]
    run(cfg_of(common), tmp_path / "straight")
    assert run(cfg_of([*common, "trainer.stop_after=1"]), tmp_path / "split")["epoch"] == 1
    run(cfg_of([*common, "trainer.resume=true"]), tmp_path / "split")
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "split")


def test_default_dsr_schedule_scales_with_the_epoch_length():
    from dst.app import engine_schedule

    s = cfg_of(["sparsity=dsr"]).sparsity.schedule
    sched, stop = engine_schedule(s, 200, 500)  # the paper's CIFAR-10 run: 500 steps per epoch
    assert sched.milestones == [(0, 100), (12500, 200), (40000, 400), (70000, 800)]
    assert stop == 190 * 500
    sched, stop = engine_schedule(s, 30, 50)  # the shared subset: 50 steps per epoch
    assert sched.milestones == [(0, 10), (188, 20), (600, 40), (1050, 80)] and stop == 1425


@pytest.mark.parametrize("sparsity", ["dsr", "set", "rigl", "snfs", "static", "gmp"])
def test_fp16_amp_with_a_forced_overflow_completes(sparsity, tmp_path):
    """A loss scale of 2**30 overflows fp16 until the scaler has backed off (about 13 skipped
    steps): the engine must skip those steps, then train and update on. (An MLP: fp16 convs
    are emulated on CPU and take a minute.)"""
    cfg = cfg_of([*QUICK, "model=mlp", "model.input_size=768", "sparsity.filter=all",
                  "data.n_train=320", f"sparsity={sparsity}", "trainer.epochs=4",
                  "trainer.amp=fp16", "trainer.amp_init_scale=1073741824",
                  "trainer.debug_checks=true"])
    if cfg.sparsity.schedule is not None:  # the last update (step 20) comes after the skips
        cfg.sparsity.schedule.unit = "step"
        cfg.sparsity.schedule.period_unit = "step"
        cfg.sparsity.schedule.period = [[0, 2]]
        cfg.sparsity.schedule.stop = 22
    summary = run(cfg, tmp_path)
    assert summary["finished"]
    skipped = summary["skipped_optimizer_steps"]
    assert 5 <= skipped < 30 and summary["engine_steps"] == 40 - skipped
    assert summary["pool_density"] == pytest.approx(0.1, abs=1e-3)
    m = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(x["train_loss"] == x["train_loss"] for x in m)  # no NaN in the means
    if sparsity not in ("static",):
        assert (tmp_path / "density_history.csv").read_text().count("\n") > 2  # updates ran


def test_a_small_vit_trains_with_its_attention_sparse(tmp_path):
    over = ["model=vit_tiny", "model.num_layers=1", "model.hidden_dim=24", "model.num_heads=2",
            "model.mlp_dim=32", "model.patch_size=8", "data=synthetic", "data.n_train=64",
            "data.n_test=32", "data.batch_size=32", "data.image_size=32", "optim=adamw",
            "sparsity=dsr", "sparsity.filter=ends_dense", "trainer.epochs=1",
            "sparsity.schedule.unit=step", "sparsity.schedule.period_unit=step",
            "sparsity.schedule.period=[[0,1]]", "sparsity.schedule.stop=2",
            "trainer.tensorboard=false", "trainer.progress=false"]
    summary = run(cfg_of(over), tmp_path)
    layers = summary["final_layer_density"]
    # the block's in-projection (3 x 24 x 24), out-projection and MLP are sparse; the patch
    # embedding and the head stay dense
    assert sorted(layers) == ["encoder.layers.encoder_layer_0.mlp.0",
                              "encoder.layers.encoder_layer_0.mlp.3",
                              "encoder.layers.encoder_layer_0.self_attention.in_proj",
                              "encoder.layers.encoder_layer_0.self_attention.out_proj"]
    assert summary["pool_size"] == 3 * 24 * 24 + 24 * 24 + 2 * 24 * 32
    assert summary["engine_steps"] == 2 and summary["finished"]

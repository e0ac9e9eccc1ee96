"""The one-shot lottery ticket (late rewinding) and GMP's preset schedule, through the app."""

import json

import pytest
import torch
from test_app import QUICK, cfg_of

import dst
from dst.app import engine_schedule, run
from dst.checkpoint import load_checkpoint


def test_one_shot_ticket_keeps_the_trained_largest_and_trains_from_the_rewind_step(tmp_path):
    run(cfg_of([*QUICK, "sparsity=dense", "trainer.epochs=2"]), tmp_path / "dense")
    trained = load_checkpoint(tmp_path / "dense" / "checkpoints" / "last.pt")["model"]
    cfg = cfg_of([*QUICK, "sparsity=lottery", "trainer.epochs=2", "trainer.debug_checks=true",
                  f"sparsity.ticket_from={tmp_path / 'dense' / 'checkpoints' / 'last.pt'}",
                  "sparsity.rewind=2"])
    summary = run(cfg, tmp_path / "ticket")
    assert summary["finished"] and summary["ticket"]["rewind_step"] == 2
    assert summary["pool_density"] == pytest.approx(0.1, abs=1e-3)
    state = load_checkpoint(tmp_path / "ticket" / "checkpoints" / "last.pt")["model"]
    for name in summary["final_layer_density"]:
        mask, w = state[f"{name}.mask"].reshape(-1), trained[f"{name}.weight"].reshape(-1)
        k = int(mask.sum())
        assert abs(k - 0.1 * mask.numel()) < 1  # uniform counts (largest remainder)
        top = torch.zeros_like(mask)  # the layer's k largest |w| of the trained dense run
        top[w.abs().topk(k).indices] = True
        assert torch.equal(mask, top), name
        assert not bool(state[f"{name}.weight"].reshape(-1)[~mask].any())  # pruned stay 0
    m = [json.loads(x) for x in (tmp_path / "ticket" / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["pool_density"] == pytest.approx(0.1, abs=1e-3)  # pruned within epoch 1
    rows = (tmp_path / "ticket" / "density_history.csv").read_text().splitlines()
    assert rows[1].startswith("2,1,")  # the prune is on the density history at step 2


def test_ticket_errors_before_the_first_batch(tmp_path):
    cfg = cfg_of([*QUICK, "sparsity=lottery", "trainer.epochs=1",
                  f"sparsity.ticket_from={tmp_path / 'missing.pt'}", "sparsity.rewind=1"])
    with pytest.raises(Exception, match="no checkpoint at"):
        run(cfg, tmp_path / "a")
    cfg = cfg_of([*QUICK, "sparsity=lottery", "trainer.epochs=1",
                  f"sparsity.ticket_from={tmp_path / 'missing.pt'}", "sparsity.rewind=99"])
    with pytest.raises(ValueError, match=r"an optimizer step in \[0, 3\)"):
        run(cfg, tmp_path / "b")
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_gmp_preset_prunes_20_times_every_2_of_48_and_fine_tunes():
    s = cfg_of(["sparsity=gmp"]).sparsity.schedule
    sched, stop = engine_schedule(s, 30, 51)  # the subset: 1530 steps
    # period round(1530 * 0.0416667) = 64; stop round(0.85 * 1530) = 1300 (after 20 * 64)
    assert sched.milestones == [(0, 64)] and stop == 1300
    assert sched.last_update_before(stop) == 1280
    updates = [t for t in range(1, stop) if sched.is_update(t)]
    assert len(updates) == 20


def test_thin_dense_preset_never_has_fewer_parameters_than_the_sparse_model(tmp_path):
    summary = run(cfg_of([*QUICK, "sparsity=thin_dense", "trainer.epochs=1"]), tmp_path)
    thin = summary["thin"]
    assert thin["params"] >= thin["target_params"] and summary["params_dense"] == thin["params"]
    assert dst.baselines.thin.MATCHES == ("closest", "at_least")


def test_a_checkpoint_from_before_a_new_null_option_still_resumes(tmp_path):
    """Checkpoints of the previous release have no start_density/driver/match keys: at their
    null default an option counts as absent, so they resume; a real difference still fails."""
    from dst.checkpoint import CheckpointError, save_checkpoint

    common = [*QUICK, "sparsity=static", "trainer.epochs=2"]
    assert run(cfg_of([*common, "trainer.stop_after=1"]), tmp_path)["epoch"] == 1
    path = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    for key in ("start_density", "driver", "match"):
        assert state["config"]["sparsity"].pop(key) is None
    save_checkpoint(path, state)
    assert run(cfg_of([*common, "trainer.resume=true"]), tmp_path)["finished"]
    with pytest.raises(CheckpointError, match="different sparsity"):
        run(cfg_of([*common, "sparsity.density=0.2", "trainer.resume=true"]), tmp_path)

"""Training another run's mask (FromMask) and the Hydra presets of the baselines."""

import pytest
import torch
from helpers import TinyNet, batch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import dst
from dst.baselines import FromMask, load_run_initial_state, load_run_masks
from dst.train import CONF_DIR


def tiny(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def make_source(root, fmt, density=0.3, filter_fn=None):
    """A fake finished run: init.pt (the plain model at step 0) and last.pt after 'training'."""
    net = tiny(0)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    dst.sparsify_(net, density, format=fmt, seed=7, filter_fn=filter_fn)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    ckpt = root / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"model": net.state_dict(), "format": "dst-checkpoint-v1"}, ckpt / "last.pt")
    torch.save({"model": init, "format": "dst-checkpoint-v1"}, ckpt / "init.pt")
    return {n: m.mask.clone() for n, m in dst.sparse_layers(net)}, init


@pytest.mark.parametrize("src_fmt,fmt", [("dense", "dense"), ("compact", "compact"),
                                         ("dense", "compact"), ("compact", "dense")])
def test_fresh_init_reproduces_the_source_masks(tmp_path, src_fmt, fmt):
    source, _ = make_source(tmp_path / "run", src_fmt)
    model = tiny(1)
    dst.sparsify_(model, 1.0, format=fmt)
    fresh = {n: m.dense_weight().clone() for n, m in dst.sparse_layers(model)}
    bias = model.fc1.bias.detach().clone()
    FromMask(str(tmp_path / "run"))(model, [], "cpu", 0.3, 0)
    for n, m in dst.sparse_layers(model):
        assert torch.equal(m.mask, source[n]), n
        assert torch.equal(m.dense_weight(), fresh[n] * source[n]), n
    assert torch.equal(model.fc1.bias, bias)
    model(batch(0)[0]).sum().backward()


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_original_init_restores_the_initial_weights_at_survivors(tmp_path, fmt):
    source, init = make_source(tmp_path / "run", fmt)
    model = tiny(1)
    dst.sparsify_(model, 1.0, format=fmt)
    hook = instantiate({"_target_": "dst.baselines.FromMask", "init": "original",
                        "source": str(tmp_path / "run" / "checkpoints" / "last.pt")})
    hook(model, [], "cpu", 0.3, 0)
    for n, m in dst.sparse_layers(model):
        assert torch.equal(m.mask, source[n])
        assert torch.equal(m.dense_weight(), init[f"{n}.weight"] * source[n]), n
        if m.bias is not None:
            assert torch.equal(m.bias, init[f"{n}.bias"])


def test_loading_masks_directly(tmp_path):
    dense_src, _ = make_source(tmp_path / "d", "dense")
    masks = load_run_masks(tmp_path / "d")  # dense format: no model needed
    assert list(masks) == list(dense_src)
    assert all(torch.equal(masks[n], dense_src[n]) for n in masks)
    assert set(load_run_initial_state(tmp_path / "d")) >= {"stem.weight", "fc2.bias"}
    make_source(tmp_path / "c", "compact")
    with pytest.raises(ValueError, match="pass the receiving model"):
        load_run_masks(tmp_path / "c")


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run_masks(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.pt"):
        load_run_masks(tmp_path / "empty")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a torch file"):
        load_run_masks(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dst checkpoint"):
        load_run_masks(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no init.pt beside"):
        load_run_initial_state(tmp_path / "other.pt")
    make_source(tmp_path / "convs", "dense",
                filter_fn=lambda name, m: isinstance(m, torch.nn.Conv2d))
    model = tiny(1)
    dst.sparsify_(model, 1.0)
    with pytest.raises(ValueError, match=r"only in the source \[\]; only in the model "
                                         r"\['fc1', 'fc2'\]"):
        FromMask(str(tmp_path / "convs"))(model, [], "cpu", 0.3, 0)
    with pytest.raises(ValueError, match="valid choices: fresh, original"):
        FromMask("x", init="random")
    with pytest.raises(ValueError, match="sparsity.init.source"):
        FromMask("???")


def test_density_mismatch_warns_and_fresh_needs_a_full_model(tmp_path):
    make_source(tmp_path / "run", "dense")
    model = tiny(1)
    dst.sparsify_(model, 1.0)
    with pytest.warns(UserWarning, match="pool density 0.3000 but the run asks for 0.1000"):
        FromMask(str(tmp_path / "run"))(model, [], "cpu", 0.1, 0)
    sparse = tiny(1)
    dst.sparsify_(sparse, 0.5)
    with pytest.raises(ValueError, match="density 1.0"):
        FromMask(str(tmp_path / "run"))(sparse, [], "cpu", 0.3, 0)


# ----------------------------------------------------------------------------- presets
def cfg_of(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("name", ["snip", "thin_dense", "static_from_mask", "lottery", "gmp"])
def test_baseline_presets_compose(name, tmp_path):
    cfg = cfg_of([f"sparsity={name}", "sparsity.density=0.2"])
    s = cfg.sparsity
    assert s.name == name and s.density == 0.2 and "init" in s
    assert {"distribution", "format", "filter", "method", "schedule"} <= set(s)
    if name == "snip":
        hook = instantiate(s.init)
        assert isinstance(hook, dst.baselines.SNIP) and hook.batches == 1
    if name == "static_from_mask":
        hook = instantiate(s.init, source=str(tmp_path))
        assert isinstance(hook, FromMask) and hook.init == "fresh"
    if name == "thin_dense":
        assert s.method is None and s.schedule is None and s.init is None
    if name == "lottery":
        assert s.rounds == 3 and s.rewind == "init" and s.scope == "layer"
        assert s.ticket_from is None  # iterative rounds unless a trained run is given
    if name == "gmp":
        assert s.method._target_ == "dst.methods.GMP" and s.method.final_density == 0.2
        assert s.schedule.period_unit == "fraction" and s.schedule.stop == 0.85
        assert s.init_from is None

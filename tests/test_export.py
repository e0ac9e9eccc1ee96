"""dst.export: plain torch modules with the original keys, and a safetensors file of values plus
positions whose round trip is exact."""

import importlib.util

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import dst
from dst import export
from dst.models import build_model
from dst.slim import attach_, find_channel_groups, slim_


def _sparse_resnet(fmt):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    keys = list(model.state_dict())
    dst.sparsify_(model, 0.1, format=fmt, seed=3)
    with torch.no_grad():  # a grown weight: active and exactly zero
        layer = model.layer1[0].conv1
        layer.active_values()[:1].zero_() if fmt == "compact" else \
            layer.weight.view(-1)[layer.active_indices()[:1]].zero_()
    return model.eval(), keys


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_to_torch_loads_strictly_into_the_torchvision_model(fmt):
    model, keys = _sparse_resnet(fmt)
    plain = export.to_torch(model)
    assert list(plain.state_dict()) == keys  # no mask, no bank, same order
    fresh = torchvision.models.resnet18(num_classes=10).eval()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)
    assert not dst.sparse_layers(plain) and dst.sparse_layers(model)  # the model is untouched


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_save_load_round_trip_is_exact(fmt, tmp_path):
    model, _ = _sparse_resnet(fmt)
    path = export.save(model, tmp_path / "m.safetensors")
    want = export.to_torch(model).state_dict()
    got = export.load(path)
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    masks = export.load_masks(path)
    for name, layer in dst.sparse_layers(model):
        assert torch.equal(masks[name], layer.mask.cpu()), name  # the zero weight's position too
    # into a dst model with other masks: masks and weights become the file's
    other = torchvision.models.resnet18(num_classes=10)
    dst.sparsify_(other, 0.1, format=fmt, seed=99)
    export.load_sparse_(other, path)
    for (n, a), (_, b) in zip(dst.sparse_layers(model), dst.sparse_layers(other), strict=True):
        assert torch.equal(a.mask.cpu(), b.mask.cpu()) and torch.equal(a.dense_weight(),
                                                                       b.dense_weight()), n


def test_positions_take_the_smaller_encoding(tmp_path):
    # a 64 x 64 Linear: the bit mask costs 4096 / 8 = 512 bytes; int32 indices cost 4 per
    # non-zero, so they win below 128 non-zeros (density 1/32)
    from safetensors import safe_open

    for density, kind, nbytes in ((0.25, "__bitmask", 512), (0.01, "__indices", 4 * 41)):
        model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
        dst.sparsify_(model, density, filter_fn=lambda n, m: True)
        path = export.save(model, tmp_path / f"{density}.safetensors")
        with safe_open(str(path), "pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        where = stored[f"0.weight.{kind}"]
        assert where.numel() * where.element_size() == nbytes
        assert stored["0.weight.__values"].numel() == round(density * 4096)


def test_a_slimmed_model_is_saved_at_its_slimmed_shapes(tmp_path):
    torch.manual_seed(0)
    model = build_model("wrn", 10, depth=10, widen_factor=1)
    dst.sparsify_(model, 0.3, filter_fn=dst.convert.paper_filter(model, dense_fc=True))
    groups = find_channel_groups(model)
    attach_(model, groups)
    g = groups[1]
    prod = model.get_submodule(g.producer)
    keep = torch.tensor([c for c in range(prod.weight_shape[0]) if c not in (1, 4, 5)])
    slim_(model, g, keep)
    got = export.load(export.save(model, tmp_path / "slim.safetensors"))
    assert got[f"{g.producer}.weight"].shape[0] == got[f"{g.consumer}.weight"].shape[1] == 29
    assert not any(k.endswith("kept_channels") for k in got)
    plain = export.to_torch(model).eval()
    plain.load_state_dict(got, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_files_of_another_kind_are_named(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(export.ExportError, match="not a dst sparse export of format "
                       "dst-sparse-v1.*'something-else'"):
        export.load(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(export.ExportError, match="not a safetensors file"):
        export.load(junk)
    with pytest.raises(FileNotFoundError, match="no file at"):
        export.load(tmp_path / "missing.safetensors")


def test_dst_export_writes_a_run_as_torch_and_safetensors(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from dst.app import run
    from dst.export_cli import main, model_from_run
    from dst.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=resnet20", "data=synthetic", "data.n_train=64", "data.n_test=32",
            "data.batch_size=32", "data.image_size=16", "trainer.tensorboard=false",
            "trainer.progress=false", "trainer.epochs=1", "sparsity=static",
            "sparsity.format=compact"])
    run(cfg, tmp_path / "run")
    model = model_from_run(tmp_path / "run")
    assert dst.sparse_layers(model)
    want = export.to_torch(model).state_dict()
    assert main([str(tmp_path / "run"), "--to", "torch", "--out", str(tmp_path / "m.pt")]) == 0
    got = torch.load(tmp_path / "m.pt", weights_only=True)
    assert list(got) == list(want) and all(torch.equal(got[k], v) for k, v in want.items())
    assert main([str(tmp_path / "run"), "--to", "safetensors", "--out",
                 str(tmp_path / "m.safetensors")]) == 0
    got = export.load(tmp_path / "m.safetensors")
    assert all(torch.equal(got[k], v) for k, v in want.items())
    capsys.readouterr()
    assert main([str(tmp_path / "run"), "--to", "inference", "--out",
                 str(tmp_path / "m.pt2")]) == 0  # a torch.export program on dst's kernels
    program = torch.export.load(str(tmp_path / "m.pt2"))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
    assert main([str(tmp_path / "run"), "--to", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "unknown --to 'tflite'" in capsys.readouterr().err
    if importlib.util.find_spec("onnxscript") is not None:
        assert main([str(tmp_path / "run"), "--to", "onnx", "--out",
                     str(tmp_path / "m.onnx")]) == 0
        assert (tmp_path / "m.onnx").stat().st_size > 0
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--to", "torch", "--out", str(tmp_path / "y")]) == 2
    assert "has no checkpoints/last.pt" in capsys.readouterr().err


@pytest.mark.parametrize("slim", [False, True], ids=["dense", "slimmed"])
def test_onnx_export_matches_onnxruntime(slim, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = build_model("wrn", 10, depth=10, widen_factor=1)
    dst.sparsify_(model, 0.3, filter_fn=dst.convert.paper_filter(model, dense_fc=True))
    if slim:
        groups = find_channel_groups(model)
        attach_(model, groups)
        slim_(model, groups[0], torch.arange(0, 16, 2))
    model.eval()
    path = export.to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        assert abs(got - want).max() <= 1e-5 * max(1.0, abs(want).max())

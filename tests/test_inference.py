"""dst.inference: eval-only sparse models on CSR kernels (the custom op dst::csr_mm) give the
dense model's outputs, and torch.compile (one graph) and torch.export trace them."""

import pytest
import torch
import torchvision

import dst
from dst import export
from dst.inference import InferenceConv2d, InferenceLinear, to_inference


def _close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_inference_model_gives_the_dense_models_outputs(fmt):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    dst.sparsify_(model, 0.1, format=fmt)
    model.eval()
    inf = to_inference(model)
    kinds = [type(m) for m in inf.modules()]
    assert kinds.count(InferenceConv2d) == 20 and kinds.count(InferenceLinear) == 1
    assert not dst.sparse_layers(inf) and not any(p.requires_grad for p in inf.parameters())
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            _close(inf(x), model(x))


def test_compile_and_export_trace_the_sparse_kernels(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    dst.sparsify_(model, 0.1)
    inf = to_inference(model.eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = inf(x)
        torch._dynamo.reset()
        compiled = torch.compile(inf, fullgraph=True, backend="aot_eager")  # no graph break
        _close(compiled(x), want)
    program = torch.export.export(inf, (x,))
    assert "dst.csr_mm" in str(program.graph)
    torch.export.save(program, str(tmp_path / "m.pt2"))
    loaded = torch.export.load(str(tmp_path / "m.pt2"))
    with torch.no_grad():
        _close(loaded.module()(x), want)


def test_attention_stays_dense_and_onnx_refuses_custom_ops(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                            hidden_dim=32, mlp_dim=64, num_classes=10)
    dst.sparsify_(vit, 0.2)
    inf = to_inference(vit.eval())
    assert type(inf.encoder.layers[0].self_attention) is torch.nn.MultiheadAttention
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(inf(x), vit(x))
    with pytest.raises(export.ExportError, match="inference model.*ONNX cannot express"):
        export.to_onnx(inf, tmp_path / "x.onnx", x[:1])

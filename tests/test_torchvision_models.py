"""Models nobody here wrote, as a new user would sparsify them: torchvision's ViT, Swin,
ConvNeXt and EfficientNet classes and nn.Transformer, in both formats. The transformers use
small configurations of the same classes as vit_b_16 and swin_t (the code paths are the
classes'; the sizes keep the test fast). Each: exactly torch's outputs at density 1, then at
density 0.1 three DSR and three RigL updates with the budget exact and the attention weights
inside it."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models import efficientnet_b0
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import dst
from dst.methods import DSR, RigL


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = nn.Transformer(d_model=32, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                dim_feedforward=64, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.t(x, x[:, :3])


MODELS = {
    "vit": (lambda: VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                      hidden_dim=32, mlp_dim=64, num_classes=10),
            (2, 3, 32, 32), "in_proj"),
    "swin": (lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1],
                                     num_heads=[2, 2], window_size=[2, 2], num_classes=10),
             (2, 3, 32, 32), "attn.qkv"),
    "convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                                  num_classes=10), (2, 3, 32, 32), None),
    "efficientnet_b0": (lambda: efficientnet_b0(num_classes=10), (2, 3, 32, 32), None),
    "transformer": (Seq2Seq, (2, 5, 32), "self_attn.in_proj"),
}


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sparsify_then_dsr_and_rigl_updates(name, fmt):
    make, shape, attention = MODELS[name]
    torch.manual_seed(0)
    ref = make().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    one = copy.deepcopy(ref)
    dst.sparsify_(one, 1.0, format=fmt)
    with torch.no_grad():
        a, b = ref(x), one.eval()(x)
    if fmt == "dense":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    model = make()
    made = dst.sparsify_(model, 0.1, format=fmt)
    pool = sum(m.numel_dense for _, m in made)
    if attention is not None:
        assert any(attention in n for n, _ in made)  # attention weights are in the budget
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for method in (DSR(prune_target=0.05), RigL()):
        engine = dst.SparseEngine(model, opt, method, update_every=1, stop_step=100,
                                  check=True)
        for _ in range(3):
            opt.zero_grad()
            model(x).float().square().mean().backward()
            opt.step()
            assert engine.step() is not None
        assert sum(m.n_active for _, m in dst.sparse_layers(model)) == round(0.1 * pool)

"""Models that read a sparse layer's weight themselves (``F.linear(x, layer.weight)``, as
torchvision's Swin and nn.MultiheadAttention do) train exactly like models that call the layer,
in both formats: the same masks and weights after mask updates that grow by gradient (RigL) or
by momentum (SNFS), inactive weights stay zero, and the budget holds."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dst
from dst.methods import SNFS, RigL


class Net(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        if self.functional:
            x = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
            x = F.linear(torch.relu(x).flatten(1), self.fc1.weight, self.fc1.bias)
        else:
            x = self.fc1(torch.relu(self.conv(x)).flatten(1))
        return self.fc2(torch.relu(x))


def _run(functional, fmt, method):
    torch.manual_seed(0)
    model = Net(functional)
    dst.sparsify_(model, 0.2, format=fmt, filter_fn=lambda n, m: True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = dst.SparseEngine(model, opt, method, update_every=3, stop_step=100, check=True)
    g = torch.Generator().manual_seed(2)
    for _ in range(12):  # 4 updates
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()
    return model, engine


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method", [RigL, SNFS], ids=["rigl", "snfs"])
def test_functional_weight_reads_train_like_the_layer_forward(fmt, method):
    a, ea = _run(False, fmt, method())
    b, eb = _run(True, fmt, method())
    assert ea.step_count == eb.step_count == 12
    for (n, x), (_, y) in zip(dst.sparse_layers(a), dst.sparse_layers(b), strict=True):
        assert torch.equal(x.mask, y.mask), n
        torch.testing.assert_close(x.dense_weight(), y.dense_weight(), rtol=1e-5, atol=1e-6)
        assert not bool(y.dense_weight()[~y.mask].any()), n  # inactive weights stay zero


def test_compact_weight_view_is_differentiable_into_the_bank():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    model = nn.Sequential(layer)
    dst.sparsify_(model, 0.5, format="compact", filter_fn=lambda n, m: True)
    sparse = model[0]
    x = torch.randn(3, 6)
    F.linear(x, sparse.weight, sparse.bias).square().sum().backward()
    via_view = sparse.storage.param.grad.clone()
    sparse.storage.param.grad = None
    sparse(x).square().sum().backward()
    torch.testing.assert_close(via_view, sparse.storage.param.grad)

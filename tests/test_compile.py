"""torch.compile across mask updates: after its first graphs a compiled sparse model keeps them
through 20 updates (no recompilation, in either format, for a method whose per-layer counts stay
and for one that moves weights between layers), and computes what the eager model does."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dst
from dst.methods import DSR, SET


def _model(fmt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10))
    dst.sparsify_(model, 0.3, format=fmt, filter_fn=lambda n, m: True)
    return model


def _train(model, method, steps, run=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = dst.SparseEngine(model, opt, method, update_every=2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy((run or model)(x), y)
        loss.backward()
        opt.step()
        engine.step()
        losses.append(float(loss))
    return losses, engine


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method", [SET, DSR], ids=["set", "dsr"])
def test_mask_updates_do_not_recompile(fmt, method):
    aot_eager = torch._dynamo.lookup_backend("aot_eager")
    graphs = []

    def counting(gm, inputs):
        graphs.append(gm)
        return aot_eager(gm, inputs)

    torch._dynamo.reset()
    model = _model(fmt)
    eager = copy.deepcopy(model)
    kw = {"prune_target": 20} if method is DSR else {}
    compiled = torch.compile(model, backend=counting)
    counts = []

    def run(x):
        out = compiled(x)
        counts.append(len(graphs))
        return out

    losses, engine = _train(model, method(**kw), 40, run)  # 20 updates
    assert engine.step_count == 40
    # the first graphs (one more when a layer's count first changes: dynamic shapes), then none
    assert counts[-1] <= 2 and counts[10] == counts[-1], counts
    want, _ = _train(eager, method(**kw), 40)
    assert losses == pytest.approx(want, rel=1e-5, abs=1e-6)
    for (n, a), (_, b) in zip(dst.sparse_layers(model), dst.sparse_layers(eager), strict=True):
        assert torch.equal(a.mask, b.mask), n

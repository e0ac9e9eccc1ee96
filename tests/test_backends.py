"""Compute backends of the sparse layers: csr routing, autotuning, and mask-change rebuilds."""

import pytest
import torch
from torch import nn

import dst
from dst.kernels import backends


@pytest.fixture(autouse=True)
def _fresh_decisions():
    backends.clear_decisions()
    yield
    backends.clear_decisions()


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("make", [
    lambda **kw: dst.SparseLinear(32, 16, **kw),
    lambda **kw: dst.SparseConv2d(32, 16, 1, stride=2, **kw),
    lambda **kw: dst.SparseConv2d(32, 16, 3, padding=1, **kw),  # direct sparse k x k (CPU)
])
def test_csr_backend_matches_dense_backend(make, fmt):
    torch.manual_seed(0)
    a = make(density=0.2, format=fmt)
    b = make(density=1.0, format=fmt)
    b.load_state_dict(a.state_dict())
    b.set_backend("csr")
    x = torch.randn(4, 32) if isinstance(a, nn.Linear) else torch.randn(2, 32, 6, 6)
    ya, yb = a(x), b(x)
    assert b.backend_used == "csr" and a.backend_used == "dense"
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    pa = a.weight if fmt == "dense" else a.values
    pb = b.weight if fmt == "dense" else b.values
    torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5)
    if fmt == "dense":
        assert not bool(pb.grad[~b.mask].any())


def test_csr_rejects_ineligible_layers_and_sparsify_falls_back():
    for kw in ({"stride": 2}, {"dilation": 2}, {"groups": 2}, {"padding_mode": "reflect",
                                                              "padding": 1}):
        with pytest.raises(ValueError, match="1x1 without padding or have stride 1"):
            dst.SparseConv2d(4, 4, 3, density=0.5, backend="csr", **kw)
    with pytest.raises(ValueError, match="stride 1"):
        dst.SparseConv2d(4, 4, 2, padding="same", density=0.5, backend="csr")  # asymmetric
    with pytest.raises(ValueError, match="valid choices: dense, csr, auto"):
        dst.SparseLinear(4, 4, density=0.5, backend="cusparse")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 8, 3, padding="same"),
                          nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 2))
    dst.sparsify_(model, 0.5, backend="csr")
    assert [m.backend for _, m in dst.sparse_layers(model)] == ["dense", "csr", "csr", "csr"]


def test_auto_times_once_per_shape_and_caches(monkeypatch):
    calls = []
    real = backends._time_fwd_bwd

    def spy(fn, x, params):
        calls.append(tuple(x.shape))
        return real(fn, x, params)

    monkeypatch.setattr(backends, "_time_fwd_bwd", spy)
    layer = dst.SparseLinear(64, 64, density=0.05, backend="auto")
    twin = dst.SparseLinear(64, 64, density=0.05, backend="auto")
    x = torch.randn(8, 64)
    for _ in range(3):
        layer(x)
    assert len(calls) == 2  # dense and csr, once
    twin(x)  # an identical layer reuses the decision
    assert len(calls) == 2
    layer(torch.randn(4, 64))  # a new input shape is timed again
    assert len(calls) == 4
    pick, t_dense, t_csr = next(iter(backends._DECISIONS.values()))
    assert layer.backend_used == pick
    assert (pick == "csr") == (t_csr <= (1 - backends.MIN_GAIN) * t_dense)


def test_auto_never_accumulates_gradients_while_timing():
    layer = dst.SparseLinear(16, 16, density=0.3, backend="auto")
    layer(torch.randn(2, 16))
    assert layer.weight.grad is None and layer.bias.grad is None


def test_auto_retunes_after_a_large_density_change(monkeypatch):
    layer = dst.SparseLinear(64, 64, density=0.5, backend="auto")
    x = torch.randn(8, 64)
    layer(x)
    seen = []
    monkeypatch.setattr(backends, "_time_fwd_bwd", lambda fn, x, p: seen.append(1) or 1.0)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :20] = True  # density 0.5 -> 0.31: more than 25 % away
    layer.set_mask_(mask)
    layer(x)
    assert len(seen) == 2
    mask[:, 20] = True  # 0.31 -> 0.33: no re-timing
    layer.set_mask_(mask)
    layer(x)
    assert len(seen) == 2


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_engine_updates_rebuild_the_csr_structure(fmt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ref = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ref.load_state_dict(model.state_dict())
    dst.sparsify_(model, 0.3, format=fmt, backend="csr")
    dst.sparsify_(ref, 0.3, format=fmt, backend="dense")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, ref)]
    engines = [dst.SparseEngine(m, o, dst.methods.SET(0.3), update_every=2, check=True)
               for m, o in zip((model, ref), opts, strict=True)]
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        x, y = torch.randn(8, 20, generator=g), torch.randint(0, 5, (8,), generator=g)
        for m, o, e in zip((model, ref), opts, engines, strict=True):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            e.step()
    for (_, a), (_, b) in zip(dst.sparse_layers(model), dst.sparse_layers(ref), strict=True):
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.dense_weight(), b.dense_weight(), rtol=1e-4, atol=1e-5)


def test_rigl_update_steps_use_the_dense_path_for_gradients():
    layer = dst.SparseLinear(16, 8, density=0.5, backend="csr")
    layer._capture_grad = True
    layer(torch.randn(3, 16)).sum().backward()
    assert layer.backend_used == "dense" or layer._dense_grad is not None
    assert layer.pop_dense_grad().numel() == 16 * 8


def test_autocast_bf16_cpu_csr():
    layer = dst.SparseConv2d(8, 4, 1, density=0.5, backend="csr")
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer.to_dense()(x), rtol=0.05, atol=0.05)


def test_auto_under_no_grad_times_forward_only():
    layer = dst.SparseLinear(32, 32, density=0.1, backend="auto")
    with torch.no_grad():
        y = layer(torch.randn(4, 32))
    assert layer.backend_used in ("dense", "csr") and not y.requires_grad
    keys = [k for k in backends._DECISIONS]
    assert len(keys) == 1 and keys[0][-2] is False  # the grad-enabled flag is part of the key


def test_run_summary_counts_the_kernels_each_layer_ran(monkeypatch):
    """auto may pick differently with and without autograd: the summary reports both."""
    from dst.summary import layer_backends, model_summary

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    dst.sparsify_(model, 0.5, backend="auto")
    def fake_time(fn, x, params):  # csr wins with autograd, dense without
        is_dense = getattr(fn, "__name__", "") == "_dense_forward"
        return 1.0 if torch.is_grad_enabled() == is_dense else 0.5

    monkeypatch.setattr(backends, "_time_fwd_bwd", fake_time)
    x = torch.randn(4, 8)
    for _ in range(3):
        model(x).sum().backward()
    with torch.no_grad():
        model(x)
    got = layer_backends(model)
    assert got["0"] == {"backend": "auto", "train": {"csr": 3}, "no_grad": {"dense": 1}}
    assert "sparse/dense (auto: csr)" in model_summary(model, (8,))[0]

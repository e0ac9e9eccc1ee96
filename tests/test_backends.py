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
    real = backends._time_candidates

    def spy(fns, x, params):
        calls.append((tuple(fns), tuple(x.shape)))
        return real(fns, x, params)

    monkeypatch.setattr(backends, "_time_candidates", spy)
    layer = dst.SparseLinear(64, 64, density=0.05, backend="auto")
    twin = dst.SparseLinear(64, 64, density=0.05, backend="auto")
    x = torch.randn(8, 64)
    for _ in range(3):
        layer(x)
    assert calls == [(("dense", "csr"), (8, 64))]  # both candidates, timed together, once
    twin(x)  # an identical layer reuses the decision
    assert len(calls) == 1
    layer(torch.randn(4, 64))  # a new input shape is timed again
    assert len(calls) == 2
    pick, t_dense, t_csr = next(iter(backends._DECISIONS.values()))
    assert layer.backend_used == pick
    assert (pick == "csr") == (t_csr <= (1 - backends.MIN_GAIN) * t_dense)


def test_auto_never_accumulates_gradients_while_timing():
    layer = dst.SparseLinear(16, 16, density=0.3, backend="auto")
    layer(torch.randn(2, 16))
    assert layer.weight.grad is None and layer.bias.grad is None
    layer.weight.grad = torch.ones(16, 16)  # a gradient being accumulated is kept as it was
    backends.clear_decisions()
    layer.__dict__.pop("_tuned")
    layer(torch.randn(3, 16))
    assert torch.equal(layer.weight.grad, torch.ones(16, 16)) and layer.bias.grad is None


def test_timing_interleaves_candidates_and_realizes_the_backward():
    """Each trial runs .backward() into the parameters' .grad (the dense format's in-place
    masking hook included), candidates alternate, and the best trial counts."""
    w = torch.nn.Parameter(torch.randn(4, 4))
    order, grads_seen = [], []

    def make(name):
        def fn(x):
            order.append(name)
            grads_seen.append(w.grad)  # None: every trial starts from a cleared gradient
            return x @ w
        return fn

    w.register_post_accumulate_grad_hook(lambda p: order.append("accumulated"))
    best = backends._time_candidates({"a": make("a"), "b": make("b")}, torch.randn(2, 4), [w])
    n = backends.WARMUP + backends.REPEATS
    assert order == ["a", "accumulated", "b", "accumulated"] * n
    assert all(g is None for g in grads_seen) and w.grad is None
    assert set(best) == {"a", "b"} and all(0 < t < 1 for t in best.values())


def test_auto_keeps_dense_on_a_tie_or_a_small_gain(monkeypatch):
    for csr_time in (1.0, 0.9):  # equal, or only 10 % faster (< MIN_GAIN)
        backends.clear_decisions()
        monkeypatch.setattr(backends, "_time_candidates",
                            lambda fns, x, p, t=csr_time: {"dense": 1.0, "csr": t})
        layer = dst.SparseLinear(32, 32, density=0.25, backend="auto")
        layer(torch.randn(4, 32))
        assert layer.backend_used == "dense"
    backends.clear_decisions()
    monkeypatch.setattr(backends, "_time_candidates", lambda fns, x, p: {"dense": 1.0,
                                                                         "csr": 0.8})
    layer = dst.SparseLinear(32, 32, density=0.25, backend="auto")
    layer(torch.randn(4, 32))
    assert layer.backend_used == "csr"
    log = layer.autotune_log
    assert log == [{"input": [4, 32], "grad": True, "density": 0.25, "dense_ms": 1000.0,
                    "csr_ms": 800.0, "pick": "csr"}]


def test_auto_retunes_after_a_large_density_change(monkeypatch):
    layer = dst.SparseLinear(64, 64, density=0.5, backend="auto")
    x = torch.randn(8, 64)
    layer(x)
    seen = []
    monkeypatch.setattr(backends, "_time_candidates",
                        lambda fns, x, p: seen.append(1) or {k: 1.0 for k in fns})
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :20] = True  # density 0.5 -> 0.31: more than 25 % away
    layer.set_mask_(mask)
    layer(x)
    assert len(seen) == 1
    mask[:, 20] = True  # 0.31 -> 0.33: no re-timing
    layer.set_mask_(mask)
    layer(x)
    assert len(seen) == 1


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
    layer.capture_grad = True
    layer(torch.randn(3, 16)).sum().backward()
    assert layer.backend_used == "dense" or layer.storage.dense_grad is not None
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
    def fake_time(fns, x, params):  # csr wins with autograd, dense without
        grad = torch.is_grad_enabled()
        return {"dense": 1.0 if grad else 0.5, "csr": 0.5 if grad else 1.0}

    monkeypatch.setattr(backends, "_time_candidates", fake_time)
    x = torch.randn(4, 8)
    for _ in range(3):
        model(x).sum().backward()
    with torch.no_grad():
        model(x)
    got = layer_backends(model)
    tuned = got["0"].pop("autotune")
    assert got["0"] == {"backend": "auto", "train": {"csr": 3}, "no_grad": {"dense": 1}}
    assert [(d["grad"], d["pick"], d["dense_ms"], d["csr_ms"]) for d in tuned] == [
        (True, "csr", 1000.0, 500.0), (False, "dense", 500.0, 1000.0)]
    assert "sparse/dense (auto: csr)" in model_summary(model, (8,))[0]


def test_timing_computes_the_input_gradient_only_when_the_real_input_needs_it():
    w = torch.nn.Parameter(torch.randn(4, 4))
    seen = []

    def fn(x):
        seen.append(x.requires_grad)
        return x @ w

    backends._time_candidates({"f": fn}, torch.randn(2, 4), [w])  # a first layer's input
    assert not any(seen)
    seen.clear()
    backends._time_candidates({"f": fn}, torch.randn(2, 4, requires_grad=True), [w])
    assert all(seen) and len(seen) == backends.WARMUP + backends.REPEATS

"""Direct sparse k x k convolution (dst.kernels.conv) against F.conv2d, and its routing."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import dst
from dst.kernels import CSRStructure, backends, conv, native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")


def _case(o, c, k, density, seed, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    kh, kw = k
    mask = torch.rand(o, c, kh, kw, generator=g) < density
    mask[1] = False  # an output channel with no weights
    w = torch.randn(o, c, kh, kw, generator=g) * mask
    s = CSRStructure.from_mask(mask)
    if shuffle:  # values in another order, as in a compact layer's bank slots
        p = torch.randperm(s.nnz, generator=g)
        s = CSRStructure.from_indices(s.flat_indices[p], mask.shape)
    return w, s, g


@pytest.mark.parametrize("k,padding,hw", [
    ((3, 3), (1, 1), (7, 9)),
    ((3, 3), (0, 0), (6, 6)),
    ((5, 5), (2, 2), (9, 70)),  # rows longer than one register tile
    ((3, 1), (1, 0), (5, 4)),
    ((1, 1), (1, 1), (4, 4)),
    ((3, 3), (2, 2), (4, 5)),  # padding larger than needed for "same"
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_matches_conv2d_forward_and_backward(k, padding, hw, channels_last, shuffle):
    w, s, g = _case(6, 5, k, 0.4, seed=sum(k) + hw[1], shuffle=shuffle)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 5, *hw, generator=g).to(memory_format=fmt).requires_grad_(True)
    bias = torch.randn(6, generator=g, requires_grad=True)
    values = s.gather(w).requires_grad_(True)
    y = conv.csr_conv2d(x, values, s, bias, k, padding)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = w.clone().requires_grad_(True)
    b_ref = bias.detach().clone().requires_grad_(True)
    y_ref = F.conv2d(x_ref, w_ref, b_ref, padding=padding)
    assert y.shape == y_ref.shape and y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    y_ref.backward(gy)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    assert x.grad.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(values.grad, s.gather(w_ref.grad), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(bias.grad, b_ref.grad, atol=1e-5, rtol=1e-5)


def test_zero_valued_weights_get_gradients_and_bf16_is_computed_in_float32():
    w, s, g = _case(4, 3, (3, 3), 0.5, seed=1)
    x = torch.randn(2, 3, 5, 5, generator=g)
    values = torch.zeros(s.nnz, requires_grad=True)  # e.g. just regrown
    y = conv.csr_conv2d(x, values, s, None, (3, 3), (1, 1))
    assert not bool(y.any())
    y.sum().backward()
    w_ref = torch.zeros_like(w, requires_grad=True)
    F.conv2d(x, w_ref, padding=1).sum().backward()
    torch.testing.assert_close(values.grad, s.gather(w_ref.grad))
    assert bool(values.grad.any())
    xb, wb = x.bfloat16(), w.bfloat16()
    yb = conv.csr_conv2d(xb, s.gather(wb), s, None, (3, 3), (1, 1))
    assert yb.dtype == torch.bfloat16
    ref = F.conv2d(xb.float(), wb.float(), padding=1).bfloat16()  # float32 math, bf16 result
    torch.testing.assert_close(yb, ref, atol=1e-2, rtol=2**-7)  # one bf16 rounding step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv.csr_conv2d(x, s.gather(w), s, None, (3, 3), (1, 1)).dtype == torch.bfloat16


def test_input_errors():
    w, s, _ = _case(4, 3, (3, 3), 0.5, seed=2)
    v = s.gather(w)
    with pytest.raises(RuntimeError, match="native CPU kernels only"):
        conv.csr_conv2d(torch.randn(1, 3, 5, 5, dtype=torch.float64), v.double(), s, None,
                        (3, 3), (1, 1))
    with pytest.raises(ValueError, match="structure expects 3"):
        conv.csr_conv2d(torch.randn(1, 4, 5, 5), v, s, None, (3, 3), (1, 1))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv.csr_conv2d(torch.randn(1, 3, 2, 2), v, s, None, (3, 3), (0, 0))


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_layer_after_engine_updates_matches_dense_backend(fmt):
    """The plan follows the structure when the engine moves weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1))
    dst.sparsify_(model, 0.3, format=fmt, backend="csr")
    x = torch.randn(2, 4, 6, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = dst.SparseEngine(model, opt, dst.methods.SET(0.3), update_every=1, check=True)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        engine.step()
    layers = [m for _, m in dst.sparse_layers(model)]
    assert all(m.backend_used == "csr" for m in layers)
    y_csr = model(x)
    for m in layers:
        m.set_backend("dense")
    torch.testing.assert_close(y_csr, model(x), atol=1e-5, rtol=1e-5)


def test_forced_csr_on_an_input_it_cannot_run_warns_once_and_runs_dense():
    layer = dst.SparseConv2d(3, 4, 3, padding=1, density=0.5, backend="csr").double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    with pytest.warns(UserWarning, match="native CPU kernels only"):
        y = layer(x)
    assert layer.backend_used == "dense"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # warned once per layer, not per call
    torch.testing.assert_close(y, F.conv2d(x, layer.dense_weight(), layer.bias, padding=1))


def test_auto_keeps_dense_where_csr_cannot_run(monkeypatch):
    layer = dst.SparseConv2d(3, 4, 3, padding=1, density=0.5, backend="auto")
    monkeypatch.setattr(backends.conv, "runnable", lambda x: False)
    layer(torch.randn(1, 3, 5, 5))
    assert layer.backend_used == "dense" and not backends._DECISIONS

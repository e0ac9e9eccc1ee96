"""Tests for the CSR SpMM kernels (dst.kernels.csr)."""

import pytest
import torch
import torch.nn.functional as F

from dst.kernels import (
    CSRLinearFunction,
    CSRStructure,
    csr_conv1x1,
    csr_linear,
    native,
)

cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny problems: with 2 threads on a busy machine every MKL-sparse / SDDMM parallel region
    waits for a descheduled OpenMP thread (~5 ms per op), which makes gradcheck crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, params=["native", "torch"])
def kernels(request, monkeypatch):
    """Every test runs on the native CPU kernels (where they build) and on PyTorch's."""
    if request.param == "torch":
        monkeypatch.setattr(native, "usable", lambda *tensors: False)
    elif not native.available():
        pytest.skip("native kernels unavailable")
    return request.param


def _mask(rows, cols, density=0.5, seed=0, empty_row=True, empty_col=True):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    if empty_row:
        mask[1] = False
    if empty_col:
        mask[:, 2] = False
    mask[0, 0] = True  # never entirely empty
    return mask


def _setup(rows, cols, dtype=torch.float32, device="cpu", bias=True, seed=0, **kw):
    mask = _mask(rows, cols, seed=seed, **kw).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(rows, cols, generator=g, dtype=dtype).to(device)
    s = CSRStructure.from_mask(mask)
    values = s.gather(weight).clone().requires_grad_(True)
    b = torch.randn(rows, generator=g, dtype=dtype).to(device) if bias else None
    if b is not None:
        b.requires_grad_(True)
    return mask, weight, s, values, b


def _dense_ref(weight, mask, bias):
    w = (weight * mask).detach().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    return w, b


# ----------------------------------------------------------------------------- structure


def test_structure_matches_mask_and_transpose():
    mask, weight, s, values, _ = _setup(6, 9)
    assert s.shape == (6, 9) and s.nnz == int(mask.sum())
    assert torch.equal(s.flat_indices, mask.flatten().nonzero().squeeze(1))
    assert torch.equal(values.detach(), weight[mask])  # row-major order
    ref = (weight * mask).to_sparse_csr()
    assert torch.equal(s.crow_indices.long(), ref.crow_indices())
    assert torch.equal(s.col_indices.long(), ref.col_indices())
    w_t = s.to_sparse_csr_t(values.detach()).to_dense()
    assert torch.equal(w_t, (weight * mask).t())
    assert torch.equal(s.scatter(values.detach()), weight * mask)
    assert s.index_dtype == torch.int32
    s64 = CSRStructure.from_mask(mask, index_dtype=torch.int64)
    assert s64.t_crow_indices.dtype == torch.int64 and torch.equal(s64.perm, s.perm)
    assert s.to("cpu") is s


def test_structure_from_conv_mask_flattens_trailing_dims():
    mask = torch.rand(4, 3, 1, 1) > 0.5
    mask[0, 0] = True
    s = CSRStructure.from_mask(mask)
    assert s.shape == (4, 3) and s.nnz == int(mask.sum())


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_linear_3d(with_bias):
    _, _, s, values, b = _setup(5, 7, dtype=torch.float64, bias=with_bias)
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    if with_bias:
        assert torch.autograd.gradcheck(lambda x, v, b: csr_linear(x, v, s, b), (x, values, b))
    else:
        assert torch.autograd.gradcheck(lambda x, v: csr_linear(x, v, s), (x, values))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gradcheck_conv1x1(stride, channels_last):
    _, _, s, values, b = _setup(4, 6, dtype=torch.float64)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    fn = lambda x, v, b: csr_conv1x1(x, v, s, b, stride=stride)
    assert torch.autograd.gradcheck(fn, (x, values, b))


# ----------------------------------------------------------------------------- vs dense


def _check_linear_vs_dense(x_shape, device="cpu", bias=True, atol=1e-5):
    mask, weight, s, values, b = _setup(16, 24, device=device, bias=bias)
    x = torch.randn(*x_shape, 24, device=device, requires_grad=True)
    y = csr_linear(x, values, s, b)
    w_ref, b_ref = _dense_ref(weight, mask, b)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.linear(x_ref, w_ref, b_ref)
    assert y.shape == y_ref.shape and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=atol, rtol=1e-5)
    torch.testing.assert_close(values.grad, w_ref.grad[mask], atol=atol, rtol=1e-5)
    if bias:
        torch.testing.assert_close(b.grad, b_ref.grad, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("x_shape", [(8,), (3, 4), ()])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_dense(x_shape, bias):
    _check_linear_vs_dense(x_shape, bias=bias)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("per_sample", [True, False])
def test_conv1x1_matches_dense(stride, channels_last, per_sample, monkeypatch):
    from dst.kernels import csr

    monkeypatch.setattr(csr, "_per_sample_path", lambda x: per_sample)  # False: the CUDA route
    mask, weight, s, values, b = _setup(8, 12)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 12, 7, 6).to(memory_format=fmt).requires_grad_(True)
    y = csr_conv1x1(x, values, s, b, stride=stride)
    w_ref, b_ref = _dense_ref(weight, mask, b)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.conv2d(x_ref, w_ref[:, :, None, None], b_ref, stride=stride)
    assert y.shape == y_ref.shape
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values.grad, w_ref.grad[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.grad, b_ref.grad, atol=1e-5, rtol=1e-5)


def test_conv1x1_nchw_path_chunked_sddmm_matches_permute_path(monkeypatch):
    from dst.kernels import csr

    monkeypatch.setattr(csr, "_SDDMM_CHUNK", 1)  # one sample per SDDMM chunk
    monkeypatch.setattr(csr, "_PER_SAMPLE_MIN_HW", 1)  # contiguous NCHW: per-sample path
    mask, weight, s, values, b = _setup(8, 12)
    x = torch.randn(3, 12, 4, 5)
    g = torch.randn(3, 8, 4, 5)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):  # NCHW path, permute path
        xi = x.clone(memory_format=fmt).requires_grad_(True)
        v, bi = values.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_()
        y = csr_conv1x1(xi, v, s, bi)
        y.backward(g)
        grads.append((y.detach().contiguous(), xi.grad, v.grad, bi.grad))
    for a, c in zip(*grads, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_zero_valued_active_weight_gets_gradient():
    mask, weight, s, _, _ = _setup(6, 10)
    values = s.gather(weight).clone()
    values[::2] = 0.0  # e.g. freshly regrown connections
    values.requires_grad_(True)
    x = torch.randn(5, 10)
    csr_linear(x, values, s).sum().backward()  # also exercises an expanded grad_out
    expected = torch.ones(5, 6).t() @ x  # dense grad of sum(x @ W^T)
    torch.testing.assert_close(values.grad, expected[mask])
    assert bool((values.grad[::2] != 0).any())


def test_empty_mask_and_empty_batch():
    s = CSRStructure.from_mask(torch.zeros(4, 3, dtype=torch.bool))
    values = torch.zeros(0, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    y = csr_linear(x, values, s, b)
    torch.testing.assert_close(y, b.detach().expand(2, 4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(2, 3)) and values.grad.shape == (0,)
    _, _, s2, v2, b2 = _setup(4, 3)
    y0 = csr_linear(torch.randn(0, 3, requires_grad=True), v2, s2, b2)
    assert y0.shape == (0, 4)
    y0.sum().backward()
    assert torch.equal(v2.grad, torch.zeros_like(v2))


def test_needs_input_grad_respected():
    _, _, s, values, _ = _setup(5, 6)
    x = torch.randn(3, 6)
    csr_linear(x, values, s).sum().backward()
    assert values.grad is not None
    x.requires_grad_(True)
    v = values.detach()
    out = CSRLinearFunction.apply(x, v, s, None)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_input_validation():
    _, _, s, values, _ = _setup(5, 6)
    with pytest.raises(ValueError, match="features"):
        csr_linear(torch.randn(2, 5), values, s)
    with pytest.raises(ValueError, match="nnz"):
        csr_linear(torch.randn(2, 6), values[:-1], s)


# ----------------------------------------------------------------------------- dtypes


def test_float64_and_bfloat16_inputs():
    mask, weight, s, values, b = _setup(8, 8, dtype=torch.float64)
    x = torch.randn(4, 8, dtype=torch.float64)
    assert csr_linear(x, values, s, b).dtype == torch.float64
    v16 = values.detach().bfloat16().requires_grad_(True)
    y = csr_linear(x.bfloat16(), v16, s)
    assert y.dtype == torch.bfloat16
    ref = F.linear(x.bfloat16().double(), (weight * mask).bfloat16().double())
    torch.testing.assert_close(y.double(), ref, atol=2e-2, rtol=2e-2)
    y.float().sum().backward()
    assert v16.grad.dtype == torch.bfloat16


def test_cpu_autocast_bf16():
    mask, weight, s, values, b = _setup(16, 24)
    x = torch.randn(6, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = csr_linear(x, values, s, b)
        y_ref = F.linear(x, weight * mask, b)
    assert y.dtype == torch.bfloat16 == y_ref.dtype
    torch.testing.assert_close(y.float(), (x @ (weight * mask).t() + b), atol=5e-2, rtol=2e-2)
    y.float().sum().backward()
    assert values.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    expected = torch.ones(6, 16).t() @ x.detach()
    torch.testing.assert_close(values.grad, expected[mask], atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yc = csr_conv1x1(torch.randn(2, 24, 3, 3), values, s, b)
    assert yc.dtype == torch.bfloat16 and yc.shape == (2, 16, 3, 3)


# ----------------------------------------------------------------------------- CUDA


@cuda
@needs_cuda
@pytest.mark.parametrize("bias", [True, False])
def test_cuda_linear_matches_dense(bias):
    _check_linear_vs_dense((5, 3), device="cuda", bias=bias, atol=1e-4)


@cuda
@needs_cuda
def test_cuda_structure_to_moves():
    mask = _mask(6, 7)
    s = CSRStructure.from_mask(mask)
    sc = s.to("cuda")
    assert sc.device.type == "cuda" and torch.equal(sc.perm.cpu(), s.perm)


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_and_autocast(dtype):
    mask, weight, s, values, b = _setup(16, 32, device="cuda")
    x = torch.randn(8, 32, device="cuda", requires_grad=True)
    y = csr_linear(x.to(dtype), values.detach().to(dtype), s, b.detach().to(dtype))
    assert y.dtype == dtype
    ref = F.linear(x, weight * mask, b)
    torch.testing.assert_close(y.float(), ref, atol=5e-2, rtol=2e-2)
    with torch.autocast("cuda", dtype=dtype):
        y = csr_linear(x, values, s, b)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert values.grad.dtype == torch.float32
    expected = torch.ones(8, 16, device="cuda").t() @ x.detach()
    torch.testing.assert_close(values.grad, expected[mask], atol=1e-3, rtol=1e-3)


@cuda
@needs_cuda
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_cuda_conv1x1_matches_dense(fmt):
    mask, weight, s, values, b = _setup(8, 12, device="cuda")
    x = torch.randn(2, 12, 6, 6, device="cuda").to(memory_format=fmt).requires_grad_(True)
    y = csr_conv1x1(x, values, s, b, stride=2)
    w_ref, b_ref = _dense_ref(weight, mask, b)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(x_ref, w_ref[:, :, None, None], b_ref, stride=2)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values.grad, w_ref.grad[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("op", ["linear", "conv_nchw", "conv_channels_last"])
def test_values_in_any_order_via_from_indices(op, monkeypatch):
    """A structure built from shuffled flat indices (a compact layer's slot order) reads values
    and returns their gradient in that order, equal to the row-major structure's results."""
    from dst.kernels import csr

    monkeypatch.setattr(csr, "_PER_SAMPLE_MIN_HW", 1)  # contiguous NCHW: per-sample path
    mask, weight, s, values, b = _setup(9, 14)
    g = torch.Generator().manual_seed(5)
    shuffle = torch.randperm(s.nnz, generator=g)
    s2 = CSRStructure.from_indices(s.flat_indices[shuffle], (9, 14, 1, 1))
    assert s2.order is not None and torch.equal(s2.flat_indices, s.flat_indices[shuffle])
    v2 = values.detach()[shuffle].clone().requires_grad_(True)
    if op == "linear":
        x = torch.randn(6, 14, generator=g)
        run = lambda st, v: csr_linear(x, v, st, b)  # noqa: E731
    else:
        fmt = torch.channels_last if op == "conv_channels_last" else torch.contiguous_format
        x = torch.randn(2, 14, 3, 5, generator=g).to(memory_format=fmt)
        run = lambda st, v: csr_conv1x1(x, v, st, b)  # noqa: E731
    y, y2 = run(s, values), run(s2, v2)
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-5)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(v2.grad, values.grad[shuffle], atol=1e-5, rtol=1e-5)


def test_from_indices_validation():
    assert CSRStructure.from_indices(torch.tensor([0, 3, 5]), (2, 3)).order is None  # sorted
    with pytest.raises(ValueError, match="unique"):
        CSRStructure.from_indices(torch.tensor([3, 0, 3]), (2, 3))
    with pytest.raises(ValueError, match="out of range"):
        CSRStructure.from_indices(torch.tensor([0, 6]), (2, 3))
    with pytest.raises(TypeError, match="1-D integer"):
        CSRStructure.from_indices(torch.tensor([0.0, 1.0]), (2, 3))

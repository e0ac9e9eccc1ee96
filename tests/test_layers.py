import math

import pytest
import torch
from torch import nn

import dst
from dst import SparseConv2d, SparseLinear

CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=6),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=1, stride=2),
]
FORMATS = ["dense", "compact"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv_density_one_matches_torch_exactly(kw, fmt):
    torch.manual_seed(0)
    ref = nn.Conv2d(**kw)
    layer = SparseConv2d.from_dense(ref, 1.0, format=fmt)
    x = torch.randn(2, kw["in_channels"], 9, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y_ref, y = ref(x), layer(x2)
    assert torch.equal(y_ref, y)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    assert layer.n_active == ref.weight.numel() and layer.density == 1.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_density_one_matches_torch_exactly(fmt):
    torch.manual_seed(0)
    ref = nn.Linear(7, 5)
    layer = SparseLinear.from_dense(ref, 1.0, format=fmt)
    x = torch.randn(3, 4, 7)
    assert torch.equal(ref(x), layer(x))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv_matches_to_dense_at_any_density(kw, fmt):
    torch.manual_seed(1)
    layer = SparseConv2d(**kw, density=0.3, format=fmt)
    twin = layer.to_dense()
    assert type(twin) is nn.Conv2d
    x = torch.randn(2, kw["in_channels"], 9, 9)
    torch.testing.assert_close(layer(x), twin(x))
    assert layer.n_active == math.floor(0.3 * twin.weight.numel() + 0.5)
    assert int((twin.weight != 0).sum()) <= layer.n_active
    assert torch.equal(twin.weight != 0, (twin.weight != 0) & layer.mask)


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_matches_to_dense_and_grads(fmt):
    torch.manual_seed(2)
    layer = SparseLinear(12, 9, density=0.25, format=fmt)
    twin = layer.to_dense()
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), twin(x))
    layer(x).square().sum().backward()
    twin(x).square().sum().backward()
    idx = layer.active_indices()
    grad = layer.weight.grad.reshape(-1)[idx] if fmt == "dense" else layer.values.grad
    torch.testing.assert_close(grad, twin.weight.grad.reshape(-1)[idx])
    if fmt == "dense":  # the gradient of inactive weights is exactly zero
        assert not bool(layer.weight.grad[~layer.mask].any())


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradcheck_float64(fmt):
    torch.manual_seed(3)
    conv = SparseConv2d(3, 4, 3, padding=1, groups=1, density=0.4, format=fmt,
                        dtype=torch.float64)
    lin = SparseLinear(6, 4, density=0.5, format=fmt, dtype=torch.float64)
    w_conv = conv.weight if fmt == "dense" else conv.values
    w_lin = lin.weight if fmt == "dense" else lin.values
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def f_conv(x, w, b):
        with torch.no_grad():
            w_conv.copy_(w)
        return torch.func.functional_call(conv, {n: p for n, p in
                                                 [(("weight" if fmt == "dense" else "values"), w),
                                                  ("bias", b)]}, (x,))

    def f_lin(z, w, b):
        return torch.func.functional_call(lin, {("weight" if fmt == "dense" else "values"): w,
                                                "bias": b}, (z,))

    assert torch.autograd.gradcheck(f_conv, (x, w_conv.detach().clone().requires_grad_(),
                                             conv.bias.detach().clone().requires_grad_()))
    assert torch.autograd.gradcheck(f_lin, (z, w_lin.detach().clone().requires_grad_(),
                                            lin.bias.detach().clone().requires_grad_()))


@pytest.mark.parametrize("opt_name", ["sgd", "nesterov", "adam", "adamw"])
def test_inactive_weights_stay_exactly_zero_under_optimizers(opt_name):
    torch.manual_seed(4)
    layer = SparseConv2d(4, 6, 3, padding=1, density=0.2)
    params = list(layer.parameters())
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        "nesterov": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True,
                                            weight_decay=5e-4),
        "adam": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=1e-4),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    }[opt_name]()
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(2, 4, 6, 6)).square().mean().backward()
        opt.step()
    assert not bool(layer.weight[~layer.mask].any())
    assert bool(layer.weight[layer.mask].ne(0).all())


def test_compact_stores_only_active_values():
    layer = SparseConv2d(16, 32, 3, density=0.1, format="compact")
    names = dict(layer.named_parameters())
    assert set(names) == {"values", "bias"}
    assert names["values"].numel() == layer.n_active == round(0.1 * 16 * 32 * 9)
    assert layer.indices.numel() == layer.n_active
    w = layer.weight  # a dense view built on access, not a parameter
    assert torch.equal(w, layer.dense_weight()) and "weight" not in names
    assert layer.mask.shape == (32, 16, 3, 3) and int(layer.mask.sum()) == layer.n_active


def test_compact_autograd_keeps_no_dense_weight():
    """Only the input, the values and the indices are saved for backward."""
    layer = SparseLinear(64, 64, density=0.1, format="compact")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(torch.randn(4, 64, requires_grad=True))
    assert sorted(t.numel() for t in saved) == sorted([4 * 64, layer.n_active, layer.n_active])


@pytest.mark.parametrize("fmt", FORMATS)
def test_autocast_bf16_cpu(fmt):
    torch.manual_seed(5)
    layer = SparseConv2d(4, 6, 3, padding=1, density=0.5, format=fmt)
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    p = layer.weight if fmt == "dense" else layer.values
    assert p.grad is not None and p.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer.to_dense()(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_roundtrip_restores_mask(fmt):
    a = SparseLinear(10, 10, density=0.3, format=fmt, generator=torch.Generator().manual_seed(1))
    b = SparseLinear(10, 10, density=0.6, format=fmt, generator=torch.Generator().manual_seed(2))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mask, b.mask) and a.n_active == b.n_active
    x = torch.randn(3, 10)
    assert torch.equal(a(x), b(x))


def test_keyed_masks_and_explicit_mask():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = SparseLinear(8, 8, density=0.25, generator=g1)
    b = SparseLinear(8, 8, density=0.25, generator=g2)
    assert torch.equal(a.mask, b.mask)
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[0, :3] = True
    c = SparseLinear(8, 8, mask=m, format="compact")
    assert torch.equal(c.mask, m) and c.n_active == 3


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), "0.5", True, None])
@pytest.mark.parametrize("cls_args", [(SparseLinear, (4, 4)), (SparseConv2d, (2, 2, 3))])
def test_bad_density_raises(bad, cls_args):
    cls, args = cls_args
    with pytest.raises(ValueError, match=r"density must be"):
        cls(*args, density=bad)


def test_bad_format_names_choices():
    with pytest.raises(ValueError, match="valid choices: dense, compact"):
        SparseLinear(4, 4, density=0.5, format="csr_magic")


def test_from_dense_type_and_mask_errors():
    with pytest.raises(TypeError, match="expects a Linear"):
        SparseLinear.from_dense(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="mask is empty"):
        SparseLinear(4, 4, mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match weight"):
        SparseLinear(4, 4, mask=torch.ones(3, 4, dtype=torch.bool))


def test_from_dense_does_not_touch_global_rng():
    torch.manual_seed(0)
    ref = nn.Linear(50, 50)
    state = torch.get_rng_state()
    dst.SparseLinear.from_dense(ref, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_compact_indices_are_int32_and_older_int64_checkpoints_load():
    torch.manual_seed(0)
    layer = dst.SparseLinear(64, 32, density=0.25, format="compact")
    assert layer.indices.dtype == torch.int32  # 4 bytes per active weight, not 8
    sd = layer.state_dict()
    sd["indices"] = sd["indices"].long()  # as the previous release saved them
    other = dst.SparseLinear(64, 32, density=0.25, format="compact")
    other.load_state_dict(sd)
    assert other.indices.dtype == torch.int32
    assert torch.equal(other.indices.long(), sd["indices"])
    x = torch.randn(3, 64)
    torch.testing.assert_close(other(x), layer(x))

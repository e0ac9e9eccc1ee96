"""nn.MultiheadAttention inside the budget: its projections become sparse layers, torch's
forward (fast paths, masks) is unchanged (exactly torch's outputs at density 1), every method
updates them like other layers, and densify_ gives torch's module back."""

import copy
import warnings

import pytest
import torch
from torch import nn

import dst
from dst import export
from dst.attention import SparseMultiheadAttention
from dst.methods import DSR, RigL

ALL = {"filter_fn": lambda n, m: True}


class Block(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, **kw)
        self.fc = nn.Linear(16, 16)

    def forward(self, q, k, v, **kw):
        out, w = self.attn(q, k, v, **kw)
        return self.fc(out), w


CASES = [dict(batch_first=True), dict(batch_first=False), dict(kdim=8, vdim=12),
         dict(bias=False, batch_first=True), dict(add_bias_kv=True, add_zero_attn=True)]


def _inputs(kw, g):
    b, s = 3, 5
    kd, vd = kw.get("kdim", 16), kw.get("vdim", 16)
    shape = (lambda d: (b, s, d)) if kw.get("batch_first") else (lambda d: (s, b, d))
    return (torch.randn(*shape(16), generator=g), torch.randn(*shape(kd), generator=g),
            torch.randn(*shape(vd), generator=g))


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(kw))
def test_density_one_gives_exactly_torchs_outputs(kw, fmt):
    torch.manual_seed(0)
    ref = Block(**kw)
    model = copy.deepcopy(ref)
    dst.sparsify_(model, 1.0, format=fmt, **ALL)
    assert isinstance(model.attn, SparseMultiheadAttention)
    names = {n for n, _ in dst.sparse_layers(model)}
    proj = {"attn.in_proj"} if "kdim" not in kw else {"attn.q_proj", "attn.k_proj", "attn.v_proj"}
    assert names == proj | {"attn.out_proj", "fc"}
    g = torch.Generator().manual_seed(1)
    q, k, v = _inputs(kw, g)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, -2:] = True
    calls = [dict(), dict(need_weights=False), dict(key_padding_mask=pad),
             dict(attn_mask=torch.triu(torch.ones(5, 5, dtype=torch.bool), 1))]
    # dense: the same parameters, bit for bit; compact: the same values in a weight built on
    # access, whose other address may change a GEMM's rounding in the last bit
    def same(x, y):
        if fmt == "dense":
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)

    for mode in ("train", "eval"):
        getattr(ref, mode)(), getattr(model, mode)()
        for call in calls:
            with torch.no_grad():  # eval + no_grad: torch's fused fast path where it applies
                a, b = ref(q, k, v, **call), model(q, k, v, **call)
            same(a[0], b[0])
            assert (a[1] is None) == (b[1] is None)
            if a[1] is not None:
                same(a[1], b[1])


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method", [DSR, RigL], ids=["dsr", "rigl"])
def test_attention_weights_are_in_the_budget_and_updated(method, fmt):
    torch.manual_seed(0)
    model = Block(batch_first=True)
    pool = 3 * 16 * 16 + 16 * 16 + 16 * 16  # in-projection, out-projection, fc
    made = dst.sparsify_(model, 0.25, format=fmt, **ALL)
    assert sum(m.numel_dense for _, m in made) == pool
    assert sum(m.n_active for _, m in made) == round(0.25 * pool)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = dst.SparseEngine(model, opt, method(), update_every=1, stop_step=100, check=True)
    before = model.attn.in_proj.mask.clone()
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        q, k, v = _inputs({"batch_first": True}, g)
        opt.zero_grad()
        model(q, k, v)[0].square().mean().backward()
        opt.step()
        assert engine.step() is not None
    assert engine.budget == round(0.25 * pool)
    assert not torch.equal(before, model.attn.in_proj.mask)  # the in-projection's mask moved


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_densify_gives_torchs_module_and_keys_back(fmt):
    torch.manual_seed(0)
    ref = Block(batch_first=True)
    keys = list(ref.state_dict())
    model = copy.deepcopy(ref)
    dst.sparsify_(model, 0.3, format=fmt, **ALL)
    plain = export.to_torch(model)
    assert type(plain.attn) is nn.MultiheadAttention and list(plain.state_dict()) == keys
    fresh = Block(batch_first=True)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    q, k, v = _inputs({"batch_first": True}, torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fresh(q, k, v)[0], model(q, k, v)[0])


def test_filter_can_keep_attention_dense():
    model = Block()
    keys = list(model.state_dict())
    dst.sparsify_(model, 0.5, filter_fn=lambda n, m: not n.startswith("attn"))
    assert type(model.attn) is nn.MultiheadAttention and list(model.state_dict()) != keys
    assert {n for n, _ in dst.sparse_layers(model)} == {"fc"}
    assert [k for k in model.state_dict() if k.startswith("attn")] == \
        [k for k in keys if k.startswith("attn")]


def test_attention_with_bare_weights_is_named_in_a_warning():
    class MyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_weight = nn.Parameter(torch.randn(48, 16))
            self.proj = nn.Linear(16, 16)

    model = nn.Sequential(MyAttention(), nn.Linear(16, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dst.sparsify_(model, 0.5, **ALL)
    text = " ".join(str(w.message) for w in caught)
    assert "leaves these attention weights dense" in text
    assert "0 (MyAttention: qkv_weight)" in text
    assert {n for n, _ in dst.sparse_layers(model)} == {"0.proj", "1"}

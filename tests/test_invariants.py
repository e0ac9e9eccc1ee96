"""The shared invariants, run for every method in the registry and both formats."""

import copy
import io

import pytest
import torch
from helpers import (
    BLOCK_LAYERS,
    AttnNet,
    BlockNet,
    TinyNet,
    batch,
    dense_only,
    make_method,
    train_steps,
)

import dst
from dst.channels import channel_removal
from dst.methods import METHODS

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
}
STEPS, STOP = 200, 10_000


# every method runs on a CNN, on a model with attention, and at each granularity it supports
BLOCKS = [None, "attention", "kernel", (2, 2)]


def build(method_name, fmt, opt_name="sgd_nesterov", seed=0, block=None):
    if block == "attention" and METHODS[method_name].removes_channels:
        with pytest.raises(ValueError, match="found no channel group|tracing the model"):
            _build(method_name, fmt, opt_name, seed, block)
        pytest.skip(f"{method_name} needs channel groups: the attention model has none "
                    "(error checked)")
    if block not in (None, "attention") and not METHODS[method_name].supports_blocks:
        with pytest.raises(ValueError, match="cannot prune and grow in blocks|format='dense'"):
            _build(method_name, fmt, opt_name, seed, block)
        pytest.skip(f"{method_name} works on single weights only (error checked)")
    if dense_only(method_name) and fmt == "compact":
        with pytest.raises(ValueError, match="use format='dense'"):
            _build(method_name, fmt, opt_name, seed, block)
        pytest.skip(f"{method_name} prunes for good or cuts layers down: dense format only "
                    "(error checked)")
    return _build(method_name, fmt, opt_name, seed, block)


def _build(method_name, fmt, opt_name, seed, block=None):
    torch.manual_seed(0)
    if block is None:
        model = TinyNet()
        dst.sparsify_(model, 0.3, format=fmt, seed=seed)
    elif block == "attention":
        model = AttnNet()
        dst.sparsify_(model, 0.3, format=fmt, seed=seed, filter_fn=lambda n, m: n != "stem")
    else:
        model = BlockNet()
        dst.sparsify_(model, 0.3, format=fmt, seed=seed, block=block,
                      filter_fn=lambda n, m: n in BLOCK_LAYERS)
    opt = OPTIMIZERS[opt_name](model.parameters())
    engine = dst.SparseEngine(model, opt, make_method(method_name), update_every=1,
                              stop_step=STOP, seed=seed)
    return model, opt, engine


def original(engine, name, t):
    """``t`` (of layer ``name``'s current weight shape) in the layer's original shape, zeros at
    the channels a structured method removed (identity for every other method)."""
    layers, cut = dict(engine.layers), channel_removal(engine)
    for g, n in zip(cut.groups, cut.n_channels, strict=True) if cut is not None else ():
        for dim, owner in ((0, g.producer), (1, g.consumer)):
            if owner == name and t.shape[dim] != n:
                shape = list(t.shape)
                shape[dim] = n
                t = t.new_zeros(shape).index_copy_(dim, layers[g.producer].kept_channels, t)
    return t


def state_at(opt, engine, name, layer, flat_idx):
    """Optimizer state values at flat positions of the layer's original shape."""
    if channel_removal(engine) is None:
        return opt_state_at(opt, layer, flat_idx)
    param = layer.storage.param
    return [original(engine, name, v).reshape(-1)[flat_idx]
            for v in opt.state.get(param, {}).values()
            if torch.is_tensor(v) and v.shape == param.shape]


def opt_state_at(opt, layer, flat_idx):
    """Every optimizer state value of a layer's weights at flat positions."""
    param = layer.storage.param
    if layer.storage.bank is None:
        pos = flat_idx
    else:
        slot_of = torch.full((layer.numel_dense,), -1, dtype=torch.long)
        slot_of[layer.indices] = torch.arange(layer.indices.numel())
        local = slot_of[flat_idx]
        assert bool((local >= 0).all())
        pos = local + layer.storage.bank.offsets()[layer.storage.slot]
    out = []
    for v in opt.state.get(param, {}).values():
        if torch.is_tensor(v) and v.shape == param.shape:
            out.append(v.reshape(-1)[pos] if v.is_contiguous() else v.flatten()[pos])
    return out


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_invariants_over_hundreds_of_updates(method_name, fmt, block):
    model, opt, engine = build(method_name, fmt, block=block)
    layers = dst.sparse_layers(model)
    budget0 = [m.n_active for _, m in layers]
    assert sum(budget0) == engine.budget
    prev = {n: m.mask.clone() for n, m in layers}
    n_updates, n_grown, n_cut = 0, 0, 0

    def check(report):
        nonlocal n_updates, n_grown, n_cut
        counts = [m.n_active for _, m in layers]
        assert sum(counts) == engine.budget
        if engine.method.shrinks:  # pruning-only methods: the budget never rises
            assert counts == engine.layer_budget and all(
                c <= b for c, b in zip(counts, budget0, strict=True))
        elif not engine.method.reallocates:
            assert counts == budget0
        for name, m in layers:
            idx = m.active_indices()
            assert idx.numel() >= 1
            assert idx.unique().numel() == idx.numel()
            assert int(idx.min()) >= 0 and int(idx.max()) < m.numel_dense
            if fmt == "dense":
                assert not bool(m.weight.detach()[~m.mask].any())
                # the cached active set (updated, not rebuilt, at a commit) is the mask's
                assert torch.equal(idx, m.mask.reshape(-1).nonzero().squeeze(1)), name
            if block not in (None, "attention"):  # whole units on or off (raises otherwise)
                m.units.units_of_mask(m.mask)
            mask = original(engine, name, m.mask)  # structured: in the original shape
            n_cut += int(mask.numel() != m.mask.numel())
            new = (mask & ~prev[name]).reshape(-1).nonzero().squeeze(1)
            if report is not None and new.numel():
                n_grown += new.numel()
                weight = original(engine, name, m.dense_weight())
                assert not bool(dst.storage.flat_get(weight, new).any()), name
                for st in state_at(opt, engine, name, m, new):
                    assert not bool(st.any()), f"{name}: grown weights kept optimizer state"
            prev[name] = mask.clone()
        if report is not None:
            n_updates += 1
            if engine.method.shrinks:
                assert report.grown == 0 and sum(report.active.values()) == engine.budget
            else:
                assert report.pruned == report.grown
            assert sum(report.active.values()) == engine.budget

    # grown weights are checked right after the update step, before any optimizer step
    train_steps(model, opt, engine, 0, STEPS, on_step=check)
    if engine.method.changes_masks:
        assert n_updates == STEPS
        assert n_grown > 0 or engine.method.shrinks
    assert (n_cut > 0) == engine.method.removes_channels  # the layers were cut down
    engine.check()


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_state_dict_roundtrip_continues_identically(method_name, fmt, block):
    model, opt, engine = build(method_name, fmt, opt_name="adam", block=block)
    train_steps(model, opt, engine, 0, 30)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                           "engine": engine.state_dict()})
    reported = copy.deepcopy(engine.method.state())  # what a summary written now would say
    train_steps(model, opt, engine, 30, 20)

    model2, opt2, engine2 = build(method_name, fmt, opt_name="adam", seed=0, block=block)
    train_steps(model2, opt2, engine2, 0, 3)  # diverge first, so loading must restore all
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    engine2.load_state_dict(saved["engine"])
    assert engine2.method.state() == reported
    train_steps(model2, opt2, engine2, 30, 20)
    assert engine2.step_count == engine.step_count
    for (n, a), (_, b) in zip(dst.sparse_layers(model), dst.sparse_layers(model2), strict=True):
        assert torch.equal(a.mask, b.mask), n
        assert torch.equal(a.dense_weight(), b.dense_weight()), n
    assert engine2.method.state_dict().keys() == engine.method.state_dict().keys()


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_same_seed_same_masks_different_seed_different(method_name):
    runs = []
    for seed in (0, 0, 1):
        model, opt, engine = build(method_name, "dense", seed=seed)
        train_steps(model, opt, engine, 0, 10)
        runs.append(torch.cat([m.mask.reshape(-1) for _, m in dst.sparse_layers(model)]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_grown_weights_have_zero_state_under_every_optimizer(opt_name, fmt):
    model, opt, engine = build("dsr", fmt, opt_name=opt_name)
    layers = dst.sparse_layers(model)
    prev = {n: m.mask.clone() for n, m in layers}
    checked = 0

    def check(report):
        nonlocal checked
        for name, m in layers:
            new = (m.mask & ~prev[name]).reshape(-1).nonzero().squeeze(1)
            if report is not None and new.numel():
                states = opt_state_at(opt, m, new)
                assert states, "the optimizer keeps state for the weights"
                assert all(not bool(s.any()) for s in states), (name, opt_name)
                assert not bool(dst.storage.flat_get(m.dense_weight(), new).any())
                checked += new.numel()
            prev[name] = m.mask.clone()

    train_steps(model, opt, engine, 0, 40, on_step=check)
    assert checked > 0


@pytest.mark.parametrize("copied", ["no", "deepcopy", "pickle"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_dense_format_inactive_weights_stay_exactly_zero_every_step(opt_name, copied):
    """No weight * mask product per forward: the backward zeroes inactive gradients in place,
    so momentum, Nesterov, weight decay, Adam and AdamW all leave inactive weights at 0 (also
    in a deep copy or an unpickled copy of the model, whose new parameters need their own
    hooks)."""
    torch.manual_seed(0)
    model = TinyNet()
    dst.sparsify_(model, 0.3)
    if copied != "no":
        model(torch.randn(2, 3, 8, 8)).sum().backward()  # hooks on the original's weights
        if copied == "deepcopy":
            model = copy.deepcopy(model)
        else:
            buf = io.BytesIO()
            torch.save(model, buf)  # a whole-model pickle (not just a state_dict)
            buf.seek(0)
            model = torch.load(buf, weights_only=False)
        model.zero_grad(set_to_none=True)
    opt = OPTIMIZERS[opt_name](model.parameters())
    layers = dst.sparse_layers(model)
    for t in range(25):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, m in layers:
            assert not bool(m.weight.grad[~m.mask].any()), (name, t)  # zeroed in place
            assert bool(m.weight.grad[m.mask].any()), name  # active ones untouched
        opt.step()
        for name, m in layers:
            assert not bool(m.weight.detach()[~m.mask].any()), (name, t)

"""Exactness under ties and skipped optimizer steps (AMP overflow), for every method."""

import copy

import pytest
import torch
from helpers import TinyNet, batch, dense_only, make_method
from torch import nn

import dst
from dst.methods import METHODS
from dst.selection import select

DYNAMIC = sorted(n for n, m in METHODS.items() if m.changes_masks)


# ----------------------------------------------------------------------------- the tie rule
def test_select_breaks_ties_by_flat_index_not_by_position():
    scores = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0])
    flat = torch.tensor([9, 4, 7, 1, 2])
    # three zeros tie for two places: flat indices 4 (pos 1), 7 (pos 2), 2 (pos 4) -> 2 and 4
    assert select(scores, 2, flat).tolist() == [1, 4]
    # the same weights held in another order give the same weights
    perm = torch.tensor([4, 3, 2, 1, 0])
    chosen = select(scores[perm], 2, flat[perm])
    assert sorted(flat[perm][chosen].tolist()) == [2, 4]
    # below the cut all are taken, ties only fill the rest: 0.0 < 1.0, then flat 1 beats 9
    assert select(torch.tensor([1.0, 0.0, 1.0]), 2, torch.tensor([9, 5, 1])).tolist() == [1, 2]


def test_select_largest_breaks_ties_by_position_and_rejects_nan():
    assert select(torch.tensor([3.0, 5.0, 5.0, 1.0]), 1, largest=True).tolist() == [1]
    assert select(torch.tensor([3.0, 5.0, 5.0, 5.0]), 2, largest=True).tolist() == [1, 2]
    assert select(torch.tensor([0.0, 0.0]), 0).numel() == 0
    assert select(torch.tensor([0.0, 2.0]), 5).tolist() == [0, 1]
    with pytest.raises(FloatingPointError, match="NaN"):
        select(torch.tensor([1.0, float("nan"), 0.5]), 1)


def test_all_finite_sees_nan_and_both_infinities_anywhere():
    from dst.storage.flat import all_finite
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.linspace(-3, 3, 5000, dtype=dtype)
        assert all_finite(x) and all_finite(x[:0])
        for bad in (float("nan"), float("inf"), float("-inf")):
            for at in (0, 2500, 4999):
                y = x.clone()
                y[at] = bad
                assert not all_finite(y), (dtype, bad, at)
    assert not all_finite(torch.tensor([[1.0, 2.0], [3.0, float("nan")]]).t())


def test_select_at_a_threshold_trusts_it_only_when_it_cuts_at_k():
    scores = torch.tensor([0.5, 0.1, 0.3, 0.1, 0.9])
    # exactly two scores under 0.2: they are the two lowest whatever the flat indices
    assert select(scores, 2, torch.tensor([0, 9, 1, 8, 2]), below=0.2).tolist() == [1, 3]
    # three under 0.25 (or none under 0.05) for k = 2: the threshold is ignored and the tie
    # rule picks 0.1 and, of the two 0.2s, the one at flat index 1 (position 2), not both
    ties, flat = torch.tensor([0.2, 0.1, 0.2, 0.3]), torch.tensor([5, 0, 1, 2])
    assert select(ties, 2, flat, below=0.25).tolist() == [1, 2]
    assert select(ties, 2, flat, below=0.05).tolist() == [1, 2]
    # large enough for the native index pass: the positions under the threshold, ascending
    s = torch.rand(50_000, generator=torch.Generator().manual_seed(0))
    k = int((s < 0.1).sum())
    assert torch.equal(select(s, k, below=0.1), (s < 0.1).nonzero().squeeze(1))
    assert torch.equal(select(s, k), (s < 0.1).nonzero().squeeze(1))


# ----------------------------------------------------------------------------- resume with ties
def _quantize_after_step(opt):
    """Round every weight to a multiple of 1/16 after each step: few distinct magnitudes, and
    grown weights that stay exactly zero, so every update selects among exact ties."""
    def hook(optimizer, *_):
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.copy_((p * 16).round() / 16)
    opt.register_step_post_hook(hook)


def _tied_run(method_name, fmt, seed=0):
    torch.manual_seed(0)
    model = TinyNet()
    dst.sparsify_(model, 0.3, format=fmt, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p * 16).round() / 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _quantize_after_step(opt)
    engine = dst.SparseEngine(model, opt, make_method(method_name), update_every=2,
                              stop_step=10_000, seed=seed, check=True)
    return model, opt, engine


def _train(model, opt, engine, start, steps):
    for t in range(start, start + steps):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()


def _ties_at_the_cut(model):
    """How many active weights share their magnitude with another one (before an update)."""
    n = 0
    for _, m in dst.sparse_layers(model):
        v = m.active_values().detach().abs()
        n += int(v.numel() - v.unique().numel())
    return n


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method_name", DYNAMIC)
def test_resume_among_exact_ties_is_bit_identical(method_name, fmt):
    if dense_only(method_name) and fmt == "compact":
        pytest.skip("a shrinking or channel-cutting method runs in the dense format only")
    model, opt, engine = _tied_run(method_name, fmt)
    _train(model, opt, engine, 0, 21)  # ends right after an update (step 20) ...
    assert _ties_at_the_cut(model) > 50  # ... with plenty of exact ties in the pool
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                           "engine": engine.state_dict()})
    _train(model, opt, engine, 21, 9)  # several updates after the save point

    model2, opt2, engine2 = _tied_run(method_name, fmt)
    _train(model2, opt2, engine2, 0, 3)  # diverge first, so loading must restore everything
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    engine2.load_state_dict(saved["engine"])
    _train(model2, opt2, engine2, 21, 9)
    for (n, a), (_, b) in zip(dst.sparse_layers(model), dst.sparse_layers(model2), strict=True):
        assert torch.equal(a.mask, b.mask), n
        assert torch.equal(a.dense_weight(), b.dense_weight()), n


# ----------------------------------------------------------------------------- skipped steps
def _model(method_name, fmt="dense", update_every=1):
    torch.manual_seed(0)
    model = TinyNet()
    start = 1.0 if METHODS[method_name].shrinks else 0.3
    dst.sparsify_(model, start, format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    engine = dst.SparseEngine(model, opt, make_method(method_name), update_every=update_every,
                              stop_step=10_000, check=True)
    return model, opt, engine


def _snapshot(model):
    return [(m.mask.clone(), m.dense_weight().clone()) for _, m in dst.sparse_layers(model)]


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_an_inf_gradient_skips_the_step_and_the_update_waits(method_name):
    model, opt, engine = _model(method_name, update_every=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    state0 = None
    for t in range(12):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        poisoned = t in (2, 3)  # optimizer steps 3 (an update step) and 3 again: both skipped
        if poisoned:
            model.fc2.bias.grad[0] = float("inf")
            before, state0 = _snapshot(model), copy.deepcopy(engine.method.state_dict())
        scaler.step(opt)
        scaler.update()
        report = engine.step()
        if poisoned:
            assert report is None
            for (m0, w0), (m1, w1) in zip(before, _snapshot(model), strict=True):
                assert torch.equal(m0, m1) and torch.equal(w0, w1)  # nothing moved at all
            for k, v in engine.method.state_dict().items():  # no statistic recorded
                assert str(v) == str(state0[k]), k
        elif t == 4 and engine.method.changes_masks:
            assert report is not None and report.step == 3  # the due update, one step late
    assert engine.skipped_steps == 2 and engine.step_count == 10
    engine.check()


@pytest.mark.parametrize("fmt", ["dense", "compact"])
@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_fp16_overflow_with_a_huge_scale_trains_on(method_name, fmt):
    if dense_only(method_name) and fmt == "compact":
        pytest.skip("a shrinking or channel-cutting method runs in the dense format only")
    model, opt, engine = _model(method_name, fmt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows until it backs off
    reports = []
    for t in range(40):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        reports.append(engine.step())
    assert engine.skipped_steps > 0 and engine.step_count == 40 - engine.skipped_steps
    assert engine.step_count > 5  # training went on after the scale came down
    if engine.method.changes_masks:
        assert sum(r is not None for r in reports) == engine.step_count
    engine.check()
    for _, m in dst.sparse_layers(model):
        assert bool(torch.isfinite(m.dense_weight()).all())


def test_a_nan_weight_at_an_update_is_one_clear_error():
    model, opt, engine = _model("dsr", update_every=1)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    model.fc1.mask[0, 0] = True
    opt.zero_grad()
    model(batch(0)[0]).sum().backward()
    opt.step()
    with pytest.raises(FloatingPointError, match="not finite at optimizer step 1"):
        engine.step()


def test_every_mutation_of_make_mutate_still_matches_the_code():
    """`make mutate` applies each single-rule mutation to an exact snippet; a snippet the code
    no longer holds would silently stop checking its rule."""
    import importlib.util
    import sys

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("dst_mutate", REPO / "tests" / "mutate.py")
    mutate = importlib.util.module_from_spec(spec)
    sys.modules["dst_mutate"] = mutate  # its dataclasses look their module up
    spec.loader.exec_module(mutate)
    assert len(mutate.MUTATIONS) >= 10
    for m in mutate.MUTATIONS:
        text = (REPO / m.file).read_text()
        assert text.count(m.old) == 1, f"{m.name}: snippet not found exactly once in {m.file}"
        assert all((REPO / t).is_file() for t in m.tests), m.name


def test_a_nan_loss_in_fp32_stops_before_the_optimizer_steps():
    from dst.trainer import train_one_epoch

    model, opt, engine = _model("dsr", update_every=1)
    before = _snapshot(model)
    x = torch.full((4, 3, 8, 8), float("nan"))
    loader = [(x, torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="training loss is nan at batch 0"):
        train_one_epoch(model, loader, opt, engine, device=torch.device("cpu"))
    for (m0, w0), (m1, w1) in zip(before, _snapshot(model), strict=True):
        assert torch.equal(m0, m1) and torch.equal(w0, w1)  # nothing was stepped or pruned
    assert engine.step_count == 0

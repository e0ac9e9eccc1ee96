import pytest
import torch
from helpers import TinyNet, batch, train_steps

import dst
from dst import PeriodSchedule
from dst.methods import DSR, GMP, SET, SNFS, RigL, Static


def make(method, fmt="dense", **kw):
    torch.manual_seed(0)
    model = TinyNet()
    dst.sparsify_(model, 0.3, format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, dst.SparseEngine(model, opt, method, **kw)


def test_period_schedule_like_the_paper():
    s = PeriodSchedule.from_epochs([(0, 100), (25, 200), (80, 400), (140, 800)], 500)
    assert s.period(1) == 100 and s.period(12_499) == 100 and s.period(12_500) == 200
    assert s.is_update(100) and not s.is_update(150) and s.is_update(12_600)
    assert not s.is_update(12_700) and s.period(70_000) == 800
    for bad in ([], [(5, 100)], [(0, 0)], [(0, 10), (0, 20)], [(0, 1, 2)]):
        with pytest.raises(ValueError):
            PeriodSchedule(bad)


def test_updates_follow_schedule_and_stop_step():
    model, opt, engine = make(SET(0.2), update_every=[(0, 2), (6, 3)], stop_step=12)
    reports = train_steps(model, opt, engine, 0, 15)
    steps = [r.step for r in reports if r is not None]
    assert steps == [2, 4, 6, 9]  # period 3 from step 6; no update at or after step 12
    assert all(r is None for r in reports if r is None)


def test_report_contents():
    model, opt, engine = make(DSR(prune_target=0.05), update_every=2)
    r = train_steps(model, opt, engine, 0, 2)[-1]
    assert r.step == 2 and r.pruned == r.grown
    assert set(r.active) == {n for n, _ in dst.sparse_layers(model)}
    assert {"threshold", "threshold_used", "target"} <= set(r.method)
    assert r.as_dict()["step"] == 2


def test_rigl_computes_dense_gradients_only_on_update_steps():
    model, opt, engine = make(RigL(0.3), update_every=5, stop_step=100)
    layers = [m for _, m in dst.sparse_layers(model)]
    armed = []
    for t in range(10):
        armed.append(layers[0].capture_grad)
        train_steps(model, opt, engine, t, 1)
    assert armed == [t + 1 in (5, 10) for t in range(10)]
    assert all(m.storage.dense_grad is None for m in layers)  # consumed


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_rigl_grows_where_the_gradient_is_largest(fmt):
    torch.manual_seed(0)
    model = TinyNet()
    dst.sparsify_(model, 0.3, format=fmt)
    engine = dst.SparseEngine(model, None, RigL(0.3, decay="constant"), update_every=1)
    layer = dst.sparse_layers(model)[-1][1]
    seen = {}
    orig = layer.storage.keep_grad

    def spy(g):
        seen["g"] = g.detach().reshape(-1).clone()
        orig(g)

    layer.storage.keep_grad = spy
    before = layer.mask.clone().reshape(-1)
    w = layer.dense_weight().reshape(-1).clone()
    x, y = batch(0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    report = engine.step()  # no optimizer step: weights are exactly those read above
    k = report.pruned_per_layer["fc2"]
    active = before.nonzero().squeeze(1)
    survivors = active[torch.topk(w[active].abs(), active.numel() - k).indices]
    cand = seen["g"].abs()
    cand[survivors] = -1.0
    expected = torch.zeros_like(before)
    expected[survivors] = True
    expected[torch.topk(cand, k).indices] = True
    assert k > 0 and torch.equal(layer.mask.reshape(-1), expected)


@pytest.mark.parametrize("method", [RigL(0.3), SNFS(0.5), GMP(0.1), RigL(0.3, "linear")])
def test_a_missing_horizon_fails_at_construction(method):
    with pytest.raises(ValueError, match="needs the engine's stop_step"):
        make(method, update_every=1)  # not at the first update, minutes into a run
    make(method, update_every=1, stop_step=100)


def test_constant_fractions_need_no_horizon():
    make(RigL(0.3, decay="constant"), update_every=1)
    make(SNFS(0.5, decay="constant"), update_every=1)


def test_a_schedule_ending_before_its_first_update_fails_at_construction():
    with pytest.raises(ValueError, match="would never update"):
        make(DSR(), update_every=100, stop_step=100)  # first update at 100, not before 100
    make(DSR(), update_every=100, stop_step=101)
    make(Static(), update_every=100, stop_step=1)  # a fixed mask never updates anyway


def test_snfs_reallocates_by_momentum_and_keeps_budget():
    model, opt, engine = make(SNFS(0.5), update_every=4, stop_step=200, check=True)
    counts0 = [m.n_active for _, m in dst.sparse_layers(model)]
    train_steps(model, opt, engine, 0, 40)
    counts = [m.n_active for _, m in dst.sparse_layers(model)]
    assert sum(counts) == sum(counts0) and counts != counts0


def test_static_never_changes_masks():
    model, opt, engine = make(Static(), update_every=1)
    masks = [m.mask.clone() for _, m in dst.sparse_layers(model)]
    assert all(r is None for r in train_steps(model, opt, engine, 0, 5))
    assert all(torch.equal(a, m.mask) for a, (_, m) in zip(masks, dst.sparse_layers(model),
                                                            strict=True))


def test_engine_argument_errors():
    with pytest.raises(ValueError, match="no sparse layer"):
        dst.SparseEngine(TinyNet(), None, DSR(), update_every=10)
    model = TinyNet()
    dst.sparsify_(model, 0.5)
    for bad in (0, -3, "often", True, 1.5):
        with pytest.raises(ValueError, match="update_every"):
            dst.SparseEngine(model, None, DSR(), update_every=bad)
    with pytest.raises(ValueError, match="dst.methods.Method"):
        dst.SparseEngine(model, None, "dsr", update_every=10)


def test_reallocating_method_requires_one_bank():
    model = TinyNet()
    model.fc1 = dst.SparseLinear(256, 32, density=0.5, format="compact")
    model.fc2 = dst.SparseLinear(32, 10, density=0.5, format="compact")
    with pytest.raises(ValueError, match="share_bank_"):
        dst.SparseEngine(model, None, DSR(), update_every=10)
    dst.share_bank_(model)
    dst.SparseEngine(model, None, DSR(), update_every=10)


def test_engine_state_mismatch_is_a_clear_error():
    model, opt, engine = make(DSR(), update_every=2)
    state = engine.state_dict()
    _, _, other = make(SET(), update_every=2)
    with pytest.raises(ValueError, match="saved with method 'DSR'"):
        other.load_state_dict(state)


def test_user_loop_from_the_readme():
    model = TinyNet()
    dst.sparsify_(model, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = dst.SparseEngine(model, opt, dst.methods.DSR(prune_target=0.1), update_every=100)
    reports = train_steps(model, opt, engine, 0, 200)
    assert [r.step for r in reports if r] == [100, 200]


def test_last_update_before_stop():
    s = PeriodSchedule([(0, 10), (35, 7), (60, 25)])
    assert s.last_update_before(100) == 75 and s.last_update_before(35) == 30
    assert PeriodSchedule([(0, 50)]).last_update_before(40) is None
    for stop in range(1, 130):
        updates = [t for t in range(1, stop) if s.is_update(t)]
        assert s.last_update_before(stop) == (updates[-1] if updates else None), stop


def test_gmp_prunes_on_the_cubic_schedule_and_reaches_the_target():
    torch.manual_seed(0)
    model = TinyNet()
    dst.sparsify_(model, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = dst.SparseEngine(model, opt, GMP(final_density=0.1), update_every=3, stop_step=31,
                              check=True)
    pool = sum(m.numel_dense for _, m in dst.sparse_layers(model))
    history = {r.step: sum(r.active.values()) for r in train_steps(model, opt, engine, 0, 40)
               if r is not None}
    assert max(history) == 30  # the last update before stop_step
    assert history[30] == engine.budget == dst.distributions.budget_for(0.1, [
        m.numel_dense for _, m in dst.sparse_layers(model)])
    values = [history[t] for t in sorted(history)]
    assert values == sorted(values, reverse=True)
    t = 15  # cubic: d_t = d_f + (1 - d_f)(1 - t/T)^3, per layer
    expected = 0.1 + 0.9 * (1 - t / 30) ** 3
    assert abs(history[t] / pool - expected) < 0.01


def test_itop_rate_counts_positions_ever_active():
    # one 4 x 4 layer at 4 active: SET prunes 1 of 4 (fraction 0.25) and grows 1 position that
    # was free, so the first update adds a new position and 3 updates at most 3: 5/16 to 7/16;
    # a static run stays at its density, 4/16
    for method, low, high in ((SET(prune_fraction=0.25), 5, 7), (Static(), 4, 4)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
        dst.sparsify_(model, 0.25, filter_fn=lambda n, m: True)
        engine = dst.SparseEngine(model, None, method, update_every=1)
        assert engine.exploration.rate == 4 / 16
        seen = model[0].mask.clone()
        for _ in range(3):
            engine.step()
            seen |= model[0].mask
        assert engine.exploration.rate == int(seen.sum()) / 16
        assert low <= int(seen.sum()) <= high
        state = engine.state_dict()
        again = dst.SparseEngine(model, None, type(method)(), update_every=1)
        assert again.exploration.rate == int(model[0].mask.sum()) / 16  # only the current mask
        again.load_state_dict(state)
        assert again.exploration.rate == engine.exploration.rate

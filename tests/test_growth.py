"""Where new weights go, for every method that grows at random (SET, DSR, structured DSR, and
the random growth of any plug-in): uniform among a layer's free positions on each of the
sampler's paths, independent between updates and between layers, and reproducible from
(seed, step, layer). Distribution checks use fixed keyed seeds, so they are deterministic; their
thresholds are far from what a biased or shared stream gives (worked out in each test)."""

import itertools

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

import dst
from dst import rng
from dst.allocate import allocate, sample_free
from dst.kernels import native
from dst.methods import DSR, SET


def _draws(blocked, count, seeds):
    return [sample_free(blocked, count, rng.generator(7, s)) for s in seeds]


def test_splitmix64_matches_the_published_test_vector():
    # SplitMix64 (Steele et al. 2014) from state 0: its first two outputs
    assert rng._splitmix64(0) == 0xE220A8397B1DCDAF
    assert rng._splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_keys_depend_on_every_part_its_order_and_sign():
    grid = [(s, t, layer) for s in range(3) for t in range(40) for layer in range(-1, 12)]
    keys = {rng.key(*k) for k in grid}
    assert len(keys) == len(grid)  # no two (seed, step, layer) share a stream
    assert rng.key(1, 2, 3) != rng.key(1, 3, 2) and rng.key(0, 5, -1) != rng.key(0, 5, 1)
    assert all(0 <= k < 2 ** 63 for k in keys)
    a = torch.rand(5, generator=rng.generator(3, 10, 2))
    assert torch.equal(a, torch.rand(5, generator=rng.generator(3, 10, 2)))


def test_permutation_path_draws_uniform_subsets():
    # 4 free positions of 10, 2 drawn: each of the C(4, 2) = 6 pairs has probability 1/6;
    # 3,000 draws: 500 expected per pair. "The lowest free positions" gives one pair 3,000 times.
    blocked = torch.ones(10, dtype=torch.bool)
    free = [1, 4, 6, 9]
    blocked[free] = False
    pairs = [tuple(sorted(d.tolist())) for d in _draws(blocked, 2, range(3000))]
    counts = [pairs.count(p) for p in itertools.combinations(free, 2)]
    assert sum(counts) == 3000  # every draw is a pair of distinct free positions
    assert chisquare(counts).pvalue > 1e-3 and min(counts) > 400


@pytest.mark.parametrize("native_sampler", [True, False], ids=["native", "torch"])
def test_rejection_path_draws_uniformly_among_free_positions(native_sampler, monkeypatch):
    if not native_sampler:
        monkeypatch.setattr(native, "available", lambda: False)
    # 8,192 positions, the first 1,024 and every third blocked: 7,168 - 2,389 = 4,779 free;
    # 100 drawn per update (free >= 4 x drawn: the rejection path). 300 updates: 30,000 picks
    # over 32 bins of consecutive free positions (149-150 each): 937.5 per bin on average;
    # lowest-first picks fill one bin.
    blocked = torch.zeros(8192, dtype=torch.bool)
    blocked[:1024] = True
    blocked[::3] = True
    free = (~blocked).nonzero().squeeze(1)
    assert free.numel() == 4779
    draws = _draws(blocked, 100, range(300))
    for d in draws:
        assert d.unique().numel() == 100 and not bool(blocked[d].any())
    rank = torch.searchsorted(free, torch.cat(draws))
    counts = torch.bincount(rank * 32 // free.numel(), minlength=32).tolist()
    assert chisquare(counts).pvalue > 1e-3 and min(counts) > 750


def test_rejection_path_reaches_every_free_position_over_several_rounds():
    # 8 free positions of 4,096 (the last one among them), 2 drawn: the rejection path, whose
    # rounds often find only one free draw, so a second round must skip what the first took.
    # Each position is drawn with probability 2/8: 50 times in 200 updates on average.
    blocked = torch.ones(4096, dtype=torch.bool)
    free = [0, 17, 600, 1999, 2048, 3000, 4094, 4095]
    blocked[free] = False
    draws = _draws(blocked, 2, range(200))
    assert all(d.unique().numel() == 2 for d in draws)
    counts = torch.bincount(torch.cat(draws), minlength=4096)[free].tolist()
    assert sum(counts) == 400 and min(counts) >= 25


def test_native_and_torch_samplers_draw_the_same_positions(monkeypatch):
    # the non-native code is what CUDA runs: the same key must give the same masks
    blocked = torch.zeros(20_000, dtype=torch.bool)
    blocked[::2] = True
    want = _draws(blocked, 300, range(5))
    monkeypatch.setattr(native, "available", lambda: False)
    assert all(torch.equal(a, b) for a, b in zip(want, _draws(blocked, 300, range(5)),
                                                  strict=True))


def _twin_layers(n_layers=2, seed=0):
    """Identical Linear layers with identical masks (so their growth can be compared)."""
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(32, 16, bias=False) for _ in range(n_layers)])
    with torch.no_grad():
        for m in model[1:]:
            m.weight.copy_(model[0].weight)
    dst.sparsify_(model, 0.25, filter_fn=lambda name, m: True)
    mask = model[0].mask.clone()
    dst.set_masks_(model, {str(i): mask for i in range(n_layers)})
    return model


def _grown(model, before):
    return [(m.mask & ~b).reshape(-1).nonzero().squeeze(1) for m, b in zip(model, before,
                                                                          strict=True)]


@pytest.mark.parametrize("method", [SET(prune_fraction=0.3),
                                    DSR(prune_target=40, threshold=0.05)],
                         ids=["set", "dsr"])
def test_growth_is_keyed_by_seed_step_and_layer(method):
    # the positions grown at step t in layer i are sample_free(the layer's occupied positions,
    # count, generator(seed, t, i)); DSR's counts: allocate(pruned total, survivors, free
    # capacity, generator(seed, t, -1))
    model = _twin_layers(3)
    engine = dst.SparseEngine(model, None, method, update_every=1, seed=11)
    for t in (1, 2, 3):
        before = [m.mask.clone() for m in model]
        n_active = [int(b.sum()) for b in before]
        report = engine.step()
        assert report.step == t
        grown = _grown(model, before)
        counts = [report.grown_per_layer[str(i)] for i in range(3)]
        assert [g.numel() for g in grown] == counts
        if isinstance(method, DSR):
            pruned = [report.pruned_per_layer[str(i)] for i in range(3)]
            survivors = [a - p for a, p in zip(n_active, pruned, strict=True)]
            cap = [b.numel() - a for b, a in zip(before, n_active, strict=True)]
            assert counts == allocate(sum(pruned), survivors, cap, rng.generator(11, t, -1))
        for i, (b, g) in enumerate(zip(before, grown, strict=True)):
            want = sample_free(b.reshape(-1), counts[i], rng.generator(11, t, i),
                               n_free=b.numel() - n_active[i])
            assert torch.equal(g, want.sort().values), f"layer {i} at step {t}"


def test_growth_is_independent_between_layers_and_between_updates():
    # two layers with the same weights and mask prune the same 38 weights and grow 38 of the
    # same 384 free positions: independent draws share 38 x 38 / 384 = 3.8 on average (sd about
    # 1.8), one stream shared by both layers (or by both steps) shares all 38
    shared_layers, shared_steps = [], []
    for seed in range(6):
        model = _twin_layers(2, seed)
        engine = dst.SparseEngine(model, None, SET(prune_fraction=0.3), update_every=1,
                                  seed=seed)
        before = [m.mask.clone() for m in model]
        engine.step()
        a, b = _grown(model, before)
        assert a.numel() == b.numel() == 38
        shared_layers.append(len(set(a.tolist()) & set(b.tolist())))
        # the same layer state again one step later: another draw
        again = sample_free(before[0].reshape(-1), 38, rng.generator(seed, 2, 0))
        shared_steps.append(len(set(a.tolist()) & set(again.tolist())))
    for shared in (shared_layers, shared_steps):
        assert max(shared) <= 12 and 1 <= sum(shared) / len(shared) <= 8, shared

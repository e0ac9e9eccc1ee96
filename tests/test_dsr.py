"""DSR against small cases computed by hand (docs/methods.md#rules)."""

import pytest
import torch
from torch import nn

import dst
from dst import rng
from dst.allocate import allocate, sample_free
from dst.methods import DSR


def gen():
    return torch.Generator().manual_seed(0)


def test_allocation_proportional_to_survivors_exact_rounding():
    # 7 * [50, 30, 20] / 100 = [3.5, 2.1, 1.4] -> round half up [4, 2, 1], sum 7, no residue
    assert allocate(7, [50, 30, 20], [100, 100, 100], gen()) == [4, 2, 1]


def test_positive_rounding_residue_goes_to_one_random_layer():
    # 10 / 3 = 3.33 each -> [3, 3, 3], residue 1 to exactly one layer
    got = allocate(10, [1, 1, 1], [100, 100, 100], gen())
    assert sum(got) == 10 and sorted(got) == [3, 3, 4]
    picks = {allocate(10, [1, 1, 1], [100] * 3, rng.generator(s)).index(4) for s in range(30)}
    assert picks == {0, 1, 2}  # the lucky layer is random, keyed by the generator


def test_negative_rounding_residue_is_taken_back():
    # 3 * [1, 1] / 2 = [1.5, 1.5] -> [2, 2] = 4 > 3: one layer gives one back
    got = allocate(3, [1, 1], [10, 10], gen())
    assert sorted(got) == [1, 2]


def test_layer_out_of_free_positions_shares_rest_by_same_proportions():
    # round 1: 12 * [10, 1, 1] / 12 = [10, 1, 1]; layer 0 can take only 2
    # round 2: remaining 8 shared [_, 1, 1] -> [4, 4]  => [2, 5, 5]
    assert allocate(12, [10, 1, 1], [2, 100, 100], gen()) == [2, 5, 5]
    with pytest.raises(ValueError, match="free positions"):
        allocate(10, [1, 1], [3, 3], gen())


def test_sample_free_is_distinct_uniform_and_avoids_blocked():
    blocked = torch.zeros(100_000, dtype=torch.bool)
    blocked[::3] = True
    picks = sample_free(blocked, 5000, gen())
    assert picks.unique().numel() == 5000 and not bool(blocked[picks].any())
    small = torch.ones(10, dtype=torch.bool)
    small[[2, 5]] = False
    assert sorted(sample_free(small, 2, gen()).tolist()) == [2, 5]
    counts = torch.bincount(torch.cat([sample_free(torch.zeros(4, dtype=torch.bool), 1,
                                                   rng.generator(s)) for s in range(400)]))
    assert counts.min() > 60  # roughly uniform over 4 positions


def _two_layer_model(w1, w2):
    """Two 1-input linear layers with given weights, all positions of w listed active."""
    model = nn.Sequential(nn.Linear(len(w1[0]), len(w1), bias=False),
                          nn.Linear(len(w2[0]), len(w2), bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(w1))
        model[1].weight.copy_(torch.tensor(w2))
    dst.sparsify_(model, 1.0)
    return model


def test_dsr_update_by_hand():
    # layer 0: 8 positions, 6 active; layer 1: 8 positions, 4 active (zeros are inactive)
    w1 = [[0.5, -0.05, 0.3, 0.0], [0.02, 0.0, -0.9, 0.04]]
    w2 = [[0.2, 0.0, 0.0, -0.01], [0.0, 0.7, 0.0, 0.0]]
    model = _two_layer_model(w1, w2)
    masks = {"0": torch.tensor(w1) != 0, "1": torch.tensor(w2) != 0}
    dst.set_masks_(model, masks)
    layers = dst.sparse_layers(model)
    assert [m.n_active for _, m in layers] == [6, 3]
    method = DSR(prune_target=2, threshold=0.1, tolerance=0.1)
    engine = dst.SparseEngine(model, None, method, update_every=1, seed=3, check=True)
    report = engine.step()
    # |w| < 0.1: layer0 {-0.05, 0.02, 0.04} = 3, layer1 {-0.01} = 1 -> K = 4 > 1.1 * 2: H halves
    assert report.pruned_per_layer == {"0": 3, "1": 1}
    assert method.threshold == pytest.approx(0.05)
    # survivors R = [3, 2]: G = round(4 * [3/5, 2/5]) = [round(2.4), round(1.6)] = [2, 2]
    assert report.grown_per_layer == {"0": 2, "1": 2}
    assert report.active == {"0": 5, "1": 4} and sum(report.active.values()) == 9
    for (name, m), w in zip(layers, (w1, w2), strict=True):
        w = torch.tensor(w)
        survivors = w.abs() >= 0.1
        just_pruned = (w != 0) & ~survivors
        grown = m.mask & ~survivors
        assert torch.equal(m.mask & survivors, survivors), name  # survivors kept
        assert not bool((grown & just_pruned).any()), name  # no regrowth where just pruned
        assert not bool(m.weight[grown].any()), name  # new weights at zero
        assert torch.equal(m.weight[survivors], w[survivors])


def test_dsr_threshold_doubles_when_too_few_pruned_and_holds_in_band():
    model = _two_layer_model([[0.5, 0.6], [0.7, 0.8]], [[0.9, 1.0]])
    dst.set_masks_(model, {"0": torch.ones(2, 2, dtype=torch.bool),
                           "1": torch.tensor([[True, False]])})
    method = DSR(prune_target=4, threshold=0.1)
    engine = dst.SparseEngine(model, None, method, update_every=1)
    report = engine.step()
    assert report.pruned == 0 and method.threshold == pytest.approx(0.2)
    # K within (1 ± δ)·N_p leaves H alone: 10 weights at 0.01 and N_p = 10
    model = nn.Sequential(nn.Linear(10, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.01)
        model[0].weight[0, 0] = 1.0
    dst.sparsify_(model, 1.0)
    m2 = DSR(prune_target=9, threshold=0.1)
    r = dst.SparseEngine(model, None, m2, update_every=1).step()
    assert r.pruned == 9 and m2.threshold == pytest.approx(0.1)


def test_dsr_layer_never_loses_its_last_weight():
    model = _two_layer_model([[1e-4, 2e-4]], [[1.0, 2.0]])
    method = DSR(prune_target=1, threshold=1.0)
    report = dst.SparseEngine(model, None, method, update_every=1, check=True).step()
    assert report.pruned_per_layer["0"] == 1  # the larger of the two survives
    m0 = dst.sparse_layers(model)[0][1]
    assert m0.n_active >= 1


def test_dsr_layer_runs_out_of_free_positions():
    # layer 0 is full after pruning except its own just-pruned spot; layer 1 takes the rest
    w1 = [[5.0, 5.0, 5.0, 0.01]]  # 4 positions, all active; one pruned, no free spot
    w2 = [[1.0] + [0.0] * 7]  # 8 positions, 1 active
    model = _two_layer_model(w1, w2)
    dst.set_masks_(model, {"1": torch.tensor(w2) != 0})
    method = DSR(prune_target=1, threshold=0.1)
    report = dst.SparseEngine(model, None, method, update_every=1, check=True).step()
    # R = [3, 1] -> G = round(1 * [0.75, 0.25]) = [1, 0], but layer 0 has no free position
    assert report.grown_per_layer == {"0": 0, "1": 1}
    assert report.active == {"0": 3, "1": 2}


@pytest.mark.parametrize("bad", [0, -5, 0.0, 1.5, "x", True])
def test_dsr_bad_prune_target(bad):
    with pytest.raises(ValueError, match="prune_target"):
        DSR(prune_target=bad)


def test_dsr_prune_target_fraction_scales_with_budget():
    assert DSR(prune_target=0.1).target_count(145_152) == 14_515
    assert DSR(prune_target=20_000).target_count(145_152) == 20_000

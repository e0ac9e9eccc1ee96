"""The update rules of DSR, SET, RigL and SNFS pinned against small cases worked out by hand.

Every expected position, count, threshold and fraction below is a literal with its arithmetic in
a comment, never a value computed by the code under test. The models are
:class:`helpers.Rows`: bias-free ``Linear(n, 1)`` layers whose dense gradient is exactly the
input slice we feed, so the gradients are chosen by hand too. Magnitudes are distinct wherever
a selection is made (no ties at a cut). No optimizer: the engine is built with ``None`` and the
weights stay as written.
"""

import pytest
import torch
from helpers import active_positions, rows_model

import dst
from dst.methods import DSR, SET, SNFS, RigL

L0, L1 = "layers.0", "layers.1"


def grad_step(model, engine, *grads):
    """One backward with d(output)/d(weight_l) = grads[l], then one engine step."""
    x = torch.tensor([[g for gl in grads for g in gl]])
    model(x).backward()
    return engine.step()


def weights(model, name):
    return dict(dst.sparse_layers(model))[name].weight.detach().reshape(-1)


# ----------------------------------------------------------------------------- DSR
def test_dsr_regrows_in_proportion_to_survivors_not_equally_nor_by_old_counts():
    #            0     1    2      3    4    5     6  7   8      9   10..15
    w0 = [0.61, 0.0, -0.72, 0.05, 0.0, 0.83, 0.0, 0.0, -0.03, 0.94] + [0.0] * 6
    #     0    1    2    3     4    5    6      7    8    9    10    11..15
    w1 = [0.0, 0.5, 0.0, 0.07, 0.0, 0.0, -0.02, 0.0, 0.0, 0.0, 0.06] + [0.0] * 5
    model = rows_model(w0, w1)
    method = DSR(prune_target=2, threshold=0.1, tolerance=0.1)
    report = dst.SparseEngine(model, None, method, update_every=1, seed=5, check=True).step()
    # |w| < 0.1: layer 0 {3: 0.05, 8: 0.03} -> 2; layer 1 {3: 0.07, 6: 0.02, 10: 0.06} -> 3
    assert report.pruned_per_layer == {L0: 2, L1: 3}
    # K = 5, survivors R = [6 - 2, 4 - 3] = [4, 1]: G = round(5 * [4/5, 1/5]) = [4, 1]
    # (equal shares would give [2.5, 2.5] -> 3 + 2; the old counts [6, 4] would give [3, 2])
    assert report.grown_per_layer == {L0: 4, L1: 1}
    assert report.active == {L0: 8, L1: 2}
    # K = 5 > (1 + 0.1) * 2 = 2.2: H halves, 0.1 -> 0.05
    assert method.threshold == pytest.approx(0.05)
    pos = active_positions(model)
    assert {0, 2, 5, 9} <= set(pos[L0]) and not {3, 8} & set(pos[L0])  # no regrowth in place
    assert 1 in pos[L1] and not {3, 6, 10} & set(pos[L1])
    for name, w, kept in ((L0, w0, [0, 2, 5, 9]), (L1, w1, [1])):
        got = weights(model, name)
        assert got[kept].tolist() == pytest.approx([w[i] for i in kept])
        grown = [i for i in pos[name] if i not in kept]
        assert not bool(got[grown].any())  # new weights are exactly 0


def test_dsr_prunes_strictly_below_the_threshold():
    h = 0.125  # exact in binary: |w| == H is representable exactly
    w0 = [0.125, 0.5, -0.0625, 0.0, 0.75, 0.0]  # pos 0 sits exactly at H
    w1 = [0.0, -0.125, 0.25, 0.001, 0.0, 0.0]  # pos 1 sits exactly at H
    model = rows_model(w0, w1)
    method = DSR(prune_target=2, threshold=h, tolerance=0.1)
    report = dst.SparseEngine(model, None, method, update_every=1, check=True).step()
    # |w| < 0.125 only: layer 0 {2: 0.0625}, layer 1 {3: 0.001}; |w| == H survives
    assert report.pruned_per_layer == {L0: 1, L1: 1}
    assert weights(model, L0)[0] == 0.125 and weights(model, L1)[1] == -0.125
    pos = active_positions(model)
    assert 0 in pos[L0] and 1 in pos[L1] and 2 not in pos[L0] and 3 not in pos[L1]
    # K = 2 lies in [(1 - 0.1) * 2, (1 + 0.1) * 2] = [1.8, 2.2]: H stays
    assert method.threshold == h


@pytest.mark.parametrize("k,expected", [
    (5, 1.0),    # 5 < (1 - 0.25) * 8 = 6: H doubles 0.5 -> 1.0
    (6, 0.5),    # 6 is not < 6: H stays
    (10, 0.5),   # 10 is not > (1 + 0.25) * 8 = 10: H stays
    (11, 0.25),  # 11 > 10: H halves 0.5 -> 0.25
])
def test_dsr_threshold_band_edges_with_a_fractional_target(k, expected):
    # 20 active weights: k of them below H = 0.5 (0.01 .. 0.01 k), the rest >= 1
    w = [0.01 * (j + 1) for j in range(k)] + [1.0 + 0.1 * j for j in range(20 - k)]
    model = rows_model(w)
    # N_p = round(0.4 * budget) = round(0.4 * 20) = 8; tolerance 0.25: band [6, 10]
    method = DSR(prune_target=0.4, threshold=0.5, tolerance=0.25)
    report = dst.SparseEngine(model, None, method, update_every=1).step()
    assert report.pruned == k and report.method["target"] == 8
    assert report.method["threshold_used"] == 0.5
    assert method.threshold == expected


def test_dsr_grows_only_among_positions_free_before_pruning():
    #     0    1    2     3     4    5      6    7    8     9    10   11
    w0 = [0.9, 0.0, 0.03, -0.5, 0.0, -0.02, 0.7, 0.0, 0.01, 0.6, 0.0, 0.8]
    w1 = [0.05, -0.04, 0.5, 0.03, -0.06] + [0.0] * 11
    model = rows_model(w0, w1)
    method = DSR(prune_target=7, threshold=0.1)
    report = dst.SparseEngine(model, None, method, update_every=1, seed=11, check=True).step()
    # |w| < 0.1: layer 0 {2, 5, 8} -> 3 (R_0 = 5); layer 1 {0, 1, 3, 4} -> 4 (R_1 = 1); K = 7
    assert report.pruned_per_layer == {L0: 3, L1: 4}
    # G = round(7 * [5/6, 1/6]) = round([5.83, 1.17]) = [6, 1], but layer 0 has only 4 free
    # positions {1, 4, 7, 10} (its just-pruned ones do not count): it grows 4 and the other
    # 2 go to layer 1 -> [4, 3]
    assert report.grown_per_layer == {L0: 4, L1: 3}
    pos = active_positions(model)
    assert pos[L0] == [0, 1, 3, 4, 6, 7, 9, 10, 11]
    assert 2 in pos[L1] and len(pos[L1]) == 4 and not {0, 1, 3, 4} & set(pos[L1])
    assert method.threshold == 0.1  # K = 7 = N_p


# ----------------------------------------------------------------------------- SET
def test_set_prunes_the_smallest_magnitudes_per_layer_and_regrows_in_place():
    #     0     1     2    3    4      5    6    7    8    9     10    11   12   13   14   15
    w0 = [-0.9, 0.05, 0.0, 0.3, -0.02, 0.0, 0.7, 0.4, 0.0, -0.6, 0.08, 0.0, 0.5, 0.0, 0.2, 0.0]
    w1 = [0.15, 0.0, -0.8, 0.03, 0.6, 0.0, -0.01, 0.35]
    model = rows_model(w0, w1)
    report = dst.SparseEngine(model, None, SET(prune_fraction=0.25), update_every=1, seed=2,
                              check=True).step()
    # round-half-up counts: 0.25 * 10 = 2.5 -> 3; 0.25 * 6 = 1.5 -> 2
    # layer 0 smallest |w|: {4: 0.02, 1: 0.05, 10: 0.08} (not the most negative -0.9, -0.6)
    # layer 1 smallest |w|: {6: 0.01, 3: 0.03}
    assert report.pruned_per_layer == {L0: 3, L1: 2}
    assert report.grown_per_layer == {L0: 3, L1: 2}  # each layer regrows what it pruned
    pos = active_positions(model)
    survivors0 = {0, 3, 6, 7, 9, 12, 14}
    assert survivors0 <= set(pos[L0]) and len(pos[L0]) == 10
    assert set(pos[L0]) - survivors0 <= {2, 5, 8, 11, 13, 15}  # grown among the free ones
    # layer 1 had exactly 2 free positions {1, 5}: growth must take both
    assert pos[L1] == [0, 1, 2, 4, 5, 7]
    assert weights(model, L1).tolist() == pytest.approx([0.15, 0, -0.8, 0, 0.6, 0, 0, 0.35])


# ----------------------------------------------------------------------------- RigL
#          0    1    2      3    4    5     6     7    8    9      10   11
RIGL_W = [0.9, 0.0, -0.05, 0.6, 0.0, 0.02, -0.7, 0.0, 0.4, -0.08, 0.0, 0.3]
RIGL_G = [0.99, 0.5, 0.6, 0.95, 0.1, 0.15, 0.3, -0.45, 0.25, 0.05, 0.2, 0.35]


def test_rigl_grows_the_largest_gradient_magnitudes_including_just_pruned():
    model = rows_model(RIGL_W)
    engine = dst.SparseEngine(model, None, RigL(prune_fraction=0.375, decay="constant"),
                              update_every=1, check=True)
    report = grad_step(model, engine, RIGL_G)
    # 0.375 * 8 active = 3 pruned: smallest |w| {5: 0.02, 2: 0.05, 9: 0.08}
    assert report.pruned_per_layer == {L0: 3} and report.grown_per_layer == {L0: 3}
    # candidates: free {1: .5, 4: .1, 7: |-.45|, 10: .2} and just pruned {2: .6, 5: .15, 9: .05}
    # (survivors 0: .99 and 3: .95 are taken already): top 3 |g| = {2, 1, 7}
    assert active_positions(model)[L0] == [0, 1, 2, 3, 6, 7, 8, 11]
    w = weights(model, L0)
    assert w[[1, 2, 7]].tolist() == [0.0, 0.0, 0.0]  # grown (and regrown) at zero
    assert w[[0, 3, 6, 8, 11]].tolist() == pytest.approx([0.9, 0.6, -0.7, 0.4, 0.3])


def test_rigl_prune_fraction_decays_by_cosine_to_the_stop_step():
    model = rows_model(RIGL_W)
    engine = dst.SparseEngine(model, None, RigL(prune_fraction=0.5), update_every=1,
                              stop_step=4, check=True)
    reports = [grad_step(model, engine, RIGL_G) for _ in range(4)]
    # f_t = 0.5 * 0.5 * (1 + cos(pi * t / 4)):
    #   t=1: 0.25 * (1 + 0.70711) = 0.42678 -> round(0.42678 * 8 = 3.41) = 3
    #   t=2: 0.25 * (1 + 0)       = 0.25    -> round(2.0) = 2
    #   t=3: 0.25 * (1 - 0.70711) = 0.07322 -> round(0.59) = 1
    fractions = [r.method["fraction"] for r in reports[:3]]
    assert fractions == pytest.approx([0.4267767, 0.25, 0.0732233], abs=1e-6)
    assert [r.pruned_per_layer[L0] for r in reports[:3]] == [3, 2, 1]
    assert reports[3] is None  # no update at or after stop_step


# ----------------------------------------------------------------------------- SNFS
#          0    1    2      3    4    5     6     7    8    9      10   11
SNFS_W0 = [0.9, 0.0, -0.05, 0.6, 0.0, 0.02, -0.7, 0.0, 0.4, -0.08, 0.0, 0.3]
# |g| over layer 0's 8 active positions sums to 1.6 (mean 0.2); its free positions are large
SNFS_G0 = [0.1, 0.9, 0.3, -0.15, -0.8, 0.25, 0.05, 0.7, -0.35, 0.12, 0.6, 0.28]
#          0    1    2    3      4    5    6    7    8    9     10   11
SNFS_W1 = [0.0, 0.5, 0.0, -0.03, 0.0, 0.0, 0.8, 0.0, 0.0, 0.01, 0.0, 0.0]
# |g| over layer 1's 4 active positions {1, 3, 6, 9} sums to 4.0 (mean 1.0)
SNFS_G1 = [0.11, 1.2, -0.95, -0.9, 0.2, 0.42, 0.6, -0.77, 0.05, 1.3, 0.3, 0.66]


def test_snfs_shares_regrowth_by_mean_momentum_and_grows_by_momentum_magnitude():
    model = rows_model(SNFS_W0, SNFS_W1)
    method = SNFS(prune_fraction=0.5, decay="cosine", momentum=0.5)
    engine = dst.SparseEngine(model, None, method, update_every=1, stop_step=4, seed=1,
                              check=True)
    report = grad_step(model, engine, SNFS_G0, SNFS_G1)
    # f_1 = 0.5 * 0.5 * (1 + cos(pi / 4)) = 0.42678
    assert report.method["fraction"] == pytest.approx(0.4267767, abs=1e-6)
    # K_0 = round(0.42678 * 8 = 3.41) = 3: {5: .02, 2: .05, 9: .08}
    # K_1 = round(0.42678 * 4 = 1.71) = 2: {9: .01, 3: .03}
    assert report.pruned_per_layer == {L0: 3, L1: 2}
    # momentum after one step: 0.5 * g. Mean |m| over the active weights (before pruning):
    # layer 0: 0.5 * 1.6 / 8 = 0.1; layer 1: 0.5 * 4.0 / 4 = 0.5
    # G = round(5 * [0.1, 0.5] / 0.6) = round([0.83, 4.17]) = [1, 4]
    # (equal shares: 2.5 each; survivors [5, 2]: [4, 1]; mean over all 12 positions: [2, 3])
    assert report.grown_per_layer == {L0: 1, L1: 4}
    assert report.active == {L0: 6, L1: 6}
    pos = active_positions(model)
    # layer 0 candidates: free {1: .9, 4: .8, 7: .7, 10: .6}, just pruned {2, 5, 9}: top 1 = {1}
    assert pos[L0] == [0, 1, 3, 6, 8, 11]
    # layer 1 candidates: free {0: .11, 2: .95, 4: .2, 5: .42, 7: .77, 8: .05, 10: .3, 11: .66}
    # and just pruned {3: .9, 9: 1.3}; survivor 1 (1.2) is taken: top 4 = {9, 2, 3, 7}
    # (signed momentum would pick {9, 11, 5, 10})
    assert pos[L1] == [1, 2, 3, 6, 7, 9]
    assert weights(model, L1)[[2, 3, 7, 9]].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_snfs_decays_its_prune_fraction_by_cosine():
    model = rows_model(SNFS_W0, SNFS_W1)
    engine = dst.SparseEngine(model, None, SNFS(prune_fraction=0.5, momentum=0.5),
                              update_every=3, stop_step=4)
    assert grad_step(model, engine, SNFS_G0, SNFS_G1) is None
    assert grad_step(model, engine, SNFS_G0, SNFS_G1) is None
    report = grad_step(model, engine, SNFS_G0, SNFS_G1)
    # t=3 of 4: f = 0.5 * 0.5 * (1 + cos(3 pi / 4)) = 0.25 * 0.29289 = 0.07322:
    # round(0.07322 * 8 = 0.59) = 1, round(0.07322 * 4 = 0.29) = 0
    # (constant 0.5 would prune 4 and 2; linear 0.125 would prune 1 and 1)
    assert report.method["fraction"] == pytest.approx(0.0732233, abs=1e-6)
    assert report.pruned_per_layer == {L0: 1, L1: 0}


def test_snfs_momentum_is_an_exponential_average_of_signed_gradients():
    w = [0.9, 0.0, -0.04, 0.0, 0.5, 0.0, 0.02, 0.0]  # active {0, 2, 4, 6}; free {1, 3, 5, 7}
    g1 = [0.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9]
    g2 = [0.05, 0.2, 0.01, 0.35, 0.06, 0.45, 0.03, -0.3]
    model = rows_model(w)
    engine = dst.SparseEngine(model, None, SNFS(0.5, decay="constant", momentum=0.5),
                              update_every=2)
    assert grad_step(model, engine, g1) is None
    report = grad_step(model, engine, g2)
    # prune round(0.5 * 4) = 2: {6: .02, 2: .04}
    assert report.pruned_per_layer == {L0: 2}
    # m = 0.5 * (0.5 * g1) + 0.5 * g2 = 0.25 g1 + 0.5 g2 on the candidates:
    #   1: .15 + .10 = .25   3: .175   5: .225   7: .225 - .15 = .075   2: .005   6: .015
    # top 2 = {1, 5}. (g2 alone: {5, 3}; g1 + g2: {1, 7}; averaging |g|: {7, 1})
    assert active_positions(model)[L0] == [0, 1, 4, 5]

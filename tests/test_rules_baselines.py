"""ERK, SNIP, gradual magnitude pruning, lottery tickets and training another run's mask, pinned
against small cases worked out by hand (expected values are literals with their arithmetic in a
comment). Models are :class:`helpers.Rows`, whose dense gradients are the inputs we feed."""

import pytest
import torch
from helpers import active_positions, rows_model
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

import dst
from dst.baselines import FromMask, magnitude_masks, rewind_, snip_masks
from dst.distributions import erk_densities, layer_counts
from dst.methods import GMP, Static
from dst.train import CONF_DIR

L0, L1 = "layers.0", "layers.1"


def weights(model, name):
    return dict(dst.sparse_layers(model))[name].weight.detach().reshape(-1)


# ----------------------------------------------------------------------------- ERK
def test_erk_densities_by_hand():
    shapes = [(8, 4, 3, 3), (16, 8, 3, 3), (10, 16)]  # sizes 288, 1152, 160: pool 1600
    # d_l = s * sum(shape)/prod(shape), so d_l * N_l = s * sum(shape): s * [18, 30, 26]
    # budget 0.1 * 1600 = 160 -> s = 160 / 74 = 2.16216 (no layer reaches 1)
    assert erk_densities(shapes, 0.1) == pytest.approx(
        [18 / 288 * 160 / 74, 30 / 1152 * 160 / 74, 26 / 160 * 160 / 74])  # .13514 .05631 .35135
    # targets 38.92, 64.86, 56.22 -> floors 38 + 64 + 56 = 158; the 2 left go to the largest
    # remainders (.92 and .86)
    assert layer_counts(shapes, 0.1, "erk") == [39, 65, 56]
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 10))
    made = dst.sparsify_(model, 0.1, distribution="erk")
    assert [m.n_active for _, m in made] == [39, 65, 56]


def test_erk_caps_a_layer_at_one_and_shares_its_excess_by_the_same_law():
    shapes = [(2, 2), (10, 10), (20, 10)]  # sizes 4, 100, 200: budget 0.25 * 304 = 76
    # uncapped: s = 76 / (4 + 20 + 30) = 1.407 puts layer 0 at 1.407 > 1 -> dense (4 weights)
    # then s = (76 - 4) / (20 + 30) = 1.44: d = [1, 0.2 * 1.44, 0.15 * 1.44] = [1, .288, .216]
    assert erk_densities(shapes, 0.25) == pytest.approx([1.0, 0.288, 0.216])
    # targets 4, 28.8, 43.2 -> 4 + 28 + 43 = 75, the one left to the remainder .8
    assert layer_counts(shapes, 0.25, "erk") == [4, 29, 43]
    assert layer_counts(shapes, 0.25, "uniform") == [1, 25, 50]  # 0.25 * [4, 100, 200]


# ----------------------------------------------------------------------------- SNIP
SNIP_W = ([0.5, -2.0, 0.1, 1.0], [0.3, -0.05, 4.0])
SNIP_X = [1.0, 0.1, 3.0, -0.4, 2.0, 9.0, 0.01]  # = dL/dw (L = the model's output)


def snip_model():
    return rows_model(*SNIP_W)  # every weight non-zero: density 1.0


@pytest.mark.parametrize("density,keep0,keep1", [
    # |w * g|: layer 0 [.5, .2, .3, .4], layer 1 [.6, .45, .04]
    # k = round(7 * 0.43) = 3: the global top 3 are .6 (1/0), .5 (0/0), .45 (1/1)
    (0.43, [True, False, False, False], [True, True, False]),
    # k = round(7 * 0.72) = 5: then .4 (0/3) and .3 (0/2)
    (0.72, [True, False, True, True], [True, True, False]),
])
def test_snip_keeps_the_global_top_k_of_weight_times_gradient(density, keep0, keep1):
    # (|w| alone would keep 4.0, 2.0, 1.0; |g| alone 9, 3, 2; per layer uniform [2, 1])
    x = torch.tensor([SNIP_X])
    masks = snip_masks(snip_model(), [(x, torch.zeros(1))], density, loss_fn=lambda out, y: out)
    assert masks[L0].reshape(-1).tolist() == keep0
    assert masks[L1].reshape(-1).tolist() == keep1


def test_snip_sums_the_gradient_over_its_batches():
    # two batches whose gradients add up to SNIP_X; the second alone would keep .45, .4, .3
    xa = torch.tensor([[1.0, 0.1, 0.0, 0.0, 2.0, 0.0, 0.0]])
    xb = torch.tensor([[0.0, 0.0, 3.0, -0.4, 0.0, 9.0, 0.01]])
    y = torch.zeros(1)
    masks = snip_masks(snip_model(), [(xa, y), (xb, y)], 0.43, loss_fn=lambda out, y: out)
    assert masks[L0].reshape(-1).tolist() == [True, False, False, False]
    assert masks[L1].reshape(-1).tolist() == [True, True, False]


# ----------------------------------------------------------------------------- GMP
def test_gmp_follows_the_cubic_schedule_per_layer_and_keeps_the_largest():
    # distinct magnitudes: layer 0 a permutation of 0.01 .. 1.00, layer 1 of 0.05 .. 1.00,
    # signs alternating
    w0 = [((37 * j) % 100 + 1) / 100 * (-1) ** j for j in range(100)]
    w1 = [((7 * j) % 20 + 1) / 20 * (-1) ** j for j in range(20)]
    model = rows_model(w0, w1)
    engine = dst.SparseEngine(model, None, GMP(final_density=0.1), update_every=1, stop_step=5,
                              check=True)
    reports = [engine.step() for _ in range(5)]
    # final counts (uniform, budget round(0.1 * 120) = 12): [10, 2]; T = 4 (last update < 5)
    # n_t = round(n_f + (n_0 - n_f) * (1 - t/4)^3), (1 - t/4)^3 = .421875, .125, .015625, 0
    #   layer 0: 10 + 90 * ... = 47.97, 21.25, 11.41, 10 -> 48, 21, 11, 10
    #   layer 1:  2 + 18 * ... =  9.59,  4.25,  2.28,  2 -> 10,  4,  2,  2
    assert [r.active[L0] for r in reports[:4]] == [48, 21, 11, 10]
    assert [r.active[L1] for r in reports[:4]] == [10, 4, 2, 2]
    assert reports[4] is None and engine.budget == 12
    # survivors: |w| >= 0.91 in layer 0 ((37 j) mod 100 >= 90), |w| >= 0.95 in layer 1
    pos = active_positions(model)
    assert pos[L0] == [8, 16, 27, 35, 43, 54, 62, 70, 81, 89]
    assert pos[L1] == [14, 17]


# ----------------------------------------------------------------------------- lottery
LOTTERY_INIT = ([0.11, 0.12, 0.13, 0.14, 0.15, 0.16], [0.21, 0.22, 0.23, 0.24])
LOTTERY_TRAINED = ([0.3, -0.9, 0.05, 0.6, -0.2, 0.45], [0.8, -0.7, 0.75, 0.01])


def trained_lottery_model():
    model = rows_model(*LOTTERY_INIT)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # "training"
        for (_, m), w in zip(dst.sparse_layers(model), LOTTERY_TRAINED, strict=True):
            m.weight.copy_(torch.tensor([w]))
    return model, init_state


def test_lottery_prunes_by_trained_magnitude_and_rewinds_the_survivors():
    model, init_state = trained_lottery_model()
    masks = magnitude_masks(model, 0.5)
    # uniform counts at 0.5: budget 5 = [3, 2]
    # layer 0 top 3 |w|: {1: .9, 3: .6, 5: .45}; layer 1 top 2: {0: .8, 2: .75}
    assert masks[L0].reshape(-1).tolist() == [False, True, False, True, False, True]
    assert masks[L1].reshape(-1).tolist() == [True, False, True, False]
    rewind_(model, init_state, masks)
    # survivors take their initial values, the rest exactly 0
    assert weights(model, L0).tolist() == pytest.approx([0, 0.12, 0, 0.14, 0, 0.16])
    assert weights(model, L1).tolist() == pytest.approx([0.21, 0, 0.23, 0])
    assert active_positions(model) == {L0: [1, 3, 5], L1: [0, 2]}


def test_lottery_global_scope_ranks_the_whole_pool():
    model, _ = trained_lottery_model()
    masks = magnitude_masks(model, 0.5, scope="global")
    # the 5 largest |w| of the pool: .9 (0/1) .8 (1/0) .75 (1/2) .7 (1/1) .6 (0/3)
    assert masks[L0].reshape(-1).tolist() == [False, True, False, True, False, False]
    assert masks[L1].reshape(-1).tolist() == [True, True, True, False]


# ----------------------------------------------------------------------------- FromMask
def test_static_from_mask_trains_the_source_final_mask_without_changing_it(tmp_path):
    source = rows_model([0.11, 0.12, 0.13, 0.14], [0.21, 0.22, 0.23])
    init = {k: v.clone() for k, v in source.state_dict().items()}
    final = {L0: torch.tensor([[False, True, True, False]]),
             L1: torch.tensor([[True, False, False]])}
    dst.set_masks_(source, final)  # the source run's mask at its end
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"model": source.state_dict()}, ckpt / "last.pt")
    torch.save({"model": init}, ckpt / "init.pt")

    fresh = rows_model([0.51, 0.52, 0.53, 0.54], [0.61, 0.62, 0.63])
    FromMask(str(tmp_path / "run"), init="fresh")(fresh, [], "cpu", 3 / 7, 0)
    assert active_positions(fresh) == {L0: [1, 2], L1: [0]}
    assert weights(fresh, L0).tolist() == pytest.approx([0, 0.52, 0.53, 0])  # its own init
    original = rows_model([0.51, 0.52, 0.53, 0.54], [0.61, 0.62, 0.63])
    FromMask(str(tmp_path / "run"), init="original")(original, [], "cpu", 3 / 7, 0)
    assert weights(original, L0).tolist() == pytest.approx([0, 0.12, 0.13, 0])  # source init
    assert weights(original, L1).tolist() == pytest.approx([0.21, 0, 0])

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["sparsity=static_from_mask"]).sparsity
    assert cfg.schedule is None and cfg.init.init == "fresh"
    method = instantiate(cfg.method)
    assert isinstance(method, Static)
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    engine = dst.SparseEngine(fresh, opt, method, update_every=1)
    for _ in range(3):  # training moves the weights, never the mask
        opt.zero_grad()
        fresh(torch.ones(1, 7)).backward()
        opt.step()
        assert engine.step() is None
    assert active_positions(fresh) == {L0: [1, 2], L1: [0]}
    assert weights(fresh, L0).tolist() == pytest.approx([0, 0.52 - 0.3, 0.53 - 0.3, 0])

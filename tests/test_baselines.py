"""Static baselines: SNIP masks, thin dense widths, lottery-ticket pruning and rewinding."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyNet, batch
from torch import nn

import dst
from dst.baselines import (
    SNIP,
    global_top_k,
    lottery_densities,
    magnitude_masks,
    rewind_,
    snip_masks,
    snip_saliency,
    sparse_param_target,
    thin_dense_model,
    thin_width,
)
from dst.distributions import budget_for, layer_counts
from dst.models import build_model

LAYERS = ["stem", "grouped", "depthwise", "pointwise", "fc1", "fc2"]


def tiny(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def reference_saliency(net: nn.Module, x, y) -> dict:
    """|w * dL/dw| of a plain (never sparsified) model, by ordinary autograd."""
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return {n: (getattr(net, n).weight * getattr(net, n).weight.grad).abs().detach()
            for n in LAYERS}


# ----------------------------------------------------------------------------- SNIP
@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_snip_mask_is_the_global_top_k_of_the_saliency(fmt):
    plain = tiny()
    x, y = batch(0)
    sal = reference_saliency(plain, x, y)
    net = tiny()
    dst.sparsify_(net, 1.0, format=fmt)
    density = 0.2
    sizes = [sal[n].numel() for n in LAYERS]
    k = budget_for(density, sizes)
    flat = torch.cat([sal[n].reshape(-1) for n in LAYERS])
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[flat.topk(k).indices] = True
    expected = dict(zip(LAYERS, expected.split(sizes), strict=True))
    assert all(expected[n].any() for n in LAYERS)  # the >= 1 rule does not bind here

    masks = snip_masks(net, [(x, y)], density)
    assert sum(int(m.sum()) for m in masks.values()) == k
    for n in LAYERS:
        assert masks[n].shape == sal[n].shape
        assert torch.equal(masks[n].reshape(-1), expected[n]), n


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_snip_hook_applies_the_masks_and_changes_nothing_else(fmt):
    torch.manual_seed(0)
    model = build_model("resnet20")
    dst.sparsify_(model, 1.0, filter_fn=dst.paper_filter(model, dense_fc=True), format=fmt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense_before = {n: m.dense_weight().clone() for n, m in dst.sparse_layers(model)}
    loader = [batch(i, n=4) for i in range(3)]
    SNIP(batches=2)(model, loader, "cpu", 0.1, seed=0)
    layers = dst.sparse_layers(model)
    assert sum(m.n_active for _, m in layers) == budget_for(0.1, [m.numel_dense for _, m in layers])
    for n, m in layers:
        assert m.n_active >= 1
        mask = m.mask
        assert torch.equal(m.dense_weight(), dense_before[n] * mask), n
    state = model.state_dict()
    for k, v in before.items():  # BN statistics, biases, dense layers untouched
        if not k.endswith((".weight", ".mask", ".indices", ".values")) and k != "dst_bank":
            assert torch.equal(state[k], v), k
    assert torch.equal(state["conv1.weight"], before["conv1.weight"])
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_snip_keeps_at_least_one_weight_per_layer_and_the_exact_budget():
    net = tiny()
    dst.sparsify_(net, 1.0)
    x, y = batch(1)
    sal = snip_saliency(net, [(x, y)])
    sizes = [m.numel_dense for _, m in dst.sparse_layers(net)]
    for density in (1e-6, 0.02):
        masks = snip_masks(net, [(x, y)], density)
        assert sum(int(m.sum()) for m in masks.values()) == budget_for(density, sizes)
        for n in LAYERS:  # every layer keeps at least its most salient weight
            assert masks[n].reshape(-1)[sal[n].reshape(-1).argmax()]
    assert all(int(m.sum()) == 1 for m in snip_masks(net, [(x, y)], 1e-6).values())


def test_global_top_k_forces_one_per_tensor_and_breaks_ties_deterministically():
    big, small = torch.tensor([5.0, 4.0, 3.0, 2.0]), torch.tensor([0.1, 0.3, 0.2])
    keep = global_top_k([big, small], 3)
    assert keep[0].tolist() == [True, True, False, False]
    assert keep[1].tolist() == [False, True, False]
    ties = global_top_k([torch.ones(3), torch.ones(3)], 4)
    assert ties[0].tolist() == [True, True, True] and ties[1].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="NaN or inf"):
        global_top_k([torch.tensor([float("nan"), 1.0])], 1)


def test_snip_errors_are_clear():
    net = tiny()
    dst.sparsify_(net, 0.5)
    with pytest.raises(ValueError, match="density 1.0"):
        snip_masks(net, [batch(0)], 0.1)
    with pytest.raises(ValueError, match="no sparse layer"):
        snip_masks(tiny(), [batch(0)], 0.1)
    with pytest.raises(ValueError, match="batches must be an int >= 1"):
        SNIP(batches=0)
    full = tiny()
    dst.sparsify_(full, 1.0)
    with pytest.raises(ValueError, match="loader gave only 1"):
        SNIP(batches=2)(full, [batch(0)], "cpu", 0.1, 0)


# ----------------------------------------------------------------------------- thin dense
def test_thin_wrn28_2_matches_the_sparse_count():
    target = sparse_param_target("wrn28_2", {}, 10, 0.1, "paper")
    assert target == 161242  # the paper's WRN-28-2 total at s = 0.9
    hydra_kwargs = {"_target_": "dst.models.build_model", "name": "wrn", "depth": 28,
                    "widen_factor": 2, "dropout": 0.0}
    assert sparse_param_target("wrn", hydra_kwargs, 10, 0.1, "paper") == target
    model, info = thin_dense_model("wrn", hydra_kwargs, 10, target)
    n = sum(p.numel() for p in model.parameters())
    assert info["params"] == n and info["target_params"] == target
    assert info["width_key"] == "widen_factor" and model.widen_factor == info["width"]
    assert abs(n / target - 1) < 0.05 and info["rel_diff"] == pytest.approx(n / target - 1)
    assert 0.6 <= info["width"] <= 0.8  # the paper's thin WRN: widen factor ~0.75 at s = 0.9
    _, alias = thin_dense_model("wrn28_2", {}, 10, target)
    assert alias["params"] == n


def test_thin_resnet20_matches_the_sparse_count():
    target = sparse_param_target("resnet20", {}, 10, 0.1, "paper")
    model, info = thin_dense_model("resnet20", {}, 10, target)
    assert info["width_key"] == "width_multiplier"
    assert abs(sum(p.numel() for p in model.parameters()) / target - 1) < 0.05
    everything = sparse_param_target("resnet20", {}, 10, 0.1, "all")
    assert everything < target  # 'all' also thins the stem, shortcuts and FC


def test_thin_width_returns_the_closest_count_preferring_the_narrower():
    def build(w):  # 11 parameters per output unit: counts 11 * round(10 * w)
        return nn.Linear(10, max(1, round(10 * w)))

    assert thin_width(build, 60, 0.1, 2.0) == (pytest.approx(0.5, abs=0.05), 55)
    assert thin_width(build, 64, 0.1, 2.0)[1] == 66
    assert thin_width(build, 66, 0.1, 2.0)[1] == 66
    assert thin_width(build, 5, 0.1, 2.0)[1] == 11  # below the range: the narrowest end
    assert thin_width(build, 10**6, 0.1, 2.0) == (2.0, 220)  # above it: the widest


def test_thin_width_prefers_not_larger_on_an_exact_tie():
    def build(w):  # 2 parameters per output unit: counts 2 * round(10 * w)
        return nn.Linear(2, max(1, round(10 * w)), bias=False)

    width, count = thin_width(build, 9, 0.1, 2.0)  # 8 and 10 are equally close
    assert count == 8 and round(10 * width) == 4


def test_thin_width_at_least_never_falls_below_the_target():
    def build(w):  # 11 parameters per output unit: counts 11 * round(10 * w)
        return nn.Linear(10, max(1, round(10 * w)))

    # 60 lies between 55 (5 units) and 66 (6 units): closest is 55, at least is 66
    assert thin_width(build, 60, 0.1, 2.0, match="at_least")[1] == 66
    assert thin_width(build, 56, 0.1, 2.0, match="at_least")[1] == 66
    assert thin_width(build, 55, 0.1, 2.0, match="at_least")[1] == 55  # exactly met
    with pytest.raises(ValueError, match="valid choices: closest, at_least"):
        thin_width(build, 60, 0.1, 2.0, match="above")


def test_thin_errors_name_the_choices():
    with pytest.raises(ValueError, match="models with one: resnet20, resnet32, resnet50, wrn"):
        thin_dense_model("mlp", {}, 10, 1000)
    with pytest.raises(ValueError, match="valid choices: paper, paper_sparse_fc, all"):
        sparse_param_target("resnet20", {}, 10, 0.1, "some")
    with pytest.raises(ValueError, match="0 < lo < hi"):
        thin_width(lambda w: nn.Linear(1, 1), 10, 1.0, 0.5)


# ----------------------------------------------------------------------------- lottery
def test_lottery_densities_are_geometric_and_end_exactly():
    d = lottery_densities(0.1, 3)
    assert d == pytest.approx([0.1 ** (1 / 3), 0.1 ** (2 / 3), 0.1])
    assert d[-1] == 0.1 and lottery_densities(0.3, 1) == [0.3]
    assert d[1] / d[0] == pytest.approx(d[0])
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        lottery_densities(0.1, 0)


def test_layer_scope_keeps_each_layers_largest_active_weights():
    net = tiny()
    dst.sparsify_(net, 1.0)
    layers = dst.sparse_layers(net)
    masks = magnitude_masks(net, 0.4)
    counts = layer_counts([m.weight_shape for _, m in layers], 0.4)
    for (n, m), c in zip(layers, counts, strict=True):
        w = m.dense_weight().abs()
        assert int(masks[n].sum()) == c
        assert w[masks[n]].min() >= w[~masks[n]].max()
    dst.set_masks_(net, masks)
    again = magnitude_masks(net, 0.2)
    for n, _ in layers:
        assert not (again[n] & ~masks[n]).any()  # only among the active weights
    same = magnitude_masks(net, 0.9)  # asking for more keeps every active weight
    assert all(torch.equal(same[n], masks[n]) for n, _ in layers)


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_global_scope_budget_is_exact_with_one_per_layer(fmt):
    net = tiny()
    with torch.no_grad():
        net.fc2.weight.mul_(1e-6)
    dst.sparsify_(net, 1.0, format=fmt)
    layers = dst.sparse_layers(net)
    masks = magnitude_masks(net, 0.1, scope="global")
    assert sum(int(m.sum()) for m in masks.values()) == budget_for(
        0.1, [m.numel_dense for _, m in layers])
    assert int(masks["fc2"].sum()) == 1
    kept = torch.cat([m.dense_weight().abs()[masks[n]] for n, m in layers if n != "fc2"])
    dropped = torch.cat([m.dense_weight().abs()[~masks[n]] for n, m in layers])
    assert kept.min() >= dropped.max()
    with pytest.raises(ValueError, match="valid choices: layer, global"):
        magnitude_masks(net, 0.1, scope="model")


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_rewind_restores_survivors_to_their_saved_values(fmt):
    net = tiny()
    dst.sparsify_(net, 1.0, format=fmt)
    init_state = {k: v.clone() for k, v in net.state_dict().items()}
    init_w = {n: m.dense_weight().clone() for n, m in dst.sparse_layers(net)}
    init_b = net.fc1.bias.detach().clone()
    with torch.no_grad():  # "training"
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    masks = magnitude_masks(net, 0.3)
    assert rewind_(net, init_state, masks) == 0
    for n, m in dst.sparse_layers(net):
        assert torch.equal(m.mask, masks[n])
        assert torch.equal(m.dense_weight(), init_w[n] * masks[n]), n
    assert torch.equal(net.fc1.bias, init_b)
    net(batch(0)[0]).sum().backward()  # still trains


def test_rewind_reads_a_compact_state_into_a_dense_model_and_warns_on_gaps():
    compact, dense = tiny(), tiny()
    dst.sparsify_(compact, 1.0, format="compact")
    dst.sparsify_(dense, 1.0, format="dense")
    saved = {"model": compact.state_dict()}
    with torch.no_grad():
        for p in dense.parameters():
            p.mul_(3.0)
    masks = magnitude_masks(dense, 0.5)
    rewind_(dense, saved, masks)
    for (n, c), (_, d) in zip(dst.sparse_layers(compact), dst.sparse_layers(dense), strict=True):
        assert torch.equal(d.dense_weight(), c.dense_weight() * masks[n])
    sparse_init = tiny()
    dst.sparsify_(sparse_init, 0.5, seed=3)  # an init state with another mask
    with pytest.warns(UserWarning, match="inactive in the saved state"):
        gaps = rewind_(dense, sparse_init.state_dict(), masks)
    assert gaps > 0
    with pytest.raises(ValueError, match="no weight for sparse layers"):
        rewind_(dense, {"stem.bias": torch.zeros(8)}, masks)

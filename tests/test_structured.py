"""Structured DSR (dst.methods.DSRStructured, dst.slim) against cases worked by hand."""

import copy

import pytest
import torch
from helpers import TinyNet
from torch import nn

import dst
from dst.channels import channel_removal
from dst.methods import DSRStructured
from dst.models import build_model
from dst.slim import KEPT, find_channel_groups, slim_


def test_removed_count_follows_the_cubic_ramp():
    m = DSRStructured(channel_sparsity=0.5, ramp=(0.1, 0.6))
    # stop 1000: the ramp runs from step 100 to 600; 16 channels
    assert m.removed_target(50, 1000, 16) == 0
    assert m.removed_target(100, 1000, 16) == 0
    # p = 0.25: 0.5 * (1 - 0.75**3) = 0.2890625 -> 4.625 channels -> 4
    assert m.removed_target(225, 1000, 16) == 4
    # p = 0.5: 0.5 * (1 - 0.125) = 0.4375 -> 7.0 -> 7
    assert m.removed_target(350, 1000, 16) == 7
    assert m.removed_target(600, 1000, 16) == 8
    assert m.removed_target(990, 1000, 16) == 8
    # min_channels caps it: 0.9 of 4 = 3.6 -> 3, but 2 must stay
    capped = DSRStructured(channel_sparsity=0.9, ramp=(0.0, 0.5), min_channels=2)
    assert capped.removed_target(500, 1000, 4) == 2
    assert DSRStructured(channel_sparsity=0.0).removed_target(900, 1000, 16) == 0


def test_channel_groups_of_the_paper_models():
    wrn = build_model("wrn28_2", 10)
    dst.sparsify_(wrn, 0.1, filter_fn=dst.convert.paper_filter(wrn, dense_fc=True))
    groups = find_channel_groups(wrn)
    assert len(groups) == 12  # conv1 -> bn2 -> conv2 of each of the 12 blocks
    assert (groups[0].producer, groups[0].norms, groups[0].consumer) == (
        "block1.0.conv1", ("block1.0.bn2",), "block1.0.conv2")
    assert all(g.producer.endswith("conv1") for g in groups)  # conv2 feeds the residual add

    r50 = build_model("resnet50", 1000)
    dst.sparsify_(r50, 0.1, filter_fn=dst.convert.paper_filter(r50, dense_fc=False))
    groups = find_channel_groups(r50)
    assert len(groups) == 32  # conv1 -> conv2 and conv2 -> conv3 of 16 bottlenecks
    assert ("layer1.0.conv2", ("layer1.0.bn2",), "layer1.0.conv3") in [
        (g.producer, g.norms, g.consumer) for g in groups]
    assert not any(g.producer.endswith("conv3") or g.producer == "fc" for g in groups)

    tiny = TinyNet()  # grouped/depthwise convs and a flatten: only fc1 -> relu -> fc2
    dst.sparsify_(tiny, 0.5)
    assert [(g.producer, g.consumer) for g in find_channel_groups(tiny)] == [("fc1", "fc2")]


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3, bias=False)
        self.fc2 = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def hand_model(w1=((1.0, 0, 0, 0.5), (0.1, 0, 0, 0), (2.0, 0, 0, 0)),
               w2=((0.5, 0.2, 1.0), (0.0, 0, 1.0))):
    model = TwoLinear()
    w1, w2 = torch.tensor(w1), torch.tensor(w2)
    with torch.no_grad():
        model.fc1.weight.copy_(w1)
        model.fc2.weight.copy_(w2)
    dst.sparsify_(model, 1.0)
    dst.set_masks_(model, {"fc1": w1 != 0, "fc2": w2 != 0})
    return model


def test_lowest_unit_mean_magnitude_channel_goes_and_its_budget_is_regrown():
    model = hand_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    # unit mean magnitude = (|row of fc1| + |column of fc2|) / (4 + 2) positions:
    # channel 0: (1.5 + 0.5) / 6 = 0.333; channel 1: (0.1 + 0.2) / 6 = 0.05; channel 2: 4 / 6
    # 0.34 of 3 channels = 1.02 -> 1 channel goes once the ramp is done (step 1 of stop 2)
    method = DSRStructured(channel_sparsity=0.34, ramp=(0.0, 0.5))
    engine = dst.SparseEngine(model, opt, method, update_every=1, stop_step=2, check=True)
    assert engine.budget == 8
    model(torch.ones(1, 4)).sum().backward()
    opt.step()  # lr 0: only the momentum buffers fill (with the gradients)
    mom1 = opt.state[model.fc1.weight]["momentum_buffer"].clone()
    report = engine.step()

    assert model.fc1.kept_channels.tolist() == [0, 2]
    assert model.fc1.weight.shape == (2, 4) and model.fc2.weight.shape == (2, 2)
    assert (model.fc1.out_features, model.fc2.in_features) == (2, 2)
    # freed: fc1 row 1 held 1 active weight, fc2 column 1 held 1 (its 0.0 is inactive);
    # DSR's threshold (1e-3) prunes nothing; the 2 are regrown 1 : 1 (survivors 3 : 3)
    assert report.pruned == report.grown == 2
    assert report.pruned_per_layer == {"fc1": 1, "fc2": 1}
    assert report.grown_per_layer == {"fc1": 1, "fc2": 1}
    assert engine.budget == 8 and model.fc1.n_active + model.fc2.n_active == 8
    # fc2's only free position was (1, 0): grown there, at zero
    assert bool(model.fc2.mask.all()) and model.fc2.weight[1, 0].item() == 0.0
    assert torch.equal(model.fc2.weight.detach(), torch.tensor([[0.5, 1.0], [0.0, 1.0]]))
    # the kept rows keep their values and their momentum (the grown position's is zero)
    w1 = model.fc1.weight.detach()
    grown = model.fc1.mask & (w1 == 0)
    assert int(grown.sum()) == 1
    assert torch.equal(w1, torch.tensor([[1.0, 0, 0, 0.5], [2.0, 0, 0, 0]]))
    mom = opt.state[model.fc1.weight]["momentum_buffer"]
    assert mom.shape == (2, 4)
    assert torch.equal(mom[~grown], mom1[[0, 2]][~grown]) and mom[grown].item() == 0.0


def test_the_consumer_column_counts_in_the_score():
    # fc1 rows alone would remove channel 0 (|row| 0.5 < 0.6), but with fc2's columns:
    # channel 0: (0.5 + 1.0) / 6 = 0.25; channel 1: (0.6 + 0.1) / 6 = 0.117; channel 2: 4 / 6
    model = hand_model(w1=((0.5, 0, 0, 0), (0.6, 0, 0, 0), (3.0, 0, 0, 0)),
                       w2=((0.5, 0.1, 0.5), (0.5, 0.0, 0.5)))
    method = DSRStructured(channel_sparsity=0.34, ramp=(0.0, 0.5))
    engine = dst.SparseEngine(model, None, method, update_every=1, stop_step=2, check=True)
    engine.step()
    assert model.fc1.kept_channels.tolist() == [0, 2]


def test_slimming_keeps_the_function_in_train_and_eval_mode():
    torch.manual_seed(0)
    model = build_model("wrn", 10, depth=10, widen_factor=1)
    dst.sparsify_(model, 0.3, filter_fn=dst.convert.paper_filter(model, dense_fc=True))
    groups = find_channel_groups(model)
    dst.slim.attach_(model, groups)
    g = groups[1]  # block2.0: conv1 (16 -> 32) -> bn2 -> conv2 (32 -> 32)
    prod, cons = model.get_submodule(g.producer), model.get_submodule(g.consumer)
    gone = [1, 4, 5]  # prune every weight of these channels, then cut them out
    pm, cm = prod.mask.clone(), cons.mask.clone()
    pm[gone], cm[:, gone] = False, False
    dst.set_masks_(model, {g.producer: pm, g.consumer: cm})
    bn = model.get_submodule(g.norms[0])
    with torch.no_grad():  # BN statistics and a shift that make the gone channels non-zero
        bn.bias.uniform_(0.5, 1.0)
        bn.running_mean.uniform_(-1, 1)
    x = torch.randn(4, 3, 32, 32)
    full = copy.deepcopy(model)
    keep = torch.tensor([c for c in range(prod.weight_shape[0]) if c not in gone])
    slim_(model, g, keep)
    assert prod.weight.shape[0] == cons.weight.shape[1] == bn.num_features == 32 - 3
    assert prod.kept_channels.tolist() == keep.tolist()
    for train in (True, False):  # batch statistics; running statistics
        a, b = copy.deepcopy(full).train(train), copy.deepcopy(model).train(train)
        with torch.no_grad():
            torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)


def test_state_dict_of_a_slimmed_model_loads_into_a_fresh_one():
    def fresh():
        torch.manual_seed(0)
        m = build_model("resnet20", 10)
        dst.sparsify_(m, 0.2, filter_fn=dst.convert.paper_filter(m, dense_fc=True))
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        eng = dst.SparseEngine(m, opt, DSRStructured(ramp=(0.0, 0.5)), update_every=1,
                               stop_step=4, seed=3)
        return m, opt, eng

    model, opt, engine = fresh()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()
    assert model.layer1[0].conv1.weight.shape[0] == 8  # half of 16 once the ramp is done
    state = copy.deepcopy((model.state_dict(), opt.state_dict(), engine.state_dict()))
    model2, opt2, engine2 = fresh()
    model2.load_state_dict(state[0])
    opt2.load_state_dict(state[1])
    engine2.load_state_dict(state[2])
    assert channel_removal(engine2).n_channels == channel_removal(engine).n_channels == \
        [16] * 3 + [32] * 3 + [64] * 3
    for (n, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n
    for a, b in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"], strict=True):
        assert a.shape == b.shape
        sa, sb = opt.state[a]["momentum_buffer"], opt2.state[b]["momentum_buffer"]
        assert torch.equal(sa, sb)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"channel_sparsity": 1.0}, "channel_sparsity must be in"),
    ({"channel_sparsity": -0.1}, "channel_sparsity"),
    ({"ramp": (0.6, 0.1)}, "ramp must be"),
    ({"ramp": (0.1,)}, "ramp must be"),
    ({"min_channels": 0}, "min_channels"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSRStructured(**kwargs)


def test_compact_format_and_models_without_groups_are_refused():
    model = hand_model()
    with pytest.raises(ValueError, match="needs the engine's stop_step"):
        dst.SparseEngine(model, None, DSRStructured(), update_every=1)
    compact = TwoLinear()
    dst.sparsify_(compact, 0.5, format="compact")
    with pytest.raises(ValueError, match="format='dense'"):
        dst.SparseEngine(compact, None, DSRStructured(), update_every=1, stop_step=10)
    lone = nn.Sequential(nn.Linear(4, 3))
    dst.sparsify_(lone, 0.5)
    with pytest.raises(ValueError, match="found no channel group"):
        dst.SparseEngine(lone, None, DSRStructured(), update_every=1, stop_step=10)
    assert KEPT == "kept_channels"

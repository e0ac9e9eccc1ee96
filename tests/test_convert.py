import math

import pytest
import torch
from helpers import TinyNet
from torch import nn

import dst
from dst.distributions import erk_densities, layer_counts
from dst.models import build_model


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("density", [0.05, 0.1, 0.37, 0.9])
def test_budget_met_exactly(distribution, density):
    model = TinyNet()
    pool = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    made = dst.sparsify_(model, density, distribution=distribution)
    assert len(made) == 6 and [n for n, _ in made] == [n for n, _ in dst.sparse_layers(model)]
    assert sum(m.n_active for _, m in made) == math.floor(density * pool + 0.5)
    assert all(m.n_active >= 1 for _, m in made)


def test_uniform_gives_every_layer_the_same_density():
    shapes = [(64, 64, 3, 3), (128, 64, 3, 3), (10, 128)]
    counts = layer_counts(shapes, 0.1, "uniform")
    for c, s in zip(counts, shapes, strict=True):
        assert abs(c - 0.1 * math.prod(s)) < 1


def test_erk_caps_at_one_and_redistributes():
    shapes = [(4, 3, 3, 3), (256, 256, 3, 3), (128, 256, 3, 3)]
    d = erk_densities(shapes, 0.3)
    assert d[0] == 1.0  # the small layer would exceed 1: capped, excess shared out
    sizes = [math.prod(s) for s in shapes]
    assert sum(di * n for di, n in zip(d, sizes, strict=True)) == pytest.approx(0.3 * sum(sizes))
    raw = [sum(s) / math.prod(s) for s in shapes]  # uncapped layers keep the ERK proportions
    assert d[1] / d[2] == pytest.approx(raw[1] / raw[2])
    counts = layer_counts(shapes, 0.3, "erk")
    assert counts[0] == sizes[0] and sum(counts) == math.floor(0.3 * sum(sizes) + 0.5)


def test_filter_fn_and_format_compact_shares_one_bank():
    model = TinyNet()
    made = dst.sparsify_(model, 0.2, filter_fn=lambda n, m: isinstance(m, nn.Linear),
                         format="compact")
    assert [n for n, _ in made] == ["fc1", "fc2"]
    assert type(model.stem) is nn.Conv2d
    params = dict(model.named_parameters())
    assert "dst_bank" in params and "fc1.values" not in params
    assert params["dst_bank"].numel() == sum(m.n_active for _, m in made)
    x = torch.randn(2, 3, 8, 8)
    twin = TinyNet()
    twin.load_state_dict({k: v for k, v in model.state_dict().items()
                          if not k.startswith(("fc", "dst_bank"))}, strict=False)
    for name in ("fc1", "fc2"):
        setattr(twin, name, getattr(model, name).to_dense())
    torch.testing.assert_close(model(x), twin(x))


def test_compact_memory_grows_with_active_count():
    torch.manual_seed(0)
    dense, compact = build_model("wrn28_2"), build_model("wrn28_2")
    sparse_params = 0
    dst.sparsify_(compact, 0.1, filter_fn=dst.paper_filter(compact, dense_fc=True),
                  format="compact")
    pool = 1_451_520
    sparse_params = compact.dst_bank.numel()
    assert sparse_params == round(0.1 * pool)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_compact = sum(p.numel() for p in compact.parameters())
    assert n_dense - n_compact == pool - sparse_params


def test_paper_split_pool_sizes_match_the_paper():
    wrn = build_model("wrn28_2")
    made = dst.sparsify_(wrn, 0.1, filter_fn=dst.paper_filter(wrn, dense_fc=True))
    assert len(made) == 24 and sum(m.numel_dense for _, m in made) == 1_451_520
    assert sum(p.numel() for p in wrn.parameters() if p.requires_grad) == 1_467_610
    total_active = sum(m.n_active for _, m in made) + 1_467_610 - 1_451_520
    assert total_active == 161_242  # the paper's WRN-28-2 parameter count at s = 0.9
    r50 = build_model("resnet50", num_classes=1000)
    made = dst.sparsify_(r50, 0.1, filter_fn=dst.paper_filter(r50, dense_fc=False))
    assert sum(m.numel_dense for _, m in made) == 22_724_608
    assert "fc" in dict(made) and "conv1" not in dict(made)
    assert not any("downsample" in n for n, _ in made)


def test_depthwise_and_grouped_models_train(tmp_path):
    model = TinyNet()
    dst.sparsify_(model, 0.5, distribution="erk", format="compact")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = dst.SparseEngine(model, opt, dst.methods.DSR(prune_target=0.2), update_every=1,
                              check=True)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
        engine.step()


def test_densify_restores_plain_layers_with_same_outputs():
    model = TinyNet()
    dst.sparsify_(model, 0.3, format="compact")
    x = torch.randn(2, 3, 8, 8)
    y = model(x)
    names = dst.densify_(model)
    assert len(names) == 6 and not dst.sparse_layers(model)
    assert "dst_bank" not in dict(model.named_parameters())
    torch.testing.assert_close(model(x), y)


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_set_masks_sets_exactly_and_keeps_values(fmt):
    model = TinyNet()
    dst.sparsify_(model, 1.0, format=fmt)
    before = {n: m.dense_weight().clone() for n, m in dst.sparse_layers(model)}
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.weight_shape, generator=g) < 0.2 for n, m in
             dst.sparse_layers(model)}
    dst.set_masks_(model, masks)
    for n, m in dst.sparse_layers(model):
        assert torch.equal(m.mask, masks[n])
        assert torch.equal(m.dense_weight(), before[n] * masks[n])
    with pytest.raises(ValueError, match="no sparse layer named"):
        dst.set_masks_(model, {"nope": masks["fc1"]})


def test_bad_arguments_name_valid_choices():
    with pytest.raises(ValueError, match="valid choices: uniform, erk"):
        dst.sparsify_(TinyNet(), 0.5, distribution="gaussian")
    with pytest.raises(ValueError, match="valid choices: dense, compact"):
        dst.sparsify_(TinyNet(), 0.5, format="coo")
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density must be"):
            dst.sparsify_(TinyNet(), bad)
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        dst.sparsify_(TinyNet(), 0.5, filter_fn=lambda n, m: False)
    with pytest.raises(ValueError, match="unknown method 'magic'; valid choices: dsr"):
        dst.methods.build_method("magic")


def test_subclasses_of_linear_are_left_dense_with_a_warning():
    class Scaled(nn.Linear):  # a forward of its own, which a sparse layer would not run
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.ModuleDict({"scaled": Scaled(8, 8), "fc": nn.Linear(8, 8)})
    with pytest.warns(UserWarning, match="scaled"):
        made = dst.sparsify_(model, 0.5)
    assert [n for n, _ in made] == ["fc"]


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_load_dense_weights_into_a_sparse_model(fmt):
    torch.manual_seed(0)
    trained = TinyNet()
    model = TinyNet()
    dst.sparsify_(model, 0.3, format=fmt)
    missing = dst.load_dense_weights_(model, trained.state_dict())
    assert missing == []
    for name, m in dst.sparse_layers(model):
        w = dict(trained.named_parameters())[f"{name}.weight"].detach()
        assert torch.equal(m.dense_weight(), w * m.mask)
    assert torch.equal(model.fc2.bias, trained.fc2.bias)
    assert dst.load_dense_weights_(model, {}) != []

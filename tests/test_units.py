"""Block granularity (dst.units): unit geometry and a DSR update at kernel granularity worked
by hand; the errors that stop a bad block before the first batch."""

import pytest
import torch
from torch import nn

import dst
from dst.methods import DSR, SNFS
from dst.units import UnitGrid


def test_unit_geometry_by_hand():
    # a [4, 6, 3, 3] conv in (2, 3) tiles: 2 row blocks x 2 channel blocks of 2 x 3 x 9 = 54
    # weights; unit 3 = rows 2-3, input channels 3-5: flat 2*54 + 3*9 = 135 .. 3*54 + 5*9 + 8
    g = UnitGrid((4, 6, 3, 3), (2, 3))
    assert (g.n_units, g.size) == (4, 54)
    e = g.elements(torch.tensor([3]))
    assert e.numel() == 54 and int(e[0]) == 135 and int(e[-1]) == 215
    assert g.unit_of(e).unique().tolist() == [3]
    # kernels of the same conv: unit = out * 6 + in, 9 weights; flat 54 is (1, 0, 0, 0)
    k = UnitGrid((4, 6, 3, 3), "kernel")
    assert (k.n_units, k.size) == (24, 9)
    assert k.unit_of(torch.tensor([0, 8, 9, 54])).tolist() == [0, 0, 1, 6]
    # a Linear [4, 6] in (2, 3) tiles: unit 1 = rows 0-1, columns 3-5
    lin = UnitGrid((4, 6), (2, 3))
    assert lin.elements(torch.tensor([1])).tolist() == [3, 4, 5, 9, 10, 11]
    assert UnitGrid((4, 6), "kernel").size == 1  # a Linear's kernel is one weight


def _two_convs(kernels_a, kernels_b):
    """Two Conv2d(2, 2, 2) (4 kernels of 4 weights, unit = out * 2 + in): kernel u of layer X
    holds kernels_X[u] in every weight; a kernel of value 0 is inactive."""
    model = nn.Sequential(nn.Conv2d(2, 2, 2, bias=False), nn.Conv2d(2, 2, 2, bias=False))
    with torch.no_grad():
        for conv, ks in zip(model, (kernels_a, kernels_b), strict=True):
            conv.weight.copy_(torch.tensor(ks).reshape(2, 2, 1, 1).expand(2, 2, 2, 2))
    dst.sparsify_(model, 1.0, block="kernel", filter_fn=lambda n, m: True)
    dst.set_masks_(model, {str(i): torch.tensor(ks).reshape(2, 2, 1, 1).expand(2, 2, 2, 2) != 0
                           for i, ks in enumerate((kernels_a, kernels_b))})
    return model


def test_dsr_at_kernel_granularity_by_hand():
    # layer 0 kernels (mean |w|): 0.5, 0.0004, 0.3, off; layer 1: 0.0002, 0.4, off, off
    model = _two_convs([0.5, 0.0004, 0.3, 0.0], [0.0002, 0.4, 0.0, 0.0])
    engine = dst.SparseEngine(model, None, DSR(prune_target=4, threshold=1e-3), update_every=1,
                              seed=3, check=True)
    assert engine.budget == 5 * 4
    report = engine.step()
    # H = 1e-3 prunes the kernels of mean |w| below it: 0.0004 (layer 0), 0.0002 (layer 1):
    # 2 kernels = 8 weights, against N_p = 4 weights: 8 > 1.1 * 4, so H halves (counted in
    # kernels, 2 < 0.9 * 4 would double it)
    assert report.pruned_per_layer == {"0": 4, "1": 4}
    assert engine.method.threshold == pytest.approx(5e-4)
    # regrowth in proportion to the surviving kernels, 2 : 1, of 2 kernels: 1.33 -> 1, 0.67 -> 1
    assert report.grown_per_layer == {"0": 4, "1": 4} and engine.budget == 20
    units = [m.units.units_of_mask(m.mask).tolist() for _, m in dst.sparse_layers(model)]
    # layer 0 grows its one free kernel that was not just pruned (3); layer 1 one of 2 and 3
    assert units[0] == [True, False, True, True]
    assert units[1][:2] == [False, True] and sum(units[1][2:]) == 1
    for (_, m), grown in zip(dst.sparse_layers(model), (3, 2 + units[1][2:].index(True)),
                             strict=True):
        w = m.dense_weight().reshape(4, 4)  # kernel u's 4 weights in row u
        assert not bool(w[grown].any())  # new kernels start at zero


def test_bad_blocks_are_named_before_training():
    model = nn.Sequential(nn.Conv2d(6, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"bh must divide 4 \(\[1, 2, 4\]\) and bw 6 "
                       r"\(\[1, 2, 3, 6\]\)"):
        dst.sparsify_(nn.Sequential(nn.Conv2d(6, 4, 3)), 0.5, block=(3, 3),
                      filter_fn=lambda n, m: True)
    with pytest.raises(ValueError, match="less than one unit"):
        dst.sparsify_(nn.Sequential(nn.Conv2d(6, 4, 3)), 0.01, block=(4, 6),
                      filter_fn=lambda n, m: True)
    with pytest.raises(ValueError, match="block must be None, 'kernel' or a tile"):
        dst.sparsify_(model, 0.5, block="tile")
    dst.sparsify_(model, 0.5, block="kernel", filter_fn=lambda n, m: True)
    # kernels of 9 (the 3 x 3 conv) and of 1 (1 x 1, Linear): DSR could not keep the budget
    with pytest.raises(ValueError, match=r"units differ in size \(\[1, 9\] weights\)"):
        dst.SparseEngine(model, None, DSR(), update_every=1)
    with pytest.raises(ValueError, match="SNFS cannot prune and grow in blocks"):
        dst.SparseEngine(model, None, SNFS(), update_every=1, stop_step=10)
    with pytest.raises(ValueError, match="not made of whole units"):
        dst.set_masks_(model, {"0": torch.eye(4, 54).reshape(4, 6, 3, 3).bool()})


def test_dsr_kernel_preset_composes_with_the_authors_rule():
    from hydra import compose, initialize_config_dir

    from dst.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["sparsity=dsr_kernel"])
    assert cfg.sparsity.block == "kernel" and cfg.sparsity.method._target_ == "dst.methods.DSR"

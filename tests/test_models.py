import math

import pytest
import torch
import torchvision
from torch import nn

from dst.models import MODELS, build_model, count_flops
from dst.models.wrn import WideResNet


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def wrn28_2():
    torch.manual_seed(0)
    return build_model("wrn28_2", num_classes=10)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return build_model("resnet50", num_classes=1000)


def test_registry_names():
    assert {"wrn28_2", "wrn", "resnet20", "resnet32", "resnet50", "mlp"} <= set(MODELS)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*wrn28_2"):
        build_model("vgg16")


def test_wrn28_2_parameter_counts(wrn28_2):
    assert n_params(wrn28_2) == 1_467_610
    block_3x3 = [m for name, m in wrn28_2.named_modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and name != "conv1"]
    assert len(block_3x3) == 24
    assert sum(m.weight.numel() for m in block_3x3) == 1_451_520
    shortcuts = [name for name, _ in wrn28_2.named_modules() if name.endswith("shortcut")]
    assert shortcuts == ["block1.0.shortcut", "block2.0.shortcut", "block3.0.shortcut"]
    assert isinstance(wrn28_2.fc, nn.Linear) and wrn28_2.fc.in_features == 128


def test_wrn_generic_and_float_widths():
    assert n_params(build_model("wrn", depth=28, widen_factor=2)) == 1_467_610
    thin = build_model("wrn", depth=28, widen_factor=0.75)
    assert [thin.block1[0].conv1.out_channels, thin.block2[0].conv1.out_channels,
            thin.block3[0].conv1.out_channels] == [12, 24, 48]
    assert thin.block1[0].shortcut is not None  # 16 -> 12 channels changes shape
    wide = WideResNet(depth=28, widen_factor=1.47)
    assert wide.fc.in_features == 94
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=27)


def test_wrn_forward_and_init(wrn28_2):
    wrn28_2.eval()
    with torch.no_grad():
        assert wrn28_2(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    conv = wrn28_2.block3[1].conv2
    expected = math.sqrt(2.0 / (9 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert conv.weight.mean().abs().item() < 0.1 * expected
    bound = 1.0 / math.sqrt(wrn28_2.fc.in_features)
    assert wrn28_2.fc.weight.abs().max().item() <= bound
    assert wrn28_2.fc.weight.abs().max().item() > 0.9 * bound
    assert torch.all(wrn28_2.fc.bias == 0)
    bn = wrn28_2.block2[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_resnet50_parameter_counts_and_init(resnet50):
    assert n_params(resnet50) == 25_557_032
    pool = [m.weight for name, m in resnet50.named_modules()
            if (isinstance(m, nn.Conv2d) and name.startswith("layer") and "downsample" not in name)
            or name == "fc"]
    assert sum(w.numel() for w in pool) == 22_724_608
    conv = resnet50.layer4[0].conv2
    expected = math.sqrt(2.0 / (9 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert torch.all(resnet50.fc.bias == 0)
    assert resnet50.fc.weight.abs().max().item() <= 1.0 / math.sqrt(2048)


def test_thin_resnet50_keeps_torchvision_names():
    reference = torchvision.models.resnet50(weights=None)
    thin = build_model("resnet50", num_classes=1000, width_multiplier=0.5)
    ref_sd, thin_sd = reference.state_dict(), thin.state_dict()
    assert list(ref_sd) == list(thin_sd)
    assert thin.conv1.out_channels == 32 and thin.fc.in_features == 1024
    assert thin_sd["layer3.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert n_params(thin) < 0.3 * 25_557_032
    tiny = build_model("resnet50", num_classes=7, width_multiplier=0.125).eval()
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("name,blocks", [("resnet20", 3), ("resnet32", 5)])
def test_cifar_resnets(name, blocks):
    model = build_model(name, num_classes=100).eval()
    assert len(model.layer1) == blocks
    assert model.layer1[0].shortcut is None and model.layer2[0].shortcut is not None
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_mlp():
    model = build_model("mlp", num_classes=3, input_size=12, hidden=(8, 6))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 8), (8, 6), (6, 3)]
    assert model(torch.randn(4, 3, 2, 2)).shape == (4, 3)
    assert model.fc is linears[-1]


class _SparseConv(nn.Conv2d):
    pass


def test_count_flops_known_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),              # 32*32*8*3*9
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),  # 16*16*8*2*9
        _SparseConv(8, 4, 1),                       # 16*16*4*8
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),                 # 1024*10
    )
    flops = count_flops(model, input_size=(2, 3, 32, 32))
    assert flops == {"0": 32 * 32 * 8 * 3 * 9, "1": 16 * 16 * 8 * 2 * 9,
                     "2": 16 * 16 * 4 * 8, "4": 1024 * 10}
    half = count_flops(model, density_of=lambda m: 0.5 if isinstance(m, _SparseConv) else 1.0)
    assert half["2"] == 16 * 16 * 4 * 8 // 2 and half["0"] == flops["0"]
    assert model.training  # mode restored


def test_count_flops_sequence_linear():
    model = nn.Linear(6, 5)
    assert count_flops(model, input_size=(3, 7, 6)) == {"": 7 * 6 * 5}


def test_count_flops_resnet50_total(resnet50):
    total = sum(count_flops(resnet50, input_size=(1, 3, 224, 224)).values())
    assert 4.0e9 < total < 4.2e9  # the well-known ~4.1 GMACs

"""Model zoo: ``build_model(name, num_classes, **kwargs)`` over the ``MODELS`` registry."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .flops import count_flops
from .init import init_weights
from .resnet import MLP, CifarResNet, ImageNetResNet, mlp, resnet20, resnet32, resnet50
from .vit import vit_tiny
from .wrn import WideResNet, wrn, wrn28_2

MODELS: dict[str, Callable[..., nn.Module]] = {
    "wrn28_2": wrn28_2,
    "wrn": wrn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet50": resnet50,
    "mlp": mlp,
    "vit_tiny": vit_tiny,
}


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` go to its builder (e.g. ``widen_factor``)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    return builder(num_classes=num_classes, **kwargs)


__all__ = [
    "MLP",
    "MODELS",
    "CifarResNet",
    "ImageNetResNet",
    "WideResNet",
    "build_model",
    "count_flops",
    "init_weights",
    "mlp",
    "resnet20",
    "resnet32",
    "resnet50",
    "vit_tiny",
    "wrn",
    "wrn28_2",
]

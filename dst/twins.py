"""Conversion between a torch layer and its sparse twin (``from_dense`` / ``to_dense``).

A sparse layer class names the torch layer it replaces (``_torch_cls``) and the constructor
arguments the two share (``_init_args``); both directions rebuild one from the other's
arguments on the meta device and move the weights over, so no dense weight is drawn twice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def init_kwargs(cls, module: nn.Module) -> dict:
    """The constructor arguments of ``module`` that ``cls`` (a sparse layer class) shares with
    its torch twin."""
    return {**{k: getattr(module, k) for k in cls._init_args}, "bias": module.bias is not None}


def dense_twin(layer) -> nn.Module:
    """A plain torch layer with the same outputs as the sparse ``layer`` (inactive weights are
    zeros)."""
    w = layer.dense_weight()
    twin = layer._torch_cls(**init_kwargs(type(layer), layer), device="meta", dtype=w.dtype)
    twin.weight = nn.Parameter(w.detach().clone().contiguous())
    if layer.bias is not None:
        twin.bias = nn.Parameter(layer.bias.detach().clone())
    return twin.to(device=w.device)


def sparse_twin(cls, module: nn.Module, density: float, format: str, mask: Tensor | None,
                generator: torch.Generator | None, backend: str, block=None):
    """A ``cls`` (sparse layer) copy of the torch layer ``module`` keeping its weights at the
    active positions."""
    if not isinstance(module, cls._torch_cls):
        raise TypeError(f"{cls.__name__}.from_dense expects a {cls._torch_cls.__name__}, "
                        f"got {type(module).__name__}")
    probe = cls.__new__(cls)
    cls._torch_cls.__init__(probe, **init_kwargs(cls, module), device="meta")
    probe.weight = nn.Parameter(module.weight.detach().clone())
    if module.bias is not None:
        probe.bias = nn.Parameter(module.bias.detach().clone())
    probe.train(module.training)
    probe._setup_sparse(density, format, mask, generator, backend, block)
    return probe

"""Data sets behind one interface: ``build_data(name, **kwargs) -> DataBundle``.

Every loader has ``set_epoch(epoch)``, ``__iter__`` yielding (x float32 NCHW on ``device``,
y int64), ``__len__`` (batches per epoch for this rank) and ``iter_from(batch_index)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, imagenet_loaders
from .loaders import TensorImageLoader, mix_seed, shard_indices
from .npz import channel_stats, load_npz
from .synthetic import make_synthetic


@dataclass
class DataBundle:
    train: TensorImageLoader | FolderLoader
    test: TensorImageLoader | FolderLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


def _cifar10(root: str = "data", download: bool = False):
    train_x, train_y, test_x, test_y = load_cifar10(root, download=download)
    return train_x, train_y, test_x, test_y, CIFAR10_MEAN, CIFAR10_STD, 10


def _npz(path: str):
    train_x, train_y, test_x, test_y = load_npz(path)
    mean, std = channel_stats(train_x)
    num_classes = int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1
    return train_x, train_y, test_x, test_y, mean, std, num_classes


def _synthetic(n_train: int = 512, n_test: int = 256, num_classes: int = 10,
               image_size: int = 32, channels: int = 3, data_seed: int = 0):
    train_x, train_y, test_x, test_y = make_synthetic(n_train, n_test, num_classes, image_size,
                                                      channels, data_seed)
    mean, std = channel_stats(train_x)
    return train_x, train_y, test_x, test_y, mean, std, num_classes


_TENSOR_DATASETS: dict[str, Callable[..., tuple]] = {
    "cifar10": _cifar10,
    "npz": _npz,
    "synthetic": _synthetic,
}
DATASETS = (*_TENSOR_DATASETS, "imagenet")


def build_data(
    name: str,
    *,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    on_device: bool = False,
    augment: bool = True,
    **kwargs: Any,
) -> DataBundle:
    """Build train/test loaders for ``name``.

    Data set options: ``cifar10`` (root, download), ``npz`` (path; normalised with its train
    set's channel statistics), ``synthetic`` (n_train, n_test, num_classes, image_size,
    channels, data_seed), ``imagenet`` (root, workers, image_size, resize, pin_memory).
    ``on_device`` applies to the in-memory data sets only.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    eval_batch_size = eval_batch_size or batch_size
    if name == "imagenet":
        train, test = _call(imagenet_loaders, name, kwargs, batch_size=batch_size,
                            eval_batch_size=eval_batch_size, device=device, seed=seed,
                            rank=rank, world_size=world_size, channels_last=channels_last,
                            augment=augment)
        shape = (3, train.image_size, train.image_size)
        return DataBundle(train, test, len(train.classes), shape, name)
    train_x, train_y, test_x, test_y, mean, std, num_classes = _call(
        _TENSOR_DATASETS[name], name, kwargs)
    common = dict(mean=mean, std=std, device=device, seed=seed, rank=rank,
                  world_size=world_size, channels_last=channels_last, on_device=on_device)
    train = TensorImageLoader(train_x, train_y, batch_size=batch_size, train=True,
                              augment=augment, **common)
    test = TensorImageLoader(test_x, test_y, batch_size=eval_batch_size, train=False,
                             augment=False, **common)
    return DataBundle(train, test, num_classes, tuple(train_x.shape[1:]), name)


def _call(fn: Callable[..., Any], name: str, kwargs: dict[str, Any], **fixed: Any) -> Any:
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in kwargs if k not in params or k in fixed)
    if unknown:
        valid = [p for p in params if p not in fixed]
        raise ValueError(f"data set {name!r} got unknown options {', '.join(unknown)}; "
                         f"valid options: {', '.join(valid)}")
    return fn(**kwargs, **fixed)


__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataBundle",
    "FolderLoader",
    "TensorImageLoader",
    "build_data",
    "channel_stats",
    "imagenet_loaders",
    "load_cifar10",
    "load_npz",
    "make_synthetic",
    "mix_seed",
    "shard_indices",
]

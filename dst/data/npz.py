"""Image classification data from one ``.npz`` file (train_x, train_y, test_x, test_y)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

NPZ_KEYS = ("train_x", "train_y", "test_x", "test_y")


def to_nchw(x: np.ndarray, name: str = "images") -> np.ndarray:
    """Return uint8 images as N x C x H x W, accepting N x C x H x W, N x H x W x C or N x H x W.

    The channel axis is the one of size 1 or 3 beside the spatial axes; when both axis 1 and
    axis 3 qualify, N x C x H x W is assumed.
    """
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{name} must have 3 or 4 dimensions (N,H,W / N,C,H,W / N,H,W,C), "
                         f"got shape {x.shape}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ValueError(f"cannot find the channel axis of {name} with shape {x.shape}: expected "
                     f"axis 1 (N,C,H,W) or axis 3 (N,H,W,C) to have size 1 or 3")


def load_npz(
    path: str | os.PathLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read (train_x, train_y, test_x, test_y) as uint8 NCHW image and int64 label tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz data file not found: {path} (expected arrays "
                                f"{', '.join(NPZ_KEYS)})")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks arrays {', '.join(missing)}; it must hold "
                             f"{', '.join(NPZ_KEYS)} (has {', '.join(f.files) or 'none'})")
        arrays = {k: f[k] for k in NPZ_KEYS}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8:
            raise ValueError(f"{path}: {split}_x must be uint8 images (0..255), got {x.dtype}")
        x = to_nchw(x, f"{split}_x")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: {split}_y must hold integer labels, got {y.dtype}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{path}: {split}_y must be 1-D with one label per image "
                             f"({x.shape[0]}), got shape {y.shape}")
        if y.size and y.min() < 0:
            raise ValueError(f"{path}: {split}_y has negative labels")
        out += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise ValueError(f"{path}: train_x images are {tuple(out[0].shape[1:])} but test_x images "
                         f"are {tuple(out[2].shape[1:])} (C, H, W)")
    return out[0], out[1], out[2], out[3]


def channel_stats(
    x: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images on the [0, 1] scale (float64 sums)."""
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].to("cpu", torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())

"""CIFAR-10 from the official python release (``cifar-10-batches-py/``) via torchvision."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _missing_message(root: Path, detail: str) -> str:
    folder = root / "cifar-10-batches-py"
    return (
        f"CIFAR-10 not found under {folder} ({detail}). Put the official python release there "
        f"({folder}/data_batch_1 .. data_batch_5, {folder}/test_batch and batches.meta, i.e. "
        f"cifar-10-python.tar.gz extracted into {root}), or set data.download=true to fetch it."
    )


def load_cifar10(
    root: str | os.PathLike, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_x, train_y, test_x, test_y): uint8 (N, 3, 32, 32) images, int64 labels.

    Raises FileNotFoundError with the expected layout when the files are missing and
    ``download`` is false, when the download fails (e.g. offline), or when they fail
    torchvision's integrity check.
    """
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing and not download:
        raise FileNotFoundError(_missing_message(root, "missing: " + ", ".join(missing)))
    out = []
    for train in (True, False):
        try:
            ds = CIFAR10(str(root), train=train, download=download)
        except (RuntimeError, OSError) as exc:  # failed integrity check or failed download
            raise FileNotFoundError(_missing_message(root, f"{type(exc).__name__}: {exc}")) \
                from exc
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        out += [x, y]
    return out[0], out[1], out[2], out[3]

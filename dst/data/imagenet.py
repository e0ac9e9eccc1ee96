"""ImageNet-style folders (``root/train/<class>/*.JPEG``, ``root/val/<class>/*.JPEG``).

Augmentation is keyed per sample by (seed, epoch, index) through explicit generators, so the
batches of an epoch do not depend on the number of workers, and a resumed run sees the same
ones. Workers decode and crop to uint8; normalisation happens on ``device``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets import ImageFolder

from .loaders import mix_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(1, generator=g).item()


def random_resized_crop_params(width: int, height: int, g: torch.Generator,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, drawing from generator ``g``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=g))
            j = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _FolderDataset(Dataset):
    """ImageFolder samples indexed by (index, sample_seed); returns (uint8 CHW, label)."""

    def __init__(self, folder: ImageFolder, train: bool, augment: bool, image_size: int,
                 resize: int):
        self.samples = folder.samples
        self.loader = folder.loader
        self.train, self.augment = train, augment
        self.image_size, self.resize = image_size, resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = key
        path, target = self.samples[index]
        img = self.loader(path)
        size = [self.image_size, self.image_size]
        if self.train and self.augment:
            g = torch.Generator().manual_seed(sample_seed)
            w, h = TF.get_image_size(img)
            i, j, ch, cw = random_resized_crop_params(w, h, g)
            img = TF.resized_crop(img, i, j, ch, cw, size, antialias=True)
            if torch.rand(1, generator=g).item() < 0.5:
                img = TF.hflip(img)
        else:
            img = TF.center_crop(TF.resize(img, self.resize, antialias=True), size)
        return TF.pil_to_tensor(img), target


class _SeededSampler(DistributedSampler):
    """DistributedSampler (order keyed by seed + epoch, strided shards, tail dropped) that
    yields (index, sample_seed). ``start`` skips that many samples on the next iteration only
    (it is reset when read), for mid-epoch resume."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        indices = list(super().__iter__())[start:]
        return iter([(i, mix_seed(self.seed, self.epoch, i)) for i in indices])


class FolderLoader:
    """DataLoader over an image folder with the TensorImageLoader interface:
    ``set_epoch``, ``__iter__`` -> (x float32 NCHW normalised on ``device``, y int64),
    ``__len__``, ``iter_from(batch_index)``."""

    def __init__(self, dataset: _FolderDataset, classes: list[str], *, batch_size: int,
                 train: bool, workers: int, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device, seed: int, rank: int, world_size: int,
                 channels_last: bool, pin_memory: bool | None):
        self.classes = classes
        self.image_size = dataset.image_size
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.sampler = _SeededSampler(dataset, rank, world_size, shuffle=train, seed=seed)
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, pin_memory=pin, drop_last=train,
                                 persistent_workers=workers > 0)
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"batch_index must be in [0, {len(self)}], got {batch_index}")
        return self._iterate(batch_index)

    def _iterate(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.start = batch_index * self.batch_size  # read once by the sampler
        non_blocking = self.device.type == "cuda"
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=non_blocking).float()
            x = x.mul_(self._scale).add_(self._shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=non_blocking)


def _folder(root: Path, split: str) -> ImageFolder:
    layout = f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG"
    path = root / split
    if not path.is_dir():
        raise FileNotFoundError(f"ImageNet {split} folder not found: {path}; expected the "
                                f"layout {layout}")
    try:
        return ImageFolder(str(path))
    except FileNotFoundError as exc:  # no class folders or no images
        raise FileNotFoundError(f"no images found in {path} ({exc}); expected the layout "
                                f"{layout}") from exc


def imagenet_loaders(
    root: str | os.PathLike,
    batch_size: int,
    workers: int = 8,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    eval_batch_size: int | None = None,
    image_size: int = 224,
    resize: int = 256,
    augment: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    pin_memory: bool | None = None,
) -> tuple[FolderLoader, FolderLoader]:
    """Train (RandomResizedCrop ``image_size`` + h-flip) and val (Resize ``resize`` +
    CenterCrop ``image_size``) loaders over ``root/train`` and ``root/val``."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size}, {workers}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    root = Path(root).expanduser()
    train_folder, val_folder = _folder(root, "train"), _folder(root, "val")
    if train_folder.class_to_idx != val_folder.class_to_idx:
        raise ValueError(f"{root}/train and {root}/val have different class folders")
    common = dict(workers=workers, mean=mean, std=std, device=device, seed=seed, rank=rank,
                  world_size=world_size, channels_last=channels_last, pin_memory=pin_memory)
    train = FolderLoader(_FolderDataset(train_folder, True, augment, image_size, resize),
                         train_folder.classes, batch_size=batch_size, train=True, **common)
    val = FolderLoader(_FolderDataset(val_folder, False, False, image_size, resize),
                       val_folder.classes, batch_size=eval_batch_size or batch_size,
                       train=False, **common)
    return train, val

"""In-memory image loader with vectorised augmentation and (seed, epoch)-keyed determinism."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Deterministically mix integers into one 63-bit seed (SplitMix64 finaliser per value)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


def _generator(*key: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(mix_seed(*key))
    return g


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's strided shard of ``order``; the tail is dropped so every rank gets
    ``len(order) // world_size`` samples."""
    per_rank = len(order) // world_size
    return order[: per_rank * world_size][rank::world_size]


def _reflect_index(size: int, pad: int) -> torch.Tensor:
    """Source index of every position of a reflect-padded axis (length size + 2 * pad)."""
    idx = torch.arange(-pad, size + pad)
    idx = idx.abs()
    return torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)


_PERM, _AUG = 1, 2  # stream tags so permutation and augmentation draws never share a seed


class TensorImageLoader:
    """Batches from one uint8 image tensor (N, C, H, W) and int64 labels (N,).

    Training augmentation (``augment=True``): reflect-pad ``pad`` pixels, random crop back to
    H x W, random horizontal flip, per sample, done with one advanced-indexing gather per batch.
    Output: float32 NCHW ``(x / 255 - mean) / std`` (``channels_last`` memory format on request)
    and int64 labels, both on ``device``.

    Determinism: the epoch order (shuffled when ``train``) comes from a generator keyed by
    (seed, epoch) and is identical on every rank; each rank takes a disjoint strided shard of
    equal length. Augmentation draws come from a generator keyed by (seed, epoch, rank, batch),
    so ``iter_from(b)`` reproduces batches b, b+1, ... exactly without touching earlier ones.
    The global RNG is never used. With ``on_device=True`` the uint8 data is moved to ``device``
    once and gathered/augmented there; otherwise batches are gathered on the CPU and moved as
    uint8. Random draws are made on the CPU either way, so both modes give identical batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        augment: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        on_device: bool = False,
        pad: int = 4,
    ):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got dtype "
                             f"{images.dtype} and shape {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be 1-D with one entry per image ({images.shape[0]}), "
                             f"got shape {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        channels, height, width = images.shape[1:]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got "
                             f"{len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")
        if augment and not 0 <= pad < min(height, width):
            raise ValueError(f"pad must be in [0, {min(height, width)}) for reflect padding of "
                             f"{height}x{width} images, got {pad}")
        if images.shape[0] < world_size:
            raise ValueError(f"{images.shape[0]} samples cannot be sharded over "
                             f"{world_size} ranks")
        self.device = torch.device(device)
        self.on_device = on_device
        store = self.device if on_device else torch.device("cpu")
        self.images = images.to(store).contiguous()
        self.labels = labels.to(device=store, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.train = train
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = train if drop_last is None else bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.pad = pad
        self.epoch = 0
        # x_norm = x_uint8 * scale + shift  ==  (x / 255 - mean) / std
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)
        self._rows = _reflect_index(height, pad)
        self._cols = _reflect_index(width, pad)

    @property
    def dataset_size(self) -> int:
        return self.images.shape[0]

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before dropping a last partial batch)."""
        return self.dataset_size // self.world_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order (CPU int64)."""
        if self.train:
            order = torch.randperm(self.dataset_size,
                                   generator=_generator(self.seed, self.epoch, _PERM))
        else:
            order = torch.arange(self.dataset_size)
        return shard_indices(order, self.rank, self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch starting at batch ``batch_index`` (mid-epoch resume)."""
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"batch_index must be in [0, {len(self)}], got {batch_index}")
        return self._iterate(batch_index, self.epoch_indices())

    def _iterate(self, batch_index: int,
                 indices: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(batch_index, len(self)):
            yield self._batch(b, indices[b * self.batch_size:(b + 1) * self.batch_size])

    def _batch(self, b: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        store = self.images.device
        idx_s = idx.to(store)
        if self.augment:
            x = self._augment(idx, _generator(self.seed, self.epoch, self.rank, b, _AUG))
        else:
            x = self.images[idx_s]
        y = self.labels[idx_s]
        non_blocking = self.device.type == "cuda" and store.type == "cpu"
        if non_blocking:
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=non_blocking)
        y = y.to(self.device, non_blocking=non_blocking)
        x = x.float().mul_(self._scale).add_(self._shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _augment(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random reflect-padded crop and horizontal flip of every sample, as one gather."""
        n = idx.shape[0]
        channels, height, width = self.images.shape[1:]
        span = 2 * self.pad + 1
        dy = torch.randint(0, span, (n,), generator=g)
        dx = torch.randint(0, span, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        rows = self._rows[dy[:, None] + torch.arange(height)]            # (n, H)
        col_pos = torch.arange(width).expand(n, width)
        col_pos = torch.where(flip[:, None], width - 1 - col_pos, col_pos)
        cols = self._cols[dx[:, None] + col_pos]                          # (n, W)
        store = self.images.device
        return self.images[
            idx.to(store)[:, None, None, None],
            torch.arange(channels, device=store)[None, :, None, None],
            rows.to(store)[:, None, :, None],
            cols.to(store)[:, None, None, :],
        ]

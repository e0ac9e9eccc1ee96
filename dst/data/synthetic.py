"""Synthetic, learnable image classification data for tests and smoke runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_synthetic(
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_x, train_y, test_x, test_y): uint8 (N, C, S, S) images, int64 labels.

    Every class owns a fixed random low-frequency pattern (a 4x4 grid upsampled bilinearly and
    made left-right symmetric, so crops and flips keep it recognisable); a sample is its class
    pattern (at a fifth of the noise level) plus per-pixel noise and a random brightness
    offset, so a linear model needs a few dozen steps to learn it. Deterministic given ``seed``.
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train} and {n_test}")
    if num_classes < 2 or image_size < 4 or channels < 1:
        raise ValueError(f"need num_classes >= 2, image_size >= 4, channels >= 1, got "
                         f"{num_classes}, {image_size}, {channels}")
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(num_classes, channels, 4, 4, generator=g)
    patterns = F.interpolate(grid, size=(image_size, image_size), mode="bilinear",
                             align_corners=False)
    patterns = 0.5 * (patterns + patterns.flip(-1))
    patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, channels, image_size, image_size, generator=g)
        offset = 0.3 * torch.randn(n, 1, 1, 1, generator=g)
        x = 128 + 40 * (0.2 * patterns[y] + noise + offset)
        return x.round().clamp_(0, 255).to(torch.uint8), y

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    return train_x, train_y, test_x, test_y

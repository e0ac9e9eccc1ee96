"""How a global budget of active weights is shared among layers, as exact integer counts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import DISTRIBUTIONS, check_choice, check_density


def random_mask(shape, count: int, generator: torch.Generator | None = None,
                device=None) -> Tensor:
    """A bool tensor of ``shape`` with exactly ``count`` True entries at uniformly random places."""
    numel = math.prod(shape)
    idx = torch.randperm(numel, generator=generator)[:count]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[idx] = True
    return mask.view(*shape).to(device)


def budget_for(density: float, sizes: Sequence[int]) -> int:
    """The global budget: round(density * total), at least one weight per layer."""
    total = sum(sizes)
    return max(len(sizes), min(total, math.floor(density * total + 0.5)))


def _apportion(target: Sequence[float], sizes: Sequence[int], budget: int) -> list[int]:
    """Integer counts close to ``target`` (each in [1, size]) summing exactly to ``budget``,
    by largest remainder; ties go to the earlier layer."""
    counts = [min(s, max(1, math.floor(t))) for t, s in zip(target, sizes, strict=True)]
    diff = budget - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(target[i] - math.floor(target[i])), i))
    while diff != 0:
        moved = False
        for i in order:
            if diff > 0 and counts[i] < sizes[i]:
                counts[i] += 1
                diff -= 1
                moved = True
            elif diff < 0 and counts[i] > 1:
                counts[i] -= 1
                diff += 1
                moved = True
            if diff == 0:
                break
        if not moved:
            raise ValueError(f"cannot place a budget of {budget} in layers of sizes {sizes}")
    return counts


def uniform_counts(sizes: Sequence[int], density: float) -> list[int]:
    """Every layer at the same density; the total is exactly :func:`budget_for`."""
    budget = budget_for(density, sizes)
    return _apportion([density * s for s in sizes], sizes, budget)


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Erdős–Rényi-Kernel densities: d_l ∝ sum(shape)/prod(shape), capped at 1 with the excess
    redistributed, so that sum(d_l * N_l) = density * sum(N_l)."""
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense: set[int] = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        free = [i for i in range(len(sizes)) if i not in dense]
        scale = budget / sum(raw[i] * sizes[i] for i in free)
        over = [i for i in free if raw[i] * scale > 1.0]
        if not over:
            break
        dense.update(over)
    return [1.0 if i in dense else raw[i] * scale for i in range(len(sizes))]


def erk_counts(shapes: Sequence[Sequence[int]], density: float) -> list[int]:
    sizes = [math.prod(s) for s in shapes]
    budget = budget_for(density, sizes)
    return _apportion([d * n for d, n in zip(erk_densities(shapes, density), sizes,
                                             strict=True)], sizes, budget)


def layer_counts(shapes: Sequence[Sequence[int]], density: float,
                 distribution: str = "uniform") -> list[int]:
    """Exact active counts per layer for a global ``density`` under ``distribution``."""
    density = check_density(density)
    check_choice(distribution, DISTRIBUTIONS, "distribution")
    if not shapes:
        return []
    if distribution == "erk":
        return erk_counts(shapes, density)
    return uniform_counts([math.prod(s) for s in shapes], density)

"""Keyed randomness: every random draw comes from a generator seeded by (seed, step, layer).

Two processes with the same seed make the same masks without talking to each other, and a
resumed run draws exactly what an uninterrupted one would. Draws are made on the CPU so that
CPU and GPU runs produce the same masks.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def key(*parts: int) -> int:
    """Mix integers into one 63-bit seed (order matters; negative parts are allowed)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def generator(*parts: int) -> torch.Generator:
    """A fresh CPU generator seeded by ``key(*parts)``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(key(*parts))
    return g

"""Argument validation shared by the public API: one clear message per bad value."""

from __future__ import annotations

import math
from collections.abc import Iterable

FORMATS = ("dense", "compact")
DISTRIBUTIONS = ("uniform", "erk")


def check_density(density: object, name: str = "density") -> float:
    """Return ``density`` as a float if it lies in (0, 1]; raise ValueError otherwise."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise ValueError(f"{name} must be a number in (0, 1], got {density!r}")
    value = float(density)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {density!r}")
    return value


def check_choice(value: object, choices: Iterable[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``; raise ValueError naming them otherwise."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value  # type: ignore[return-value]


def check_fraction(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A float in (0, 1] (or [0, 1] with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    v = float(value)
    low_ok = v >= 0.0 if allow_zero else v > 0.0
    if math.isnan(v) or not low_ok or v > 1.0:
        bounds = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return v


def drop_nulls(node):
    """``node`` without null values at any depth: an option at its null default is absent."""
    if isinstance(node, dict):
        return {k: drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [drop_nulls(v) for v in node]
    return node

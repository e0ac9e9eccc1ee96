"""Sparsity methods: small plug-ins returning scores; the engine edits masks."""

from __future__ import annotations

from .base import GrowPlan, LayerState, Method, UpdateContext
from .dsr import DSR
from .gmp import GMP
from .rigl import RigL
from .set import SET
from .snfs import SNFS
from .static import Static

METHODS: dict[str, type[Method]] = {
    "dsr": DSR, "set": SET, "rigl": RigL, "snfs": SNFS, "static": Static, "gmp": GMP,
}


def build_method(name: str, **kwargs) -> Method:
    """A method by registry name; unknown names raise ValueError listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid choices: {', '.join(METHODS)}")
    return METHODS[name](**kwargs)


__all__ = ["DSR", "GMP", "METHODS", "RigL", "SET", "SNFS", "GrowPlan", "LayerState", "Method",
           "Static", "UpdateContext", "build_method"]

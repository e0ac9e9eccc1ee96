"""Sparsity methods: small plug-ins returning scores; the engine edits masks."""

from __future__ import annotations

from .base import ChannelState, GrowPlan, LayerState, Method, Prune, UpdateContext, fraction_count
from .dsr import DSR
from .dsr_structured import DSRStructured
from .gmp import GMP
from .rigl import RigL
from .set import SET
from .snfs import SNFS
from .static import Static

METHODS: dict[str, type[Method]] = {
    "dsr": DSR, "set": SET, "rigl": RigL, "snfs": SNFS, "static": Static, "gmp": GMP,
    "dsr_structured": DSRStructured,
}


def register(cls: type[Method]) -> type[Method]:
    """Add a :class:`Method` subclass to :data:`METHODS` under its ``name`` (a class decorator;
    registered methods join the shared invariant tests). A preset YAML instantiates it by its
    ``_target_`` path; registering is not needed for that."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register() takes a dst.methods.Method subclass, got {cls!r}")
    taken = METHODS.get(cls.name)
    if taken is not None and taken is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {taken.__module__}."
                         f"{taken.__qualname__}; give {cls.__qualname__} another `name`")
    METHODS[cls.name] = cls
    return cls


def build_method(name: str, **kwargs) -> Method:
    """A method by registry name; unknown names raise ValueError listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid choices: {', '.join(METHODS)}")
    return METHODS[name](**kwargs)


__all__ = ["DSR", "GMP", "METHODS", "ChannelState", "DSRStructured", "GrowPlan", "LayerState",
           "Method", "Prune", "RigL", "SET", "SNFS", "Static", "UpdateContext", "build_method",
           "fraction_count", "register"]

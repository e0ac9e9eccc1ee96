"""Thin dense baseline: the same architecture made narrower to the parameter count of a sparse one.

Mostafa & Wang compare against WRN-28-2 with widen factor ≈0.75 at sparsity 0.9 (… 1.47 at 0.5)
and ResNet-50 at width ×0.54 (0.8) / ×0.46 (0.9). Channel counts are integers
(``round(base * width)``), so the parameter count is a step function of the width: the search
bisects on the width and compares the counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import check_density
from ..convert import paper_filter, sparsify_
from ..models import build_model
from ..summary import param_counts

# registry name -> the builder's width keyword
WIDTH_KEYS = {"wrn": "widen_factor", "wrn28_2": "widen_factor", "resnet50": "width_multiplier",
              "resnet20": "width_multiplier", "resnet32": "width_multiplier"}
# names whose registry builder has no width keyword: build through another one
_VIA = {"wrn28_2": ("wrn", {"depth": 28})}
_DEFAULT_WIDTH = {"wrn": 2.0, "wrn28_2": 2.0}
_CONFIG_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "name", "num_classes")
FILTER_NAMES = ("paper", "paper_sparse_fc", "all")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_at(build: Callable[[float], nn.Module], width: float) -> int:
    """Parameter count of ``build(width)``, built on the meta device when possible (no memory,
    no init cost)."""
    try:
        with torch.device("meta"):
            return count_params(build(width))
    except (NotImplementedError, RuntimeError):
        return count_params(build(width))


MATCHES = ("closest", "at_least")


def thin_width(build: Callable[[float], nn.Module], target_params: int, lo: float, hi: float,
               tol: float = 0.005, match: str = "closest") -> tuple[float, int]:
    """The width in [lo, hi] whose model has the parameter count closest to ``target_params``
    (``match="at_least"``: the narrowest whose count is not below it).

    Bisects on the width (the count must not decrease as the width grows) until the bracket is
    narrower than ``tol`` (in width units; below the gap between two channel-count steps of the
    widest layer the answer is the exactly closest count), then returns the closer side as
    ``(width, count)``, the narrower one when both are equally close. Targets outside
    [count(lo), count(hi)] give the nearest end.
    """
    if isinstance(target_params, bool) or not isinstance(target_params, int) \
            or target_params < 1:
        raise ValueError(f"target_params must be an int >= 1, got {target_params!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"need 0 < lo < hi for the width search, got lo={lo}, hi={hi}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0 (the width resolution of the search), got {tol}")
    if match not in MATCHES:
        raise ValueError(f"unknown match {match!r}; valid choices: {', '.join(MATCHES)}")
    c_lo, c_hi = _count_at(build, lo), _count_at(build, hi)
    if c_lo > c_hi:
        raise ValueError(f"the parameter count falls as the width grows ({c_lo} at {lo}, "
                         f"{c_hi} at {hi}); the builder has no monotone width knob")
    if target_params <= c_lo:
        return _tidy(build, lo, c_lo), c_lo
    if target_params >= c_hi:
        return _tidy(build, hi, c_hi), c_hi
    while hi - lo > tol:  # invariant: c_lo < target < c_hi
        mid = 0.5 * (lo + hi)
        c = _count_at(build, mid)
        if c == target_params:
            return _tidy(build, mid, c), c
        if c < target_params:
            lo, c_lo = mid, c
        else:
            hi, c_hi = mid, c
    if match == "closest" and target_params - c_lo <= c_hi - target_params:
        return _tidy(build, lo, c_lo), c_lo
    return _tidy(build, hi, c_hi), c_hi


def _tidy(build, width: float, count: int) -> float:
    """A short decimal giving the same count as ``width`` (nicer in logs and configs)."""
    for digits in (2, 3, 4, 5):
        w = round(width, digits)
        if w > 0 and _count_at(build, w) == count:
            return w
    return width


def _builder(model_name: str, model_kwargs: dict, num_classes: int):
    if model_name not in WIDTH_KEYS:
        raise ValueError(f"thin dense baseline: model {model_name!r} has no width knob; models "
                         f"with one: {', '.join(sorted(WIDTH_KEYS))}")
    key = WIDTH_KEYS[model_name]
    name, fixed = _VIA.get(model_name, (model_name, {}))
    kwargs = {k: v for k, v in dict(model_kwargs).items() if k not in _CONFIG_KEYS}
    base_width = float(kwargs.pop(key, _DEFAULT_WIDTH.get(model_name, 1.0)))
    kwargs.update(fixed)

    def build(width: float) -> nn.Module:
        return build_model(name, num_classes, **kwargs, **{key: width})

    return build, key, base_width


def thin_dense_model(model_name: str, model_kwargs: dict, num_classes: int,
                     target_params: int, match: str = "closest") -> tuple[nn.Module, dict]:
    """The registered model ``model_name`` narrowed (or widened) to about ``target_params``
    parameters. ``model_kwargs`` are its builder's other arguments (Hydra keys such as
    ``_target_`` and ``name`` are ignored; a width given there is only the search's scale).

    Returns ``(model, info)`` with info ``{width_key, width, params, target_params, rel_diff}``,
    ``rel_diff = params / target_params - 1``. ``match``: see :func:`thin_width`.
    """
    build, key, base = _builder(model_name, model_kwargs, num_classes)
    width, params = thin_width(build, int(target_params), base / 64, base * 4,
                               tol=1e-4, match=match)
    model = build(width)
    params = count_params(model)
    return model, {"width_key": key, "width": width, "params": params,
                   "target_params": int(target_params),
                   "rel_diff": params / int(target_params) - 1.0}


def sparse_param_target(model_name: str, model_kwargs: dict, num_classes: int, density: float,
                        filter_name: str, distribution: str = "uniform") -> int:
    """Non-zero parameters of ``model_name`` made sparse at ``density`` with the run's layer
    filter (``paper``: stem, shortcuts and FC dense; ``paper_sparse_fc``: FC sparse too;
    ``all``: every Conv2d/Linear), as :func:`dst.summary.param_counts` reports them."""
    density = check_density(density)
    if filter_name not in FILTER_NAMES:
        raise ValueError(f"unknown filter {filter_name!r}; valid choices: "
                         f"{', '.join(FILTER_NAMES)}")
    name, fixed = _VIA.get(model_name, (model_name, {}))
    kwargs = {k: v for k, v in dict(model_kwargs).items() if k not in _CONFIG_KEYS}
    model = build_model(name, num_classes, **kwargs, **fixed)
    filt = None if filter_name == "all" else paper_filter(model,
                                                          dense_fc=filter_name == "paper")
    sparsify_(model, density, distribution=distribution, filter_fn=filt)
    return int(param_counts(model)["params_nonzero"])

"""Lottery ticket (Frankle & Carbin, ICLR 2019): train, prune the smallest weights, rewind the
survivors to their initial (or early-iteration) values, retrain; iterate.

Building blocks: the geometric density schedule of the rounds, magnitude masks over the currently
active weights (per layer or global), and the rewind of a model to a saved state under new masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .._checks import DISTRIBUTIONS, check_choice, check_density
from ..convert import BANK_NAME, set_masks_, sparse_layers
from ..distributions import budget_for, layer_counts
from ..storage import flat_get, materialize, zero_state_
from .snip import global_top_k

SCOPES = ("layer", "global")
_STORAGE_SUFFIXES = ("weight", "mask", "indices", "values")


def lottery_densities(final_density: float, rounds: int) -> list[float]:
    """Density after each pruning round: ``final ** (r / rounds)`` for r = 1..rounds (each round
    keeps the same fraction of the previous one); the last is exactly ``final_density``."""
    final = check_density(final_density, "final_density")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"lottery rounds must be an int >= 1, got {rounds!r}")
    return [final ** (r / rounds) for r in range(1, rounds)] + [final]


def _ranked_active(layer: nn.Module, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(flat indices, |values|) of the layer's active weights (their values in ``weight``, a
    dense weight of the layer's shape, when given), sorted by flat index so that ties among
    equal magnitudes go to the lower position."""
    idx = layer.active_indices()
    if weight is None:
        vals = layer.active_values(idx).detach().abs().float()
    else:
        vals = flat_get(weight.to(idx.device).contiguous(), idx).detach().abs().float()
    order = torch.argsort(idx)
    return idx[order], vals[order]


def _top(scores: Tensor, n: int) -> Tensor:
    """Positions of the ``n`` largest scores (stable: the lower position wins ties)."""
    return torch.sort(scores, descending=True, stable=True).indices[:n]


def magnitude_masks(model: nn.Module, density: float, *, scope: str = "layer",
                    distribution: str = "uniform",
                    weights: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Masks keeping the largest-|w| weights among each sparse layer's currently active ones
    (ranked by ``weights[name]``, e.g. a trained dense run's weights, when given).

    ``scope="layer"``: layer l keeps ``min(count_l, active_l)`` with ``count_l`` from
    :func:`dst.distributions.layer_counts` over the layers' shapes at ``density`` under
    ``distribution`` (pruning never re-activates a weight). ``scope="global"``: one magnitude
    ranking over the whole pool keeps exactly ``budget_for(density, sizes)`` weights, at least one
    per layer (``distribution`` is not used). Returns bool masks of each weight's shape.
    """
    density = check_density(density)
    check_choice(scope, SCOPES, "scope")
    check_choice(distribution, DISTRIBUTIONS, "distribution")
    layers = sparse_layers(model)
    if not layers:
        raise ValueError("magnitude_masks: the model has no sparse layer; use dst.sparsify_ "
                         "(density 1.0 to start from a dense model)")
    ranked = [_ranked_active(m, None if weights is None else weights[n]) for n, m in layers]
    if scope == "layer":
        counts = layer_counts([m.weight_shape for _, m in layers], density, distribution)
        keeps = [idx[_top(vals, min(n, idx.numel()))]
                 for (idx, vals), n in zip(ranked, counts, strict=True)]
    else:
        budget = budget_for(density, [m.numel_dense for _, m in layers])
        active = sum(idx.numel() for idx, _ in ranked)
        if budget > active:
            raise ValueError(f"global magnitude pruning to density {density} needs {budget} "
                             f"weights but only {active} are active; pruning cannot grow "
                             "the model (lower the density)")
        chosen = global_top_k([vals for _, vals in ranked], budget)
        keeps = [idx[c.to(idx.device)] for (idx, _), c in zip(ranked, chosen, strict=True)]
    masks = {}
    for (name, m), keep in zip(layers, keeps, strict=True):
        mask = torch.zeros(m.numel_dense, dtype=torch.bool, device=keep.device)
        mask[keep] = True
        masks[name] = mask.view(m.weight_shape)
    return masks


def _model_state(saved: Mapping) -> Mapping:
    if "model" in saved and isinstance(saved["model"], Mapping):
        return saved["model"]
    return saved


def saved_dense_weights(saved: Mapping, layers: list[tuple[str, nn.Module]]
                        ) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Per sparse layer of the receiving model: (dense weight from ``saved``, the bool mask of
    positions that held a value there, or None when every position did).

    ``saved`` may come from a plain dense model (``name.weight``), a dense-format sparse model
    (``name.weight`` + ``name.mask``) or a compact one (``name.indices`` with the values in the
    shared ``dst_bank`` or the layer's private ``name.values``)."""
    compact = [n for n, _ in layers if f"{n}.indices" in saved]
    offsets, total = {}, 0
    for n in compact:
        offsets[n] = total
        total += saved[f"{n}.indices"].numel()
    bank = saved.get(BANK_NAME)
    if compact and bank is not None and bank.numel() != total:
        raise ValueError(f"saved state's {BANK_NAME} holds {bank.numel()} values but its compact "
                         f"layers index {total}: it was saved from a model with other sparse "
                         "layers than this one")
    out, missing = {}, []
    for name, m in layers:
        shape = tuple(m.weight_shape)
        if f"{name}.weight" in saved:
            w = saved[f"{name}.weight"]
            held = saved.get(f"{name}.mask")
        elif f"{name}.indices" in saved:
            idx = saved[f"{name}.indices"].long()
            if f"{name}.values" in saved:
                vals = saved[f"{name}.values"]
            elif bank is not None:
                vals = bank[offsets[name]: offsets[name] + idx.numel()]
            else:
                raise ValueError(f"saved state holds {name}.indices but neither {name}.values "
                                 f"nor {BANK_NAME}: not a state_dict of a dst model")
            w = materialize(vals.detach(), idx, shape)
            held = materialize(torch.ones_like(idx, dtype=torch.bool), idx, shape)
        else:
            missing.append(name)
            continue
        if tuple(w.shape) != shape:
            raise ValueError(f"saved weight of {name} has shape {tuple(w.shape)}, the model's "
                             f"layer {shape}")
        out[name] = (w.detach(), None if held is None else held.bool())
    if missing:
        raise ValueError(f"saved state has no weight for sparse layers {missing}; its keys "
                         f"look like {sorted(saved)[:8]} ...")
    return out


def prune_to_ticket_(model: nn.Module, trained_state: Mapping, density: float, *,
                     scope: str = "layer", distribution: str = "uniform",
                     optimizer: torch.optim.Optimizer | None = None) -> dict[str, Tensor]:
    """One-shot lottery ticket with late rewinding (Frankle et al. 2020): keep the weights that
    are largest in ``trained_state`` (a trained dense run of the same seed) and continue
    training from the model's *current* weights (those of the rewind step) under that mask.
    Pruned weights and their optimizer state become exactly 0. Returns the masks."""
    layers = sparse_layers(model)
    if any(m.storage.fixed_size for _, m in layers):
        raise ValueError("a one-shot ticket prunes in the middle of training, which a compact "
                         "bank cannot (its optimizer state has a fixed size): use "
                         "format='dense'")
    trained = {n: w for n, (w, _) in saved_dense_weights(_model_state(trained_state),
                                                         layers).items()}
    masks = magnitude_masks(model, density, scope=scope, distribution=distribution,
                            weights=trained)
    before = {n: m.mask.clone() for n, m in layers}
    set_masks_(model, masks)
    for name, m in layers:
        dropped = (before[name] & ~m.mask).reshape(-1).nonzero().squeeze(1)
        zero_state_(optimizer, m.storage.param, dropped)
    return masks


def rewind_(model: nn.Module, saved_state: Mapping, masks: Mapping[str, Tensor]) -> int:
    """Rewind ``model`` to ``saved_state`` (a state_dict from init or an early step, or a
    checkpoint dict holding one under ``"model"``) under new ``masks``.

    Every non-sparse parameter and buffer (BN statistics included) is loaded from the saved state;
    then the masks are applied with :func:`dst.set_masks_` and every active weight takes its saved
    value, so survivors are exactly their saved values and pruned weights exactly 0. Works for
    the dense and the compact format on either side (a compact saved state is materialized per
    layer with :func:`dst.storage.materialize`). Build the optimizer after this (compact layers
    get a new bank; dense layers keep stale optimizer state for pruned weights otherwise).

    Returns the number of active weights that held no value in the saved state (inactive there,
    e.g. a sparse init state whose mask differs); they start at 0 and a warning says so.
    """
    saved = _model_state(saved_state)
    layers = sparse_layers(model)
    weights = saved_dense_weights(saved, layers)
    skip = {f"{n}.{s}" for n, _ in layers for s in _STORAGE_SUFFIXES} | {BANK_NAME}
    own = {k: v for k, v in model.state_dict().items() if k not in skip}
    absent = sorted(k for k in own if k not in saved)
    if absent:
        raise ValueError(f"saved state lacks {len(absent)} entries of this model, e.g. "
                         f"{absent[:5]}: it was saved from another model")
    with torch.no_grad():
        for k, v in own.items():
            src = saved[k]
            if tuple(src.shape) != tuple(v.shape):
                raise ValueError(f"saved {k} has shape {tuple(src.shape)}, the model's "
                                 f"{tuple(v.shape)}")
            v.copy_(src.to(device=v.device, dtype=v.dtype))
        set_masks_(model, dict(masks))
        uncovered = 0
        for name, m in layers:
            w, held = weights[name]
            idx = m.active_indices()
            w = w.to(idx.device)
            if held is not None:
                uncovered += int((~flat_get(held.to(idx.device), idx)).sum())
            m.storage.load_dense_(w)
    if uncovered:
        warnings.warn(f"rewind_: {uncovered} active weights were inactive in the saved state and "
                      "start at 0 (save the state before sparsifying to keep their initial "
                      "values)", stacklevel=2)
    return uncovered


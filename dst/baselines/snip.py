"""SNIP (Lee et al., ICLR 2019): a one-shot mask from connection sensitivity at initialisation.

The saliency of weight w_j is |w_j · g_j|, with g_j = ∂L/∂w_j the gradient of the loss summed
over the given batches (one batch in the paper; several batches act as one larger batch). The mask
keeps the global top-k saliencies over every sparse layer, k the exact budget at ``density``
(:func:`dst.distributions.budget_for`), with at least one weight (its most salient) per layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_density
from ..convert import set_masks_, sparse_layers
from ..distributions import budget_for
from ..storage.flat import all_finite


def require_full_density(model: nn.Module, who: str) -> list[tuple[str, nn.Module]]:
    """The sparse layers of ``model``, checked to be at density 1 (every position active and
    holding its initial value), as the at-init baselines need."""
    layers = sparse_layers(model)
    if not layers:
        raise ValueError(f"{who}: the model has no sparse layer; make it sparse first with "
                         "dst.sparsify_(model, 1.0, filter_fn=...) and let "
                         f"{who} choose the masks")
    partial = [n for n, m in layers if m.n_active != m.numel_dense]
    if partial:
        shown = ", ".join(partial[:4]) + (" ..." if len(partial) > 4 else "")
        raise ValueError(f"{who} needs every sparse layer at density 1.0 (all weights active "
                         f"with their initial values), but {len(partial)} are already sparse "
                         f"({shown}); build the model with dst.sparsify_(model, 1.0, ...) "
                         f"and let {who} set the masks")
    return layers


def global_top_k(scores: Sequence[Tensor], k: int) -> list[Tensor]:
    """Flat bool vectors keeping the ``k`` highest scores over all tensors together, with at
    least one entry (the highest; the first on ties) in every tensor. Ties are broken
    deterministically: the earlier tensor, then the lower position, wins."""
    if not scores:
        raise ValueError("global_top_k needs at least one score tensor")
    sizes = [int(s.numel()) for s in scores]
    if any(n == 0 for n in sizes):
        raise ValueError("global_top_k got an empty score tensor; every layer needs a score")
    if not len(sizes) <= k <= sum(sizes):
        raise ValueError(f"cannot keep {k} entries over {len(sizes)} tensors of {sum(sizes)} "
                         f"entries: need {len(sizes)} <= k <= {sum(sizes)}")
    device = scores[0].device
    flat = torch.cat([s.detach().reshape(-1).float().to(device) for s in scores])
    if not all_finite(flat):
        raise ValueError("scores hold NaN or inf (did the loss diverge?); cannot rank them")
    offsets = [0, *itertools.accumulate(sizes)][:-1]
    forced = torch.tensor([off + int(s.reshape(-1).float().argmax())
                           for off, s in zip(offsets, scores, strict=True)], device=device)
    key = flat.clone()
    key[forced] = float("inf")
    order = torch.sort(key, descending=True, stable=True).indices[:k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=device)
    keep[order] = True
    return list(keep.split(sizes))


def snip_saliency(model: nn.Module, batches: Iterable, *,
                  loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                  device=None) -> dict[str, Tensor]:
    """|w · ∂L/∂w| per sparse layer (weight shape, float32), L summed over ``batches`` (and
    over the ranks' batches under torch.distributed, so every rank gets the same saliency).

    Weights, BN statistics and every other buffer are left as they were; grads end cleared.
    """
    layers = sparse_layers(model)
    if not layers:
        raise ValueError("snip_saliency: the model has no sparse layer")
    batches = list(batches)
    if not batches:
        raise ValueError("SNIP needs at least one (x, y) batch to score the weights")
    if device is None:
        device = next(model.parameters()).device
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    flags = [m.capture_grad for _, m in layers]
    was_training = model.training
    try:
        model.train()
        for _, m in layers:
            m.pop_dense_grad()  # drop anything captured before
            m.capture_grad = True
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x.to(device)), y.to(device)).backward()
        grads = [m.pop_dense_grad() for _, m in layers]
        if dist.is_available() and dist.is_initialized():  # one saliency, one mask on every rank
            for g in grads:
                if g is not None:
                    dist.all_reduce(g)
    finally:
        for (_, m), flag in zip(layers, flags, strict=True):
            m.capture_grad = flag
        model.train(was_training)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])
    out = {}
    for (name, m), g in zip(layers, grads, strict=True):
        if g is None:
            raise ValueError(f"sparse layer {name!r} got no gradient: is it used by the model's "
                             "forward pass and does its weight require grad?")
        w = m.dense_weight().reshape(-1).float()
        out[name] = (w * g.to(w.device)).abs().view(m.weight_shape)
    return out


def snip_masks(model: nn.Module, batches: Iterable, density: float, *,
               loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
               device=None) -> dict[str, Tensor]:
    """SNIP masks for a model whose sparse layers are all at density 1 (dense or compact).

    Keeps the global top-k of |w · ∂L/∂w| over all sparse layers, k = ``budget_for(density,
    sizes)`` exactly, at least one weight per layer; ties go to the earlier layer, then the lower
    flat index. Returns bool masks of each layer's weight shape, keyed by layer name.
    """
    density = check_density(density)
    layers = require_full_density(model, "SNIP")
    saliency = snip_saliency(model, batches, loss_fn=loss_fn, device=device)
    k = budget_for(density, [m.numel_dense for _, m in layers])
    keep = global_top_k([saliency[n] for n, _ in layers], k)
    return {n: kp.view(m.weight_shape).to(saliency[n].device)
            for (n, m), kp in zip(layers, keep, strict=True)}


class SNIP:
    """Init hook: the SNIP mask from the first ``batches`` batches of the training loader.

    Called as ``SNIP(batches)(model, loader, device, density, seed)`` on a model sparsified at
    density 1.0, before the optimizer is built; it applies the masks with
    :func:`dst.set_masks_` and otherwise leaves weights and buffers unchanged.
    """

    ignores = ("distribution",)  # one global ranking: the preset's distribution is not read

    def __init__(self, batches: int = 1):
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"SNIP batches must be an int >= 1, got {batches!r}")
        self.batches = batches

    def __call__(self, model: nn.Module, loader: Iterable, device, density: float,
                 seed: int) -> None:
        taken = list(itertools.islice(iter(loader), self.batches))
        if len(taken) < self.batches:
            raise ValueError(f"SNIP asked for {self.batches} batches but the loader gave only "
                             f"{len(taken)}; lower sparsity.init.batches")
        set_masks_(model, snip_masks(model, taken, density, device=device))

    def __repr__(self) -> str:
        return f"SNIP(batches={self.batches})"

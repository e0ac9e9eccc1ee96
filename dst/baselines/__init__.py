"""Static and pruning baselines: SNIP, thin dense, lottery ticket, training another run's mask.

Init hooks (``SNIP``, ``FromMask``) are called as ``hook(model, loader, device, density, seed)``
on a freshly built model whose chosen layers were sparsified at density 1.0, before the
optimizer is built; they set the masks with :func:`dst.set_masks_`.
"""

from __future__ import annotations

from .from_mask import FromMask, load_run_initial_state, load_run_masks
from .lottery import lottery_densities, magnitude_masks, prune_to_ticket_, rewind_
from .snip import SNIP, global_top_k, snip_masks, snip_saliency
from .thin import WIDTH_KEYS, sparse_param_target, thin_dense_model, thin_width

__all__ = [
    "SNIP", "WIDTH_KEYS", "FromMask", "global_top_k", "load_run_initial_state",
    "load_run_masks", "lottery_densities", "magnitude_masks", "prune_to_ticket_", "rewind_",
    "snip_masks",
    "snip_saliency", "sparse_param_target", "thin_dense_model", "thin_width",
]

"""Static training of another run's mask: DSR's "structure vs exploration" experiment.

Mostafa & Wang train DSR's *final* mask statically from (a) a fresh random initialisation and
(b) DSR's own initial weights; neither recovers DSR's accuracy. :class:`FromMask` is the init hook
for both (``init="fresh"`` / ``"original"``); the masks come from the source run's
``checkpoints/last.pt`` and the initial weights from its ``checkpoints/init.pt``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, safe_load
from ..convert import set_masks_, sparse_layers
from .lottery import rewind_
from .snip import require_full_density

log = logging.getLogger("dst")
INITS = ("fresh", "original")


def _checkpoint(source, name: str) -> Path:
    """``<dir>/checkpoints/<name>`` for a run directory; for a file, the file itself when
    ``name`` is ``last.pt`` and the ``<name>`` beside it otherwise."""
    if source is None or str(source) in ("", "???"):
        raise ValueError("no source run given: set sparsity.init.source to a run directory "
                         "or a checkpoint .pt file")
    p = Path(str(source)).expanduser()
    if p.is_dir():
        path = p / "checkpoints" / name
        if not path.is_file():
            raise FileNotFoundError(f"{p} has no checkpoints/{name}: is it a finished dst run "
                                    "directory?")
        return path
    if not p.exists():
        raise FileNotFoundError(f"source {p} does not exist (expected a dst run directory or a "
                                "checkpoint .pt file)")
    path = p if name == "last.pt" else p.with_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"no {name} beside {p} (expected {path})")
    return path


def _load_model_state(path: Path) -> dict:
    try:
        state = safe_load(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a dst checkpoint (expected a dict with a 'model' "
                         "state_dict)")
    return state["model"]


def load_run_masks(source, model: nn.Module | None = None) -> dict[str, Tensor]:
    """The sparse-layer masks of a run: ``source`` is a run directory (its
    ``checkpoints/last.pt``) or a checkpoint file (a dict whose ``"model"`` is a state_dict).

    Dense-format layers store ``<name>.mask``; compact ones ``<name>.indices``, whose weight
    shape comes from ``model`` (required then). With ``model``, the layer names must be exactly
    its sparse layers and the shapes must agree. Returns CPU bool masks keyed by layer name.
    """
    path = _checkpoint(source, "last.pt")
    sd = _load_model_state(path)
    layers = dict(sparse_layers(model)) if model is not None else None
    masks: dict[str, Tensor] = {}
    compact, packed = [], []  # flat indices / bit-packed masks: shapes come from the model
    for key, value in sd.items():
        name, _, leaf = key.rpartition(".")
        if leaf == "mask" and isinstance(value, Tensor) and value.dtype == torch.bool:
            masks[name] = value.detach().cpu().clone()
        elif leaf == "indices" and isinstance(value, Tensor) and not value.is_floating_point():
            compact.append((name, value.detach().cpu().long()))
        elif leaf == "packed_mask" and isinstance(value, Tensor) and value.dtype == torch.uint8:
            packed.append((name, value.detach().cpu()))
    if (compact or packed) and layers is None:
        raise ValueError(f"{path} holds masks without shapes (indices or packed bits); pass "
                         "the receiving model, load_run_masks(source, model), for their shapes")
    if not masks and not compact and not packed:
        raise ValueError(f"{path} holds no sparse-layer mask (a dense run?); the source must be "
                         "a sparse run")
    if layers is not None:
        names = set(masks) | {n for n, _ in compact} | {n for n, _ in packed}
        if names != set(layers):
            raise ValueError(
                f"the masks of {path} do not fit this model's sparse layers: only in the "
                f"source {sorted(names - set(layers))}; only in the model "
                f"{sorted(set(layers) - names)} (use the same model and sparsity.filter)")
        for name, idx in compact:
            shape = layers[name].weight_shape
            mask = torch.zeros(layers[name].numel_dense, dtype=torch.bool)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= mask.numel()):
                raise ValueError(f"{path}: indices of {name} fall outside its weight {shape}")
            mask[idx] = True
            masks[name] = mask.view(shape)
        for name, bits in packed:
            shape, numel = layers[name].weight_shape, layers[name].numel_dense
            if bits.numel() != (numel + 7) // 8:
                raise ValueError(f"{path}: packed mask of {name} has {bits.numel()} bytes, its "
                                 f"weight {shape} needs {(numel + 7) // 8}")
            flat = np.unpackbits(bits.numpy())[:numel].astype(bool)
            masks[name] = torch.from_numpy(flat).view(shape)
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(layers[name].weight_shape):
                raise ValueError(f"{path}: mask of {name} has shape {tuple(mask.shape)}, the "
                                 f"model's layer {tuple(layers[name].weight_shape)}")
        masks = {n: masks[n] for n in layers}  # the model's layer order
    return masks


def load_run_initial_state(source) -> dict:
    """The model state_dict a run saved at step 0: ``<dir>/checkpoints/init.pt`` for a run
    directory, ``init.pt`` beside a given checkpoint file."""
    return _load_model_state(_checkpoint(source, "init.pt"))


class FromMask:
    """Init hook: train another run's final mask statically.

    ``init="fresh"`` keeps the model's own fresh initialisation at the surviving positions (the
    model must be sparsified at density 1.0, so every position holds its initial value);
    ``init="original"`` first loads the source run's initial weights (``init.pt``: all
    parameters and buffers, survivors at their initial values). The ``density`` argument is only
    checked against the source masks' pool density (a warning beyond 1e-3).
    """

    def __init__(self, source: str, init: str = "fresh"):
        if init not in INITS:
            raise ValueError(f"unknown FromMask init {init!r}; valid choices: "
                             f"{', '.join(INITS)}")
        if source is None or str(source) in ("", "???"):
            raise ValueError("FromMask needs a source: a run directory or a checkpoint .pt "
                             "(sparsity.init.source=...)")
        self.source = str(source)
        self.init = init

    def __call__(self, model: nn.Module, loader: Iterable, device, density: float,
                 seed: int) -> None:
        masks = load_run_masks(self.source, model)
        active = sum(int(m.sum()) for m in masks.values())
        pool = sum(m.numel() for m in masks.values())
        log.info("FromMask: %d of %d pool weights active in %s (pool density %.4f), init %s",
                 active, pool, self.source, active / pool, self.init)
        if density is not None and abs(active / pool - float(density)) > 1e-3:
            warnings.warn(f"FromMask: the source masks have pool density {active / pool:.4f} but "
                          f"the run asks for {float(density):.4f}; the source masks win",
                          stacklevel=2)
        if self.init == "original":
            rewind_(model, load_run_initial_state(self.source), masks)
        else:
            require_full_density(model, "FromMask(init='fresh')")
            set_masks_(model, masks)

    def __repr__(self) -> str:
        return f"FromMask(source={self.source!r}, init={self.init!r})"

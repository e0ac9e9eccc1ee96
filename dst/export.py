"""Leaving dst: a trained sparse model as plain torch modules, and as a small safetensors file
whose size follows the non-zeros.

* :func:`to_torch` — a copy of the model whose sparse layers are plain ``nn.Conv2d`` /
  ``nn.Linear`` again; its ``state_dict`` has the keys of the model before ``sparsify_`` (no
  masks, no bank), so the architecture it came from loads it with ``strict=True``. A slimmed
  structured-DSR model keeps its slimmed shapes.
* :func:`save` / :func:`load` — safetensors. Each sparse weight is stored as its active values
  (in ascending flat order) plus where they are: a bit mask (``numel / 8`` bytes) or int32 flat
  indices (``4 · nnz`` bytes), whichever is smaller; every other tensor as it is. The round
  trip is exact, grown weights that are still exactly zero included (the mask is stored, not
  derived from the values). :func:`load` gives the dense ``state_dict`` of :func:`to_torch`;
  :func:`load_masks` the masks, to continue training a dst model (:func:`load_sparse_`).
* :func:`to_onnx` — the plain model (dense or slimmed) as ONNX, with a dynamic batch size
  (``pip install "dst[onnx]"``: torch's exporter needs onnxscript).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import atomic_write
from .convert import _unwrap, densify_, set_masks_, sparse_layers
from .slim import KEPT

FORMAT = "dst-sparse-v1"
_VALUES, _BITS, _INDICES = ".__values", ".__bitmask", ".__indices"


class ExportError(ValueError):
    """A file that is not a dst sparse export, or of another format version."""


def to_torch(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every sparse layer replaced by its plain torch twin (same
    outputs), without dst's buffers and hooks: its ``state_dict`` keys are those of the model
    before ``sparsify_``."""
    out = copy.deepcopy(_unwrap(model))
    densify_(out)
    for m in out.modules():
        m._buffers.pop(KEPT, None)
    if getattr(out, "_dst_slim_hook", None) is not None:
        out._dst_slim_hook.remove()
        del out._dst_slim_hook
    return out


def _pack(mask: Tensor) -> tuple[str, Tensor]:
    """The cheaper encoding of a bool mask: its bits, or its int32 flat indices."""
    flat = mask.reshape(-1).cpu()
    nnz = int(flat.sum())
    if 4 * nnz < (flat.numel() + 7) // 8:
        return _INDICES, flat.nonzero().squeeze(1).to(torch.int32)
    bits = np.packbits(flat.numpy().astype(np.uint8))
    return _BITS, torch.from_numpy(bits)


def _unpack(kind: str, data: Tensor, numel: int) -> Tensor:
    if kind == _INDICES:
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[data.long()] = True
        return flat
    bits = np.unpackbits(data.numpy(), count=numel)
    return torch.from_numpy(bits.astype(bool))


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (a dst model, or any torch model) to the safetensors file ``path``: the
    sparse weights as values plus their positions, the rest as is. Written atomically."""
    from safetensors.torch import save_file

    root = _unwrap(model)
    masks = {name: layer.mask for name, layer in sparse_layers(root)}
    plain = to_torch(root).state_dict()
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in plain.items():
        layer = key.removesuffix(".weight")
        value = value.detach().cpu()
        if key.endswith(".weight") and layer in masks:
            mask = masks[layer].reshape(value.shape).cpu()
            kind, where = _pack(mask)
            tensors[key + _VALUES] = value.reshape(-1)[mask.reshape(-1)].contiguous()
            tensors[key + kind] = where.contiguous()
            shapes[key] = list(value.shape)
        else:
            tensors[key] = value.contiguous()
    meta = {"format": FORMAT, "sparse": json.dumps(shapes), "keys": json.dumps(list(plain))}
    path = Path(path)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    return path


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, list[int]], list[str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path} is not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not a dst sparse export of format {FORMAT} (it says "
                          f"{meta.get('format')!r}); write it again with dst.export.save")
    return tensors, json.loads(meta["sparse"]), json.loads(meta["keys"])


def _masks(tensors: dict[str, Tensor], shapes: dict[str, list[int]]) -> dict[str, Tensor]:
    out = {}
    for key, shape in shapes.items():
        numel = int(np.prod(shape))
        kind = _BITS if key + _BITS in tensors else _INDICES
        out[key] = _unpack(kind, tensors[key + kind], numel).reshape(shape)
    return out


def load(path: str | Path) -> dict[str, Tensor]:
    """The dense ``state_dict`` a file written by :func:`save` holds (the keys and values of
    ``to_torch(model).state_dict()``, exactly)."""
    tensors, shapes, keys = _read(Path(path))
    out = {}
    for key, mask in _masks(tensors, shapes).items():
        values = tensors[key + _VALUES]
        dense = torch.zeros(mask.numel(), dtype=values.dtype)
        dense[mask.reshape(-1)] = values
        out[key] = dense.reshape(mask.shape)
    return {k: out[k] if k in out else tensors[k] for k in keys}  # the model's key order


def load_masks(path: str | Path) -> dict[str, Tensor]:
    """The masks of the sparse layers a file written by :func:`save` holds, by layer name."""
    tensors, shapes, _ = _read(Path(path))
    return {k.removesuffix(".weight"): m for k, m in _masks(tensors, shapes).items()}


def load_sparse_(model: nn.Module, path: str | Path) -> None:
    """Load a file written by :func:`save` into a dst model of the same architecture (its sparse
    layers at the same names): masks first, then every weight. Call it before building the
    optimizer (compact layers rebuild their bank)."""
    root = _unwrap(model)
    masks = load_masks(path)
    layers = dict(sparse_layers(root))
    if set(masks) != set(layers):
        raise ExportError(f"{path} has sparse layers {sorted(masks)}, the model "
                          f"{sorted(layers)}")
    set_masks_(root, {n: m.to(layers[n].mask.device) for n, m in masks.items()})
    from .convert import load_dense_weights_

    missing = load_dense_weights_(root, load(path))
    if missing:
        raise ExportError(f"{path} lacks {missing}")


def to_onnx(model: nn.Module, path: str | Path, example: Tensor) -> Path:
    """Write the plain torch model of ``model`` (:func:`to_torch`, eval mode) to the ONNX file
    ``path``, traced on ``example`` (one input batch) with its first dimension dynamic."""
    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError:
        raise ExportError("ONNX export needs onnxscript: pip install \"dst[onnx]\" (onnx, "
                          "onnxscript, onnxruntime)") from None
    if any(type(m).__name__ in ("InferenceLinear", "InferenceConv2d") for m in model.modules()):
        raise ExportError("this is an inference model: its layers run dst's sparse kernels "
                          "(the custom op dst::csr_mm), which ONNX cannot express; export the "
                          "trained model (before to_inference) to ONNX instead")
    plain = to_torch(model).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(plain, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                verbose=False)
    path = Path(path)
    atomic_write(path, lambda p: program.save(str(p)))
    return path

"""Turn a torch model into a sparse one in place, and back."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from . import rng
from ._checks import DISTRIBUTIONS, FORMATS, check_choice, check_density
from .attention import SparseMultiheadAttention, projection_probes
from .distributions import layer_counts, random_mask
from .kernels.backends import BACKENDS, csr_eligible
from .layers import SPARSE_LAYERS, SparseConv2d, SparseLinear
from .storage import SparseBank, check_mask, set_masks
from .units import UnitGrid, check_block

FilterFn = Callable[[str, nn.Module], bool]
BANK_NAME = "dst_bank"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model) if isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseConv2d | SparseLinear]]:
    """All sparse layers of ``model`` as ``(name, layer)``, in module order."""
    return [(n, m) for n, m in _unwrap(model).named_modules() if isinstance(m, SPARSE_LAYERS)]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def share_bank_(model: nn.Module) -> SparseBank | None:
    """Put the values of every compact layer of ``model`` into one bank registered on the model
    as ``dst_bank`` (needed before reallocating methods). Call before building the optimizer."""
    model = _unwrap(model)
    layers = [m for _, m in sparse_layers(model) if m.storage.bank is not None]
    return SparseBank.share(model, BANK_NAME, layers) if layers else None


def sparsify_(model: nn.Module, density: float, *, distribution: str = "uniform",
              filter_fn: FilterFn | None = None, format: str = "dense",
              seed: int = 0, backend: str = "dense", block=None) -> list[tuple[str, nn.Module]]:
    """Replace the ``nn.Conv2d``/``nn.Linear`` layers selected by ``filter_fn`` with sparse ones
    holding exactly ``round(density * pool size)`` active weights in all, distributed
    ``"uniform"``ly or by ``"erk"``. Masks are drawn from generators keyed by (seed, layer).
    ``backend`` is ``"dense"``, ``"csr"`` or ``"auto"`` (per layer: layers the CSR kernels cannot
    serve fall back to dense under ``"csr"`` too). Returns the ``(name, layer)`` pairs made
    sparse. ``block`` (None, "kernel" or a tile (bh, bw); :mod:`dst.units`) makes each layer
    prune and grow whole units: its count in weights becomes round(count / unit size) units (at
    least one, else an error)."""
    density = check_density(density)
    block = check_block(block)
    check_choice(distribution, DISTRIBUTIONS, "distribution")
    check_choice(format, FORMATS, "format")
    check_choice(backend, BACKENDS, "backend")
    root = _unwrap(model)
    if isinstance(root, SPARSE_LAYERS):
        raise ValueError("sparsify_ works on a model holding layers; for one layer use "
                         f"{type(root).__name__}.from_dense")
    for name, m in list(root.named_modules()):  # attention: projections become modules
        if name and type(m) is nn.MultiheadAttention and (filter_fn is None or any(
                filter_fn(f"{name}.{c}", probe) for c, probe in projection_probes(m).items())):
            _set_submodule(root, name, SparseMultiheadAttention.from_torch(m))
    _warn_bare_attention(root)
    chosen, skipped = [], []
    for name, m in root.named_modules():
        if isinstance(m, SPARSE_LAYERS) or not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if filter_fn is not None and not filter_fn(name, m):
            continue
        if type(m) not in (nn.Conv2d, nn.Linear):
            skipped.append(f"{name} ({type(m).__name__})")
            continue
        chosen.append((name, m))
    if skipped:
        warnings.warn("sparsify_ leaves subclasses of Conv2d/Linear dense (their forward may not "
                      f"go through the sparse layer): {', '.join(skipped)}", stacklevel=2)
    if not chosen:
        raise ValueError("sparsify_ found no nn.Conv2d or nn.Linear layer to make sparse "
                         "(check filter_fn)")
    counts = layer_counts([tuple(m.weight.shape) for _, m in chosen], density, distribution)
    made = []
    for i, ((name, m), n) in enumerate(zip(chosen, counts, strict=True)):
        cls = SparseConv2d if isinstance(m, nn.Conv2d) else SparseLinear
        gen = rng.generator(seed, 0, i)
        if block is None:
            mask = random_mask(tuple(m.weight.shape), n, gen)
        else:
            grid = UnitGrid(tuple(m.weight.shape), block)
            units = math.floor(n / grid.size + 0.5)
            if units < 1:
                raise ValueError(f"density {density} leaves layer {name!r} less than one unit "
                                 f"({n} weights, units of {grid.size}): raise the density, use "
                                 "a smaller block or keep the layer dense (filter_fn)")
            mask = grid.expand(random_mask((grid.n_units,), units, gen))
            n = units * grid.size
        sparse = cls.from_dense(m, n / m.weight.numel(), format=format, mask=mask, block=block)
        sparse.set_backend(backend if backend != "csr" or csr_eligible(sparse) else "dense")
        _set_submodule(root, name, sparse)
        made.append((name, sparse))
    share_bank_(root)  # compact layers: one bank for the whole model
    return made


def set_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Set the masks of the named sparse layers (e.g. a learned or pruned mask). For compact
    layers the bank is rebuilt: call this before building the optimizer."""
    layers = dict(sparse_layers(model))
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"no sparse layer named {unknown}; sparse layers: {sorted(layers)}")
    for name, mask in masks.items():
        if layers[name].block is not None:
            layers[name].units.units_of_mask(mask)  # whole units, or ValueError
    checked = {layers[n]: check_mask(m.to(layers[n].active_indices().device),
                                     layers[n].weight_shape)
               for n, m in masks.items()}
    set_masks(checked)


def load_dense_weights_(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Load a *dense* model's state_dict (e.g. a trained dense run) into a model whose layers
    may be sparse: sparse layers take the weights at their active positions. Returns the names
    of model entries the state did not provide."""
    root = _unwrap(model)
    sparse = dict(sparse_layers(root))
    own = root.state_dict()
    missing = []
    with torch.no_grad():
        for name, layer in sparse.items():
            w = state.get(f"{name}.weight")
            if w is None:
                missing.append(f"{name}.weight")
                continue
            layer.storage.load_dense_(w.reshape(layer.weight_shape))
        skip = {f"{n}.{k}" for n in sparse for k in ("weight", "mask", "indices", "values")}
        for key, t in own.items():
            if key in skip or key == BANK_NAME:
                continue
            if key in state:
                t.copy_(state[key])
            else:
                missing.append(key)
    return missing


def densify_(model: nn.Module) -> list[str]:
    """Replace every sparse layer with its plain torch twin (same outputs), and attention
    modules with torch's ``nn.MultiheadAttention``; returns the names of the sparse layers."""
    root = _unwrap(model)
    names = []
    for name, layer in sparse_layers(root):
        _set_submodule(root, name, layer.to_dense())
        names.append(name)
    root._parameters.pop(BANK_NAME, None)
    for name, m in list(root.named_modules()):
        if isinstance(m, SparseMultiheadAttention) and name:
            _set_submodule(root, name, m.to_torch())
    return names


def _warn_bare_attention(root: nn.Module) -> None:
    """Attention modules that hold their projections as bare 2-D parameters (neither
    nn.Linear children nor nn.MultiheadAttention) stay dense: say which."""
    bare = []
    for name, m in root.named_modules():
        if "attention" not in type(m).__name__.lower() or isinstance(m, nn.MultiheadAttention):
            continue
        own = [p for p, v in m._parameters.items() if v is not None and v.dim() == 2
               and any(w in p.lower() for w in ("weight", "proj", "qkv", "query", "key",
                                                "value"))]  # not e.g. a position-bias table
        if own:
            bare.append(f"{name or '<root>'} ({type(m).__name__}: {', '.join(own)})")
    if bare:
        warnings.warn("sparsify_ leaves these attention weights dense and outside the budget: "
                      "they are bare parameters, not nn.Linear layers or an "
                      f"nn.MultiheadAttention: {'; '.join(bare)}", stacklevel=3)


def ends_dense_filter(model: nn.Module) -> FilterFn:
    """Every Conv2d/Linear sparse but the first (a transformer's patch embedding, a CNN's
    stem) and the last (the classifier head), in module order."""
    layers = [n for n, m in _unwrap(model).named_modules() if isinstance(m, (nn.Conv2d,
                                                                             nn.Linear))]
    ends = {layers[0], layers[-1]} if layers else set()
    return lambda name, module: name not in ends


def paper_filter(model: nn.Module, *, dense_fc: bool) -> FilterFn:
    """The DSR paper's split: the stem (first conv) and 1×1 shortcut/downsample convs stay dense;
    Linear layers are dense when ``dense_fc`` (WRN-28-2) and sparse otherwise (ResNet-50)."""
    convs = [n for n, m in _unwrap(model).named_modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0] if convs else None

    def keep(name: str, module: nn.Module) -> bool:
        if isinstance(module, nn.Linear):
            return not dense_fc
        parts = name.split(".")
        return name != stem and not any(p in ("shortcut", "downsample") for p in parts)

    return keep

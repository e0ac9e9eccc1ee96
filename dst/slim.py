"""Channel groups and physical slimming (structured DSR, :class:`dst.methods.DSRStructured`).

A *channel group* is a sparse layer (the producer) whose output channels reach exactly one other
sparse layer (the consumer) as its input channels, through per-channel operations only
(BatchNorm, ReLU-like activations, dropout). Removing channel ``j`` prunes every active weight of
the producer's output row ``j`` and of the consumer's input column ``j``; the channel then adds
exactly nothing to the consumer's output (whatever the BatchNorm and bias make of it), so the
producer, the BatchNorms on the path and the consumer are cut down to the surviving channels
without changing the network's function. The kernels then run on smaller dense tensors, the
optimizer state is cut with them, and each producer keeps the original ids of its surviving
channels in a buffer ``kept_channels`` so a checkpoint records the shapes: loading a slimmed
state_dict into a full-size model slims it first (a load pre-hook on the model).

Groups are found by tracing the model with ``torch.fx``: WRN-28-2 has 12 (``conv1`` -> ``bn2`` ->
``conv2`` in each block), ResNet-50 32 (``conv1`` -> ``conv2`` and ``conv2`` -> ``conv3`` in each
bottleneck). Residual outputs (a block's last conv) and the classifier are never groups.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import _unwrap, sparse_layers
from .cut import cut_param_
from .layers import SparseConv2d, SparseLinear

KEPT = "kept_channels"
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Dropout,
                        nn.Dropout2d, nn.Identity, nn.Hardswish, nn.ELU)
_ELEMENTWISE_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu,
                      F.dropout, F.dropout2d, F.hardswish, F.elu, torch.nn.functional.relu_,
                      "relu", "relu_"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class ChannelGroup:
    """``producer``'s output channels are ``consumer``'s input channels, through ``norms``."""

    producer: str
    norms: tuple[str, ...]
    consumer: str


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SparseConv2d, SparseLinear)) or super().is_leaf_module(m, qualname)


def _plain(layer: nn.Module) -> bool:
    """Channels of this layer map one to one onto its weight's dim 0 / dim 1."""
    return isinstance(layer, SparseLinear) or (isinstance(layer, SparseConv2d)
                                               and layer.groups == 1)


def find_channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every channel group of ``model`` (see the module doc), in module order."""
    root = _unwrap(model)
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise ValueError(f"structured sparsity finds channel groups by tracing the model with "
                         f"torch.fx, which failed for {type(root).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; make its "
                         "forward traceable or use unstructured sparsity (dsr)") from None
    modules = dict(root.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    sparse = dict(sparse_layers(root))
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in sparse:
            continue
        prod = sparse[node.target]
        if calls[node.target] != 1 or not _plain(prod):
            continue
        found = _follow(node, modules, calls, sparse, prod)
        if found is not None:
            groups.append(ChannelGroup(node.target, *found))
    order = {n: i for i, (n, _) in enumerate(sparse_layers(root))}
    return sorted(groups, key=lambda g: order[g.producer])


def _follow(node, modules, calls, sparse, prod):
    """(norms, consumer) when ``node``'s output reaches one plain sparse layer of the same kind
    through per-channel operations only; else None."""
    norms, cur = [], node
    while True:
        users = list(cur.users)
        if len(users) != 1 or not users[0].args or users[0].args[0] is not cur:
            return None
        u = users[0]
        if any(isinstance(a, torch.fx.Node) for a in list(u.args[1:]) + list(u.kwargs.values())):
            return None  # a second tensor input (an add, a concat): not per channel
        if u.op == "call_module":
            mod = modules[u.target]
            if calls[u.target] != 1 and not isinstance(mod, _ELEMENTWISE_MODULES):
                return None  # a norm or layer applied twice: its channels are shared
            if isinstance(mod, _NORMS):
                norms.append(u.target)
            elif u.target in sparse:
                cons = sparse[u.target]
                same_kind = type(cons) is type(prod)
                return (tuple(norms), u.target) if same_kind and _plain(cons) else None
            elif not isinstance(mod, _ELEMENTWISE_MODULES):
                return None
        elif u.op == "call_function" and u.target in _ELEMENTWISE_FUNCS or (
                u.op == "call_method" and u.target in _ELEMENTWISE_FUNCS):
            pass
        elif u.op == "call_function" and u.target is operator.getitem:
            return None
        else:
            return None
        cur = u


# ----------------------------------------------------------------------------- slimming
def _forget_caches(layer: nn.Module) -> None:
    for key in ("_csr_cache", "_conv_plans", "_tuned"):
        layer.__dict__.pop(key, None)
    layer.storage.dense_grad = None  # a captured full-size gradient of the old shape


def _cut_layer_(layer: nn.Module, dim: int, keep: Tensor, optimizer) -> None:
    layer.storage.cut_(dim, keep, optimizer)
    if dim == 0 and layer.bias is not None:
        cut_param_(layer.bias, 0, keep, optimizer)
    n = int(keep.numel())
    shape = list(layer.weight_shape)
    shape[dim] = n
    layer.weight_shape = tuple(shape)
    if isinstance(layer, SparseLinear):
        setattr(layer, "out_features" if dim == 0 else "in_features", n)
    else:
        setattr(layer, "out_channels" if dim == 0 else "in_channels", n)
    _forget_caches(layer)


def _cut_norm_(bn: nn.Module, keep: Tensor, optimizer) -> None:
    for p in (bn.weight, bn.bias):
        if p is not None:
            cut_param_(p, 0, keep, optimizer)
    for name in ("running_mean", "running_var"):
        b = getattr(bn, name)
        if b is not None:
            setattr(bn, name, b.index_select(0, keep.to(b.device)))
    bn.num_features = int(keep.numel())


def slim_(model: nn.Module, group: ChannelGroup, keep: Tensor, optimizer=None) -> None:
    """Cut ``group`` down to the channels at positions ``keep`` (ascending, of the current
    channels): the producer's rows, the norms' entries, the consumer's input columns."""
    root = _unwrap(model)
    keep = keep.to(torch.long)
    prod, cons = root.get_submodule(group.producer), root.get_submodule(group.consumer)
    _cut_layer_(prod, 0, keep, optimizer)
    for name in group.norms:
        _cut_norm_(root.get_submodule(name), keep, optimizer)
    _cut_layer_(cons, 1, keep, optimizer)
    kept = prod._buffers[KEPT]
    prod._buffers[KEPT] = kept.index_select(0, keep.to(kept.device))


def _by_channel(t: Tensor, dim: int) -> Tensor:
    """``t`` (a weight-shaped tensor) with channel ``dim`` first and the rest flattened: row
    ``j`` holds every entry of channel ``j``."""
    return t.transpose(0, dim).reshape(t.shape[dim], -1)


def channel_weights(layer: nn.Module, dim: int) -> Tensor:
    """The layer's dense weight (zeros inactive), one row per channel along ``dim``."""
    return _by_channel(layer.dense_weight(), dim)


def channel_active(layer: nn.Module, dim: int) -> Tensor:
    """Active weights per channel along ``dim`` (0: output, 1: input)."""
    return _by_channel(layer.mask, dim).sum(1)


def attach_(model: nn.Module, groups: list[ChannelGroup]) -> None:
    """Give each producer its ``kept_channels`` buffer and the model the load pre-hook that
    slims it to a checkpoint's shapes (idempotent)."""
    root = _unwrap(model)
    for g in groups:
        prod = root.get_submodule(g.producer)
        if KEPT not in prod._buffers:
            prod.register_buffer(KEPT, torch.arange(prod.weight_shape[0],
                                                    device=prod.mask.device))
    if not getattr(root, "_dst_slim_hook", None):
        root._dst_slim_hook = root._register_load_state_dict_pre_hook(
            _SlimOnLoad(groups), with_module=True)


class _SlimOnLoad:
    """Before a state_dict loads, cut every group to the channels its ``kept_channels`` lists
    (a fresh full-size model resumes a slimmed run)."""

    def __init__(self, groups: list[ChannelGroup]):
        self.groups = groups

    def __call__(self, module, state_dict, prefix, *_args) -> None:
        for g in self.groups:
            saved = state_dict.get(f"{prefix}{g.producer}.{KEPT}")
            if saved is None:
                continue
            current = module.get_submodule(g.producer)._buffers[KEPT].cpu()
            saved = saved.cpu().long()
            if torch.equal(saved, current):
                continue
            pos = {int(c): i for i, c in enumerate(current)}
            if any(int(c) not in pos for c in saved):
                raise ValueError(f"state_dict keeps channels of {g.producer} this model has "
                                 "already removed: load it into a model that is not slimmed "
                                 "further than the checkpoint")
            slim_(module, g, torch.tensor(sorted(pos[int(c)] for c in saved)))


def average_gradients_(model: nn.Module, optimizer) -> None:
    """Data parallelism for a model whose parameters change shape (DDP's gradient buckets are
    fixed at wrapping): rank 0's parameters are broadcast once, and before every optimizer step
    each gradient is averaged over the ranks, so every rank takes the same step and the
    structured engine removes the same channels everywhere."""
    import torch.distributed as dist

    world = dist.get_world_size()
    with torch.no_grad():
        for p in _unwrap(model).parameters():
            dist.broadcast(p.data, 0)

    def average(opt, _args, _kwargs) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)

    optimizer.register_step_pre_hook(average)

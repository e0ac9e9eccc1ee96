"""Per-layer multiply-accumulate (MAC) counts for one input sample, measured with forward hooks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _layer_macs(module: nn.Module, output: torch.Tensor, batch: int) -> int:
    if isinstance(module, nn.Conv2d):
        out_h, out_w = output.shape[-2:]
        kh, kw = module.kernel_size
        per_position = module.out_channels * (module.in_channels // module.groups) * kh * kw
        return int(out_h) * int(out_w) * per_position
    # nn.Linear: one in*out product per output row (sequence models have several per sample).
    rows = output.numel() // (output.shape[-1] * batch)
    return rows * module.in_features * module.out_features


def count_flops(
    model: nn.Module,
    input_size: tuple[int, ...] = (1, 3, 32, 32),
    density_of: Callable[[nn.Module], float] | None = None,
) -> dict[str, int]:
    """MACs per Conv2d/Linear layer (subclasses included) for one sample of ``input_size``.

    A conv costs out_h * out_w * C_out * (C_in / groups) * k_h * k_w; a linear layer
    in_features * out_features per output row. ``input_size[0]`` is the batch size the model is
    run with; counts are divided back to one sample. With ``density_of`` a layer's count is its
    dense count times ``density_of(module)`` (rounded), the sparse cost. A module called several
    times in one forward pass is counted for every call. Returns ``{module_name: macs}`` in the
    order the layers were first called.
    """
    if len(input_size) < 2:
        raise ValueError(f"input_size must include a batch dimension, got {tuple(input_size)}")
    batch = int(input_size[0])
    if batch < 1:
        raise ValueError(f"input_size batch dimension must be >= 1, got {batch}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    counts: dict[str, int] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            macs = _layer_macs(module, output, batch)
            if density_of is not None:
                macs = int(round(macs * float(density_of(module))))
            counts[name] = counts.get(name, 0) + macs
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts

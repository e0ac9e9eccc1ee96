"""Weight initialisation shared by every model (docs/methods.md#initialisation).

- Conv layers: He init with fan-out, N(0, sqrt(2 / (k_h * k_w * C_out))).
- Linear layers: weight U(-1/sqrt(fan_in), +1/sqrt(fan_in)).
- Normalisation layers: gamma 1, beta 0.
- Every bias: 0.
"""

from __future__ import annotations

import math

from torch import nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def init_weights(model: nn.Module) -> nn.Module:
    """Initialise ``model`` in place by the rules above and return it."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def scaled_width(base: int, factor: float) -> int:
    """Channel count ``round(base * factor)``, at least 1."""
    if factor <= 0:
        raise ValueError(f"width factor must be positive, got {factor}")
    return max(1, int(round(base * factor)))

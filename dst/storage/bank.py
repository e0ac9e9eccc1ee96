"""The flat parameter that holds the active values of the compact layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SparseBank:
    """One flat parameter holding the active values of several compact layers, back to back.

    Its size is the budget and never changes, so the optimizer and DDP see one fixed parameter;
    a reallocation re-packs it in place. The parameter is registered on ``owner`` under ``name``
    (the model as ``dst_bank`` when shared, the layer as ``values`` when private); the bank itself
    is a plain object so it never joins a module's forward (e.g. in ``nn.Sequential``).
    """

    def __init__(self, owner: nn.Module, name: str, layers: Sequence[nn.Module]):
        self.owner = owner
        self.name = name
        self._members = list(layers)
        self._layout_version = 0
        self._offsets_cache: tuple[int, list[int]] | None = None
        for i, layer in enumerate(self._members):
            layer.storage.bank, layer.storage.slot = self, i

    @classmethod
    def share(cls, owner: nn.Module, name: str, layers: Sequence[nn.Module]) -> SparseBank:
        """One bank for ``layers`` (their values back to back), registered on ``owner`` as
        ``name``; their private ``values`` parameters are dropped. Build the optimizer after."""
        with torch.no_grad():
            values = torch.cat([m.active_values().detach() for m in layers]).clone()
        for m in layers:
            m._parameters.pop("values", None)
        owner.register_parameter(name, nn.Parameter(values))
        return cls(owner, name, layers)

    @property
    def values(self) -> nn.Parameter:
        return self.owner._parameters[self.name]

    def replace_values(self, values: Tensor) -> None:
        """Register a new parameter (a new size): build the optimizer after this."""
        setattr(self.owner, self.name, nn.Parameter(values))
        self.bump()

    def bump(self) -> None:
        """Invalidate cached offsets (call after any member's ``indices`` changed size)."""
        self._layout_version += 1

    def offsets(self) -> list[int]:
        if self._offsets_cache is None or self._offsets_cache[0] != self._layout_version:
            offs, total = [], 0
            for layer in self._members:
                offs.append(total)
                total += layer.indices.numel()
            if total != self.values.numel():
                raise RuntimeError(
                    f"compact bank holds {self.values.numel()} values but its layers index "
                    f"{total}: the state_dict loaded does not match this model's layout")
            self._offsets_cache = (self._layout_version, offs)
        return self._offsets_cache[1]

    def slice_of(self, layer: nn.Module) -> Tensor:
        slot = layer.storage.slot
        if torch.compiler.is_compiling():  # from the members' sizes: shape guards, which
            # dynamic shapes generalise, instead of guards on the cache's Python ints
            off = sum(m.indices.shape[0] for m in self._members[:slot])
        else:
            off = self.offsets()[slot]
        return self.values.narrow(0, off, layer.indices.shape[0])

    def __repr__(self) -> str:
        return f"SparseBank(size={self.values.numel()}, layers={len(self._members)})"

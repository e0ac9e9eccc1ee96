"""The sparsity structure of a mask in CSR form, and its cache.

Active values of a masked weight are ``weight.flatten()[mask.flatten().nonzero().squeeze(1)]``
(sorted flat index, row-major).  :class:`CSRStructure` holds everything that depends only on
the mask: the CSR of ``W``, the CSR of ``W^T`` and the value permutation between them.  Indices
come from the mask, never from non-zero values, so a regrown weight that is exactly zero still
gets its gradient.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch

__all__ = ["CSRStructure"]

# Creating CSR tensors triggers a one-off "beta state" UserWarning; it carries no information
# for users of this module.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

_INT32_MAX = 2**31 - 1


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


@dataclasses.dataclass(frozen=True)
class CSRStructure:
    """Sparsity structure of a 2-D (out_features, in_features) mask, in CSR form.

    The *values order* is the order in which callers keep the active values: row-major (sorted
    flat index) for :meth:`from_mask`, any order for :meth:`from_indices` (e.g. a compact
    layer's bank slots).  Kernels read values through ``order`` / ``perm`` and write the value
    gradient back in values order, so no per-step gather or scatter is needed.

    Attributes:
        shape: ``(rows, cols)`` of ``W``.
        crow_indices, col_indices: CSR indices of ``W`` (``index_dtype``).
        t_crow_indices, t_col_indices: CSR indices of ``W^T`` (i.e. CSC of ``W``).
        perm: int64, ``values.index_select(0, perm)`` are the values of ``W^T`` in its CSR order.
        flat_indices: int64 flat positions of the active entries, in values order.
        order: int64 or None, ``values.index_select(0, order)`` are the values of ``W`` in its CSR
            order; None when the values order is the CSR order.
    """

    shape: tuple[int, int]
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    t_crow_indices: torch.Tensor
    t_col_indices: torch.Tensor
    perm: torch.Tensor
    flat_indices: torch.Tensor
    order: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, mask: torch.Tensor, index_dtype: torch.dtype | None = None) -> CSRStructure:
        """Build the structure from a bool mask; values order = row-major.

        A mask with more than two dims (e.g. a conv weight mask ``(out, in, kh, kw)``) is
        viewed as ``(out, in * kh * kw)``, which keeps the row-major value order.
        ``index_dtype`` defaults to int32 whenever the sizes fit (no measurable difference on
        CPU/MKL, half the memory, and the cuSPARSE-preferred type), else int64.
        """
        if mask.dim() < 2:
            raise ValueError(f"mask must have at least 2 dims, got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be bool, got {mask.dtype}")
        rows, cols = int(mask.shape[0]), math.prod(int(d) for d in mask.shape[1:])
        return cls._build((rows, cols), mask.reshape(-1).nonzero().squeeze(1), None, index_dtype)

    @classmethod
    def from_indices(cls, flat_indices: torch.Tensor, shape: tuple[int, ...],
                     index_dtype: torch.dtype | None = None) -> CSRStructure:
        """Build the structure from unique flat positions in any order (= the values order).

        ``shape`` is the weight's shape, viewed as ``(shape[0], prod(shape[1:]))``.
        """
        if flat_indices.dim() != 1 or flat_indices.is_floating_point():
            raise TypeError("flat_indices must be a 1-D integer tensor")
        rows, cols = int(shape[0]), math.prod(int(d) for d in shape[1:])
        flat, order = torch.sort(flat_indices.long())
        if flat.numel() and (int(flat[0]) < 0 or int(flat[-1]) >= rows * cols):
            raise ValueError(f"flat_indices out of range for shape {tuple(shape)}")
        if bool((flat[1:] == flat[:-1]).any()):
            raise ValueError("flat_indices must be unique")
        if bool((order == torch.arange(order.numel(), device=order.device)).all()):
            order = None
        return cls._build((rows, cols), flat, order, index_dtype, flat_indices.long())

    @classmethod
    def _build(cls, shape, flat, order, index_dtype, values_flat=None) -> CSRStructure:
        """``flat``: sorted flat positions; ``order``: CSR position -> values position;
        ``values_flat``: the flat positions in values order (``flat`` when ``order`` is None)."""
        (rows, cols), nnz = shape, int(flat.numel())
        if index_dtype is None:
            index_dtype = torch.int32 if max(nnz, rows, cols) <= _INT32_MAX else torch.int64
        if index_dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index_dtype must be int32 or int64, got {index_dtype}")
        row_idx = torch.div(flat, cols, rounding_mode="floor") if cols else flat
        col_idx = flat - row_idx * cols
        # W^T in CSR = entries sorted by (col, row); keys are unique, so argsort is exact.
        perm = torch.argsort(col_idx * rows + row_idx)
        idx = (_offsets(row_idx, rows), col_idx, _offsets(col_idx, cols), row_idx[perm])
        if order is not None:
            perm = order[perm]
        values_flat = flat if order is None else values_flat
        return cls(shape, *(t.to(index_dtype) for t in idx), perm, values_flat, order)

    @property
    def nnz(self) -> int:
        return int(self.col_indices.numel())

    @property
    def device(self) -> torch.device:
        return self.col_indices.device

    @property
    def index_dtype(self) -> torch.dtype:
        return self.col_indices.dtype

    def to(self, device: torch.device | str) -> CSRStructure:
        """Return the structure on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if _same_device(self.device, device):
            return self
        tensors = (getattr(self, f.name) for f in dataclasses.fields(self)[1:])
        return CSRStructure(self.shape, *(None if t is None else t.to(device) for t in tensors))

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """Active values of a dense tensor with the mask's numel, in values order."""
        return dense.reshape(-1).index_select(0, self.flat_indices)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Dense ``shape`` tensor with ``values`` at the active positions, zeros elsewhere."""
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_copy(0, self.flat_indices, values).view(self.shape)

    def to_sparse_csr(self, values: torch.Tensor) -> torch.Tensor:
        """``W`` as a ``torch.sparse_csr`` tensor (one gather if the values order is not CSR's)."""
        if self.order is not None:
            values = values.index_select(0, self.order)
        return _csr(self.crow_indices, self.col_indices, values, self.shape)

    def to_sparse_csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """``W^T`` as a ``torch.sparse_csr`` tensor (one gather)."""
        values_t = values.index_select(0, self.perm)
        return _csr(self.t_crow_indices, self.t_col_indices, values_t, self.shape[::-1])


def _offsets(idx: torch.Tensor, n: int) -> torch.Tensor:
    """CSR offsets (length n + 1) from per-entry row ids."""
    counts = torch.bincount(idx, minlength=n)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != "cuda" or b.type != "cuda":
        return a.type == b.type
    current = torch.cuda.current_device
    return (current() if a.index is None else a.index) == (
        current() if b.index is None else b.index
    )

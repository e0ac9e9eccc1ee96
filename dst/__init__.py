"""dst: dynamic sparse training for PyTorch."""

from . import baselines, methods
from .convert import (
                      densify_,
                      load_dense_weights_,
                      paper_filter,
                      set_masks_,
                      share_bank_,
                      sparse_layers,
                      sparsify_,
)
from .distributions import erk_densities, layer_counts
from .engine import SparseEngine, UpdateReport
from .layers import SparseConv2d, SparseLinear
from .schedules import PeriodSchedule

__all__ = [
    "PeriodSchedule", "SparseConv2d", "SparseEngine", "SparseLinear", "UpdateReport",
    "baselines", "densify_", "erk_densities", "layer_counts", "load_dense_weights_", "methods",
    "paper_filter", "set_masks_",
    "share_bank_", "sparse_layers", "sparsify_",
]
__version__ = "0.1.0"

"""Sparse compute kernels."""

from dst.kernels.csr import CSRCache, CSRLinearFunction, CSRStructure, csr_conv1x1, csr_linear

__all__ = ["CSRCache", "CSRLinearFunction", "CSRStructure", "csr_conv1x1", "csr_linear"]

"""Sparse compute kernels."""

from dst.kernels import native
from dst.kernels.conv import csr_conv2d
from dst.kernels.csr import CSRLinearFunction, csr_conv1x1, csr_linear
from dst.kernels.structure import CSRStructure

__all__ = ["CSRLinearFunction", "CSRStructure", "csr_conv1x1", "csr_conv2d",
           "csr_linear", "native"]

"""Native CPU kernels of the ``csr`` backend (float32 SpMM and SDDMM, OpenMP).

``_native.c`` is compiled on first use with the machine's C compiler (``$CC``, default ``cc``)
for the host CPU (``-O3 -march=native -fopenmp``) into a cache folder (``$DST_CACHE_DIR``, else
``$XDG_CACHE_HOME/dst`` or ``~/.cache/dst``), keyed by the source, the compiler (command and
version) and the CPU (vendor, model, feature flags), so a build made on one CPU is never
loaded on another even when the cache folder is shared. It is loaded through ctypes: a plain
shared library with no Python or torch headers, so the build takes about a second. The
library's OpenMP calls share torch's OpenMP runtime (same soname) and use
``torch.get_num_threads()`` threads.

On a machine without a working compiler the csr backend falls back to PyTorch's MKL / cuSPARSE
kernels with one warning naming the fix; ``DST_NATIVE=0`` turns the native kernels off.
Measured against MKL on the issue's 2048x2048 / batch-128 layer: see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch.autograd.graph import increment_version

__all__ = ["NativeBuildError", "available", "build", "cache_dir", "flat_nonzero", "index_fill_",
           "mask_zero_", "sddmm", "spmm", "unique_unblocked", "usable"]

SOURCE = Path(__file__).with_name("_native.c")
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"],
    ["-O3", "-fopenmp", "-shared", "-fPIC"],  # compilers without -march=native
)
_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


class NativeBuildError(RuntimeError):
    """The native kernels could not be compiled."""


def cache_dir() -> Path:
    if os.environ.get("DST_CACHE_DIR"):
        return Path(os.environ["DST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dst"


def _cpu_id() -> str:
    """The CPU a build is for: vendor, model and feature flags (``-march=native`` code built
    on an AVX-512 Xeon must never be loaded on an EPYC without AVX2, or the reverse)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "model name", "flags", "CPU implementer", "CPU part",
                           "Features") and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        pass
    return " | ".join([platform.machine(), platform.processor(),
                       *(f"{k}: {v}" for k, v in sorted(fields.items()))])


@functools.lru_cache(maxsize=8)
def _compiler_id(cc: str) -> str:
    """The compiler's version line (a new compiler at the same path rebuilds)."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().split("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def build(force: bool = False) -> Path:
    """Compile ``_native.c`` (unless a cached build exists) and return the library's path."""
    cc = os.environ.get("CC", "cc")
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), cc, _compiler_id(cc), *flags, _cpu_id()]).encode()
        ).hexdigest()[:16]
        out = cache_dir() / f"dst_native-{key}.so"
        if out.exists() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True,
                                  text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            proc, msg = None, str(e)
        if proc is not None and proc.returncode == 0:
            os.replace(tmp, out)  # atomic: concurrent builders (DDP ranks) never see half a file
            return out
        Path(tmp).unlink(missing_ok=True)
        errors.append(msg if proc is None else (proc.stderr or proc.stdout).strip()[-500:])
    raise NativeBuildError(
        f"could not compile {SOURCE.name} with {cc!r}: {errors[-1]}. Install a C compiler with "
        "OpenMP (e.g. gcc) or point $CC at one; DST_NATIVE=0 silences this and uses MKL's "
        "slower kernels."
    )


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("DST_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (NativeBuildError, OSError) as e:
        warnings.warn(f"dst: native CSR kernels unavailable, using PyTorch's: {e}", stacklevel=3)
        return None
    lib.dst_spmm.argtypes = [_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64,
                             _PTR, _I64, _I64, _INT]
    lib.dst_sddmm.argtypes = [_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _PTR,
                              _I64, _I64, _PTR, _INT]
    lib.dst_mask_zero.argtypes = [_I64, _PTR, _PTR, _INT]
    lib.dst_spmm.restype = lib.dst_sddmm.restype = lib.dst_mask_zero.restype = None
    lib.dst_fill_f32.argtypes = [_I64, _PTR, _PTR, ctypes.c_float, _I64, _INT]
    lib.dst_fill_u8.argtypes = [_I64, _PTR, _PTR, _INT, _I64, _INT]
    lib.dst_fill_f32.restype = lib.dst_fill_u8.restype = _I64
    lib.dst_nonzero_count.argtypes = [_I64, _PTR, _PTR, _INT]
    lib.dst_nonzero_write.argtypes = [_I64, _PTR, _PTR, _PTR, _INT]
    lib.dst_unique_unblocked.argtypes = [_I64, _PTR, _PTR, _I64, _PTR, _PTR]
    lib.dst_nonzero_count.restype = lib.dst_nonzero_write.restype = _I64
    lib.dst_unique_unblocked.restype = _I64
    return lib


def available() -> bool:
    """Whether the native kernels are compiled and loaded (compiles them on first call)."""
    return _library() is not None


def usable(index: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors runs natively: CPU, float32, int32 indices, library loaded."""
    if index.device.type != "cpu" or index.dtype != torch.int32:
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return available()


def _rows_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` (K, M) or (n, K, M) with unit stride along M (copied only if needed)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _batch(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, batch stride, row stride) of a 2-D or 3-D row-major operand."""
    if t.dim() == 2:
        return 1, 0, t.stride(0)
    return t.shape[0], t.stride(0), t.stride(1)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, b: torch.Tensor,
         perm: torch.Tensor | None = None, off: torch.Tensor | None = None,
         m: int | None = None) -> torch.Tensor:
    """``S @ b`` for CSR ``S = (crow, col, values[perm])`` and ``b`` (K, L) or (n, K, L).

    ``perm`` (int64), if given, reads the value of entry ``k`` from ``values[perm[k]]`` (the
    transposed structure reuses the values of ``W`` this way, with no gather).  ``off``
    (int64), if given, makes entry ``k`` read ``b[col[k], off[k] : off[k] + m]``; the caller
    guarantees those ranges lie inside ``b``'s storage.  ``m`` defaults to ``L``.  Returns a
    contiguous (R, m) / (n, R, m) tensor.  Caller checks :func:`usable`.
    """
    b = _rows_major(b)
    values = values.contiguous()
    rows, m = crow.numel() - 1, b.shape[-1] if m is None else m
    n, sb, ldb = _batch(b)
    y = b.new_empty(*b.shape[:-2], rows, m)
    _library().dst_spmm(
        n, rows, m, _ptr(crow), _ptr(col), _ptr(off), _ptr(values), _ptr(perm), _ptr(b), ldb,
        sb, _ptr(y), m, rows * m, torch.get_num_threads(),
    )
    return y


def sddmm(crow: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
          out_perm: torch.Tensor | None = None, off: torch.Tensor | None = None) -> torch.Tensor:
    """``out[k] = sum_batch <a[row(k)], b[col(k)]>``: ``a @ b^T`` sampled at the CSR pattern.

    ``a`` is (R, M) or (n, R, M), ``b`` (K, L) or (n, K, L) with ``L == M`` unless ``off`` is
    given (then entry ``k`` reads ``b[col[k], off[k] : off[k] + M]``, inside ``b``'s storage).
    Returns (nnz,) in CSR order, or with entry ``k`` at ``out_perm[k]`` (int64) if given.
    """
    a, b = _rows_major(a), _rows_major(b)
    if a.dim() != b.dim() or a.shape[:-2] != b.shape[:-2] or (
            off is None and a.shape[-1] != b.shape[-1]):
        raise ValueError(f"sddmm operands do not match: {tuple(a.shape)} and {tuple(b.shape)}")
    n, sa, lda = _batch(a)
    _, sb, ldb = _batch(b)
    out = a.new_empty(col.numel())
    _library().dst_sddmm(
        n, crow.numel() - 1, a.shape[-1], _ptr(crow), _ptr(col), _ptr(off), _ptr(out_perm),
        _ptr(a), lda, sa, _ptr(b), ldb, sb, _ptr(out), torch.get_num_threads(),
    )
    return out


def _dense_layout(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(
        memory_format=torch.channels_last))


def mask_zero_(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``g[~mask] = 0`` in place (``mask`` bool, ``g``'s shape): natively for float32 CPU
    tensors of one dense layout (one pass, no temporary), with ``g.mul_(mask)`` otherwise."""
    if (g.device.type == "cpu" and g.dtype == torch.float32 and mask.dtype == torch.bool
            and mask.device.type == "cpu" and g.shape == mask.shape
            and g.stride() == mask.stride() and _dense_layout(g) and available()):
        _library().dst_mask_zero(g.numel(), g.data_ptr(), mask.data_ptr(),
                                 torch.get_num_threads())
        return g
    return g.mul_(mask)


def index_fill_(t: torch.Tensor, idx: torch.Tensor, value: float | bool) -> torch.Tensor:
    """``t[idx] = value`` in place for a 1-D ``t`` and int64 ``idx``: natively (OpenMP) for
    contiguous CPU float32 and bool tensors, ``t.index_fill_(0, idx, value)`` otherwise; either
    way ``t``'s version counter moves on."""
    fn = None
    if (t.device.type == "cpu" and idx.device.type == "cpu" and idx.dtype == torch.int64
            and t.dim() == 1 and t.is_contiguous() and available()):
        lib = _library()
        fn = {torch.float32: lib.dst_fill_f32, torch.bool: lib.dst_fill_u8}.get(t.dtype)
    if fn is None:
        return t.index_fill_(0, idx, value)
    idx = idx.contiguous()
    v = float(value) if t.dtype == torch.float32 else int(bool(value))
    if fn(idx.numel(), idx.data_ptr(), t.data_ptr(), v, t.numel(), torch.get_num_threads()):
        raise IndexError(f"index_fill_: an index lies outside [0, {t.numel()})")
    increment_version(t)  # as torch's in-place ops do (caches keyed by a mask's version)
    return t


NZ_CHUNK = 65536  # bytes of mask per task of the native nonzero (``NZ_CHUNK`` in _native.c)


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The flat (row-major) indices of the True entries of a bool ``mask``, ascending (int64):
    ``mask.reshape(-1).nonzero().squeeze(1)``, natively for CPU masks (one counting and one
    writing pass over fixed chunks, eight bytes at a time)."""
    if not (mask.dtype == torch.bool and mask.device.type == "cpu" and mask.numel() >= 4096
            and available()):
        return mask.reshape(-1).view(torch.uint8).nonzero().squeeze(1)
    mask = mask.contiguous()  # row-major (a channels_last conv mask is copied: 1 byte each)
    lib, n, threads = _library(), mask.numel(), torch.get_num_threads()
    base = torch.empty((n + NZ_CHUNK - 1) // NZ_CHUNK + 1, dtype=torch.int64)
    count = lib.dst_nonzero_count(n, mask.data_ptr(), base.data_ptr(), threads)
    out = torch.empty(count, dtype=torch.int64)
    if lib.dst_nonzero_write(n, mask.data_ptr(), base.data_ptr(), out.data_ptr(), threads):
        raise RuntimeError("flat_nonzero: the mask changed while it was read")
    return out


def unique_unblocked(draws: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """The distinct values of ``draws`` (int64 flat positions) at which the flat bool
    ``blocked`` is False, ascending: ``torch.unique(draws[~blocked[draws]])``, natively on the
    CPU through a bitmap of ``blocked``'s size (no sort)."""
    if not (draws.device.type == "cpu" and blocked.device.type == "cpu"
            and draws.dtype == torch.int64 and blocked.dtype == torch.bool
            and blocked.dim() == 1 and blocked.is_contiguous() and available()):
        return torch.unique(draws.masked_select(blocked.index_select(0, draws).logical_not()))
    draws = draws.contiguous()
    numel = blocked.numel()
    bits = torch.zeros((numel + 63) // 64, dtype=torch.int64)
    out = torch.empty(draws.numel(), dtype=torch.int64)
    count = _library().dst_unique_unblocked(draws.numel(), draws.data_ptr(), blocked.data_ptr(),
                                            numel, bits.data_ptr(), out.data_ptr())
    if count < 0:
        raise IndexError(f"unique_unblocked: a draw lies outside [0, {numel})")
    return out[:count]

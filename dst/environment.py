"""What a result was produced with: package versions, git commit, CPU and GPU model."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "numpy", "hydra-core", "omegaconf", "dst")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_of(flags: set[str]) -> str:
    """The widest x86 vector extension in a ``/proc/cpuinfo`` flag set: "avx512" (avx512f),
    "avx2", "avx", or "" (none, or not x86)."""
    for flag, isa in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx")):
        if flag in flags:
            return isa
    return ""


@functools.lru_cache(maxsize=1)
def cpu_isa() -> str:
    """This CPU's widest vector extension (see :func:`isa_of`). One model name covers CPUs
    with and without AVX-512 (these VMs' "AMD EPYC"), and speed ratios follow the extension."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return isa_of(set(value.split()))
    except OSError:
        pass
    return ""


def cpu_kind(model: str | None = None, isa: str | None = None) -> str:
    """A CPU's model name with its vector extension, e.g. ``AMD EPYC (avx512)`` (this CPU's
    unless given; no extension: the name only)."""
    model = cpu_model() if model is None else model
    isa = cpu_isa() if isa is None else isa
    return f"{model} ({isa})" if isa else model


def gpu_model() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the dst checkout (with ``+dirty`` if it has uncommitted changes)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "dst",
                                "conf"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict:
    """Versions, commit and machine of this process (written into every run directory)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "git_commit": git_commit(), "cpu_model": cpu_model(),
            "cpu_isa": cpu_isa(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu_model": gpu_model(), "cuda": torch.version.cuda}

"""Paired comparisons of sweep results: the paired t test (two-sided p from Student's t
distribution, scipy) and Holm's step-down correction over a family of comparisons."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """DSR − X over the seeds both have: mean and sample sd of the differences, n pairs,
    Student's t with n − 1 degrees of freedom and its two-sided p (None below 2 pairs)."""

    mean: float
    sd: float | None
    n: int
    t: float | None
    p: float | None


def paired_t(diffs: list[float]) -> Paired:
    """The paired t test of ``diffs`` (per-seed differences) against a mean of zero."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_t needs at least one difference")
    mean = statistics.fmean(diffs)
    if n < 2:
        return Paired(mean, None, n, None, None)
    from scipy.stats import t as student_t

    sd = statistics.stdev(diffs)
    if sd == 0:  # every seed moved by the same amount: no spread to test against
        t = math.copysign(math.inf, mean) if mean else 0.0
        return Paired(mean, sd, n, t, 0.0 if mean else 1.0)
    t = mean / (sd / math.sqrt(n))
    return Paired(mean, sd, n, t, float(2 * student_t.sf(abs(t), n - 1)))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p values (family-wise error) of ``ps``, in their order; None
    entries (no test) are left out of the family and stay None. With m tests and p sorted
    ascending, p_adj(i) = max over j <= i of min(1, (m − j + 1) p(j)), j from 1."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: (ps[i], i))
    out: list[float | None] = [None] * len(ps)
    running, m = 0.0, len(idx)
    for j, i in enumerate(idx):
        running = max(running, min(1.0, (m - j) * ps[i]))
        out[i] = running
    return out

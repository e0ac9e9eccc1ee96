"""The comparison's statistics against hand-worked numbers."""

import math

import pytest

from dst.stats import holm, paired_t


def test_paired_t_by_hand():
    # diffs 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3; with 2 degrees of freedom
    # the two-sided p has the closed form 1 - |t| / sqrt(t^2 + 2) = 1 - sqrt(12 / 14)
    r = paired_t([1.0, 2.0, 3.0])
    assert (r.mean, r.sd, r.n) == (2.0, 1.0, 3)
    assert r.t == pytest.approx(2 * math.sqrt(3))
    assert r.p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    # one degree of freedom: t is Cauchy, p = 1 - 2 atan(|t|) / pi; diffs 1, 3: t = 2 / 1 = 2
    r = paired_t([3.0, 1.0])
    assert r.t == pytest.approx(2.0)
    assert r.p == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, rel=1e-9)
    # the sign of the mean gives the sign of t, not of p
    assert paired_t([-1.0, -2.0, -3.0]).t == pytest.approx(-2 * math.sqrt(3))
    assert paired_t([-1.0, -2.0, -3.0]).p == pytest.approx(1 - math.sqrt(12 / 14))


def test_paired_t_edge_cases():
    one = paired_t([0.7])
    assert (one.mean, one.sd, one.n, one.t, one.p) == (0.7, None, 1, None, None)
    same = paired_t([0.5, 0.5, 0.5])
    assert same.sd == 0 and same.t == math.inf and same.p == 0.0
    assert paired_t([0.0, 0.0]).p == 1.0
    with pytest.raises(ValueError, match="at least one"):
        paired_t([])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 with m = 3: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06;
    # 1 x 0.04 = 0.04 -> max(0.06, 0.04) = 0.06 (adjusted values never fall)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # capped at 1; a comparison without a test stays out of the family (m = 2 here)
    out = holm([0.6, None, 0.2])
    assert out[1] is None and out[0] == pytest.approx(0.6) and out[2] == pytest.approx(0.4)
    assert holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []

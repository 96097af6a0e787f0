"""Seed statistics of benchmark tables: a t-based confidence interval of a mean and paired tests of
two methods run on the same seeds (scipy.stats; no torch, no flwr).

With a handful of seeds the Student t interval (Gosset, 1908) is the honest one: ``mean ± t(n-1)
* s / sqrt(n)``. Two methods on the same seeds share the seed's data split, partition and
initialisation, so they are compared pair by pair: the paired t-test on the differences, and the
Wilcoxon signed-rank test (Wilcoxon, 1945), which assumes no normality but, with 5 seeds, cannot
give a two-sided p below 1/16 = 0.0625 (all 2^5 sign patterns equally likely under the null).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval.

    Parameters
    ----------
    mean:
        The sample mean.
    low, high:
        The interval's ends (NaN with fewer than two values).
    n:
        How many values.
    """

    mean: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        """``[low, high]`` for a table (``n/a`` without an interval)."""
        if math.isnan(self.low):
            return "n/a"
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """The mean of ``values`` and its two-sided ``level`` confidence interval, t-based:
    ``mean ± t_{(1+level)/2, n-1} * s / sqrt(n)`` with the sample standard deviation ``s`` (ddof 1).

    Parameters
    ----------
    values:
        One number per seed (NaN values are dropped).
    level:
        Confidence level in (0, 1).
    """
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    x = np.asarray([v for v in values if not math.isnan(float(v))], dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, len(x))
    half = float(stats.t.ppf((1.0 + level) / 2.0, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


@dataclass(frozen=True)
class Paired:
    """Method ``a`` against ``b`` on the same seeds.

    Parameters
    ----------
    diff:
        Mean of ``a - b`` over the seeds.
    t_p:
        Two-sided p-value of the paired t-test (NaN with fewer than two pairs or no spread).
    wilcoxon_p:
        Two-sided p-value of the Wilcoxon signed-rank test (exact for small samples; NaN when every
        difference is zero or there are fewer than two pairs).
    n:
        How many seeds both have.
    """

    diff: float
    t_p: float
    wilcoxon_p: float
    n: int


def paired_tests(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (one value per seed, the
    same seed at the same position; pairs with a NaN are dropped).

    Parameters
    ----------
    a, b:
        The two methods' numbers, seed by seed.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired tests need the same seeds: got {len(a)} and {len(b)} values")
    pairs = [
        (float(x), float(y)) for x, y in zip(a, b, strict=True) if not (math.isnan(float(x)) or math.isnan(float(y)))
    ]
    n = len(pairs)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0)
    d = np.array([x - y for x, y in pairs])
    diff = float(d.mean())
    if n < 2:
        return Paired(diff, math.nan, math.nan, n)
    t_p = float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue) if d.std() > 0 else math.nan
    w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else math.nan
    return Paired(diff, t_p, w_p, n)

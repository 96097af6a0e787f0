"""fedmm.stats on hand-computed values: the t interval and the paired tests of a benchmark table."""

import math

import pytest

from fedmm.stats import mean_ci, paired_tests


def t4_cdf(t: float) -> float:
    """Student t CDF with 4 degrees of freedom in closed form (independent of scipy)."""
    x = 1 + t * t / 4
    return 0.5 + 3 / 8 * t / math.sqrt(x) * (1 - t * t / (12 * x))


def test_the_interval_is_mean_plus_minus_t_times_the_standard_error():
    # 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445 (t4_cdf(2.776445) = 0.975)
    assert t4_cdf(2.776445) == pytest.approx(0.975, abs=1e-6)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    ci = mean_ci([1, 2, 3, 4, 5])
    assert (ci.mean, ci.n) == (3.0, 5)
    assert ci.low == pytest.approx(3 - half, abs=1e-5) and ci.high == pytest.approx(3 + half, abs=1e-5)
    assert ci.text() == "[1.037, 4.963]"
    wider = mean_ci([1, 2, 3, 4, 5], level=0.99)
    assert wider.low < ci.low and wider.high > ci.high


def test_an_interval_needs_two_values_and_drops_nan():
    assert mean_ci([0.5, math.nan]).n == 1 and math.isnan(mean_ci([0.5]).low) and mean_ci([0.5]).text() == "n/a"
    assert mean_ci([1.0, math.nan, 3.0]).mean == 2.0


def test_the_paired_t_test_and_wilcoxon_on_hand_computed_values():
    a = [0.81, 0.82, 0.77, 0.84, 0.85]
    b = [0.80, 0.80, 0.80, 0.80, 0.80]  # differences 0.01, 0.02, -0.03, 0.04, 0.05
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 5
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    t = mean / (s / math.sqrt(5))  # 1.2923
    result = paired_tests(a, b)
    assert result.n == 5 and result.diff == pytest.approx(0.018)
    assert result.t_p == pytest.approx(2 * (1 - t4_cdf(t)), abs=1e-9)
    # ranks of |d|: 1, 2, 3, 4, 5; W- = 3 (the one negative difference). Subsets of {1..5} summing
    # to <= 3: {}, {1}, {2}, {3}, {1,2}: 5 of 32 sign patterns, two-sided p = 2 * 5/32
    assert result.wilcoxon_p == pytest.approx(2 * 5 / 32)


def test_wilcoxon_with_five_seeds_cannot_go_below_one_sixteenth():
    result = paired_tests([0.9, 0.91, 0.92, 0.93, 0.94], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert result.wilcoxon_p == pytest.approx(2 / 32) and result.t_p < 0.001


def test_paired_tests_refuse_unpaired_values_and_skip_nan_pairs():
    with pytest.raises(ValueError, match="same seeds"):
        paired_tests([1.0, 2.0], [1.0])
    assert paired_tests([1.0, math.nan, 2.0], [0.5, 0.5, 1.0]).n == 2
    same = paired_tests([0.5, 0.6], [0.5, 0.6])
    assert same.diff == 0 and math.isnan(same.t_p) and math.isnan(same.wilcoxon_p)

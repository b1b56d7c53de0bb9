"""Seed-level statistics against references: scipy's Welch test, hand-built cases for the bootstrap."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from meterseg import stats


def runs(matrix):
    """Per-seed test-metric frames from a (seeds x images) Dice matrix."""
    return [pd.DataFrame({"image": [f"i{k}" for k in range(len(row))], "dice": row}) for row in matrix]


def test_welch_matches_scipy_and_the_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.90, 0.02, (5, 30)), rng.normal(0.93, 0.01, (4, 30))
    w = stats.welch(runs(a), runs(b))
    ma, mb = a.mean(axis=1), b.mean(axis=1)
    ref = sps.ttest_ind(mb, ma, equal_var=False)
    assert w["diff"] == pytest.approx(mb.mean() - ma.mean())
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert w["ci95"] == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_hierarchical_bootstrap_of_a_constant_shift_is_exact():
    rng = np.random.default_rng(1)
    a = rng.normal(0.9, 0.05, (5, 40))
    h = stats.hierarchical_bootstrap(runs(a), runs(a + 0.01), n_boot=2000)
    # with seeds drawn independently per row the CI is not a point, but it must hold 0.01 and be narrow
    assert h["diff"] == pytest.approx(0.01)
    assert h["ci95"][0] < 0.01 < h["ci95"][1]


def test_hierarchical_bootstrap_sees_seed_spread_the_paired_test_ignores():
    """One deviant seed: the per-image paired test (networks fixed) is sure, the seed-level one is not."""
    rng = np.random.default_rng(2)
    img = rng.normal(0, 0.03, 100)  # image difficulty, shared
    a = 0.92 + img + rng.normal(0, 0.002, (5, 100))
    b = 0.92 + img + rng.normal(0, 0.002, (5, 100))
    b[1] += 0.05  # one seed of b happened to train well
    p = stats.paired_images(runs(a), runs(b))
    h = stats.hierarchical_bootstrap(runs(a), runs(b))
    w = stats.welch(runs(a), runs(b))
    assert p["p"] < 0.01 and p["ci95"][0] > 0  # "significant" for these networks
    assert h["ci95"][0] <= 0 <= h["ci95"][1] and w["ci95"][0] <= 0 <= w["ci95"][1]  # not for the architectures
    assert stats.verdict(w["ci95"], "a", "b").startswith("undecided")


def test_compare_reports_points_and_per_seed_differences():
    a = np.full((3, 4), 0.90)
    b = np.full((3, 4), 0.92)
    b[2] = 0.95
    row = stats.compare("A", runs(a), "B", runs(b))
    assert row["diff_of_seed_means"] == pytest.approx(100 * (0.93 - 0.90))
    assert row["per_seed_diffs"] == "+2.00 +2.00 +5.00"
    assert row["mean_a"] == pytest.approx(90.0) and row["seeds"] == "3/3"


def test_tost_matches_two_one_sided_scipy_welch_tests():
    """TOST's p is the larger of scipy's one-sided Welch tests of b + m > a and b - m < a."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.945, 0.002, (5, 30)), rng.normal(0.946, 0.002, (5, 30))
    ma, mb = a.mean(axis=1), b.mean(axis=1)
    m = stats.EQUIVALENCE_MARGIN
    ref = max(sps.ttest_ind(mb + m, ma, equal_var=False, alternative="greater").pvalue,
              sps.ttest_ind(mb - m, ma, equal_var=False, alternative="less").pvalue)
    t = stats.tost(runs(a), runs(b))
    assert t["p"] == pytest.approx(ref, rel=1e-9) and t["p"] < 0.05
    ci = sps.ttest_ind(mb, ma, equal_var=False).confidence_interval(0.90)
    assert t["ci90"] == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert -m < t["ci90"][0] and t["ci90"][1] < m  # the same decision, read from the 90 % CI


def test_the_three_way_verdict():
    rng = np.random.default_rng(4)
    base = rng.normal(0.945, 0.001, (5, 30))
    same = stats.compare("A", runs(base), "B", runs(base + rng.normal(0, 0.0005, (5, 1))))
    assert same["verdict_seeds"] == "equivalent within +-0.5 points"
    apart = stats.compare("A", runs(base), "B", runs(base + 0.02))
    assert apart["verdict_seeds"] == "B beats A"
    noisy = stats.compare("A", runs(rng.normal(0.945, 0.01, (3, 30)) + rng.normal(0, 0.01, (3, 1))),
                          "B", runs(rng.normal(0.947, 0.01, (3, 30)) + rng.normal(0, 0.01, (3, 1))))
    assert noisy["verdict_seeds"].startswith("undecided: ~") and noisy["seeds_needed"] > 3

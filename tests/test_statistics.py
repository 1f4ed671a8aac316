"""The statistics of the results tables (chapter 6, `medcnn_nb.report`) against SciPy on known samples.

The bootstrap intervals are compared with `scipy.stats.bootstrap` fed the same random generator (the same
draws, so the same interval to rounding), the signed-rank test with `scipy.stats.wilcoxon` in both of its
regimes (exact null distribution, normal approximation with ties and zeros).
"""
import math

import numpy as np
import pytest
from scipy import stats

from medcnn_nb.report import (N_RESAMPLES, bootstrap_ratio, compare, paired_bootstrap, patient_parts, results_table,
                              verdict, wilcoxon_signed_rank)


def _scipy_ratio_ci(num, den, seed, confidence=0.95):
    return stats.bootstrap((num, den), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis), paired=True, vectorized=True,
                           n_resamples=N_RESAMPLES, confidence_level=confidence, method="percentile",
                           rng=np.random.default_rng(seed)).confidence_interval


@pytest.mark.parametrize("n,p,seed", [(5, 0.5, 0), (20, 0.83, 1), (37, 0.97, 2), (20, 0.02, 3)])
def test_bootstrap_of_a_pooled_rate_matches_scipy_and_stays_in_range(n, p, seed):
    rng = np.random.default_rng(100 + seed)
    den = rng.integers(5, 80, n).astype(float)
    num = rng.binomial(den.astype(int), p).astype(float)
    mine = bootstrap_ratio(num, den, seed=seed)
    ref = _scipy_ratio_ci(num, den, seed)
    assert mine["value"] == pytest.approx(num.sum() / den.sum(), abs=1e-15) and mine["n"] == n
    assert (mine["ci_low"], mine["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert 0 <= mine["ci_low"] <= mine["value"] <= mine["ci_high"] <= 1


def test_bootstrap_of_a_mean_matches_scipy_at_90_percent():
    dice = np.array([0.91, 0.85, 0.0, 0.77, 0.93, 0.88, 0.69, 0.95, 0.81, 0.9, 0.0, 0.86])  # two patients missed
    mine = bootstrap_ratio(dice, np.ones_like(dice), confidence=0.9, seed=5)
    ref = stats.bootstrap((dice,), np.mean, n_resamples=N_RESAMPLES, confidence_level=0.9, method="percentile",
                          rng=np.random.default_rng(5)).confidence_interval
    assert (mine["ci_low"], mine["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_the_t_interval_over_folds_leaves_the_range_the_bootstrap_does_not():
    # the LIDC sensitivity of issue 13: five folds, one of which found everything
    folds = np.array([1.0, 0.5, 1.0, 0.36, 1.0])
    half = stats.t.ppf(0.975, 4) * folds.std(ddof=1) / math.sqrt(5)
    assert folds.mean() + half > 1
    per_patient = np.r_[np.ones(12), np.zeros(5), np.full(3, 0.5)]
    b = bootstrap_ratio(per_patient, np.ones(20))
    assert 0 <= b["ci_low"] < b["ci_high"] <= 1


def test_paired_bootstrap_matches_scipy_and_pairing_narrows_it():
    rng = np.random.default_rng(11)
    den = rng.integers(10, 40, 20).astype(float)
    ease = rng.uniform(0.3, 0.95, 20)                        # what makes a patient easy or hard, shared by both
    a = rng.binomial(den.astype(int), ease).astype(float)
    b = rng.binomial(den.astype(int), np.clip(ease + 0.05, 0, 1)).astype(float)
    mine = paired_bootstrap(a, den, b, den, seed=4)
    ref = stats.bootstrap((a, den, b), lambda x, d, y, axis=-1: y.sum(axis) / d.sum(axis) - x.sum(axis) / d.sum(axis),
                          paired=True, vectorized=True, n_resamples=N_RESAMPLES, method="percentile",
                          rng=np.random.default_rng(4)).confidence_interval
    assert (mine["ci_low"], mine["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert mine["value"] == pytest.approx(b.sum() / den.sum() - a.sum() / den.sum(), abs=1e-15)
    width = lambda s: s["ci_high"] - s["ci_low"]
    assert width(mine) < width(bootstrap_ratio(a, den, seed=4)) + width(bootstrap_ratio(b, den, seed=4))


@pytest.mark.parametrize("n", [1, 4, 9, 20, 50])
def test_wilcoxon_exact_matches_scipy(n):
    d = np.random.default_rng(n).normal(0.03, 0.1, n)
    mine, ref = wilcoxon_signed_rank(d), stats.wilcoxon(d, method="exact")
    assert mine["method"] == "exact" and mine["n"] == n
    assert mine["p"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert min(mine["statistic"], n * (n + 1) / 2 - mine["statistic"]) == pytest.approx(ref.statistic)
    assert mine["p"] == pytest.approx(stats.wilcoxon(d).pvalue, abs=1e-12)  # scipy's default chooses the same


@pytest.mark.parametrize("sample", [
    [0.1, -0.1, 0.2, 0.2, 0.0, 0.3, 0.3, 0.3, -0.05, 0.4, 0.0, 0.25],   # ties and zeros
    list(np.round(np.random.default_rng(3).normal(0.02, 0.1, 60), 3)),  # n > 50
    [0.5] * 7 + [-0.5] * 2,                                              # one tie group of each sign
])
def test_wilcoxon_normal_approximation_matches_scipy(sample):
    d = np.asarray(sample, float)
    mine, ref = wilcoxon_signed_rank(d), stats.wilcoxon(d, method="approx")
    assert mine["method"] == "normal approximation" and mine["n"] == int(np.count_nonzero(d))
    assert mine["p"] == pytest.approx(ref.pvalue, abs=1e-12)


def test_results_table_pools_patients_and_tests_pairs():
    rng = np.random.default_rng(8)
    folds = {"unoptimised": [], "optimised": []}
    ease = {f"P{k}": rng.uniform(0.2, 0.8) for k in range(15)}
    for variant, shift in (("unoptimised", 0.0), ("optimised", 0.15)):
        for f in range(3):
            per = {}
            for k in range(f * 5, f * 5 + 5):
                d = float(np.clip(ease[f"P{k}"] + shift + rng.normal(0, 0.05), 0, 1))
                per[f"P{k}"] = {"dice_case": [d, 1, 0], "slice_accuracy": [30 + int(10 * d), 40, 33]}
            folds[variant].append({"per_case": per, "dice_case": np.mean([p["dice_case"][0] for p in per.values()])})
    t = results_table("lidc", folds).set_index("key")
    un, op = (patient_parts(folds[v], "dice_case") for v in ("unoptimised", "optimised"))
    assert t.loc["dice_case", "optimised_value"] == pytest.approx(op.num.mean())
    assert t.loc["dice_case", "optimised_n"] == 15 and t.loc["dice_case", "optimised_folds"] == 3
    assert t.loc["dice_case", "p"] == pytest.approx(stats.wilcoxon(op.num - un.num).pvalue, abs=1e-12)
    assert t.loc["dice_case", "diff_ci_low"] > 0                      # the shift of 0.15 is found
    assert t.loc["slice_accuracy", "nothing"] == pytest.approx(33 / 40)
    assert t.loc["dice_case", "optimised_verdict"] == "ours lower"   # paper: 0.894; ours ~0.65
    assert compare(un, op)["p_n"] == 15


def test_verdict_rules():
    s = dict(value=0.85, ci_low=0.80, ci_high=0.90, n=20)
    assert verdict(0.812, s, others=[0.894]) == "inconclusive (CI holds both of the paper's columns)"
    assert verdict(0.812, s, others=[0.95]) == "agrees (inside our CI)"
    assert verdict(0.95, s) == "ours lower" and verdict(0.7, s) == "ours higher"
    assert verdict(0.91, dict(value=1.0, ci_low=1.0, ci_high=1.0, n=20), nothing=1.0).endswith("predicting nothing scores as much")

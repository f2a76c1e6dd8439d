"""Metrics against cases worked by hand."""

import numpy as np
import pytest

from tfp_abml import metrics


def test_accuracy_interval_is_1_96_standard_errors():
    mean, half = metrics.accuracy_interval([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and half == pytest.approx(1.96 * 0.5 / 2)


def test_nll_and_brier_by_hand():
    p = np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]])
    y = np.array([[0, 2]])
    assert metrics.nll(p, y) == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2)
    assert metrics.brier(p, y) == pytest.approx(((0.25 + 0.0625 + 0.0625) + (0.01 + 0.64 + 0.81)) / 2)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    # 10 predictions at confidence 0.7, 7 of them right: perfectly calibrated.
    p = np.tile([0.7, 0.3], (10, 1))
    y = np.array([0] * 7 + [1] * 3)
    assert metrics.expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    # Confident (0.95) and right half the time: ECE = |0.5 - 0.95|.
    p = np.tile([0.95, 0.05], (10, 1))
    y = np.array([0, 1] * 5)
    assert metrics.expected_calibration_error(p, y) == pytest.approx(0.45)


def test_ece_weights_bins_by_their_counts():
    p = np.array([[0.95, 0.05]] * 3 + [[0.55, 0.45]])
    y = np.array([0, 0, 0, 1])  # bin 0.95: acc 1 (gap 0.05, 3 items); bin 0.55: acc 0 (gap 0.55, 1 item)
    assert metrics.expected_calibration_error(p, y) == pytest.approx((3 * 0.05 + 0.55) / 4)


def test_auroc_perfect_chance_and_ties():
    assert metrics.auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert metrics.auroc([0, 1], [2, 3]) == 0.0
    assert metrics.auroc([1, 1], [1, 1]) == 0.5
    assert metrics.auroc([2, 1], [1, 0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    rng = np.random.default_rng(0)
    assert metrics.auroc(rng.normal(size=4000), rng.normal(size=4000)) == pytest.approx(0.5, abs=0.03)


def test_reliability_diagram_is_written(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(20, 15))
    y = rng.integers(0, 5, size=(20, 15))
    metrics.plot_reliability({"model": (p, y)}, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_selective_accuracy_keeps_the_most_confident():
    # Confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong).
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    assert metrics.selective_accuracy(p, y, 0.5) == 0.5
    assert metrics.selective_accuracy(p, y, 0.25) == 1.0
    assert metrics.selective_accuracy(p, y, 1.0) == 0.5


def test_risk_coverage_auc_by_hand():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    # Errors among the k most confident: 0, 1, 1, 2 -> risks 0, 1/2, 1/3, 2/4.
    assert metrics.risk_coverage_auc(p, y) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    # Every error less confident than every right answer: the lowest AURC for two errors in four.
    y_sorted = np.array([0, 1, 1, 0])  # right: 0.9, 0.8; wrong: 0.7, 0.6
    assert metrics.risk_coverage_auc(p, y_sorted) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)


def test_fpr_at_95_tpr():
    positives = np.arange(100, 200)  # the threshold that keeps 95 of them: 105
    assert metrics.fpr_at_tpr(positives, np.arange(0, 100)) == 0.0
    assert metrics.fpr_at_tpr(positives, np.array([104, 105, 106, 300])) == 0.75
    assert metrics.fpr_at_tpr([1.0, 1.0], [1.0, 0.0]) == 0.5


def test_bootstrap_intervals_cover_the_statistic_and_shrink_with_more_tasks():
    rng = np.random.default_rng(0)

    def tasks(count):
        p = rng.dirichlet(np.ones(5) * 0.5, size=(count, 15))
        return p, rng.integers(0, 5, size=(count, 15))

    widths = []
    for count in (50, 800):
        p, y = tasks(count)
        bounds = metrics.bootstrap_intervals(p, y, resamples=400, seed=1)
        for name, value in (("nll", metrics.nll(p, y)), ("brier", metrics.brier(p, y)),
                            ("ece", metrics.expected_calibration_error(p, y))):
            low, high = bounds[name]
            assert low <= value <= high, (name, count, low, value, high)
        widths.append(bounds["nll"][1] - bounds["nll"][0])
    assert widths[1] < widths[0] / 2  # 16x the tasks: about a quarter of the width
    # Seeded: the same call gives the same interval.
    assert metrics.bootstrap_intervals(p, y, resamples=50, seed=3) == metrics.bootstrap_intervals(p, y, resamples=50, seed=3)


def test_bootstrap_resample_of_all_tasks_once_equals_the_statistic():
    # With one resample whose weights are all 1 the sums-based statistics must equal the direct ones:
    # a planted error in the per-task sums (a wrong bin, a missing square) breaks this.
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), size=(30, 8))
    y = rng.integers(0, 4, size=(30, 8))
    log_loss, squares, counts, confidence, correct, per_task = metrics._task_statistics(p, y, metrics.ECE_BINS)
    total = 30 * per_task
    assert log_loss.sum() / total == pytest.approx(metrics.nll(p, y))
    assert squares.sum() / total == pytest.approx(metrics.brier(p, y))
    ece = np.abs(correct.sum(0) - confidence.sum(0)).sum() / counts.sum()
    assert ece == pytest.approx(metrics.expected_calibration_error(p, y))


def test_summarize_reports_intervals_and_selective_measures():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(20, 15))
    y = rng.integers(0, 5, size=(20, 15))
    s = metrics.summarize(p, y)
    for key in ("nll_ci95", "brier_ci95", "ece_ci95", "accuracy_at_50_coverage", "accuracy_at_80_coverage",
                "accuracy_at_90_coverage", "aurc"):
        assert key in s
    assert s["nll_ci95"][0] <= s["nll"] <= s["nll_ci95"][1]
    assert "nll_ci95" not in metrics.summarize(p, y, intervals=False)


def test_paired_nll_difference_is_the_difference_of_the_nlls_with_a_paired_interval():
    rng = np.random.default_rng(4)
    # Tasks of very different difficulty: per-task NLL varies a lot, but b is a slightly sharpened a
    # (sharpened towards the label) on every task, so the difference is small and consistent.
    labels = rng.integers(0, 5, size=(200, 10))
    temperature = rng.uniform(0.3, 3.0, size=(200, 1, 1))
    logits = rng.normal(size=(200, 10, 5)) / temperature
    a = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    better_logits = logits + 0.05 * np.eye(5)[labels]
    b = np.exp(better_logits) / np.exp(better_logits).sum(-1, keepdims=True)
    d = metrics.paired_nll_difference(b, a, labels, seed=0)
    assert d["difference"] == pytest.approx(metrics.nll(b, labels) - metrics.nll(a, labels))
    low, high = d["ci95"]
    assert low <= d["difference"] <= high < 0  # b is better on every task: beyond the noise
    # Paired: the interval of the difference is far narrower than the NLL's own interval over tasks.
    # Resampling the two predictions' tasks independently (a planted unpaired bootstrap) would not be.
    nll_low, nll_high = metrics.bootstrap_intervals(a, labels, seed=0)["nll"]
    assert high - low < (nll_high - nll_low) / 10
    same = metrics.paired_nll_difference(a, a, labels)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0]}
    assert metrics.paired_nll_difference(b, a, labels, seed=1) == metrics.paired_nll_difference(b, a, labels, seed=1)

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

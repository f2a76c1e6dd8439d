"""Temperature scaling: the fitted temperature undoes a known one, and lowers NLL on held-out data."""

import numpy as np
import pytest

from tfp_abml import calibration, metrics


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _calibrated_tasks(seed, count=400):
    """Predictions calibrated by construction: labels drawn from the predicted probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(count, 10, 5))
    p = _softmax(logits)
    y = np.array([[rng.choice(5, p=row) for row in task] for task in p])
    return logits, y


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_recovers_the_temperature_that_miscalibrated_the_model(true_temperature):
    logits, y = _calibrated_tasks(0)
    miscalibrated = _softmax(logits / true_temperature)  # the model's (wrong) confidence
    fitted = calibration.fit_temperature(miscalibrated, y)
    # softmax(log p / T) with T = 1 / true_temperature restores the calibrated logits.
    assert fitted == pytest.approx(1.0 / true_temperature, rel=0.1)
    held_out_logits, held_out_y = _calibrated_tasks(1)
    held_out = _softmax(held_out_logits / true_temperature)
    assert metrics.nll(calibration.apply_temperature(held_out, fitted), held_out_y) < metrics.nll(held_out, held_out_y) - 0.02


def test_temperature_keeps_the_predicted_class_and_one_is_the_identity():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(7, 3))
    for t in (0.3, 1.0, 4.0):
        scaled = calibration.apply_temperature(p, t)
        np.testing.assert_array_equal(scaled.argmax(-1), p.argmax(-1))
        np.testing.assert_allclose(scaled.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(calibration.apply_temperature(p, 1.0), p, rtol=1e-9)


def test_tensorflow_temperature_matches_numpy():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=(6,))
    np.testing.assert_allclose(calibration.apply_temperature_tf(tf.constant(p), 1.7).numpy(),
                               calibration.apply_temperature(p, 1.7), rtol=1e-9)


def test_fit_refuses_no_predictions():
    with pytest.raises(ValueError, match="no predictions"):
        calibration.fit_temperature(np.zeros((0, 5)), np.zeros((0,), int))

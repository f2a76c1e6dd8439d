"""Temperature scaling (Guo et al., 2017): one scalar ``T`` that softens or sharpens a prediction.

``p_T = softmax(log p / T)``. For a model whose probabilities are a softmax of logits ``z``,
``log p = z - logsumexp(z)`` differs from ``z`` by a per-query constant, so this is exactly
Guo et al.'s ``softmax(z / T)``; for the posterior predictive (a mean of softmaxes) it scales the
log of the mean. ``T`` is fitted by minimising the NLL on *validation* tasks (never test tasks):
``T > 1`` for an overconfident model, ``T < 1`` for an underconfident one. Accuracy is unchanged
(``T > 0`` keeps the order of the classes).

A run's temperatures live in ``RUN/calibration.json`` (``training.evaluate --calibrate`` writes
it), one per named prediction; :func:`tfp_abml.runs.load_run` reads them onto the model, and the
SavedModel export applies the served prediction's temperature inside the graph.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_FILE = "calibration.json"
# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from 1/20 to 20.
LOG_T_BOUND = 3.0


def apply_temperature(probabilities, temperature):
    """``softmax(log p / T)`` over the last axis (numpy, float64 inside)."""
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), 1e-12)) / float(temperature)
    logits -= logits.max(-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(-1, keepdims=True)


def apply_temperature_tf(probabilities, temperature):
    """:func:`apply_temperature` in TensorFlow, for the serving graph (same dtype as ``probabilities``)."""
    import tensorflow as tf

    logits = tf.math.log(tf.maximum(probabilities, tf.constant(1e-12, probabilities.dtype)))
    return tf.nn.softmax(logits / tf.constant(temperature, probabilities.dtype), axis=-1)


def served_temperature(model):
    """The temperature of the prediction ``model`` serves (``model.temperatures``, from its run's
    calibration, keyed by ``model.served_prediction``); 1.0 when it has none."""
    return float(getattr(model, "temperatures", {}).get(model.served_prediction, 1.0))


def _nll(probabilities, labels, temperature):
    scaled = apply_temperature(probabilities, temperature)
    picked = np.take_along_axis(scaled, labels[..., None], axis=-1)[..., 0]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def fit_temperature(probabilities, labels):
    """The ``T`` minimising the NLL of ``softmax(log p / T)`` on ``(probabilities, labels)``.

    A bounded scalar search over ``log T`` (the NLL is convex in ``1 / T`` for softmax logits,
    so there is one minimum). Raises ``ValueError`` on empty input.
    """
    from scipy.optimize import minimize_scalar

    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels)
    if probabilities.size == 0:
        raise ValueError("no predictions to fit a temperature on")
    result = minimize_scalar(lambda log_t: _nll(probabilities, labels, np.exp(log_t)),
                             bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))

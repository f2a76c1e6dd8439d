"""Evaluation metrics for few-shot predictions: accuracy with its interval, NLL, Brier, ECE, AUROC.

All functions take numpy arrays: ``probabilities [..., N]`` (rows sum to 1) and integer
``labels [...]``.

* accuracy over tasks, with the usual 95% interval ``1.96 * std / sqrt(tasks)``;
* NLL ``-mean log p(y)``, floored at ``1e-12``;
* Brier score ``mean sum_n (p_n - [y = n])^2`` (0 perfect, 2 worst);
* expected calibration error (Guo et al., 2017) over ``bins`` equal-width confidence bins,
  ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` with confidence = max probability;
* AUROC of a score separating two groups (Mann-Whitney U, ties counted half);
* predictive entropy and, from posterior draws, mutual information (the epistemic part).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def accuracy_interval(task_accuracies):
    """Mean accuracy over tasks and the half-width of its 95% confidence interval."""
    values = np.asarray(task_accuracies, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / np.sqrt(len(values)))


def nll(probabilities, labels):
    picked = np.take_along_axis(probabilities, labels[..., None], axis=-1)[..., 0]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def brier(probabilities, labels):
    one_hot = np.eye(probabilities.shape[-1])[labels]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=-1)))


def reliability_bins(probabilities, labels, bins=ECE_BINS):
    """Per equal-width confidence bin: (count, mean confidence, accuracy); empty bins give NaN."""
    confidence = probabilities.max(-1).ravel()
    correct = (probabilities.argmax(-1) == labels).ravel()
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return counts, mean_conf, accuracy


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
    counts, confidence, accuracy = reliability_bins(probabilities, labels, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] / counts.sum() * np.abs(accuracy[filled] - confidence[filled])))


def auroc(positive_scores, negative_scores):
    """P(score of a positive > score of a negative), ties half: the area under the ROC curve."""
    pos, neg = np.asarray(positive_scores, np.float64).ravel(), np.asarray(negative_scores, np.float64).ravel()
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties averaged
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def entropy(probabilities):
    """Predictive entropy ``-sum_n p_n log p_n`` in nats (0: certain; log N: uniform)."""
    return -np.sum(probabilities * np.log(np.maximum(probabilities, 1e-12)), axis=-1)


def mutual_information(draws):
    """Mutual information between the prediction and the weights, from ``[S, ..., N]`` draws.

    ``H(mean_s p_s) - mean_s H(p_s)`` (Houlsby et al., 2011; Depeweg et al., 2018): the part of
    the predictive entropy that comes from disagreement between posterior draws, the epistemic
    uncertainty. 0 when every draw predicts alike; at most ``log N``. Floored at 0 against round-off.
    """
    draws = np.asarray(draws, np.float64)
    return np.maximum(entropy(draws.mean(axis=0)) - entropy(draws).mean(axis=0), 0.0)


def summarize(probabilities, labels):
    """Accuracy (with interval), NLL, Brier and ECE of ``[tasks, M, N]`` predictions."""
    task_accuracy = (probabilities.argmax(-1) == labels).mean(axis=-1)
    mean, half_width = accuracy_interval(task_accuracy)
    return {"accuracy": mean, "accuracy_ci95": half_width, "nll": nll(probabilities, labels),
            "brier": brier(probabilities, labels), "ece": expected_calibration_error(probabilities, labels)}


def plot_reliability(curves, path, bins=ECE_BINS, title=""):
    """Write a reliability diagram (accuracy vs confidence per bin) for one or more predictions.

    ``curves`` maps a legend label to ``(probabilities, labels)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5), dpi=120)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for label, (probabilities, labels) in curves.items():
        counts, confidence, accuracy = reliability_bins(probabilities, labels, bins)
        filled = counts > 0
        ece = expected_calibration_error(probabilities, labels, bins)
        axis.plot(confidence[filled], accuracy[filled], marker="o", label=f"{label} (ECE {100 * ece:.1f}%)")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
             title=title or f"Reliability, {bins} equal-width bins")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

"""Evaluation metrics for few-shot predictions: accuracy with its interval, NLL, Brier, ECE, AUROC.

All functions take numpy arrays: ``probabilities [..., N]`` (rows sum to 1) and integer
``labels [...]``.

* accuracy over tasks, with the usual 95% interval ``1.96 * std / sqrt(tasks)``;
* NLL ``-mean log p(y)``, floored at ``1e-12``;
* Brier score ``mean sum_n (p_n - [y = n])^2`` (0 perfect, 2 worst);
* expected calibration error (Guo et al., 2017) over ``bins`` equal-width confidence bins,
  ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` with confidence = max probability;
* AUROC of a score separating two groups (Mann-Whitney U, ties counted half);
* predictive entropy and, from posterior draws, mutual information (the epistemic part);
* selective prediction (El-Yaniv & Wiener, 2010; Geifman & El-Yaniv, 2017): the accuracy of the
  ``c`` most confident predictions at coverage ``c``, and the area under the risk-coverage curve
  (AURC: the error rate of the ``k`` most confident, averaged over ``k``; lower is better);
* the false-positive rate at 95% true-positive rate of an out-of-distribution score (Hendrycks &
  Gimpel, 2017): the share of in-distribution queries flagged when 95% of the others are;
* bootstrap 95% intervals over tasks (the task is the unit that was sampled) of NLL, Brier, ECE,
  and of the NLL difference between two predictions on the same tasks (paired: each resample takes
  both predictions of the same tasks, so what the tasks share cancels).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
COVERAGES = (0.5, 0.8, 0.9)
BOOTSTRAP_RESAMPLES = 1000


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


def selective_accuracy(probabilities, labels, coverage):
    """Accuracy of the ``coverage`` share of predictions with the highest confidence (max probability)."""
    confidence = probabilities.max(-1).ravel()
    correct = (probabilities.argmax(-1) == labels).ravel()
    keep = max(int(round(coverage * confidence.size)), 1)
    order = np.argsort(-confidence, kind="stable")
    return float(correct[order[:keep]].mean())


def risk_coverage_auc(probabilities, labels):
    """Area under the risk-coverage curve: the error rate of the ``k`` most confident predictions,
    averaged over ``k = 1..n`` (0 when every error is less confident than every right answer)."""
    confidence = probabilities.max(-1).ravel()
    wrong = (probabilities.argmax(-1) != labels).ravel()
    errors = np.cumsum(wrong[np.argsort(-confidence, kind="stable")])
    return float(np.mean(errors / np.arange(1, errors.size + 1)))


def fpr_at_tpr(positive_scores, negative_scores, tpr=0.95):
    """Share of negatives scoring at or above the threshold that ``tpr`` of the positives reach."""
    pos, neg = np.asarray(positive_scores, np.float64).ravel(), np.asarray(negative_scores, np.float64).ravel()
    threshold = np.sort(pos)[::-1][max(int(np.ceil(tpr * pos.size)) - 1, 0)]
    return float(np.mean(neg >= threshold))


def ood_scores(probabilities, draws=None):
    """Scores that should be higher for queries of classes absent from the support set: one minus
    the max probability, the predictive entropy and, given ``[S, ..., N]`` draws, mutual information."""
    scores = {"max_probability": 1.0 - probabilities.max(-1), "entropy": entropy(probabilities)}
    if draws is not None:
        scores["mutual_information"] = mutual_information(draws)
    return scores


def _task_statistics(probabilities, labels, bins):
    """Per task: summed log-loss, Brier and per-bin (count, confidence, correct) sums; prediction count."""
    tasks = probabilities.shape[0]
    flat_p = probabilities.reshape(tasks, -1, probabilities.shape[-1])
    flat_y = labels.reshape(tasks, -1)
    picked = np.take_along_axis(flat_p, flat_y[..., None], axis=-1)[..., 0]
    log_loss = -np.log(np.maximum(picked, 1e-12)).sum(-1)
    squares = ((flat_p - np.eye(flat_p.shape[-1])[flat_y]) ** 2).sum((-1, -2))
    confidence = flat_p.max(-1)
    correct = (flat_p.argmax(-1) == flat_y).astype(np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    one_hot = np.eye(bins)[index]  # [T, M, bins]
    return (log_loss, squares, one_hot.sum(1), (one_hot * confidence[..., None]).sum(1),
            (one_hot * correct[..., None]).sum(1), flat_y.shape[1])


def bootstrap_intervals(probabilities, labels, resamples=BOOTSTRAP_RESAMPLES, seed=0, bins=ECE_BINS):
    """2.5th and 97.5th percentiles of NLL, Brier and ECE over ``resamples`` resamplings of the tasks
    (axis 0 of ``[tasks, M, N]``) with replacement, seeded. Each statistic is recomputed from the
    resampled tasks' sums, so a resample costs a matrix product, not a pass over the predictions."""
    log_loss, squares, counts, confidence, correct, per_task = _task_statistics(probabilities, labels, bins)
    tasks = log_loss.shape[0]
    weights = np.random.default_rng(seed).multinomial(tasks, np.full(tasks, 1.0 / tasks), size=resamples)
    total = tasks * per_task
    bin_counts, bin_confidence, bin_correct = weights @ counts, weights @ confidence, weights @ correct
    values = {"nll": weights @ log_loss / total, "brier": weights @ squares / total,
              "ece": np.abs(bin_correct - bin_confidence).sum(-1) / bin_counts.sum(-1)}
    return {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for name, v in values.items()}


def task_nll(probabilities, labels):
    """Mean log-loss of each task's predictions: ``[tasks]`` from ``[tasks, M, N]``."""
    return _task_statistics(probabilities, labels, 1)[0] / np.prod(labels.shape[1:])


def paired_nll_difference(probabilities, reference, labels, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """NLL of ``probabilities`` minus NLL of ``reference`` on the same ``[tasks, M, N]`` tasks, with
    the percentile bootstrap 95% interval of that difference over tasks (both predictions of a task
    resampled together). Negative: ``probabilities`` is better; better beyond the noise of the task
    sample when the whole interval is below zero.

    Returns ``{"difference", "ci95": [low, high]}``.
    """
    per_task = task_nll(probabilities, labels) - task_nll(reference, labels)
    tasks = per_task.shape[0]
    weights = np.random.default_rng(seed).multinomial(tasks, np.full(tasks, 1.0 / tasks), size=resamples)
    resampled = weights @ per_task / tasks
    return {"difference": float(per_task.mean()),
            "ci95": [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]}


def summarize(probabilities, labels, intervals=True, seed=0):
    """Accuracy (with interval), NLL, Brier and ECE (with bootstrap intervals unless ``intervals``
    is false), mean confidence, selective accuracy at :data:`COVERAGES` and AURC of ``[tasks, M, N]``
    predictions."""
    task_accuracy = (probabilities.argmax(-1) == labels).mean(axis=-1)
    mean, half_width = accuracy_interval(task_accuracy)
    scores = {"accuracy": mean, "accuracy_ci95": half_width, "nll": nll(probabilities, labels),
              "brier": brier(probabilities, labels), "ece": expected_calibration_error(probabilities, labels),
              "mean_confidence": float(probabilities.max(-1).mean())}
    if intervals:
        scores.update({f"{name}_ci95": bounds for name, bounds in bootstrap_intervals(probabilities, labels,
                                                                                       seed=seed).items()})
    scores.update({f"accuracy_at_{round(100 * c)}_coverage": selective_accuracy(probabilities, labels, c)
                   for c in COVERAGES})
    scores["aurc"] = risk_coverage_auc(probabilities, labels)
    return scores


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

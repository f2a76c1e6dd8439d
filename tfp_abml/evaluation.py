"""Evaluate a trained few-shot learner on fresh tasks: accuracy with CI, NLL, Brier, ECE, OOD AUROC.

Selective prediction and bootstrap intervals: :mod:`tfp_abml.metrics`; temperature scaling fitted on
validation tasks: :func:`fit_temperatures`; tasks under corruption: ``evaluate_run(corruption=...)``.

Two passes over seeded tasks of the evaluation split:

1. *In-distribution*: ``tasks`` N-way K-shot tasks; every prediction the model offers
   (``EpisodicModel.evaluation_predictions``: the point prediction of a baseline, or the
   posterior predictive and the mean-weight prediction of the Bayesian model) is scored.
2. *Out-of-distribution*: ``tasks`` 2N-way tasks whose first N classes form the task (support
   and queries) and whose other N classes give queries from classes absent from the support
   set. The predictive entropy should be higher on those; the AUROC of entropy separating
   them from the in-task queries measures how well the model knows what it does not know
   (also one minus the max probability and, for the posterior predictive, mutual information,
   each with its false-positive rate at 95% true-positive rate).

A model's ``paired_predictions`` (``{prediction: reference}``, the Bayesian model's posterior
predictive against its posterior means) add to the prediction's scores ``nll_difference``: its NLL
minus the reference's on the same tasks, with a paired bootstrap interval
(:func:`tfp_abml.metrics.paired_nll_difference`), raw and temperature-scaled alike.
"""

from __future__ import annotations

import dataclasses
import sys
import weakref

import numpy as np

from tfp_abml import metrics

# Evaluation tasks are drawn with seeds far from the training (seed) and validation streams.
EVALUATION_SEED_OFFSET = 2_000_003


def episode_batches(sampler, tasks, meta_batch):
    """``(inputs, query_labels)`` meta-batches of ``sampler`` covering ``tasks`` tasks (the last one
    filled up with further tasks: callers keep the first ``tasks``)."""
    from tfp_abml.data import episode_dataset

    return episode_dataset(sampler, meta_batch, episodes=-(-tasks // meta_batch) * meta_batch)


# One traced prediction function per (model, samples): a benchmark that evaluates the same model on
# many task sets (corruptions, severities) traces it once.
_FUNCTIONS = weakref.WeakKeyDictionary()


def _prediction_function(model, samples):
    import tensorflow as tf

    functions = _FUNCTIONS.setdefault(model, {})
    if samples not in functions:
        functions[samples] = tf.function(lambda inputs: model.evaluation_predictions(inputs, samples, with_draws=True))
    return functions[samples]


class Ensemble:
    """A deep ensemble (Lakshminarayanan et al., 2017): the mean of its members' served predictions.

    ``models`` are trained runs' models for the same task shape (e.g. one method from several
    seeds). Evaluates like a model: ``evaluation_predictions`` gives ``{"prediction": mean}`` and,
    with ``with_draws``, the members' predictions as the draws (their disagreement is the
    ensemble's mutual information).
    """

    served_prediction = "prediction"

    def __init__(self, models):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = list(models)
        self.ways = self.models[0].ways

    def evaluation_predictions(self, inputs, samples=None, with_draws=False):
        import tensorflow as tf

        members = tf.stack([model.predict_episode(inputs) for model in self.models])
        predictions = {"prediction": tf.reduce_mean(members, axis=0)}
        return (predictions, {"prediction": members}) if with_draws else predictions


def _predict(model, sampler, tasks, meta_batch, samples, transform, progress):
    """Named probabilities ``[tasks, M, N]``, mutual information ``[tasks, M]`` of the predictions
    that are means of posterior draws, and the query labels."""
    predict = _prediction_function(model, samples)
    outputs, information, labels = {}, {}, []
    for inputs, query_labels in episode_batches(sampler, tasks, meta_batch):
        inputs, query_labels = transform(inputs, query_labels)
        predictions, draws = predict(inputs)
        for name, probabilities in predictions.items():
            outputs.setdefault(name, []).append(probabilities.numpy())
        for name, sample_probabilities in draws.items():
            information.setdefault(name, []).append(metrics.mutual_information(sample_probabilities.numpy()))
        labels.append(query_labels.numpy())
        if progress is not None:
            progress.add(len(labels[-1]))
    gather = lambda d: {k: np.concatenate(v)[:tasks] for k, v in d.items()}
    return gather(outputs), gather(information), np.concatenate(labels)[:tasks]


def scaled_name(name):
    """The name of prediction ``name`` after temperature scaling."""
    return f"{name}_temperature_scaled"


def _with_temperatures(probabilities, temperatures):
    from tfp_abml.calibration import apply_temperature

    scaled = {scaled_name(name): apply_temperature(probabilities[name], t)
              for name, t in (temperatures or {}).items() if name in probabilities}
    return {**probabilities, **scaled}


def _pairs(model, probabilities):
    """(prediction, reference) pairs of ``model.paired_predictions`` present in ``probabilities``,
    raw with raw and temperature-scaled with temperature-scaled."""
    for name, reference in getattr(model, "paired_predictions", {}).items():
        for rename in (lambda n: n, scaled_name):
            if rename(name) in probabilities and rename(reference) in probabilities:
                yield rename(name), rename(reference)


def evaluate(model, sampler, ood_sampler=None, tasks=600, meta_batch=4, samples=None, progress=True,
             temperatures=None, seed=0):
    """Scores of ``model`` on ``tasks`` tasks of ``sampler``; OOD scores on ``ood_sampler`` (2N ways).

    Every named prediction is scored by :func:`tfp_abml.metrics.summarize` (bootstrap intervals
    seeded by ``seed``); ``temperatures`` (``{name: T}``) add each named prediction temperature-scaled
    as ``<name>_temperature_scaled``. The OOD pass scores, per prediction, how well one minus the max
    probability, the entropy and (for a posterior predictive) the mutual information separate queries
    of absent classes from the task's own: ``ood[score] = {"auroc", "fpr_at_95_tpr"}``, and
    ``ood_auroc`` the entropy's AUROC.

    Returns ``{"tasks", "ways", "shots", "queries", "predictions": {name: scores},
    "probabilities": {name: [tasks, M, N]}, "mutual_information": {name: [tasks, M]}, "labels": [tasks, M]}``.
    """
    import keras

    ways, shots = sampler.ways, sampler.shots
    bar = keras.utils.Progbar((2 if ood_sampler else 1) * tasks, unit_name="task") if progress else None
    probabilities, information, labels = _predict(model, sampler, tasks, meta_batch, samples, lambda x, y: (x, y), bar)
    probabilities = _with_temperatures(probabilities, temperatures)
    result = {"tasks": tasks, "ways": ways, "shots": shots, "queries": sampler.queries,
              "predictions": {name: metrics.summarize(p, labels, seed=seed) for name, p in probabilities.items()},
              "probabilities": probabilities, "mutual_information": information, "labels": labels}
    for name, reference in _pairs(model, probabilities):
        result["predictions"][name]["nll_difference"] = {
            "reference": reference, **metrics.paired_nll_difference(probabilities[name], probabilities[reference],
                                                                    labels, seed=seed)}
    if ood_sampler is not None:
        if ood_sampler.ways != 2 * ways or ood_sampler.shots != shots:
            raise ValueError("the OOD sampler must draw 2N-way tasks with the same shots")

        def in_task_support(inputs, query_labels):  # support: label-major, so the first N*K rows
            inputs = dict(inputs, support_images=inputs["support_images"][:, : ways * shots],
                          support_labels=inputs["support_labels"][:, : ways * shots])
            return inputs, query_labels

        ood_probabilities, ood_information, ood_labels = _predict(model, ood_sampler, tasks, meta_batch, samples,
                                                                  in_task_support, bar)
        ood_probabilities = _with_temperatures(ood_probabilities, temperatures)
        outside = ood_labels >= ways
        for name, p in ood_probabilities.items():
            scores = metrics.ood_scores(p)
            if name in ood_information:
                scores["mutual_information"] = ood_information[name]
            result["predictions"][name]["ood"] = {
                score: {"auroc": metrics.auroc(v[outside], v[~outside]),
                        "fpr_at_95_tpr": metrics.fpr_at_tpr(v[outside], v[~outside])} for score, v in scores.items()}
            result["predictions"][name]["ood_auroc"] = result["predictions"][name]["ood"]["entropy"]["auroc"]
    return result


def task_sampler(config, split="test", seed=0, ways=None, corruption=None, severity=None):
    """The seeded evaluation sampler of a run's ``config`` (``ways`` if given), optionally corrupted."""
    sampler = dataclasses.replace(config, ways=ways or config.ways).sampler(split, seed=EVALUATION_SEED_OFFSET + seed)
    if corruption is not None:
        from tfp_abml.data.corruptions import CorruptedSampler

        sampler = CorruptedSampler(sampler, corruption, severity, seed=seed)
    return sampler


def evaluate_run(config, model, split="test", tasks=600, seed=0, samples=None, ood=True, progress=True,
                 corruption=None, severity=None, temperatures=None):
    """:func:`evaluate` on the seeded tasks of ``split`` for a run's ``config`` (plus 2N-way OOD tasks).

    ``corruption`` and ``severity`` (:mod:`tfp_abml.data.corruptions`) corrupt every image of the
    same tasks. ``temperatures`` default to the run's (``model.temperatures``, from its calibration).
    """
    if temperatures is None:
        temperatures = getattr(model, "temperatures", None)
    sampler = task_sampler(config, split, seed, corruption=corruption, severity=severity)
    ood_sampler = None
    if ood:
        ood_sampler = task_sampler(config, split, seed + 1, ways=2 * config.ways, corruption=corruption,
                                   severity=severity)
    return evaluate(model, sampler, ood_sampler, tasks=tasks, meta_batch=config.meta_batch, samples=samples,
                    progress=progress, temperatures=temperatures, seed=seed)


def fit_temperatures(config, model, tasks=300, seed=0, samples=None, progress=True):
    """Temperatures of every named prediction, fitted by NLL on ``tasks`` seeded validation tasks.

    Returns the record :func:`tfp_abml.runs.save_calibration` writes: ``{"temperatures": {name: T},
    "weights" (the model's ``loaded_weights``), "split": "val", "tasks", "seed", "trained_on_split" (a
    --trainval run: true, with a warning on stderr), "nll_before": {...}, "nll_after": {...}}``.
    """
    from tfp_abml.calibration import apply_temperature, fit_temperature

    import keras

    seen = bool(getattr(config, "trainval", False))
    if seen:  # stderr: the fitted temperature is the caller's result
        print("warning: this run trained on its validation classes (--trainval), so the temperature is fitted "
              "on classes the model has seen; expect it to be too low (overconfident) for new classes",
              file=sys.stderr, flush=True)
    bar = keras.utils.Progbar(tasks, unit_name="validation task") if progress else None
    probabilities, _, labels = _predict(model, task_sampler(config, "val", seed), tasks, config.meta_batch, samples,
                                        lambda x, y: (x, y), bar)
    temperatures = {name: fit_temperature(p, labels) for name, p in probabilities.items()}
    return {"temperatures": temperatures, "weights": getattr(model, "loaded_weights", None), "split": "val",
            "tasks": tasks, "seed": seed, "trained_on_split": seen,
            "nll_before": {name: metrics.nll(p, labels) for name, p in probabilities.items()},
            "nll_after": {name: metrics.nll(apply_temperature(p, temperatures[name]), labels)
                          for name, p in probabilities.items()}}

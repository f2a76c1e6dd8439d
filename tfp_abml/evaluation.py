"""Evaluate a trained few-shot learner on fresh tasks: accuracy with CI, NLL, Brier, ECE, OOD AUROC.

Two passes over seeded tasks of the evaluation split:

1. *In-distribution*: ``tasks`` N-way K-shot tasks; every prediction the model offers
   (``EpisodicModel.evaluation_predictions``: the point prediction of a baseline, or the
   posterior predictive and the mean-weight prediction of the Bayesian model) is scored.
2. *Out-of-distribution*: ``tasks`` 2N-way tasks whose first N classes form the task (support
   and queries) and whose other N classes give queries from classes absent from the support
   set. The predictive entropy should be higher on those; the AUROC of entropy separating
   them from the in-task queries measures how well the model knows what it does not know.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfp_abml import metrics

# Evaluation tasks are drawn with seeds far from the training (seed) and validation streams.
EVALUATION_SEED_OFFSET = 2_000_003


def _batches(sampler, tasks, meta_batch):
    from tfp_abml.data import episode_dataset

    return episode_dataset(sampler, meta_batch, episodes=-(-tasks // meta_batch) * meta_batch)


def _predict(model, sampler, tasks, meta_batch, samples, transform, progress):
    import tensorflow as tf

    predict = tf.function(lambda inputs: model.evaluation_predictions(inputs, samples))
    outputs, labels = {}, []
    for inputs, query_labels in _batches(sampler, tasks, meta_batch):
        inputs, query_labels = transform(inputs, query_labels)
        for name, probabilities in predict(inputs).items():
            outputs.setdefault(name, []).append(probabilities.numpy())
        labels.append(query_labels.numpy())
        if progress is not None:
            progress.add(len(labels[-1]))
    return {k: np.concatenate(v)[:tasks] for k, v in outputs.items()}, np.concatenate(labels)[:tasks]


def evaluate(model, sampler, ood_sampler=None, tasks=600, meta_batch=4, samples=None, progress=True):
    """Scores of ``model`` on ``tasks`` tasks of ``sampler``; OOD AUROC on ``ood_sampler`` (2N ways).

    Returns ``{"tasks", "ways", "shots", "queries", "predictions": {name: scores},
    "probabilities": {name: [tasks, M, N]}, "labels": [tasks, M]}``.
    """
    import keras

    ways, shots = sampler.ways, sampler.shots
    bar = keras.utils.Progbar((2 if ood_sampler else 1) * tasks, unit_name="task") if progress else None
    probabilities, labels = _predict(model, sampler, tasks, meta_batch, samples, lambda x, y: (x, y), bar)
    result = {"tasks": tasks, "ways": ways, "shots": shots, "queries": sampler.queries,
              "predictions": {name: metrics.summarize(p, labels) for name, p in probabilities.items()},
              "probabilities": probabilities, "labels": labels}
    if ood_sampler is not None:
        if ood_sampler.ways != 2 * ways or ood_sampler.shots != shots:
            raise ValueError("the OOD sampler must draw 2N-way tasks with the same shots")

        def in_task_support(inputs, query_labels):  # support: label-major, so the first N*K rows
            inputs = dict(inputs, support_images=inputs["support_images"][:, : ways * shots],
                          support_labels=inputs["support_labels"][:, : ways * shots])
            return inputs, query_labels

        ood_probabilities, ood_labels = _predict(model, ood_sampler, tasks, meta_batch, samples,
                                                 in_task_support, bar)
        outside = ood_labels >= ways
        for name, p in ood_probabilities.items():
            score = metrics.entropy(p)
            result["predictions"][name]["ood_auroc"] = metrics.auroc(score[outside], score[~outside])
    return result


def evaluate_run(config, model, split="test", tasks=600, seed=0, samples=None, ood=True, progress=True):
    """:func:`evaluate` on the seeded tasks of ``split`` for a run's ``config`` (plus 2N-way OOD tasks)."""
    task_seed = EVALUATION_SEED_OFFSET + seed
    ood_sampler = dataclasses.replace(config, ways=2 * config.ways).sampler(split, seed=task_seed + 1) if ood else None
    return evaluate(model, config.sampler(split, seed=task_seed), ood_sampler, tasks=tasks,
                    meta_batch=config.meta_batch, samples=samples, progress=progress)

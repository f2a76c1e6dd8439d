"""Test-time choices of a trained Bayesian learner, measured on validation tasks: inner steps and posterior width.

    python benchmarks/test_time.py --data-dir ../shared/data --run runs/protocol-residual80/omniglot-60w1s-abml \
        --ways 5 20 --tasks 300 --inner-steps 5 10 --widths 0.5 1 2 4 8 --tag residual80

Two knobs a user could turn after training without retraining, each scored on seeded validation
tasks (never test tasks, so that what is picked here may be used at test):

* ``--inner-steps``: inner SGD steps at prediction (``eval_inner_steps``; training used the run's), with
  the support cross-entropy of the adapted posterior means, which tells how much the inner loop has
  left to fit (``--shots`` changes the shot count of the tasks);
* ``--widths``: every scale of the adapted posterior multiplied by ``w`` before the posterior
  predictive draws (``w = 1``: the posterior as learned; ``w -> 0``: the posterior means). A
  wider posterior softens the predictions where the logits depend most on the weights -- an
  input-dependent temperature, where temperature scaling is a global one. Laplace-approximation
  practice tunes the prior precision the same way (Immer et al., 2021; Daxberger et al., 2021).

For each setting: accuracy, NLL and ECE of the posterior means and of the predictive at every
width, and the predictive's NLL minus the means' on the same tasks with a paired bootstrap 95%
interval (:func:`tfp_abml.metrics.paired_nll_difference`). Writes
``benchmarks/results/test_time_omniglot[-TAG].json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"


def widened(params, width):
    """The posterior ``params`` (DenseParams per layer) with every scale multiplied by ``width``
    (kept above the scales' floor, where rho would be minus infinity)."""
    import tensorflow as tf

    from tfp_abml.flipout import SCALE_FLOOR, DenseParams, rho_from_scale, scale_from_rho

    wider = lambda rho: rho_from_scale(tf.maximum(width * scale_from_rho(rho), 2.0 * SCALE_FLOOR))
    return [DenseParams(layer.kernel_loc, wider(layer.kernel_rho), layer.bias_loc, wider(layer.bias_rho))
            for layer in params]


def predictions(model, widths, samples):
    """A traced function of a task batch: the posterior means' probabilities and the predictive's at each
    width, and ``"support nll"`` ``[T]``, each task's support cross-entropy under the adapted means (the inner
    loop's objective, without its noise: what is left for the inner steps to fit)."""
    import tensorflow as tf

    @tf.function
    def predict(inputs):
        params, support, support_labels, queries = model.adapt_and_embed(inputs, training=False)
        support_logits = model.head(support, params, mean_only=True)
        out = {"support nll": tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                   labels=support_labels, logits=support_logits), axis=-1),
               "means": tf.nn.softmax(model.head(queries, params, mean_only=True))}
        for width in widths:
            out[f"predictive x{width:g}"] = model.predictive(widened(params, width), queries, samples)
        return out

    return predict


def measure(model, config, steps, widths, tasks, samples, seed):
    import numpy as np

    from tfp_abml import metrics
    from tfp_abml.evaluation import episode_batches, task_sampler

    model.eval_inner_steps = steps  # read when the function is traced: one trace per setting
    predict = predictions(model, widths, samples)
    outputs, labels = {}, []
    for inputs, query_labels in episode_batches(task_sampler(config, "val", seed), tasks, config.meta_batch):
        for name, probabilities in predict(inputs).items():
            outputs.setdefault(name, []).append(probabilities.numpy())
        labels.append(query_labels.numpy())
    labels = np.concatenate(labels)[:tasks]
    probabilities = {name: np.concatenate(batches)[:tasks] for name, batches in outputs.items()}
    scores = {"support nll": float(probabilities.pop("support nll").mean())}
    for name, p in probabilities.items():
        scores[name] = {"accuracy": float((p.argmax(-1) == labels).mean()), "nll": metrics.nll(p, labels),
                        "ece": metrics.expected_calibration_error(p, labels)}
        if name != "means":
            scores[name]["nll_difference"] = metrics.paired_nll_difference(p, probabilities["means"], labels, seed=seed)
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--run", required=True, help="a trained abml run folder")
    p.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    p.add_argument("--tasks", type=int, default=300, help="validation tasks per setting")
    p.add_argument("--shots", type=int, default=None, help="default: the run's own")
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--inner-steps", type=int, nargs="+", default=None, help="default: the run's own")
    p.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--samples", type=int, default=10, help="posterior draws of the predictive")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    from tfp_abml.checkpointing import write_json_atomic
    from tfp_abml.runs import load_run

    began = time.perf_counter()
    results = {}
    for ways in args.ways:
        config, model = load_run(args.run, ways=ways, shots=args.shots, data_dir=args.data_dir,
                                 queries=args.queries)
        if not hasattr(model, "adapt_and_embed_queries"):
            p.error(f"{args.run} is a {config.method} run: test_time.py measures the Bayesian learner (abml)")
        for steps in args.inner_steps or [model.inner_steps]:
            started = time.perf_counter()
            scores = measure(model, config, steps, args.widths, args.tasks, args.samples, args.seed)
            results.setdefault(f"{ways}-way {config.shots}-shot", {})[f"{steps} inner steps"] = scores
            print(f"{ways}-way, {steps} inner steps ({time.perf_counter() - started:.0f} s):", flush=True)
            print(f"  support NLL of the adapted means {scores['support nll']:.2e}", flush=True)
            for name, s in scores.items():
                if name == "support nll":
                    continue
                d = s.get("nll_difference")
                gap = f"  minus means {d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" if d else ""
                print(f"  {name:16s} accuracy {100 * s['accuracy']:.2f}%  NLL {s['nll']:.4f}  "
                      f"ECE {100 * s['ece']:.2f}%{gap}", flush=True)
    out = RESULTS / f"test_time_omniglot{'-' + args.tag if args.tag else ''}.json"
    write_json_atomic(out, {"command": "python benchmarks/test_time.py " + " ".join(argv or sys.argv[1:]),
                            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
                            "minutes": (time.perf_counter() - began) / 60, "split": "val", "tasks": args.tasks,
                            "queries_per_class": args.queries, "samples": args.samples, "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

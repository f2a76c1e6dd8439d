"""Every method trained under a published protocol, one CPU budget each, evaluated on the same tasks.

    python benchmarks/protocol.py --data-dir ../shared/data --minutes 68
    python benchmarks/protocol.py --data-dir ../shared/data --minutes 75 --lr-schedule step \
        --learning-rate abml=1e-3 --tag step --methods protonet abml
    python benchmarks/protocol.py --data-dir ../shared/data --minutes 50 --tag maml --methods maml
    python benchmarks/protocol.py --data-dir ../shared/data --minutes 80 --lr-schedule cosine \
        --learning-rate abml=1e-3 --lr-decay-episodes abml=9000 --tag cosine80 --methods abml
    python benchmarks/protocol.py --data-dir ../shared/data --minutes 80 --lr-schedule cosine \
        --learning-rate abml=1e-3 --lr-decay-episodes abml=10000 --lr-decay-episodes protonet=10000 \
        --fit-flags "abml=--residual-head --trainval" --fit-flags protonet=--trainval --tag trainval80 \
        --methods protonet abml

Protocol (Snell et al., 2017, for Omniglot 1-shot): 60-way 1-shot training episodes with 5 queries
per class, one episode per Adam step at 1e-3 (ProtoNet) or abml's default 3e-4 (``--learning-rate
METHOD=LR`` changes it), a constant learning rate or with ``--lr-schedule step`` Snell et al.'s
halving every 2,000 episodes, validated every 100 episodes on 50 validation tasks of the same shape;
evaluation uses the best validation epoch's weights (``best.weights.h5``). MAML (Finn et al., 2017,
appendix A.1) trains on 5-way 1-shot tasks with one query per class, meta-batch 32, one inner step
at 0.4 (three at test), Adam at 1e-3, validated every 640 episodes on 128 tasks; Meta-SGD (Li et al.,
2017) the same with its learned per-weight rates, one step at test too. Matching Networks train as
ProtoNet (60-way episodes: Snell et al.'s finding for metric learners). All methods train at
the same time (``training.fit`` in parallel child processes, so that they share the machine alike)
until ``--minutes`` of wall-clock training, then each is evaluated with ``training.evaluate`` at
every ``--eval-ways`` (1-shot, 15 queries per class) on ``--tasks`` test tasks of the Vinyals split:
the same tasks for every method (same seed). ``--fit-flags METHOD=--trainval`` gives Snell et al.'s
final run: training on the training and validation classes together, evaluated at its final weights
(its validation accuracy is then on trained classes). A run that has finished (``model.weights.h5``) is not
trained again: delete its folder to retrain.

``--shots 5`` runs the 5-shot protocols (60-way 5-shot for ProtoNet, Matching Networks and abml,
5-way 5-shot with 5 queries for MAML and Meta-SGD) and evaluates 5-shot. Writes ``benchmarks/results/protocol_omniglot_<K>shot[-TAG].json`` (commands, episodes, minutes, every
measure with its 95% interval) and ``protocol_omniglot_<K>shot[-TAG]_time.png``: validation accuracy per
epoch against wall-clock minutes, every method on one plot.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# The training task shape and schedule of each method's protocol (flags of training.fit).
TRAINING = ["--ways", "60", "--queries", "5", "--meta-batch", "1", "--epochs", "1000",
            "--steps-per-epoch", "100", "--val-tasks", "50"]
# MAML (Finn et al., 2017, A.1; their code): 5-way K-shot tasks with K queries per class, and
# training.fit's maml defaults, which are the paper's: meta-batch 32, 1 inner step at 0.4, 3 at test.
MAML_TRAINING = ["--method", "maml", "--ways", "5", "--epochs", "1000", "--steps-per-epoch", "20", "--val-tasks", "128"]
# Matching Networks (Vinyals et al., 2016) get ProtoNet's 60-way episodes: their paper trains at the
# test shape, which Snell et al. found worse for every metric-based learner. Meta-SGD (Li et al.,
# 2017) is MAML's setting with learned per-weight rates (training.fit's metasgd defaults: 1 step).
PROTOCOLS = {"protonet": ["--method", "protonet", *TRAINING], "abml": ["--method", "abml", *TRAINING],
             "maml": MAML_TRAINING, "matching": ["--method", "matching", *TRAINING],
             "metasgd": ["--method", "metasgd", *MAML_TRAINING[2:]]}
MAML_LIKE = ("maml", "metasgd")


def protocol(method, shots):
    """training.fit flags of ``method``'s protocol at ``shots`` (training shots = test shots, as the papers)."""
    flags = ["--shots", str(shots)]
    if method in MAML_LIKE:
        flags += ["--queries", str(shots)]
    return [*PROTOCOLS[method], *flags]
# Ways a trained model can be evaluated at (None: any; maml has a 5-way output layer).
SERVES = {"maml": [5], "metasgd": [5]}
# Snell et al. (2017); Finn et al. (2017); Vinyals et al. (2016); Li et al. (2017): {shots: {ways: accuracy}}
PUBLISHED = {"protonet": {1: {5: 98.8, 20: 96.0}, 5: {5: 99.7, 20: 98.9}},
             "maml": {1: {5: 98.7, 20: 95.8}, 5: {5: 99.9, 20: 98.9}},
             "matching": {1: {5: 98.1, 20: 93.8}, 5: {5: 98.9, 20: 98.5}},
             "metasgd": {1: {5: 99.53, 20: 95.93}, 5: {5: 99.93, 20: 98.97}}}


def episodes_per_epoch(method):
    flags = PROTOCOLS[method]
    meta_batch = int(flags[flags.index("--meta-batch") + 1]) if "--meta-batch" in flags else 32  # maml's default
    return meta_batch * int(flags[flags.index("--steps-per-epoch") + 1])


def training_ways(method):
    flags = PROTOCOLS[method]
    return int(flags[flags.index("--ways") + 1])


def fit_command(method, data_dir, minutes, runs_dir, schedule="constant", learning_rates=None, shots=1,
                decay_episodes=None, fit_flags=None):
    extra = ["--lr-schedule", schedule, *shlex.split((fit_flags or {}).get(method, ""))]
    if method in (learning_rates or {}):
        extra += ["--learning-rate", str(learning_rates[method])]
    if method in (decay_episodes or {}):
        extra += ["--lr-decay-episodes", str(decay_episodes[method])]
    return [sys.executable, "-m", "training.fit", *protocol(method, shots), *extra, "--max-minutes", str(minutes),
            "--data-dir", str(data_dir), "--output", str(run_dir(runs_dir, method, shots)), "--verbose", "2"]


def method_override(cast, example):
    """argparse type of ``METHOD=VALUE`` flags: (method, cast(value))."""
    def parse(text):
        method, sep, value = text.partition("=")
        if not sep or method not in PROTOCOLS:
            raise argparse.ArgumentTypeError(f"expected METHOD=VALUE with METHOD one of {', '.join(PROTOCOLS)}, got {text!r}")
        try:
            return method, cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a valid value (e.g. {example})") from None
    return parse


learning_rate_override = method_override(float, "abml=1e-3")
decay_episodes_override = method_override(int, "abml=4000")
fit_flags_override = method_override(str, "'abml=--residual-head'")


def published(method, shots, split_scheme):
    """The published accuracies ``{ways: %}`` a run is measured against: none off the Vinyals split,
    whose classes the papers' numbers are for (``--fit-flags METHOD=--split-scheme lake`` runs)."""
    return PUBLISHED.get(method, {}).get(shots, {}) if split_scheme == "vinyals" else {}


def run_dir(runs_dir, method, shots=1):
    return pathlib.Path(runs_dir) / f"omniglot-{training_ways(method)}w{shots}s-{method}"


def train_all(methods, data_dir, minutes, runs_dir, schedule, learning_rates, shots=1, decay_episodes=None,
              fit_flags=None):
    """Start every unfinished method's training at once; wait for all."""
    children = {}
    for method in methods:
        if (run_dir(runs_dir, method, shots) / "model.weights.h5").is_file():
            print(f"{method}: finished run in {run_dir(runs_dir, method, shots)}, not trained again", flush=True)
            continue
        log = open(pathlib.Path(runs_dir) / f"{method}.log", "a")
        children[method] = subprocess.Popen(fit_command(method, data_dir, minutes, runs_dir, schedule, learning_rates, shots,
                                                        decay_episodes, fit_flags),
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        print(f"{method}: training for {minutes} min, log in {log.name}", flush=True)
    for method, child in children.items():
        if child.wait() != 0:
            raise SystemExit(f"error: training {method} failed (exit {child.returncode}); see its log")


def evaluation_curve(run):
    """(minutes since the first epoch began, validation accuracy) per epoch, from the TensorBoard logs."""
    import tensorflow as tf

    times, values = [], []
    start = None
    for path in sorted((run / "logs" / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            start = event.wall_time if start is None else min(start, event.wall_time)
    for path in sorted((run / "logs" / "validation").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "epoch_accuracy":  # Keras's TensorBoard callback, once per epoch
                    times.append((event.wall_time - start) / 60.0)
                    values.append(float(tf.make_ndarray(value.tensor)))
    return times, values


def evaluate(method, run, ways, tasks, data_dir, shots=1):
    command = [sys.executable, "-m", "training.evaluate", "--run", str(run), "--ways", str(ways), "--shots", str(shots),
               "--queries", "15", "--tasks", str(tasks), "--seed", "0", "--data-dir", str(data_dir), "--verbose", "0"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((run / "eval_test.json").read_text())
    return {**result, "command": shlex.join(["python", *command[1:]])}


def plot(curves, path, shots=1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, (minutes, accuracy) in curves.items():
        ax.plot(minutes, [100 * a for a in accuracy], label=method)
    ax.set_xlabel("wall-clock minutes of training (2-core CPU, methods trained side by side)")
    ax.set_ylabel(f"validation accuracy, training task shape, {shots}-shot (%)")
    ax.set_title("Omniglot, ProtoNet's protocol: what an hour of CPU buys")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png", dpi=120)
    tmp.replace(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--methods", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--minutes", type=float, default=68.0, help="wall-clock training budget per method")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--shots", type=int, default=1, help="training and test shots (Snell et al.: 1 or 5)")
    p.add_argument("--eval-ways", type=int, nargs="+", default=[5, 20])
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "step", "cosine"),
                   help="training.fit --lr-schedule; step: halve every 2,000 episodes (Snell et al.)")
    p.add_argument("--learning-rate", type=learning_rate_override, action="append", default=[],
                   metavar="METHOD=RATE", help="a method's Adam learning rate instead of its default")
    p.add_argument("--lr-decay-episodes", type=decay_episodes_override, action="append", default=[],
                   metavar="METHOD=EPISODES", help="a method's training.fit --lr-decay-episodes instead of 2,000")
    p.add_argument("--fit-flags", type=fit_flags_override, action="append", default=[], metavar="METHOD=FLAGS",
                   help="further training.fit flags of a method, e.g. 'abml=--residual-head'")
    p.add_argument("--tag", default="", help="suffix of the runs folder and the result files")
    p.add_argument("--runs-dir", default=None, help="default runs/protocol[-TAG]")
    args = p.parse_args(argv)
    suffix = f"-{args.tag}" if args.tag else ""
    name = f"protocol_omniglot_{args.shots}shot{suffix}"
    runs_dir = args.runs_dir or (f"runs/protocol{suffix}" if args.shots == 1 else f"runs/protocol-{args.shots}shot{suffix}")
    learning_rates, decay_episodes = dict(args.learning_rate), dict(args.lr_decay_episodes)
    fit_flags = dict(args.fit_flags)
    pathlib.Path(runs_dir).mkdir(parents=True, exist_ok=True)
    train_all(args.methods, args.data_dir, args.minutes, runs_dir, args.lr_schedule, learning_rates, args.shots,
              decay_episodes, fit_flags)

    from tfp_abml.checkpointing import read_json, write_json_atomic

    results, curves = {}, {}
    for method in args.methods:
        run = run_dir(runs_dir, method, args.shots)
        history = read_json(run / "history.json", {})
        run_config = read_json(run / "config.json", {})
        split_scheme = run_config.get("split_scheme", "vinyals")
        curves[method] = evaluation_curve(run)
        started = time.perf_counter()
        evaluations = {f"{ways}-way {args.shots}-shot": evaluate(method, run, ways, args.tasks, args.data_dir, args.shots)
                       for ways in args.eval_ways if ways in SERVES.get(method, [ways])}
        results[method] = {
            "fit_command": " ".join(["python", *fit_command(method, args.data_dir, args.minutes, runs_dir, args.lr_schedule,
                                                               learning_rates, args.shots, decay_episodes,
                                                               fit_flags)[1:]]),
            "epochs": len(history.get("epoch", [])),
            "training_episodes": episodes_per_epoch(method) * len(history.get("epoch", [])),
            "training_minutes": curves[method][0][-1] if curves[method][0] else None,
            "best_val_accuracy": max(history.get("val_accuracy", [0.0])),
            # --trainval: trained on the validation classes too (their accuracy is no model selection)
            "trainval": bool(run_config.get("trainval", False)),
            "evaluation_seconds": time.perf_counter() - started,
            "split_scheme": split_scheme,
            "published": published(method, args.shots, split_scheme),
            "evaluations": evaluations}
        for setting, result in evaluations.items():  # not `name`: that is the result files' name
            predictions = result["predictions"]  # abml: the posterior predictive, as the tables report
            s = predictions.get("posterior_predictive") or next(iter(predictions.values()))
            print(f"{method:9s} {setting}: {100 * s['accuracy']:.2f} +- {100 * s['accuracy_ci95']:.2f}% "
                  f"NLL {s['nll']:.3f} ECE {100 * s['ece']:.2f}% OOD AUROC {s.get('ood_auroc', float('nan')):.3f} "
                  f"({result['weights']})", flush=True)
    out = RESULTS / f"{name}.json"
    write_json_atomic(out, {"command": "python benchmarks/protocol.py " + shlex.join(argv or sys.argv[1:]),
                            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
                            "protocol": __doc__.split("\n\n")[2], "methods": results})
    figure = RESULTS / f"{name}_time.png"
    plot(curves, figure, args.shots)
    print(f"wrote {out} and {figure}")


if __name__ == "__main__":
    main()

"""Every method under one training budget, evaluated on the same test tasks: the paper's Table 1.

    python benchmarks/accuracy.py --data-dir ../shared/data --settings 5w1s 5w5s --minutes 4

For each setting (``<ways>w<shots>s``) and method: ``training.fit`` from scratch with the
same encoder, meta-batch and seed, stopped at the end of the first epoch past ``--minutes``
of wall-clock training (no validation during training); then ``training.evaluate``'s
measurement on ``--tasks`` test tasks of the Vinyals split (the same tasks for every method)
plus as many OOD tasks. Writes ``benchmarks/results/omniglot_<ways>w<shots>s.json`` and
``benchmarks/results/omniglot_table.md`` (paper numbers marked *reported*, ours *measured*).
Runs go to ``--runs-dir`` (default ``runs/benchmark``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
METHODS = ("abml", "protonet", "matching", "maml", "metasgd")
LABELS = {"abml": "Amortized BNN (ours) [variant]", "protonet": "Prototypical Network",
          "matching": "Matching Network", "maml": "MAML", "metasgd": "Meta-SGD"}
# Table 1 of the paper (Omniglot; the baselines' numbers are those their papers published).
REPORTED = {
    "Matching Network": {"5w1s": 98.1, "5w5s": 98.9, "20w1s": 93.8, "20w5s": 98.7},
    "Prototypical Network": {"5w1s": 98.8, "5w5s": 99.7, "20w1s": 96.0, "20w5s": 98.9},
    "MAML": {"5w1s": 98.7, "5w5s": 99.9, "20w1s": 95.8, "20w5s": 98.9},
    "Meta-SGD": {"5w1s": 99.5, "5w5s": 99.9, "20w1s": 95.9, "20w5s": 98.9},
    "Amortized BNN, 1 inner step (paper)": {"5w1s": 68.5, "5w5s": 72.6, "20w1s": 29.3, "20w5s": 34.0},
    "Amortized BNN, 5 inner steps (paper)": {"5w1s": 87.4, "5w5s": 86.1, "20w1s": 54.3, "20w5s": 54.7},
}
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
# Variants of the amortized BNN (benchmarks/ablation.py): name -> (what changes, RunConfig overrides).
ABML_VARIANTS = {
    "paper": ("the paper's method (our defaults: unit-norm embeddings x learned scale, transductive BN)",
              {"posterior": "paper"}),
    "aligned": ("output-layer means from class prototypes, LSTM emits the rest class-symmetrically",
                {"posterior": "aligned", "task_encoding": "concat", "learn_inner_lr": False, "residual_head": False}),
    "aligned+lr": ("aligned + a learned inner step size per posterior tensor",
                   {"posterior": "aligned", "learn_inner_lr": True, "task_encoding": "concat", "residual_head": False}),
    "aligned+lr, no hidden": ("aligned + learned inner lr, Bayesian head without a hidden layer",
                              {"posterior": "aligned", "learn_inner_lr": True, "task_encoding": "concat", "hidden_units": ()}),
    "paper+lr": ("the paper's method + a learned inner step size per posterior tensor",
                 {"posterior": "paper", "learn_inner_lr": True}),
    "aligned+lr, pool": ("aligned + learned inner lr, LSTM state from the mean and spread of the class means "
                         "(size 2D, not N x D)",
                         {"posterior": "aligned", "learn_inner_lr": True, "task_encoding": "pool", "residual_head": False}),
    "aligned+lr, pool, residual": ("aligned + learned inner lr + pool, hidden layer added to its input "
                                   "(training.fit's default)",
                                   {"posterior": "aligned", "learn_inner_lr": True, "task_encoding": "pool",
                                    "residual_head": True}),
}


def parse_setting(text):
    match = re.fullmatch(r"(\d+)w(\d+)s", text)
    if not match:
        raise SystemExit(f"error: setting {text!r} is not of the form <ways>w<shots>s, e.g. 5w1s")
    return int(match[1]), int(match[2])


def train_and_evaluate(config, output, minutes=None, tasks=600, seed=0, verbose=2, ood=True):
    """Train ``config`` from scratch in ``output`` (for its epochs, or until ``minutes`` of wall clock),
    then evaluate on ``tasks`` seeded test tasks (plus as many OOD tasks); returns the scores."""
    from tfp_abml.checkpointing import read_json
    from tfp_abml.evaluation import evaluate_run
    from tfp_abml.runs import load_run
    from training.fit import prepare_output, train

    prepare_output(config, output, overwrite=True)
    start = time.perf_counter()
    train(config, output, verbose=verbose, max_minutes=minutes)
    train_seconds = time.perf_counter() - start
    epochs = read_json(output / "history.json")["epoch"][-1]
    config, model = load_run(output)
    result = evaluate_run(config, model, "test", tasks, seed, ood=ood, progress=bool(verbose))
    for key in ("probabilities", "labels"):
        result.pop(key)
    result.update(method=config.method, train_seconds=round(train_seconds, 1),
                  train_episodes=epochs * config.steps_per_epoch * config.meta_batch, config=config.to_dict())
    return result


def run_method(method, ways, shots, args):
    from tfp_abml.run_config import RunConfig

    epochs = 100_000 if args.episodes is None else max(args.episodes // (args.meta_batch * args.steps_per_epoch), 1)
    variant = ABML_VARIANTS[args.abml_variant][1] if method == "abml" else {}
    config = RunConfig(method=method, ways=ways, shots=shots, queries=args.queries, encoder=args.encoder,
                       meta_batch=args.meta_batch, epochs=epochs, steps_per_epoch=args.steps_per_epoch,
                       val_tasks=0, seed=args.seed, data_dir=args.data_dir, **variant).validate()
    output = pathlib.Path(args.runs_dir) / f"{ways}w{shots}s-{method}"
    result = train_and_evaluate(config, output, args.minutes, args.tasks, args.seed, args.verbose, not args.no_ood)
    if method == "abml":
        result["variant"] = args.abml_variant
        if args.export_abml:
            result["savedmodel"] = export_run(output, pathlib.Path(args.export_abml) / f"omniglot-{ways}w{shots}s" / "1")
    return result


def export_run(run_dir, path):
    """Export a trained run as a SavedModel (``training.export``); returns its path and size."""
    from tfp_abml.export import export_saved_model
    from tfp_abml.runs import load_run

    config, model = load_run(run_dir)
    export_saved_model(model, config.resolved_image_size, path)
    size = sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())
    print(f"exported {path} ({size / 2**20:.1f} MiB)", flush=True)
    return {"path": str(path), "megabytes": round(size / 2**20, 2)}


def headline(result):
    """The prediction a method is judged by: the posterior predictive for the Bayesian model."""
    predictions = result["predictions"]
    return predictions.get("posterior_predictive", predictions.get("prediction"))


def write_table(path):
    rows, measured = [], {}
    for setting in SETTINGS:
        file = RESULTS / f"omniglot_{setting}.json"
        if file.is_file():
            measured[setting] = json.loads(file.read_text())
    header = "| method | source | " + " | ".join(f"{s[:-1].replace('w', '-way ')}-shot acc. (ECE)" for s in SETTINGS) + " |"
    rows += [header, "|" + "---|" * (len(SETTINGS) + 2)]
    for name, values in REPORTED.items():
        rows.append(f"| {name} | reported | " + " | ".join(f"{values[s]:.1f}%" for s in SETTINGS) + " |")
    variants = set()
    for method in METHODS:
        cells = []
        for setting in SETTINGS:
            result = measured.get(setting, {}).get("methods", {}).get(method)
            if result is None:
                cells.append("not run")
                continue
            h = headline(result)
            cells.append(f"{100 * h['accuracy']:.1f} +- {100 * h['accuracy_ci95']:.1f}% ({100 * h['ece']:.1f}%)")
            if method == "abml":
                variants.add(result.get("variant", "paper"))
                cells[-1] += f" [{result.get('variant', 'paper')}]"
        rows.append(f"| {LABELS[method]} | measured | " + " | ".join(cells) + " |")
    budgets = {s: m["budget"] for s, m in measured.items()}
    notes = [f"- {s}: {b}" for s, b in budgets.items()]
    notes += [f"- abml variant `{v}`: {ABML_VARIANTS[v][0]}" for v in sorted(variants)]
    text = "\n".join(rows) + "\n\nMeasured budgets:\n" + "\n".join(notes) + "\n"
    path.write_text(text)
    return text


def main(argv=None):
    from tfp_abml.checkpointing import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--settings", nargs="+", default=["5w1s", "5w5s"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget per method (wall clock); default 4 unless --episodes is given")
    p.add_argument("--episodes", type=int, default=None,
                   help="training budget per method in episodes (instead of, or capped by, --minutes)")
    p.add_argument("--abml-variant", default="aligned+lr, pool", choices=list(ABML_VARIANTS),
                   help="which amortized-BNN variant the abml row trains (see benchmarks/ablation.py)")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--no-ood", action="store_true",
                   help="skip the OOD pass (2N-way tasks: 40-way for the 20-way settings, costly on a CPU)")
    p.add_argument("--export-abml", default=None, metavar="DIR",
                   help="export each setting's abml model to DIR/omniglot-<ways>w<shots>s/1 (e.g. savedmodels)")
    p.add_argument("--encoder", default="conv4")
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs/benchmark")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args(argv)
    if args.minutes is None and args.episodes is None:
        args.minutes = 4.0
    settings = [(s, *parse_setting(s)) for s in args.settings]

    for name, ways, shots in settings:
        path = RESULTS / f"omniglot_{name}.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        limits = [f"{args.minutes:g} min wall-clock" if args.minutes else "",
                  f"{args.episodes} episodes" if args.episodes else ""]
        budget = (f"{' or '.join(x for x in limits if x)} of training per method on {platform.machine()} with "
                  f"{os.cpu_count()} CPU cores, {args.encoder}, meta-batch {args.meta_batch}, {args.queries} queries "
                  f"per class, no validation; {args.tasks} test tasks (95% CI), ECE over 15 bins"
                  + ("; no OOD pass" if args.no_ood else ""))
        results = {"budget": budget, "methods": dict(previous.get("methods", {}))}
        if previous.get("budget") not in (None, budget):
            results["methods"] = {}  # a different budget: do not mix
        for method in args.methods:
            print(f"== {name} {method}", flush=True)
            results["methods"][method] = run_method(method, ways, shots, args)
            write_json_atomic(path, results)
            h = headline(results["methods"][method])
            print(f"{name} {method}: {100 * h['accuracy']:.2f} +- {100 * h['accuracy_ci95']:.2f}% "
                  f"ECE {100 * h['ece']:.2f}%", flush=True)
    print(write_table(RESULTS / "omniglot_table.md"))


if __name__ == "__main__":
    main()

"""Search the KL scale with Keras Tuner: ``python -m training.tune --data-dir ../shared/data``.

Each trial trains the abml model of the base config (``--config``, else the defaults, with the
flags below over it) for ``--trial-steps`` outer updates on the train split with the trial's
``kl_scale`` (and, with ``--tune-inner-lr`` / ``--tune-inner-steps``, inner step size and count),
then scores it on ``--val-tasks`` validation tasks: query accuracy or NLL (``--objective``).
Every trial starts from the same weights and sees the same episodes. The best values, merged into
the base config, are written to ``--best-config``, which ``python -m training.fit --config FILE``
trains in full. Running the same command again resumes the search (raise ``--max-trials`` for
more); ``--overwrite`` starts over.

Distributed search uses Keras Tuner's own chief/worker mode: run this same command on every
machine with ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` set to the chief's address and
``KERASTUNER_TUNER_ID=chief`` on the chief (it holds the oracle, runs no trials and writes
``--best-config`` when the search ends), ``tuner1``, ``tuner2``, ... on the workers.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from tfp_abml.errors import UserInputError
from tfp_abml.run_config import JIT_MODES, RunConfig
from tfp_abml.output_location import check_writable
from training._cli import Parser, run_command

TUNERS = ("random", "bayesian")  # tfp_abml.tuning.TUNERS, without importing TensorFlow
OBJECTIVES = ("accuracy", "nll")  # tfp_abml.tuning.OBJECTIVES
# Base-config settings that may be given as flags; everything else comes from --config.
BASE_FLAGS = ("data_dir", "ways", "shots", "queries", "encoder", "inner_steps", "inner_lr", "meta_batch",
              "learning_rate", "val_tasks", "seed", "jit", "init_weights")
_DEFAULTS = RunConfig()


def build_parser():
    p = Parser(prog="python -m training.tune", description=__doc__.split("\n\n")[0])
    search = p.add_argument_group("search")
    search.add_argument("--tuner", default="bayesian", choices=TUNERS,
                        help="Keras Tuner's RandomSearch or BayesianOptimization (a Gaussian process)")
    search.add_argument("--objective", default="accuracy", choices=OBJECTIVES,
                        help="validation query accuracy (maximised) or NLL (minimised)")
    search.add_argument("--max-trials", type=int, default=10, help="trials in total, counting resumed ones")
    search.add_argument("--random-trials", type=int, default=None,
                        help="bayesian: random trials before the Gaussian process proposes "
                             "(default 3 per tuned hyperparameter)")
    search.add_argument("--kl-min", type=float, default=1e-8,
                        help="kl_scale is drawn log-uniformly from [--kl-min, --kl-max]")
    search.add_argument("--kl-max", type=float, default=1e-2, help="largest kl_scale tried")
    search.add_argument("--tune-inner-lr", action="store_true", help="also search the inner SGD step size")
    search.add_argument("--inner-lr-min", type=float, default=0.05, help="with --tune-inner-lr (log-uniform)")
    search.add_argument("--inner-lr-max", type=float, default=1.0, help="with --tune-inner-lr")
    search.add_argument("--tune-inner-steps", action="store_true", help="also search the number of inner steps")
    search.add_argument("--inner-steps-min", type=int, default=1, help="with --tune-inner-steps")
    search.add_argument("--inner-steps-max", type=int, default=5, help="with --tune-inner-steps")
    search.add_argument("--trial-steps", type=int, default=100, help="outer updates per trial epoch")
    search.add_argument("--trial-epochs", type=int, default=1,
                        help="epochs per trial; validated after each, the best epoch counts")
    # Unset flags stay out of the namespace (SUPPRESS): --config's values are kept, and --help
    # shows the default given in the text instead of "None".
    unset = argparse.SUPPRESS
    base = p.add_argument_group("base config: settings not searched; each defaults to --config's value, "
                                "else training.fit's default (in brackets)")
    base.add_argument("--config", default=unset, help="RunConfig JSON, e.g. runs/omniglot-5w1s/config.json")
    base.add_argument("--data-dir", default=unset, help="Omniglot folder; default $TFP_ABML_DATA_DIR, else TFDS")
    base.add_argument("--ways", type=int, default=unset, help=f"classes per task ({_DEFAULTS.ways})")
    base.add_argument("--shots", type=int, default=unset, help=f"support examples per class ({_DEFAULTS.shots})")
    base.add_argument("--queries", type=int, default=unset, help=f"query examples per class ({_DEFAULTS.queries})")
    base.add_argument("--encoder", default=unset, help=f"conv4 or efficientnet_b0 ({_DEFAULTS.encoder})")
    base.add_argument("--inner-steps", type=int, default=unset,
                      help=f"inner steps when not searched ({_DEFAULTS.inner_steps})")
    base.add_argument("--inner-lr", type=float, default=unset,
                      help=f"inner step size when not searched ({_DEFAULTS.inner_lr})")
    base.add_argument("--meta-batch", type=int, default=unset, help=f"tasks per outer update ({_DEFAULTS.meta_batch})")
    base.add_argument("--learning-rate", type=float, default=unset, help="outer Adam learning rate (3e-4)")
    base.add_argument("--val-tasks", type=int, default=unset,
                      help=f"validation tasks that score each trial ({_DEFAULTS.val_tasks})")
    base.add_argument("--seed", type=int, default=unset, help=f"seed of weights, tasks, tuner ({_DEFAULTS.seed})")
    base.add_argument("--jit", default=unset, choices=JIT_MODES, help="XLA for the outer update (auto)")
    base.add_argument("--init-weights", default=unset,
                      help="every trial fine-tunes these weights (a .weights.h5 file, or a run folder: its best "
                           "weights; with that run's --config) instead of training fresh ones (none)")
    run = p.add_argument_group("output")
    run.add_argument("--output", default=unset,
                     help="search folder (Keras Tuner project, settings); default runs/tune-<dataset>-<ways>w<shots>s")
    run.add_argument("--best-config", default=unset, help="best RunConfig JSON; default <output>/best_config.json")
    run.add_argument("--overwrite", action="store_true", help="discard an earlier search in --output")
    run.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                     help="0: a line per trial, 1: also Keras Tuner's trial table and a progress bar, 2: epoch lines")
    return p


def parse(argv):
    """Flags -> (base RunConfig, SearchSpace kwargs, args)."""
    args = build_parser().parse_args(argv)
    config_file = getattr(args, "config", None)
    values = RunConfig.load(config_file).to_dict() if config_file else RunConfig().to_dict()
    values.update({name: getattr(args, name) for name in BASE_FLAGS if hasattr(args, name)})
    if values.get("init_weights"):
        from tfp_abml.runs import initial_weights_file

        values["init_weights"] = initial_weights_file(values["init_weights"])
    base = RunConfig.from_dict(values).validate()
    if base.method != "abml":
        raise UserInputError(f"--config {config_file} is a {base.method} run: the KL scale exists only in the "
                             "abml model; start from an abml config or leave out --config")
    for flag in ("max_trials", "trial_steps", "trial_epochs"):
        if getattr(args, flag) < 1:
            raise UserInputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.random_trials is not None:
        if args.tuner != "bayesian":
            raise UserInputError("--random-trials applies only to --tuner bayesian")
        if args.random_trials < 1:
            raise UserInputError(f"--random-trials must be >= 1, got {args.random_trials}")
    if base.val_tasks < 1:
        raise UserInputError("trials are scored on validation tasks: --val-tasks must be >= 1")
    if base.trainval:
        raise UserInputError(f"--config {config_file} trains on its validation classes (--trainval), and trials are "
                             "scored on validation tasks: set \"trainval\": false in it")
    space = {"kl_min": args.kl_min, "kl_max": args.kl_max,
             "inner_lr": (args.inner_lr_min, args.inner_lr_max) if args.tune_inner_lr else None,
             "inner_steps": (args.inner_steps_min, args.inner_steps_max) if args.tune_inner_steps else None}
    dataset = base.dataset.replace(":", "-").replace("/", "-")  # tfds:NAME[:KEY]: one folder name, as training.fit
    args.output = pathlib.Path(getattr(args, "output", f"runs/tune-{dataset}-{base.ways}w{base.shots}s"))
    args.best_config = pathlib.Path(getattr(args, "best_config", args.output / "best_config.json"))
    return base, space, args


def _settings(base, space, args):
    """What defines a search: a rerun with other settings would mix incomparable trials."""
    base = {k: v for k, v in base.to_dict().items() if k != "data_dir"}
    return {"base": base, "space": {k: list(v) if isinstance(v, tuple) else v for k, v in space.items()},
            "tuner": args.tuner, "objective": args.objective, "random_trials": args.random_trials,
            "trial_steps": args.trial_steps, "trial_epochs": args.trial_epochs}


def prepare_output(settings, output, overwrite):
    """Create ``output``; refuse to resume a search that had other settings, unless ``overwrite``."""
    from tfp_abml.checkpointing import read_json, write_json_atomic

    path = output / "tune_settings.json"
    previous = read_json(path)
    if previous is not None and previous != settings and not overwrite:
        changed = sorted(key for key in settings if previous.get(key) != settings[key])
        if "base" in changed:
            changed.remove("base")
            changed += [f"base.{k}" for k in settings["base"] if previous["base"].get(k) != settings["base"][k]]
        raise UserInputError(f"{output} holds a search with other settings ({', '.join(changed)}); pass "
                             "--overwrite to start over, or choose another --output")
    if previous is None and output.exists() and any(output.iterdir()) and not overwrite:
        raise UserInputError(f"{output} exists and is not a search folder: choose another --output or pass --overwrite")
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings)


def run(argv):
    base, space_values, args = parse(argv)
    from training.fit import check_data, check_encoder_weights

    from tfp_abml import tuning

    space = tuning.SearchSpace(**space_values).validate()
    check_writable(args.output)
    check_writable(args.best_config, "--best-config", folder=False)
    if not tuning.is_chief():  # the chief runs no trials and needs no data
        check_data(base)
        check_encoder_weights(base)
    prepare_output(_settings(base, space_values, args), args.output, args.overwrite)

    hypermodel = tuning.FewShotHyperModel(base, space, args.trial_steps, args.trial_epochs)
    tuner = tuning.make_tuner(args.tuner, hypermodel, args.objective, args.max_trials, args.output,
                              seed=base.seed, overwrite=args.overwrite, random_trials=args.random_trials)
    who = tuning.tuner_id()
    if tuning.is_chief():
        print(f"[{who}] serving the oracle for workers; waiting until they finish {args.max_trials} trials",
              flush=True)
    try:
        tuner.search(verbose=args.verbose)
    except RuntimeError as err:
        if "consecutive failures" not in str(err):  # the oracle's limit; anything else is not the user's
            raise
        raise UserInputError(f"the search stopped: {str(err).splitlines()[0]}; lower --kl-max, "
                             "--inner-lr-max or --learning-rate") from err
    if tuning.is_worker():
        print(f"[{who}] done: ran {hypermodel.trials_run} trials; the chief writes the best config", flush=True)
        return
    for trial_id, values, message in tuning.failed_trials(tuner.oracle):
        print(f"trial {trial_id} failed ({_format(values)}): {message}")
    ranked = tuning.ranked_trials(tuner.oracle)
    config = tuning.best_config(tuner.oracle, base)
    from tfp_abml.checkpointing import write_json_atomic

    write_json_atomic(args.best_config, config.to_dict())
    metric = tuning.OBJECTIVES[args.objective][0]
    print(f"{len(ranked)} completed trial{'s' if len(ranked) != 1 else ''}, best first ({metric}):")
    for trial_id, values, score in ranked:
        print(f"  trial {trial_id}: {_format(values)}  {metric} {score:.4f}")
    tuned = {name: getattr(config, name) for name in ranked[0][1]}
    print(f"wrote {args.best_config} ({_format(tuned)}); train it with: "
          f"python -m training.fit --config {args.best_config}")


def _format(values):
    return ", ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in values.items())


def main(argv=None):
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())

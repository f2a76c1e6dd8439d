"""Meta-train a few-shot learner: ``python -m training.fit --dataset omniglot --ways 5 --shots 1``.

Writes to ``--output`` (default ``runs/<dataset>-<ways>w<shots>s[-<method>]``): ``config.json``,
``history.json``, ``checkpoints/`` (model, optimizer, epoch after every epoch),
``logs/`` (TensorBoard) and ``model.weights.h5`` at the end. Running the same
command again resumes from the last checkpoint; a different config on the same
``--output`` is refused unless ``--overwrite`` is given. ``--strategy mirrored`` or
``multi-worker`` splits every meta-batch over GPUs or machines (:mod:`tfp_abml.distribute`).
Every flag, with its default: docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import time

from tfp_abml.distribute import STRATEGIES, check_strategy
from tfp_abml.errors import UserInputError
from tfp_abml.output_location import check_writable
from tfp_abml.run_config import (JIT_MODES, LR_SCHEDULES, METHODS, POSTERIORS, PRIORS, SPLIT_SCHEMES, TASK_ENCODINGS,
                                 TASK_LOOPS, RunConfig)
from training._cli import Parser, run_command

_DEFAULTS = RunConfig()


def build_parser():
    p = Parser(prog="python -m training.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default=_DEFAULTS.method, choices=METHODS,
                   help="abml: the paper's amortized BNN; baselines: protonet, maml, metasgd, matching")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=_DEFAULTS.dataset,
                      help="omniglot, miniimagenet, folder (your own images; both need --data-dir), cifar_fs, "
                           "fc100, or tfds:NAME[:LABEL_KEY] (a TFDS image-classification dataset, prepared "
                           "beforehand); see docs/data.md")
    data.add_argument("--split-scheme", default=_DEFAULTS.split_scheme, choices=SPLIT_SCHEMES,
                      help="class split: vinyals (with rotations; the published one), lake (new alphabets at "
                           "test), or lake-rotated (lake with its training characters at 4 rotations)")
    data.add_argument("--data-dir", default=None,
                      help="folder with omniglot/images_{background,evaluation}.zip and omniglot/splits/ "
                           "(or miniimagenet/images/ and the Ravi CSVs; for --dataset folder the folder of "
                           "<class>/<image> or {train,val,test}/<class>/<image>; for cifar_fs, fc100 and tfds:NAME "
                           "the TFDS data dir, default $TFP_ABML_TFDS_DIR, else TFDS's); default $TFP_ABML_DATA_DIR, "
                           "else Omniglot through TFDS's download")
    data.add_argument("--class-split", default=None,
                      help="--dataset folder without split folders, or tfds:NAME: fractions of its classes for "
                           "train,val,test, drawn with the fixed seed 0; default 0.64,0.16,0.20")
    data.add_argument("--ways", type=int, default=_DEFAULTS.ways, help="classes per task (N)")
    data.add_argument("--shots", type=int, default=_DEFAULTS.shots, help="support examples per class (K)")
    data.add_argument("--queries", type=int, default=_DEFAULTS.queries, help="query examples per class")
    data.add_argument("--train-ways", type=int, default=None,
                      help="classes per training (and validation) task, e.g. 60 as ProtoNet trains; default --ways. "
                           "Only for models that serve any N: protonet, matching, abml --posterior aligned "
                           "--task-encoding pool")
    data.add_argument("--train-shots", type=int, default=None, help="support examples per class in training; "
                                                                    "default --shots")
    data.add_argument("--train-queries", type=int, default=None, help="query examples per class in training; "
                                                                      "default --queries")
    data.add_argument("--image-size", type=int, default=None,
                      help="image side; default 84 on miniimagenet, 32 on cifar_fs and fc100, else 28 (conv4), "
                           "32 (efficientnet_b0)")
    model = p.add_argument_group("model")
    model.add_argument("--encoder", default=_DEFAULTS.encoder, help="conv4 or efficientnet_b0")
    model.add_argument("--encoder-weights", default=None,
                       help="efficientnet_b0 only: 'imagenet' (downloads) or a local weights file")
    model.add_argument("--embedding-dim", type=int, default=_DEFAULTS.embedding_dim, help="embedding size D")
    model.add_argument("--hidden-units", type=int, nargs="*", default=list(_DEFAULTS.hidden_units),
                       help="hidden layer widths of the Bayesian MLP")
    model.add_argument("--posterior", default=_DEFAULTS.posterior, choices=POSTERIORS,
                       help="abml: 'aligned' (output-layer means from the class prototypes, see docs/method.md) or "
                            "'paper' (LSTM emits every layer)")
    model.add_argument("--task-encoding", default=None, choices=TASK_ENCODINGS,
                       help="abml: LSTM initial state from the class means, 'concat' (paper; random class order, "
                            "size ways x D) or 'pool' (mean and std over classes, size 2D; --posterior aligned). "
                            "Default: pool for --posterior aligned, concat for paper")
    model.add_argument("--learn-inner-lr", action=argparse.BooleanOptionalAction, default=None,
                       help="abml: learn one inner step size per posterior tensor, starting at --inner-lr. "
                            "Default: on for --posterior aligned, off for paper")
    model.add_argument("--residual-head", action=argparse.BooleanOptionalAction, default=None,
                       help="abml: each hidden layer adds to its input (a = a + relu(dense(a))), so the prototypes "
                            "see the whole embedding; needs --hidden-units equal to --embedding-dim. Default: on "
                            "for --posterior aligned when they are equal, else off")
    model.add_argument("--noise-dim", type=int, default=_DEFAULTS.noise_dim, help="LSTM noise input size")
    model.add_argument("--initial-scale", type=float, default=_DEFAULTS.initial_scale,
                       help="posterior scale of every BNN weight at initialisation")
    model.add_argument("--inner-steps", type=int, default=None,
                       help="inner SGD steps in training; default: abml 1 (--posterior paper: 5, its paper's); "
                            "per method's paper: maml 1 (5-way) or 5 (20-way); metasgd 1")
    model.add_argument("--inner-lr", type=float, default=None,
                       help="inner SGD step size; default: abml 0.5; maml/metasgd 0.4 (5-way) or 0.1 (20-way)")
    model.add_argument("--eval-inner-steps", type=int, default=None,
                       help="inner SGD steps in evaluation and serving; default as in training, except maml "
                            "5-way with its default steps: 3 (Finn et al., 2017)")
    model.add_argument("--first-order", action="store_true", help="drop second-order terms of the inner loop")
    model.add_argument("--task-loop", default=_DEFAULTS.task_loop, choices=TASK_LOOPS,
                       help="maml/metasgd: adapt a meta-batch's tasks unrolled in the graph, in a tf.map_fn, or "
                            "sequential (each task's outer gradient taken before the next: the least memory). Same "
                            "numbers; unrolled runs 1.1x faster per episode, sequential traces 4x faster. "
                            "auto: unrolled for conv4, sequential for efficientnet_b0 "
                            "(see docs/benchmarks.md, Speed and Memory)")
    model.add_argument("--kl-scale", type=float, default=_DEFAULTS.kl_scale,
                       help="weight of KL(q || prior), summed over BNN weights, in the outer loss")
    model.add_argument("--prior", default=_DEFAULTS.prior, choices=PRIORS,
                       help="abml: the prior of the KL, 'standard' N(0, 1) (the paper) or 'learned' (meta-learned "
                            "means and scales, class-symmetric in the output layer; docs/method.md)")
    model.add_argument("--eval-samples", type=int, default=_DEFAULTS.eval_samples,
                       help="posterior samples averaged at validation")
    model.add_argument("--train-samples", type=int, default=_DEFAULTS.train_samples,
                       help="abml: posterior draws of the training query loss; 1: one draw's log-likelihood (the "
                            "paper), S > 1: the NLL of the S-draw posterior predictive (docs/method.md)")
    train = p.add_argument_group("training")
    train.add_argument("--meta-batch", type=int, default=None,
                       help="tasks per outer update; default 4, maml/metasgd 32 (5-way) or 16 (20-way, their papers)")
    train.add_argument("--learning-rate", type=float, default=None,
                       help="outer Adam lr; default 3e-4 for abml, 1e-3 for the baselines")
    train.add_argument("--lr-schedule", default=_DEFAULTS.lr_schedule, choices=LR_SCHEDULES,
                       help="outer learning rate over training: constant, step (halved every --lr-decay-episodes, "
                            "as ProtoNet) or cosine (to 0 over --lr-decay-episodes); resumes where it stopped")
    train.add_argument("--lr-decay-episodes", type=int, default=_DEFAULTS.lr_decay_episodes,
                       help="training episodes per halving (step) or of the whole decay (cosine)")
    train.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help="epochs to train in total")
    train.add_argument("--steps-per-epoch", type=int, default=_DEFAULTS.steps_per_epoch,
                       help="outer updates per epoch (episodes per epoch = this x meta-batch)")
    train.add_argument("--val-tasks", type=int, default=_DEFAULTS.val_tasks,
                       help="validation tasks after each epoch (0: no validation)")
    train.add_argument("--trainval", action="store_true", default=_DEFAULTS.trainval,
                       help="train on the training and validation classes together, as Snell et al.'s final run "
                            "(set --epochs or --max-minutes from an earlier run's best epoch); validation then "
                            "sees trained classes, so no best weights are kept: evaluate and export use the final ones")
    train.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed for tasks and weights")
    train.add_argument("--jit", default=_DEFAULTS.jit, choices=JIT_MODES,
                       help="XLA for the outer update; auto: the faster on this device, measured once per "
                            "model shape and cached (runs under 1000 outer updates: off; "
                            "see docs/benchmarks.md, --jit auto)")
    run = p.add_argument_group("run")
    run.add_argument("--config", default=None, help="JSON file of settings (e.g. from training.tune); flags win")
    run.add_argument("--init-weights", default=None,
                     help="start from these weights (a .weights.h5 file, or a run folder: its best weights) "
                          "instead of fresh ones, e.g. to fine-tune a trained run at another --kl-scale")
    run.add_argument("--output", default=None, help="run directory; default runs/<dataset>-<ways>w<shots>s[-<method>]")
    run.add_argument("--overwrite", action="store_true", help="discard an existing run in --output")
    run.add_argument("--max-minutes", type=float, default=None,
                     help="stop at the end of the first epoch that ends after this many minutes")
    run.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="0 silent, 1 progress bar, 2 a line per epoch")
    run.add_argument("--strategy", default="none", choices=STRATEGIES,
                     help="none: one device; mirrored: this machine's GPUs; multi-worker: the machines in "
                          "TF_CONFIG (see docs/distributed.md); --meta-batch is split evenly over all replicas")
    return p


def parse_config(argv):
    """Flags (over ``--config``, over defaults) -> (RunConfig, output, overwrite, verbose, max_minutes, strategy)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        # Re-parse with the file's values as defaults, so that explicit flags still win.
        file_values = _read_config_file(parser, args.config)
        parser.set_defaults(**file_values)
        args = parser.parse_args(argv)
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserInputError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.seed < 0:
        raise UserInputError(f"--seed must be >= 0, got {args.seed}")
    for action in parser._actions:  # argparse's float() takes "inf" and "nan"; no setting here means them
        value = getattr(args, action.dest, None)
        if action.type is float and value is not None and not math.isfinite(value):
            raise UserInputError(f"{action.option_strings[0]} must be a finite number, got {value}")
    values = {k: v for k, v in vars(args).items()
              if k not in ("config", "output", "overwrite", "verbose", "max_minutes", "strategy")}
    values["hidden_units"] = tuple(values["hidden_units"])
    if values.get("init_weights"):
        from tfp_abml.runs import initial_weights_file

        values["init_weights"] = initial_weights_file(values["init_weights"])
    config = RunConfig.from_dict(values).validate()
    suffix = "" if config.method == "abml" else f"-{config.method}"
    name = config.dataset.replace(":", "-").replace("/", "-")  # tfds:NAME[/CONFIG][:KEY]: one folder name
    output = pathlib.Path(args.output or f"runs/{name}-{config.ways}w{config.shots}s{suffix}")
    return config, output, args.overwrite, args.verbose, args.max_minutes, args.strategy


def _read_config_file(parser, path):
    """The settings of a ``--config`` JSON file, checked like flags; UserInputError naming the file."""
    try:
        values = json.loads(pathlib.Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"cannot read config {path}: {err}") from err
    if not isinstance(values, dict):
        raise UserInputError(f"{path} must hold a JSON object of settings, e.g. {{\"ways\": 5}}, "
                             f"got {type(values).__name__}")
    _check_file_values(parser, values, path)
    try:
        checked = RunConfig.from_dict(values).to_dict()
    except UserInputError as err:
        raise UserInputError(f"{path}: {err}") from err
    # Only what the file sets: settings it leaves out keep following the flags (e.g. --posterior's defaults).
    return {name: value for name, value in checked.items() if name in values}


def _check_file_values(parser, values, path):
    """Check a ``--config`` file's values as argparse checks flags: argparse takes defaults as they are.

    Without this a string where a number belongs fails deep inside with a TypeError.
    """
    for action in parser._actions:
        if action.dest not in values:
            continue
        value, expected = values[action.dest], None
        if value is None and action.default is None:
            continue  # an optional setting left unset
        if action.nargs == "*":
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                expected = "a list of integers"
        elif action.type is int and (not isinstance(value, int) or isinstance(value, bool)):
            expected = "an integer"
        elif action.type is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            expected = "a number"
        elif action.const is True or isinstance(action, argparse.BooleanOptionalAction):  # on/off flags
            if not isinstance(value, bool):
                expected = "true or false"
        elif action.type is None and action.const is None and not isinstance(value, str):
            expected = "a string"
        elif action.choices is not None and value not in action.choices:
            expected = f"one of {', '.join(map(str, action.choices))}"
        if expected:
            raise UserInputError(f"{path}: {action.dest} must be {expected}, got {value!r}")


def prepare_output(config, output, overwrite):
    """Create or reuse ``output``; refuse a different config there unless ``overwrite``.

    ``--overwrite`` deletes only a training run (a folder with ``config.json``) or an empty
    folder: a mistyped ``--output`` must never delete someone's files.
    """
    config_path = output / "config.json"
    if output.exists() and not output.is_dir():
        raise UserInputError(f"--output {output} is a file, not a folder: choose another --output")
    if output.exists() and overwrite:
        if not config_path.is_file() and any(output.iterdir()):
            raise UserInputError(f"refusing to delete {output} for --overwrite: it is not a training run "
                                 "(no config.json); choose another --output")
        shutil.rmtree(output)
    elif config_path.is_file():
        previous = RunConfig.load(config_path)
        changed = config.differences(previous)
        if changed:
            detail = ", ".join(f"{name}: {getattr(previous, name)!r} -> {getattr(config, name)!r}" for name in changed)
            raise UserInputError(f"{output} holds a run with a different config ({detail}); "
                                 "pass --overwrite to start over, or choose another --output")
    elif output.exists() and any(output.iterdir()):
        raise UserInputError(f"{output} exists and is not a training run: choose another --output or pass --overwrite")
    output.mkdir(parents=True, exist_ok=True)


def check_data(config):
    """Fail before importing TensorFlow if the data or the task shape cannot work; returns the config
    with what the data settles (a folder's channels and class split), which is what the run records."""
    from tfp_abml.data import miniimagenet, omniglot, splits
    from tfp_abml.data.tfds_datasets import is_tfds_dataset

    if config.dataset == "folder":
        return check_folder(config)
    if is_tfds_dataset(config.dataset):
        return check_tfds(config)
    if config.dataset == "miniimagenet":
        miniimagenet.check_ways(config.ways, config.data_dir)
        return config
    data_dir = omniglot.resolve_data_dir(config.data_dir)
    if data_dir is not None:
        omniglot.find_sources(data_dir)
    if config.split_scheme != "vinyals":
        return config  # class counts are checked by the sampler once the images are loaded
    counts = {split: splits.num_classes(split, config.split_scheme, config.data_dir) for split in ("train", "val")}
    if config.trainval:
        counts["train"] += counts["val"]
    for split, count in counts.items():  # validation uses the training task shape
        if config.resolved_train_ways > count:
            flag = "--ways" if config.train_ways is None else "--train-ways"
            raise UserInputError(f"{flag} {config.resolved_train_ways} is larger than the {count} classes of the "
                                 f"{split} split")
    count = splits.num_classes("test", config.split_scheme, config.data_dir)
    if config.ways > count:
        raise UserInputError(f"--ways {config.ways} is larger than the {count} classes of the test split")
    return config


def _train_flags(config):
    """The flags that set the training task shape: --train-ways where given, else --ways (and so on)."""
    return tuple(f"--train-{name}" if getattr(config, f"train_{name}") is not None else f"--{name}"
                 for name in ("ways", "shots", "queries"))


def check_tfds(config):
    """cifar_fs, fc100 and tfds:NAME: the dataset is prepared and has an image feature and the label key
    (from TFDS's metadata, before TensorFlow loads), then every split's classes against the task shape
    (one pass over the labels: TensorFlow, but before anything is written). Returns the config with the
    class split used and the images' channels for tfds:NAME."""
    import dataclasses

    from tfp_abml.data import tfds_datasets

    source = tfds_datasets.open_source(config.dataset, config.data_dir)
    listing = tfds_datasets.find_classes(config.dataset, config.data_dir, config.class_split)
    trained = config.for_training()
    for split in ("train", "val"):  # validation uses the training task shape
        tfds_datasets.check_split(listing, split, trained.ways, trained.shots, trained.queries, _train_flags(config))
    tfds_datasets.check_split(listing, "test", config.ways, config.shots, config.queries)
    if source.spec.published:
        return config
    return dataclasses.replace(config, class_split=listing.class_split, image_channels=source.channels)


def check_folder(config):
    """``--dataset folder``: the layout, the class split, every split's classes against the task shape
    (train and val: the training shape; test: the evaluation one) and every image's header, all
    before TensorFlow loads. Returns the config with the images' channels and the class split used."""
    import dataclasses

    from tfp_abml.data import folder

    listing = folder.find_classes(config.data_dir, config.class_split)
    trained = config.for_training()
    for split in ("train", "val"):  # validation uses the training task shape
        folder.check_split(listing, split, trained.ways, trained.shots, trained.queries, _train_flags(config))
    folder.check_split(listing, "test", config.ways, config.shots, config.queries)
    return dataclasses.replace(config, class_split=listing.class_split, image_channels=folder.image_channels(listing))


def check_encoder_weights(config):
    """Fail before the data is loaded if ``--encoder-weights`` is not 'imagenet' or a readable .h5
    file that fits the encoder. Whether its shapes fit needs the encoder itself, built here alone
    (seconds), not the whole model. Only where training starts: a trained run's evaluation and
    export load their weights from the run and no longer need the file.
    """
    if config.encoder_weights in (None, "imagenet"):
        return
    from tfp_abml.encoders import build_encoder
    from tfp_abml.run_config import check_weights_file

    check_weights_file(config.encoder_weights)
    build_encoder(config.encoder, config.resolved_image_size, channels=config.channels,
                  embedding_dim=config.embedding_dim, weights=config.encoder_weights)


def _time_budget(minutes, strategy):
    import keras

    from tfp_abml.distribute import any_worker

    class TimeBudget(keras.callbacks.Callback):
        """Stops training at the end of the first epoch that ends past the budget (whole epochs only)."""

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # Workers of a cluster stop together, or the others would wait for them forever.
            if any_worker(strategy, time.perf_counter() - self.start > 60.0 * minutes):
                self.model.stop_training = True

    return TimeBudget()


def train(config: RunConfig, output: pathlib.Path, verbose=1, max_minutes=None, strategy="none"):
    """Build data and model, restore the last checkpoint, fit; returns the Keras History.

    ``strategy`` is a ``--strategy`` name. In a cluster only the chief writes ``output``; every
    other worker trains alike in a scratch folder that is deleted at the end (tfp_abml.distribute).
    """
    from tfp_abml import distribute

    strategy = distribute.make_strategy(strategy)  # first: MultiWorkerMirroredStrategy must precede other TF ops
    distribute.replica_meta_batch(config.meta_batch, strategy.num_replicas_in_sync)
    with distribute.lost_workers(distribute.is_multi_worker(strategy)):
        if distribute.is_chief(strategy):
            return _train(config, output, verbose, max_minutes, strategy)
        scratch = distribute.scratch_dir()
        try:
            return _train(config, scratch, verbose, max_minutes, strategy)
        finally:
            distribute.remove_scratch(scratch)


def _train(config, output, verbose, max_minutes, strategy):
    import keras

    from tfp_abml import distribute
    from tfp_abml.checkpointing import (FINAL_WEIGHTS, TrainingState, checkpoint_callback, keep_best,
                                        load_initial_weights, read_json, save_weights_atomic, write_json_atomic)
    from tfp_abml.data import tfds_datasets

    saved_config, config = config, config.for_training()  # the training task shape (--train-ways ...)
    train_sampler = config.sampler("train")
    val_sampler = config.validation_sampler() if config.val_tasks else None

    # Seeded after loading the data, right before the model draws its initial weights: loading
    # consumes Python random numbers only when the images are not cached yet, and the unseeded
    # initialisers and seed generators of Keras draw theirs from Python's random module.
    keras.utils.set_random_seed(config.seed)
    chief = distribute.is_chief(strategy)
    with strategy.scope():  # variables mirrored on every replica; without --strategy the default scope
        model = config.compiled_model(measure_jit=True)  # --jit auto times this device (long runs)
        # Creates the variables, which the optimizer and checkpoint need.
        distribute.call_to_build(model, strategy, config.example_inputs())
        distribute.synchronize_batch_norm(model, strategy)
        state = TrainingState(model, output / "checkpoints")
    write_json_atomic(output / "config.json", saved_config.to_dict())  # both task shapes
    if config.dataset == "folder":  # the classes of each split, as this run splits them
        from tfp_abml.data import folder

        folder.write_classes(output, folder.find_classes(config.data_dir, config.class_split), config.channels)
    elif tfds_datasets.is_tfds_dataset(config.dataset):
        tfds_datasets.write_classes(output, tfds_datasets.find_classes(config.dataset, config.data_dir,
                                                                       config.class_split), config.channels)

    episodes_per_epoch = config.steps_per_epoch * config.meta_batch
    initial_epoch = state.restore()
    if not initial_epoch and config.init_weights:  # before a cluster's workers copy the chief's state
        load_initial_weights(model, config.init_weights)
        if chief:
            print(f"Starting from the weights in {config.init_weights}.", flush=True)
    if distribute.is_multi_worker(strategy):  # only the chief has checkpoints: everyone continues from its state
        distribute.copy_from_chief(strategy, [*model.variables, *model.optimizer.variables, state.epoch])
        initial_epoch = int(state.epoch.numpy())
    if initial_epoch and chief:
        # The numbers a resume must continue from, printed so that a user (and the tests) can check them.
        print(f"Resuming {output} after epoch {initial_epoch} of {config.epochs} (optimizer step "
              f"{int(model.optimizer.iterations.numpy())}, next training episode "
              f"{initial_epoch * episodes_per_epoch}).", flush=True)
    if initial_epoch >= config.epochs:
        print(f"Nothing to do: {config.epochs} epochs are done; raise --epochs to train longer.")
        return None
    history = read_json(output / "history.json", {})
    keep = [i for i, e in enumerate(history.get("epoch", [])) if e <= initial_epoch]
    history = {key: [values[i] for i in keep if i < len(values)] for key, values in history.items()}
    if history.get("epoch") and not config.trainval:
        keep_best(model, output, history)  # a run stopped between its checkpoint and its best weights

    train_data = distribute.distributed_episodes(strategy, train_sampler, config.meta_batch,
                                                 start=initial_epoch * episodes_per_epoch)
    val_data, val_steps = None, max(config.val_tasks // config.meta_batch, 1)
    if val_sampler is not None:
        val_data = distribute.distributed_episodes(strategy, val_sampler, config.meta_batch,
                                                   episodes=val_steps * config.meta_batch)
    saver = checkpoint_callback(state, output / "history.json", history, keep_best_weights=not config.trainval)
    callbacks = [saver,
                 keras.callbacks.TensorBoard(log_dir=str(output / "logs"))]
    if max_minutes:
        callbacks.append(_time_budget(max_minutes, strategy))
    start = time.perf_counter()
    result = model.fit(train_data, epochs=config.epochs, initial_epoch=initial_epoch,
                       steps_per_epoch=config.steps_per_epoch, validation_data=val_data,
                       # Known: a distributed dataset's length is not, and a step past its end would
                       # still run the step's random draws and, under a strategy, some collectives.
                       validation_steps=val_steps if val_data is not None else None,
                       callbacks=callbacks, verbose=verbose, shuffle=False)
    elapsed = time.perf_counter() - start
    if saver.fault:
        raise UserInputError(f"training stopped: {saver.fault}. Likely causes: --inner-lr or --learning-rate "
                             "too large; lower them and start over with --overwrite")
    trained = len(result.epoch) * episodes_per_epoch
    save_weights_atomic(model, output / FINAL_WEIGHTS)
    if verbose and chief:
        print(f"Trained {trained} episodes in {elapsed:.0f} s ({trained / elapsed:.1f} episodes/s, "
              f"validation included); run saved in {output}")
    return result


def _fit(argv):
    config, output, overwrite, verbose, max_minutes, strategy = parse_config(argv)
    cluster = check_strategy(strategy, config.meta_batch)
    if os.environ.get("TF_CONFIG") and cluster is None:
        print(f"note: TF_CONFIG is set but --strategy is {strategy}: this process trains alone "
              "(--strategy multi-worker trains with the cluster)", file=sys.stderr)
    writes = cluster is None or cluster.is_chief  # the other workers of a cluster write nothing to --output
    if writes:
        check_writable(output)
    config = check_data(config)
    check_encoder_weights(config)
    created = writes and not output.exists()
    if writes:
        prepare_output(config, output, overwrite)
    try:
        train(config, output, verbose, max_minutes, strategy)
    except KeyboardInterrupt:
        print("\nthe last completed epoch is checkpointed; run the same command to resume", file=sys.stderr)
        raise
    except (UserInputError, OSError):
        # A run this command started that failed before its first checkpoint holds nothing to
        # resume: remove it rather than leave a half-made run behind.
        if created and not any((output / "checkpoints").glob("ckpt-*.index")):
            shutil.rmtree(output, ignore_errors=True)
        raise


def main(argv=None):
    return run_command(_fit, argv)


if __name__ == "__main__":
    sys.exit(main())

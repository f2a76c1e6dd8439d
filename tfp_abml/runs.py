"""A finished or running training run, read back from its directory: its config and its model.

What ``training.evaluate``, ``training.export`` and the benchmarks load a run with. Settings-level
code: it reads ``config.json`` through :class:`tfp_abml.run_config.RunConfig`, builds that
config's model and restores the weights that :mod:`tfp_abml.checkpointing` wrote.
"""

from __future__ import annotations

import dataclasses
import pathlib

from tfp_abml.calibration import CALIBRATION_FILE
from tfp_abml.checkpointing import BEST_RECORD, BEST_WEIGHTS, FINAL_WEIGHTS, read_json
from tfp_abml.choices import INNER_LOOP_METHODS, WEIGHT_CHOICES
from tfp_abml.errors import UserInputError
from tfp_abml.run_config import RunConfig


def initial_weights_file(path):
    """``--init-weights``: a weights file as given, or a run folder's best weights (else its final ones)."""
    path = pathlib.Path(path)
    if path.is_dir():
        found = [path / name for name in (BEST_WEIGHTS, FINAL_WEIGHTS) if (path / name).is_file()]
        if not found:
            raise UserInputError(f"--init-weights {path} is a folder without {BEST_WEIGHTS} or {FINAL_WEIGHTS}: "
                                 "give a finished training run or a .weights.h5 file")
        path = found[0]
    if not (path.name.endswith(".weights.h5") and path.is_file()):
        raise UserInputError(f"--init-weights {path} is not a .weights.h5 file: give a run's {BEST_WEIGHTS} or "
                             f"{FINAL_WEIGHTS}, or the run folder")
    return str(path.resolve())


def load_run(run_dir, weights="best", **overrides):
    """Config and model of a training run.

    ``weights``: ``"best"`` loads ``best.weights.h5`` (the best validation epoch) where the run
    has one; otherwise, and for ``"last"``, the newest weights: ``model.weights.h5`` of a finished
    run if no checkpoint is newer, else the latest checkpoint. ``model.loaded_weights`` says which.
    ``overrides`` replace config settings (e.g. ``shots`` or ``data_dir``) before the model is
    built; settings that change the model's shape must match the trained one (``eval_inner_steps``,
    the inner steps at prediction, applies to the methods with an inner loop). ``ways`` may
    change for models whose weights serve any N (``RunConfig.ways_agnostic``).
    ``model.temperatures`` holds the run's fitted temperatures (``calibration.json``) when they were
    fitted to the weights loaded; otherwise it is empty.
    """
    import tensorflow as tf

    if weights not in WEIGHT_CHOICES:
        raise UserInputError(f"unknown --weights {weights!r}: use one of {', '.join(WEIGHT_CHOICES)}")
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserInputError(f"{run_dir} is not a training run (no config.json): pass the --output of training.fit")
    config = RunConfig.load(run_dir / "config.json")
    if overrides.get("eval_inner_steps") is not None and config.method not in INNER_LOOP_METHODS:
        raise UserInputError(f"--eval-inner-steps applies to methods with an inner loop ({', '.join(INNER_LOOP_METHODS)}); "
                             f"{run_dir} is a {config.method} run")
    trained_ways = config.resolved_train_ways
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).validate()
    if config.ways != trained_ways and not config.ways_agnostic:
        raise UserInputError(f"{run_dir} was trained {trained_ways}-way and {config.ways_agnostic_reason()}: "
                             f"evaluate with --ways {trained_ways}")
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise UserInputError(f"{run_dir} has no checkpoint yet: train at least one epoch first")
    model = config.build_model()
    model(config.example_inputs())  # create the variables the checkpoint restores into
    best, final = run_dir / BEST_WEIGHTS, run_dir / FINAL_WEIGHTS
    if weights == "best" and best.is_file():
        model.load_weights(str(best))
        model.loaded_weights = f"{BEST_WEIGHTS} (epoch {read_json(run_dir / BEST_RECORD, {}).get('epoch')})"
    elif final.is_file() and final.stat().st_mtime >= pathlib.Path(latest + ".index").stat().st_mtime:
        # A finished run's final weights, Keras-native: they hold every variable even for runs whose
        # checkpoints predate the fix that put the learned inner rates into them.
        model.load_weights(str(final))
        model.loaded_weights = f"{FINAL_WEIGHTS} (the end of training)"
    else:
        tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
        model.loaded_weights = f"checkpoint {pathlib.Path(latest).name}"
    calibration = read_json(run_dir / CALIBRATION_FILE, {})
    # Temperatures fitted to other weights (the last ones, or a best epoch since superseded) do not apply.
    model.temperatures = dict(calibration.get("temperatures", {})) if calibration.get("weights") == model.loaded_weights else {}
    return config, model


def calibrate_run(run_dir, config, model, tasks=300, seed=0, samples=None, progress=False):
    """Fit ``model``'s temperatures on validation tasks (:func:`tfp_abml.evaluation.fit_temperatures`),
    write them into the run and apply them to ``model``; returns the record."""
    from tfp_abml.evaluation import fit_temperatures

    record = fit_temperatures(config, model, tasks, seed, samples, progress=progress)
    save_calibration(run_dir, record)
    model.temperatures = record["temperatures"]
    return record


def save_calibration(run_dir, record):
    """Write a run's temperatures (:func:`tfp_abml.evaluation.fit_temperatures`'s record), atomically."""
    from tfp_abml.checkpointing import write_json_atomic

    write_json_atomic(pathlib.Path(run_dir) / CALIBRATION_FILE, record)

"""Resumable training state: atomic JSON files and a checkpoint of model, optimizer and epoch.

A run directory holds ``config.json``, ``history.json``, ``checkpoints/`` and
``logs/``. Every file is written to a temporary name first and renamed into
place, so a run killed at any moment leaves either the old file or the new
one, never half of one. ``tf.train.CheckpointManager`` commits a checkpoint by
rewriting its small index file last, which is atomic in the same way.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path, default=None):
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


class TrainingState:
    """Model, optimizer and completed-epoch counter, saved together after every epoch.

    The optimizer's slot variables are created before restoring, so that a
    resumed run continues with the same Adam moments, not fresh ones.
    """

    def __init__(self, model, directory, max_to_keep=2):
        import tensorflow as tf

        model.optimizer.build(model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=max_to_keep)

    def restore(self):
        """Restore the latest checkpoint, if any; returns the number of completed epochs."""
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.epoch.numpy())

    def save(self, completed_epochs):
        self.epoch.assign(completed_epochs)
        return self.manager.save(checkpoint_number=completed_epochs)


def checkpoint_callback(state: TrainingState, history_path, previous_history=None):
    """A Keras callback that saves ``state`` and appends to ``history.json`` after each epoch.

    A NaN or infinite loss stops training at once; that epoch is not saved (its weights are
    broken), and ``fault`` on the callback says where it happened.
    """
    import math

    import keras

    history = {key: list(values) for key, values in (previous_history or {}).items()}

    class _Checkpoint(keras.callbacks.Callback):
        fault = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)) and self.fault is None:
                self.fault = (f"the loss became {float(loss)} at step {batch + 1} of epoch {self.epoch + 1}; "
                              f"nothing from that epoch was saved, the last checkpoint is after epoch {self.epoch}")
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.fault is not None:
                return
            state.save(epoch + 1)
            history.setdefault("epoch", []).append(epoch + 1)
            for key, value in (logs or {}).items():
                history.setdefault(key, []).append(float(value))
            write_json_atomic(history_path, history)

    return _Checkpoint()


def load_run(run_dir, **overrides):
    """Config and model of a training run, weights from its latest checkpoint.

    ``overrides`` replace config settings (e.g. ``shots`` or ``data_dir``) before the model is
    built; settings that change the model's shape must match the trained one.
    """
    import dataclasses

    import tensorflow as tf

    from tfp_abml.errors import UserInputError
    from tfp_abml.run_config import RunConfig

    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserInputError(f"{run_dir} is not a training run (no config.json): pass the --output of training.fit")
    config = RunConfig.load(run_dir / "config.json")
    trained_ways = config.ways
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).validate()
    if config.ways != trained_ways and config.method in ("abml", "maml", "metasgd"):
        raise UserInputError(f"{run_dir} was trained {trained_ways}-way and {config.method}'s output layer is "
                             f"{trained_ways}-way: evaluate with --ways {trained_ways}")
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise UserInputError(f"{run_dir} has no checkpoint yet: train at least one epoch first")
    model = config.build_model()
    model(config.example_inputs())  # create the variables the checkpoint restores into
    tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
    return config, model

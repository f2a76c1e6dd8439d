"""Resumable training state: atomic JSON files and a checkpoint of model, optimizer and epoch.

A run directory holds ``config.json``, ``history.json``, ``checkpoints/`` and
``logs/``. Every file is written to a temporary name first and renamed into
place, so a run killed at any moment leaves either the old file or the new
one, never half of one. ``tf.train.CheckpointManager`` commits a checkpoint by
rewriting its small index file (``checkpoints/checkpoint``) last, which is
atomic in the same way; a kill during a save leaves the files of an
unregistered checkpoint, which are ignored and later overwritten.

Restoring is defensive as well: a checkpoint whose files cannot be read (a disk
fault, a file deleted or truncated by hand) is reported and the previous one is
used, and an unreadable index file falls back to the checkpoint files found in
the folder, so a damaged latest checkpoint costs one epoch, not the run.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import tempfile


def _new_file_mode():
    """The mode ``open()`` gives a new file: 0o666 less the process's umask.

    Read from ``/proc`` where there is one; ``os.umask`` can only be read by setting it, which
    would briefly apply to every thread's new files."""
    try:
        with open("/proc/self/status") as lines:
            for line in lines:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    The file gets the permissions a plain ``open()`` would give it (``mkstemp``'s own are
    owner-only, which would hide run files and results from the rest of a team)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX (Windows has no such modes to fix before Python 3.13)
            os.fchmod(fd, _new_file_mode())
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


def seed_states(model):
    """State variables of the model's random seed generators (Flipout noise, LSTM noise, class order).

    Keras keeps them out of ``model.weights`` and out of TensorFlow checkpoints of the
    model; without them a resumed run would replay the random draws of its first epoch
    instead of continuing with the next ones, and its losses would differ from a run that
    was never interrupted.
    """
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that does not fit the model (written by other code or another config).

    Not a damaged file: every older checkpoint of the run would not fit either, so restoring
    stops at once instead of falling back.
    """


class TrainingState:
    """Model, optimizer, completed-epoch counter and random-stream state, saved together after every epoch.

    The optimizer's slot variables are created before restoring, so that a
    resumed run continues with the same Adam moments, not fresh ones.
    """

    def __init__(self, model, directory, max_to_keep=2, log=None):
        import tensorflow as tf

        model.optimizer.build(model.trainable_variables)
        self.directory = pathlib.Path(directory)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        self.seeds = seed_states(model)
        # `core` is what must match for a resume; `seeds` are restored when present (checkpoints
        # written before they were saved lack them) and saved together with the rest.
        self.core = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch,
                                              seeds=self.seeds)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=max_to_keep)

    def candidates(self):
        """Checkpoint prefixes to try, newest first.

        Those registered in the index file; if the index file is missing or unreadable
        (TensorFlow then ignores it with a warning), the ``ckpt-<n>.index`` files found.
        """
        registered = list(self.manager.checkpoints)
        if registered:
            return registered[::-1]
        found = sorted(((int(m.group(1)), str(self.directory / f"ckpt-{m.group(1)}"))
                        for m in (re.fullmatch(r"ckpt-(\d+)\.index", p.name) for p in self.directory.glob("ckpt-*.index"))
                        if m), reverse=True)
        if found:
            self.log(f"warning: {self.directory / 'checkpoint'} is missing or unreadable; "
                     f"using the checkpoint files found in {self.directory}")
        return [path for _, path in found]

    def restore(self):
        """Restore the newest readable checkpoint, if any; returns the number of completed epochs.

        Raises ``UserInputError`` if checkpoints exist but none can be read, or if they do not
        match the model; a resume must never silently start over.
        """
        from tfp_abml.errors import UserInputError

        candidates = self.candidates()
        for path in candidates:
            try:
                self._restore(path)
            except CheckpointMismatchError as err:
                raise UserInputError(f"checkpoint {path} does not match this model ({err}); it was written by "
                                     "another version of the code: pass --overwrite to start over") from err
            except Exception as err:  # noqa: BLE001 -- any read failure: a missing, truncated or corrupt file
                self.log(f"warning: cannot read checkpoint {path} ({_first_line(err)}); trying the previous one")
                continue
            if path != candidates[0]:
                self.log(f"warning: resuming from {path}, the newest checkpoint that could be read")
            return int(self.epoch.numpy())
        if candidates:
            raise UserInputError(f"no checkpoint in {self.directory} can be read (tried {len(candidates)}); "
                                 "pass --overwrite to start over")
        return 0

    def _restore(self, path):
        import tensorflow as tf

        try:
            self.core.restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError) as err:  # a variable missing, or of another shape
            raise CheckpointMismatchError(_first_line(err)) from err
        saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("seeds/")]
        if len(saved) == len(self.seeds):
            tf.train.Checkpoint(seeds=self.seeds).restore(path).expect_partial()
        else:
            self.log(f"note: {path} holds no random-stream state (an older checkpoint); "
                     "the resumed run draws fresh random numbers")

    def save(self, completed_epochs):
        self.epoch.assign(completed_epochs)
        return self.manager.save(checkpoint_number=completed_epochs)


def _first_line(err):
    """The first line of an error, without TensorFlow's ``{{function_node ...}}`` prefix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)


BEST_WEIGHTS = "best.weights.h5"  # the weights of the epoch with the best validation accuracy
BEST_RECORD = "best.json"  # which epoch that was, and its validation accuracy
FINAL_WEIGHTS = "model.weights.h5"  # written by training.fit when training ends
SELECTION_METRIC = "val_accuracy"


def save_weights_atomic(model, path):
    """``model.save_weights(path)`` through a temporary file renamed into place."""
    path = pathlib.Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    model.save_weights(str(tmp))
    tmp.replace(path)


def load_initial_weights(model, path):
    """Start ``model`` from the weights in ``path`` (a ``.weights.h5`` file), keeping its optimizer fresh.

    A ``.weights.h5`` file holds the optimizer's state too (its step count and learning rate among
    it); a run that starts from another run's weights keeps its own, so that its ``--learning-rate``
    and schedule apply. Raises ``UserInputError`` when the file's weights do not fit ``model``.

    An abml model with ``--prior learned`` also starts from a run trained with the standard prior:
    every other weight is loaded, and the prior starts where a fresh learned prior does, at N(0, 1).
    """
    from tfp_abml.errors import UserInputError

    optimizer_variables = list(model.optimizer.variables) if model.optimizer else []
    fresh_optimizer = [variable.numpy() for variable in optimizer_variables]
    prior = getattr(model, "prior", None)
    try:
        try:
            _load_weights(model, path)
        except ValueError:
            if prior is None:
                raise
            _load_weights(model, path, objects_to_skip=[prior])  # a file without a learned prior
            print(f"{path} holds no learned prior: it starts at N(0, 1).", flush=True)
    except ValueError as err:
        raise UserInputError(f"--init-weights {path} does not fit this model (another method, encoder or head?): "
                             f"{_first_line(err)}") from err
    for variable, value in zip(optimizer_variables, fresh_optimizer):
        variable.assign(value)


def _load_weights(model, path, **kwargs):
    import warnings

    with warnings.catch_warnings():  # Keras's note that it skips an optimizer of another layout: so do we
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(str(path), **kwargs)


def best_epoch(history):
    """(epoch, value) of the best validation accuracy in ``history`` (the first of equals), or None."""
    values = history.get(SELECTION_METRIC) or []
    if not values:
        return None
    index = max(range(len(values)), key=lambda i: (values[i], -i))
    return int(history["epoch"][index]), float(values[index])


def keep_best(model, run_dir, history):
    """Save ``model``'s weights as the run's best if ``history``'s last epoch is its best so far.

    Also mends a run stopped between saving a checkpoint and saving the best weights: if the
    last (checkpointed, restored) epoch is the best but ``best.json`` names another, the weights
    at hand are that epoch's and are saved. Returns the best (epoch, value) or None.
    """
    run_dir = pathlib.Path(run_dir)
    best = best_epoch(history)
    if best is None or best[0] != history["epoch"][-1]:
        return best
    if read_json(run_dir / BEST_RECORD, {}).get("epoch") != best[0] or not (run_dir / BEST_WEIGHTS).is_file():
        save_weights_atomic(model, run_dir / BEST_WEIGHTS)
        write_json_atomic(run_dir / BEST_RECORD, {"epoch": best[0], SELECTION_METRIC: best[1]})
    return best


def checkpoint_callback(state: TrainingState, history_path, previous_history=None, keep_best_weights=True):
    """A Keras callback that appends to ``history.json`` and saves ``state`` after each epoch.

    With validation (and ``keep_best_weights``; not for --trainval runs, whose validation
    classes are trained on) it then keeps the weights of the best validation epoch in
    ``best.weights.h5`` beside ``history.json`` (:func:`keep_best`). The history also records the
    outer learning rate at the end of each epoch, so a resumed schedule can be checked.

    ``history.json`` is written before the checkpoint: a run killed between the two leaves
    a history entry for an epoch that was not checkpointed, which the resume drops, rather
    than a checkpointed epoch missing from the history.

    After every step it checks the loss and the weights. A NaN or infinite loss, or weights
    made NaN or infinite by a non-finite gradient while the loss was still finite, stop
    training at once; that epoch is not saved, and ``fault`` on the callback names the
    step and what went wrong.
    """
    import math

    import keras
    import tensorflow as tf

    history = {key: list(values) for key, values in (previous_history or {}).items()}

    class _Checkpoint(keras.callbacks.Callback):
        fault = None

        def on_train_begin(self, logs=None):
            variables = list(self.model.trainable_variables)
            # One compiled reduction over all weights: about a millisecond per step on a CPU.
            self._weights_finite = tf.function(
                lambda: tf.reduce_all([tf.reduce_all(tf.math.is_finite(v.value)) for v in variables]))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def _stop(self, what, batch):
            saved = (f"the last checkpoint is after epoch {self.epoch}" if self.epoch
                     else "there is no checkpoint yet")
            self.fault = (f"{what} at step {batch + 1} of epoch {self.epoch + 1}; "
                          f"nothing from that epoch was saved, {saved}")
            self.model.stop_training = True

        def on_train_batch_end(self, batch, logs=None):
            if self.fault is not None:
                return
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self._stop(f"the loss became {float(loss)}", batch)
            elif not bool(self._weights_finite()):
                still = f" (the loss, {float(loss):.4g}, was still finite)" if loss is not None else ""
                self._stop(f"a gradient became NaN or infinite{still} and the update made weights NaN or "
                           "infinite", batch)

        def on_epoch_end(self, epoch, logs=None):
            if self.fault is not None:
                return
            history.setdefault("epoch", []).append(epoch + 1)
            for key, value in (logs or {}).items():
                history.setdefault(key, []).append(float(value))
            rates = history.setdefault("learning_rate", [])
            # Not for a run resumed from before rates were recorded (its list is short); under a
            # strategy the rate is a MirroredVariable: read it through a tensor.
            if "learning_rate" not in (logs or {}) and len(rates) == len(history["epoch"]) - 1:
                rates.append(float(tf.convert_to_tensor(self.model.optimizer.learning_rate)))
            write_json_atomic(history_path, history)
            state.save(epoch + 1)
            if keep_best_weights:
                keep_best(self.model, pathlib.Path(history_path).parent, history)

    return _Checkpoint()


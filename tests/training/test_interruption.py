"""Interrupted and repeated training: SIGKILL then resume loses nothing; a seed fixes the loss curve.

The reference is an uninterrupted run. A run killed with SIGKILL at some point after its first
checkpoint and restarted with the same command must end with the same history, epoch for epoch:
that can only happen if the resume restored the weights, the Adam moments and step counter, the
random streams (Flipout noise, LSTM noise, class order) and continued the episode stream with the
next unseen episode. All runs are a tiny ``abml`` on real Omniglot, a few seconds each.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from training import fit

EPOCHS, STEPS, META_BATCH = 6, 2, 1
RTOL = 1e-5  # what "the same numbers" allows: see test_same_seed_same_losses_other_seed_other_losses
TINY = ["--method", "abml", "--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", str(META_BATCH),
        "--steps-per-epoch", str(STEPS), "--val-tasks", "0", "--inner-steps", "1", "--embedding-dim", "16",
        "--hidden-units", "16", "--noise-dim", "8", "--verbose", "0"]


def _args(data_dir, output, *extra):
    return [*TINY, "--data-dir", str(data_dir), "--output", str(output), *extra]


def _history(output):
    return json.loads((output / "history.json").read_text())


def _checkpoint_value(output, epoch, name):
    return int(tf.train.load_variable(str(output / "checkpoints" / f"ckpt-{epoch}"), name))


OPTIMIZER_STEP = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
EPOCH = "epoch/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted run of ``EPOCHS`` epochs, seed 0: its directory."""
    output = tmp_path_factory.mktemp("reference") / "run"
    assert fit.main(_args(data_dir, output, "--epochs", str(EPOCHS))) == 0
    return output


def test_same_seed_same_losses_other_seed_other_losses(reference, data_dir, tmp_path):
    first = _history(reference)
    assert first["epoch"] == list(range(1, EPOCHS + 1)) and all(np.isfinite(first["loss"]))
    again, other = tmp_path / "again", tmp_path / "other"
    assert fit.main(_args(data_dir, again, "--epochs", "3")) == 0
    assert fit.main(_args(data_dir, other, "--epochs", "3", "--seed", "1")) == 0
    # Same seed, same machine: the same numbers. Usually bit for bit, but multi-threaded CPU kernels
    # may sum in another order under load (seen: 1e-7 relative after 3 epochs), hence the tolerance;
    # another seed, or a resume that lost any state, differs by 1e-3 or more.
    for key in ("loss", "nll", "kl", "accuracy"):
        np.testing.assert_allclose(_history(again)[key], first[key][:3], rtol=RTOL, err_msg=key)
    assert abs(_history(other)["loss"][0] - first["loss"][0]) > 100 * RTOL * first["loss"][0]


def test_a_json_write_that_fails_midway_leaves_the_old_file_and_no_litter(tmp_path):
    from tfp_abml.checkpointing import write_json_atomic

    path = tmp_path / "history.json"
    write_json_atomic(path, {"epoch": [1, 2]})
    with pytest.raises(TypeError):  # fails after part of the document was written
        write_json_atomic(path, {"epoch": [1, 2, 3], "loss": [0.5, object()]})
    assert json.loads(path.read_text()) == {"epoch": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=lambda umask: f"umask {umask:03o}")
def test_a_json_write_gets_the_permissions_open_would_give(tmp_path, umask):
    from tfp_abml.checkpointing import write_json_atomic

    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "config.json", {"ways": 5})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)
    assert mode("config.json") == mode("plain.json") == 0o666 & ~umask


def _start(data_dir, output):
    return subprocess.Popen([sys.executable, "-m", "training.fit", *_args(data_dir, output, "--epochs", str(EPOCHS))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _kill_after_first_checkpoint(process, output, timeout=240):
    index = output / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + timeout
    while not index.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint was written in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    return process.returncode


def test_sigkill_then_resume_ends_as_if_never_interrupted(reference, data_dir, tmp_path):
    output = tmp_path / "run"
    returncode = _kill_after_first_checkpoint(_start(data_dir, output), output)
    assert returncode == -signal.SIGKILL
    # What a kill leaves is readable: config.json and history.json are whole JSON documents.
    assert json.loads((output / "config.json").read_text())["ways"] == 3
    killed_at = _history(output)["epoch"][-1]
    assert 1 <= killed_at < EPOCHS and not (output / "model.weights.h5").exists()

    # The same command again resumes from the last checkpoint, and says from where.
    resumed = subprocess.run([sys.executable, "-m", "training.fit", *_args(data_dir, output, "--epochs", str(EPOCHS))],
                             cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"Resuming .* after epoch (\d+) of 6 \(optimizer step (\d+), next training episode (\d+)\)",
                      resumed.stdout)
    assert match, resumed.stdout
    epoch, step, episode = map(int, match.groups())
    assert epoch in (killed_at - 1, killed_at)  # killed during a save: the history was written first
    assert (step, episode) == (epoch * STEPS, epoch * STEPS * META_BATCH)

    # Counters continued: epochs, optimizer steps; the history has every epoch once.
    history, expected = _history(output), _history(reference)
    assert history["epoch"] == list(range(1, EPOCHS + 1))
    assert _checkpoint_value(output, EPOCHS, EPOCH) == EPOCHS
    assert _checkpoint_value(output, EPOCHS, OPTIMIZER_STEP) == EPOCHS * STEPS
    assert (output / "model.weights.h5").is_file()
    # ...and so did everything else: the losses equal the uninterrupted run's.
    for key in ("loss", "nll", "kl", "accuracy"):
        np.testing.assert_allclose(history[key], expected[key], rtol=RTOL, err_msg=key)


def _copy(reference, tmp_path):
    """The finished reference run, without its final weights file: checkpoints after epochs 5 and 6."""
    output = tmp_path / "run"
    shutil.copytree(reference, output)
    (output / "model.weights.h5").unlink()
    return output


@pytest.mark.parametrize("damage", ["truncated data", "missing index", "garbage index file"])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(reference, data_dir, tmp_path, capsys,
                                                                        damage):
    output = _copy(reference, tmp_path)
    latest = output / "checkpoints" / f"ckpt-{EPOCHS}"
    if damage == "truncated data":
        data = latest.with_name(latest.name + ".data-00000-of-00001")
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "missing index":
        latest.with_name(latest.name + ".index").unlink()
    else:  # the checkpoints' own index file; the newest checkpoint files are fine
        (output / "checkpoints" / "checkpoint").write_text("garbage {{")
    assert fit.main(_args(data_dir, output, "--epochs", str(EPOCHS))) == 0
    out, err = capsys.readouterr()
    if damage == "garbage index file":  # found by listing the folder: nothing to redo
        assert "missing or unreadable" in err and "Nothing to do" in out
        return
    assert f"cannot read checkpoint {latest}" in err and f"resuming from {latest.with_name(f'ckpt-{EPOCHS - 1}')}" in err
    assert f"after epoch {EPOCHS - 1} of {EPOCHS}" in out
    # The lost epoch was trained again, from the same state: the same numbers as the first time.
    np.testing.assert_allclose(_history(output)["loss"], _history(reference)["loss"], rtol=RTOL)
    assert _checkpoint_value(output, EPOCHS, OPTIMIZER_STEP) == EPOCHS * STEPS


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(reference, data_dir, tmp_path, capsys):
    output = _copy(reference, tmp_path)
    for data in (output / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(b"\0" * 64)
    assert fit.main(_args(data_dir, output, "--epochs", str(EPOCHS))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no checkpoint in") and "--overwrite" in err[-1]
    assert _history(output)["epoch"] == list(range(1, EPOCHS + 1))  # nothing was overwritten


def test_a_checkpoint_of_another_model_is_refused_by_name(reference, tmp_path):
    """Code that changed a layer's shape since the checkpoint was written: stop and say so, no fallback."""
    from tfp_abml.checkpointing import TrainingState
    from tfp_abml.errors import UserInputError
    from tfp_abml.run_config import RunConfig

    config = RunConfig.from_dict({**json.loads((reference / "config.json").read_text()), "hidden_units": [32],
                                  "residual_head": False})  # a plain head: widths other than the embedding
    model = config.compiled_model()
    model(config.example_inputs())
    messages = []
    state = TrainingState(model, _copy(reference, tmp_path) / "checkpoints", log=messages.append)
    with pytest.raises(UserInputError, match=rf"checkpoint .*ckpt-{EPOCHS} does not match this model "
                                             r"\(Received incompatible tensor"):
        state.restore()
    assert messages == []


"""Every invalid flag value or combination of the command-line tools: exit code 2, one ``error:`` line.

Table-driven over ``training.fit``, ``training.evaluate`` and ``training.export``. Most cases call
``main(argv)`` in-process (fast); a few run the real command in a subprocess, where a traceback
or a wrong exit code would show exactly as a user sees it. ``{run}`` is a folder that looks like a
training run (a 5-way ``abml`` config.json) but has no checkpoint yet; ``{file}`` an ordinary
file; ``{folder}`` a folder of someone's files; ``{data}`` the real data directory; ``{readonly}``
a folder no one may write in and ``{readonly_run}`` a run folder likewise (see ``read_only``);
``{weights}`` a Keras weights file of a small network that is not EfficientNetB0.
"""

import contextlib
import errno
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tfp_abml.checkpointing import write_json_atomic
from tfp_abml.run_config import RunConfig
from training import _cli, evaluate, export, fit, tune

TOOLS = {"fit": fit, "evaluate": evaluate, "export": export, "tune": tune}

CASES = [
    # training.fit: flag values
    ("fit", ["--steps-per-epoch", "0"], "--steps-per-epoch must be an integer >= 1"),
    ("fit", ["--meta-batch", "0"], "--meta-batch must be an integer >= 1"),
    ("fit", ["--epochs", "-1"], "--epochs must be an integer >= 1"),
    ("fit", ["--queries", "0"], "--queries must be an integer >= 1"),
    ("fit", ["--inner-steps", "-1"], "--inner-steps must be an integer >= 0"),
    ("fit", ["--inner-steps", "0", "--learn-inner-lr"], "--learn-inner-lr learns the inner step size, which --inner-steps 0"),
    ("fit", ["--eval-samples", "0"], "--eval-samples must be an integer >= 1"),
    ("fit", ["--initial-scale", "0"], "--initial-scale must be > 0"),
    ("fit", ["--learning-rate", "inf"], "--learning-rate must be a finite number, got inf"),
    ("fit", ["--kl-scale", "nan"], "--kl-scale must be a finite number, got nan"),
    ("fit", ["--image-size", "8"], "--image-size 8 is too small for conv4"),
    ("fit", ["--hidden-units", "0"], "--hidden-units must be positive integers"),
    ("fit", ["--seed", "-1"], "--seed must be >= 0"),
    ("fit", ["--max-minutes", "0"], "--max-minutes must be > 0"),
    ("fit", ["--verbose", "3"], "argument --verbose: invalid choice"),
    ("fit", ["--split-scheme", "random"], "argument --split-scheme: invalid choice"),
    ("fit", ["--jit", "maybe"], "argument --jit: invalid choice"),
    ("fit", ["--task-loop", "vectorized"], "argument --task-loop: invalid choice"),
    ("fit", ["--task-loop", "map_fn"], "--task-loop applies only to --method maml or metasgd, not abml"),
    ("fit", ["--config", '{config:{"task_loop": "vmap"}}'], "task_loop must be one of auto, unrolled, map_fn, sequential, got 'vmap'"),
    ("fit", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("fit", ["--ways"], "argument --ways: expected one argument"),
    # training.fit: combinations, config files, output folders
    ("fit", ["--shots", "10", "--queries", "11"], "--shots 10 + --queries 11 = 21 is more than the 20"),
    ("fit", ["--ways", "2000"], "--ways 2000 is larger than the 688 classes of the val split"),
    ("fit", ["--config", "{folder}/missing.json"], "cannot read config"),
    ("fit", ["--config", "{config:[5]}"], "must hold a JSON object of settings"),
    ("fit", ["--config", '{config:{"inner_lr": "big"}}'], "inner_lr must be a number, got 'big'"),
    ("fit", ["--config", '{config:{"hidden_units": 5}}'], "hidden_units must be a list of integers"),
    ("fit", ["--config", '{config:{"ways": 5.5}}'], "ways must be an integer, got 5.5"),
    ("fit", ["--config", '{config:{"warp_speed": 9}}'], "unknown config keys ['warp_speed']"),
    ("fit", ["--output", "{file}"], "is a file, not a folder"),
    ("fit", ["--output", "{folder}"], "exists and is not a training run"),
    ("fit", ["--output", "{folder}", "--overwrite"], "refusing to delete"),
    ("fit", ["--output", "{run}", "--ways", "3"], "holds a run with a different config (ways: 5 -> 3)"),
    # training.evaluate
    ("evaluate", [], "the following arguments are required: --run"),
    ("evaluate", ["--run", "{folder}"], "is not a training run (no config.json)"),
    ("evaluate", ["--run", "{run}", "--tasks", "0"], "--tasks must be >= 1"),
    ("evaluate", ["--run", "{run}", "--samples", "0"], "--samples must be >= 1"),
    ("evaluate", ["--run", "{run}", "--split", "holdout"], "argument --split: invalid choice"),
    ("evaluate", ["--run", "{run}", "--ways", "3"], "has no checkpoint yet"),  # abml aligned+pool serves any N
    ("evaluate", ["--run", "{run}", "--weights", "middle"], "argument --weights: invalid choice"),
    ("fit", ["--method", "maml", "--train-ways", "10"], "maml has an N-way output layer"),
    ("fit", ["--lr-schedule", "linear"], "argument --lr-schedule: invalid choice"),
    ("evaluate", ["--run", "{run}", "--shots", "15", "--queries", "10"], "is more than the 20"),
    ("evaluate", ["--run", "{run}"], "has no checkpoint yet"),
    # training.export
    ("export", ["--run", "{run}"], "the following arguments are required: --output"),
    ("export", ["--run", "{run}", "--output", "{folder}/sm", "--samples", "0"], "--samples must be >= 1"),
    ("export", ["--run", "{folder}", "--output", "{folder}/sm"], "is not a training run"),
    ("export", ["--run", "{run}", "--output", "{folder}/sm"], "has no checkpoint yet"),
    ("export", ["--run", "{run}", "--output", "{file}"], "is a file: give a folder for the SavedModel"),
    ("export", ["--run", "{run}", "--output", "{folder}"], "holds no SavedModel; refusing to replace it"),
    # --encoder-weights: checked before the data is read or a model built (issue 22)
    ("fit", ["--encoder", "efficientnet_b0", "--encoder-weights", "/nonexistent.h5"],
     "--encoder-weights /nonexistent.h5 does not exist"),
    ("fit", ["--encoder", "efficientnet_b0", "--encoder-weights", "{file}"], "a Keras weights file ending in .h5"),
    ("fit", ["--encoder", "efficientnet_b0", "--encoder-weights", "{weights}"],
     "does not fit EfficientNetB0 without its top"),
    # Output locations that cannot be written, checked up front by every command (issue 22)
    ("fit", ["--output", "/proc/x"], "--output /proc/x cannot be written: /proc"),
    ("fit", ["--output", "{readonly}/run"], "/run cannot be written"),
    ("fit", ["--output", "{readonly}"], "cannot be written"),
    ("fit", ["--output", "{file}/run"], "is a file, so no folder can be made there"),
    ("export", ["--run", "{run}", "--output", "/proc/sm/1"], "--output /proc/sm/1 cannot be written: /proc"),
    ("export", ["--run", "{run}", "--output", "{readonly}/sm/1"], "/sm/1 cannot be written"),
    ("evaluate", ["--run", "{readonly_run}"], "--run {readonly_run} cannot be written"),
    ("tune", ["--output", "{readonly}/search"], "/search cannot be written"),
    ("tune", ["--output", "/proc/search"], "--output /proc/search cannot be written"),
    ("tune", ["--output", "{folder}/search", "--best-config", "{readonly}/best.json"],
     "--best-config {readonly}/best.json cannot be written"),
    ("tune", ["--output", "{folder}/search", "--best-config", "{folder}"], "is a folder, not a file"),
]
# TensorFlow's C++ runtime logs a few lines at import (absl, before TF_CPP_MIN_LOG_LEVEL applies):
# not the tool's output, so not counted.
TF_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:\d\d)")
# These run as real commands: a config file, and a late check after TensorFlow is imported.
SUBPROCESS = {("fit", "--config", '{config:{"inner_lr": "big"}}'), ("evaluate", "--run", "{run}")}


def _writable(folder):
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@contextlib.contextmanager
def read_only(folder):
    """Make ``folder`` unwritable for this process, as a user's read-only folder is.

    ``chmod`` does not stop root (CI runs as root), so as root the folder is made immutable
    (``chattr +i``: no file can be created in it, not even by root). Undone on exit.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make a folder read-only for root here (chattr: {made.stderr.strip()})")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    try:
        assert not _writable(folder), f"{folder} is still writable"
        yield folder
    finally:
        undo()


@pytest.fixture
def places(tmp_path, data_dir):
    import keras

    run = tmp_path / "run"
    write_json_atomic(run / "config.json", RunConfig(ways=5, data_dir=str(data_dir)).to_dict())
    readonly_run = tmp_path / "readonly-run"
    write_json_atomic(readonly_run / "config.json", RunConfig(ways=5, data_dir=str(data_dir)).to_dict())
    (tmp_path / "notes.txt").write_text("not a folder")
    folder = tmp_path / "my-files"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    readonly = tmp_path / "read-only"
    readonly.mkdir()
    weights = tmp_path / "small.weights.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(str(weights))
    with read_only(readonly), read_only(readonly_run):
        yield {"run": str(run), "file": str(tmp_path / "notes.txt"), "folder": str(folder), "data": str(data_dir),
               "readonly": str(readonly), "readonly_run": str(readonly_run), "weights": str(weights),
               "tmp": tmp_path}
    assert not any(readonly.iterdir()), f"a refused command wrote into {readonly}"
    assert sorted(p.name for p in readonly_run.iterdir()) == ["config.json"]


def _fill(args, places):
    filled = []
    for arg in args:
        if "{" in arg and not arg.startswith("{config:"):
            arg = arg.format(**{k: v for k, v in places.items() if k != "tmp"})
        if arg.startswith("{config:"):
            path = places["tmp"] / f"config-{len(list(places['tmp'].glob('config-*')))}.json"
            path.write_text(arg[len("{config:"):-1])
            arg = str(path)
        filled.append(arg.format(**{k: v for k, v in places.items() if k != "tmp"}))
    return filled


@pytest.mark.parametrize("tool, args, message", CASES, ids=[f"{t}:{' '.join(a) or '(none)'}" for t, a, _ in CASES])
def test_invalid_flags_exit_2_with_one_error_line(tool, args, message, places, capsys):
    argv = _fill(args, places)
    if tool == "fit" and "--data-dir" not in argv:
        argv += ["--data-dir", places["data"]]
    if tool == "fit" and "--output" not in argv:
        argv += ["--output", str(places["tmp"] / "new-run")]
    if (tool, *args) in SUBPROCESS:
        result = subprocess.run([sys.executable, "-m", f"training.{tool}", *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        code, err = result.returncode, result.stderr
    else:
        code, err = TOOLS[tool].main(argv), capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line and not TF_NATIVE_LOG.match(line)]
    message = message.format(**{k: v for k, v in places.items() if k != "tmp"})
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    # Nothing of the user's was touched.
    assert (places["tmp"] / "my-files" / "thesis.tex").read_text() == "precious"
    assert json.loads((places["tmp"] / "run" / "config.json").read_text())["ways"] == 5


def test_at_least_15_cases_cover_every_tool():
    assert len(CASES) >= 15 and {tool for tool, _, _ in CASES} == set(TOOLS)


def test_an_os_error_while_writing_is_one_line_naming_the_path_and_cause(capsys):
    def body(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/runs/x/history.json")

    assert _cli.run_command(body, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: /data/runs/x/history.json: No space left on device"), err


def test_fit_that_fails_writing_before_its_first_checkpoint_leaves_no_run(tmp_path, data_dir, monkeypatch, capsys):
    output = tmp_path / "new-run"

    def train_then_fail(config, out, *args):
        (out / "history.json").write_text("{")  # something half-written
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out / "checkpoints"))

    monkeypatch.setattr(fit, "train", train_then_fail)
    code = fit.main(["--data-dir", str(data_dir), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and "Traceback" not in err, err
    assert not output.exists()


def test_an_encoder_weights_file_that_fits_passes_the_check_and_is_loaded(tmp_path):
    import keras
    import numpy as np

    from tfp_abml.encoders import build_encoder

    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                 pooling="avg")
    path = tmp_path / "b0_notop.weights.h5"
    backbone.save_weights(str(path))
    config = RunConfig(encoder="efficientnet_b0", encoder_weights=str(path)).validate()
    fit.check_encoder_weights(config)  # no error
    encoder = build_encoder("efficientnet_b0", 32, channels=1, embedding_dim=64, weights=str(path))
    # Every saved tensor is in the encoder (randomly initialised ones would match none).
    loaded = {np.asarray(w.numpy()).tobytes() for w in encoder.weights}
    missing = [w.path for w in backbone.weights if np.asarray(w.numpy()).tobytes() not in loaded]
    assert not missing, missing[:5]

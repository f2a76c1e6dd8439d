"""``python -m training.fit``: fast help, one-line errors, a real short run that learns, and resume."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from training import fit


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "training.fit", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_help_does_not_import_tensorflow():
    code = ("import sys, contextlib, io\nimport training.fit as f\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: f.main(['--help'])\n    except SystemExit: pass\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--encoder", "resnet50"], "unknown encoder 'resnet50'"),
    (["--shots", "5", "--queries", "16"], "--shots 5 + --queries 16 = 21 is more than the 20 drawers"),
    (["--ways", "1"], "--ways must be an integer >= 2"),
    (["--ways", "700"], "--ways 700 is larger than the 688 classes of the val split"),
    (["--inner-lr", "0"], "--inner-lr must be > 0"),
    (["--learning-rate", "-0.1"], "--learning-rate must be > 0"),
    (["--method", "reptile"], "argument --method: invalid choice"),
    (["--ways", "five"], "argument --ways: invalid int value"),
    (["--kl-scale", "-1"], "--kl-scale must be >= 0"),
    (["--encoder", "efficientnet_b0", "--image-size", "28"], "too small for efficientnet_b0"),
    (["--encoder-weights", "imagenet"], "--encoder-weights applies only to --encoder efficientnet_b0"),
    (["--data-dir", "/nonexistent"], "does not exist"),
])
def test_bad_input_exits_with_one_line(args, message, data_dir, tmp_path):
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(data_dir)]
    result = _run(*args, "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_data_dir_without_archives_says_what_to_put_where(tmp_path):
    result = _run("--data-dir", str(tmp_path), "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "images_background.zip" in result.stderr and "Traceback" not in result.stderr


def _fit(output, data_dir, *extra):
    return fit.main(["--data-dir", str(data_dir), "--ways", "5", "--shots", "1", "--queries", "5",
                     "--meta-batch", "4", "--steps-per-epoch", "15", "--val-tasks", "8", "--output", str(output),
                     "--verbose", "0", *extra])


def test_short_run_learns_writes_its_files_and_resumes(tmp_path, data_dir):
    import tensorflow as tf

    output = tmp_path / "run"
    assert _fit(output, data_dir, "--epochs", "2") == 0
    for name in ("config.json", "history.json", "model.weights.h5", "checkpoints/checkpoint", "logs"):
        assert (output / name).exists(), name
    history = json.loads((output / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert history["nll"][1] < history["nll"][0]
    assert json.loads((output / "config.json").read_text())["ways"] == 5
    step_after_two = tf.train.load_variable(str(output / "checkpoints" / "ckpt-2"),
                                            "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    assert step_after_two == 30

    # Same command, more epochs: continues from epoch 2 with the optimizer's state.
    assert _fit(output, data_dir, "--epochs", "3") == 0
    history = json.loads((output / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    assert tf.train.load_variable(str(output / "checkpoints" / "ckpt-3"),
                                  "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 45
    assert history["nll"][2] < history["nll"][0]

    # A different config on the same output is refused, then accepted with --overwrite.
    assert _fit(output, data_dir, "--epochs", "3", "--inner-steps", "2") == 2
    assert _fit(output, data_dir, "--epochs", "1", "--inner-steps", "2", "--overwrite") == 0
    assert json.loads((output / "history.json").read_text())["epoch"] == [1]


def test_init_weights_starts_a_new_run_from_a_trained_one_and_refuses_what_does_not_fit(tmp_path, data_dir, capsys):
    import dataclasses

    import keras
    import numpy as np

    from tfp_abml.runs import load_run

    tiny = ["--epochs", "1", "--steps-per-epoch", "2", "--val-tasks", "0", "--meta-batch", "1", "--verbose", "0",
            "--data-dir", str(data_dir), "--ways", "5", "--queries", "2"]
    source = tmp_path / "source"
    assert fit.main([*tiny, "--output", str(source)]) == 0
    # A near-zero learning rate: the new run's weights stay those it started from, unless a loaded
    # optimizer state (the source's rate and step) trains them on.
    tuned = tmp_path / "tuned"
    assert fit.main([*tiny, "--seed", "7", "--learning-rate", "1e-12", "--kl-scale", "1e-4", "--init-weights",
                     str(source), "--output", str(tuned)]) == 0
    (_, trained), (config, started) = load_run(source, "last"), load_run(tuned, "last")
    assert config.init_weights == str((source / "model.weights.h5").resolve()) and config.kl_scale == 1e-4
    keras.utils.set_random_seed(7)  # what seed 7 starts from without --init-weights
    unstarted = config.build_model()
    unstarted(config.example_inputs())
    pairs = [(a.numpy(), b.numpy(), c.numpy()) for a, b, c in zip(trained.trainable_variables,
                                                                    started.trainable_variables,
                                                                    unstarted.trainable_variables)]
    assert all(np.allclose(a, b, atol=1e-6) for a, b, _ in pairs)
    assert not all(np.allclose(a, c, atol=1e-6) for a, _, c in pairs)

    # A learned prior starts from a run trained without one: every other weight loaded, the prior at N(0, 1).
    learned = tmp_path / "learned"
    capsys.readouterr()
    assert fit.main([*tiny, "--learning-rate", "1e-12", "--prior", "learned", "--init-weights", str(source),
                     "--output", str(learned)]) == 0
    assert "holds no learned prior: it starts at N(0, 1)" in capsys.readouterr().out
    _, with_prior = load_run(learned, "last")
    prior = {id(v) for v in with_prior.prior.variables}
    rest = [v for v in with_prior.trainable_variables if id(v) not in prior]
    assert all(np.allclose(a.numpy(), b.numpy(), atol=1e-6) for a, b in zip(trained.trainable_variables, rest))
    assert [s["kernel"] for s in with_prior.prior.mean_scales()] == pytest.approx([1.0, 1.0], abs=1e-3)

    protonet = dataclasses.replace(config, method="protonet").build_model()
    protonet(config.example_inputs())
    protonet.save_weights(str(tmp_path / "protonet.weights.h5"))
    for weights, message in ((tmp_path / "none.weights.h5", "is not a .weights.h5 file"),
                             (tmp_path / "tuned" / "config.json", "is not a .weights.h5 file"),
                             (tmp_path, "is a folder without best.weights.h5 or model.weights.h5"),
                             (tmp_path / "protonet.weights.h5", "does not fit this model")):
        capsys.readouterr()
        assert fit.main([*tiny, "--init-weights", str(weights), "--output", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --init-weights") and message in err[0], err
        assert not (tmp_path / "bad").exists()


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"kl_scale": 0.01, "inner_steps": 1, "inner_lr": 1.0}))
    config, *_ = fit.parse_config(["--config", str(path), "--inner-lr", "0.7"])
    assert (config.kl_scale, config.inner_steps, config.inner_lr) == (0.01, 1, 0.7)


@pytest.mark.parametrize("args, expected", [
    ([], ("aligned", "pool", True)),  # the default: what the ablation kept
    (["--posterior", "paper"], ("paper", "concat", False)),  # the paper's method, nothing else to set
    (["--task-encoding", "concat", "--no-learn-inner-lr"], ("aligned", "concat", False)),
    (["--posterior", "paper", "--learn-inner-lr"], ("paper", "concat", True)),
])
def test_posterior_options_follow_the_posterior_unless_given(args, expected, tmp_path):
    config, *_ = fit.parse_config(args)
    assert (config.posterior, config.task_encoding, config.learn_inner_lr) == expected
    # a --config file that leaves them out does not pin them either
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"kl_scale": 0.01}))
    config, *_ = fit.parse_config(["--config", str(path), *args])
    assert (config.posterior, config.task_encoding, config.learn_inner_lr) == expected


def test_training_without_inner_steps_learns_no_inner_step_size():
    config, *_ = fit.parse_config(["--inner-steps", "0"])
    assert config.learn_inner_lr is False  # its variables would get no gradient
    model = config.build_model()
    model(model.example_inputs())
    assert model.inner_log_lrs is None and not [v for v in model.trainable_variables if "inner_log_lr" in v.path]
    config, *_ = fit.parse_config(["--inner-steps", "1"])
    assert config.learn_inner_lr is True


@pytest.mark.parametrize("args, residual", [
    ([], True),  # the default since the residual80 protocol run
    (["--no-residual-head"], False),
    (["--hidden-units", "32"], False),  # widths other than the embedding: the plain head, no error
    (["--hidden-units"], False),  # no hidden layer
    (["--posterior", "paper"], False),  # the paper's method unchanged
    (["--embedding-dim", "32", "--hidden-units", "32", "32"], True),
])
def test_the_residual_head_is_on_where_it_applies_unless_turned_off(args, residual):
    config, *_ = fit.parse_config(args)
    assert config.residual_head is residual


def test_a_run_from_before_the_residual_head_loads_with_the_plain_head(tmp_path):
    from tfp_abml.run_config import RunConfig

    old = {k: v for k, v in RunConfig().to_dict().items() if k != "residual_head"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert RunConfig().residual_head is True and RunConfig.load(tmp_path / "config.json").residual_head is False


def test_a_run_from_before_posterior_options_loads_as_the_paper_method(tmp_path):
    from tfp_abml.run_config import RunConfig
    old = RunConfig(posterior="paper").to_dict()
    for name in ("posterior", "task_encoding", "learn_inner_lr"):
        del old[name]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = RunConfig.load(tmp_path / "config.json")
    assert (config.posterior, config.task_encoding, config.learn_inner_lr) == ("paper", "concat", False)


def test_a_non_finite_loss_stops_training_and_saves_nothing_broken(tmp_path, data_dir, capsys):
    output = tmp_path / "run"
    assert _fit(output, data_dir, "--epochs", "2", "--inner-lr", "1e30", "--steps-per-epoch", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the loss became nan at step 1 of epoch 1" in err[0] and "--inner-lr" in err[0]
    assert not (output / "checkpoints" / "checkpoint").exists()
    assert not (output / "model.weights.h5").exists()

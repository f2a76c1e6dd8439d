"""``python -m training.tune``: Keras Tuner trials on real Omniglot, the best config, resuming, chief/worker."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tfp_abml.run_config import RunConfig
from training import fit, tune

# Tiny trials: 2 outer updates of one 5-way 1-shot task with 2 queries per class, scored on 2 tasks.
TINY = ["--trial-steps", "2", "--meta-batch", "1", "--queries", "2", "--val-tasks", "2", "--inner-steps", "1"]


def _trials(search_dir):
    """Keras Tuner's own record of each trial: ``{trial_id: (status, values, score)}``."""
    records = {}
    for path in sorted(search_dir.glob("trial_*/trial.json")):
        trial = json.loads(path.read_text())
        records[trial["trial_id"]] = (trial["status"], trial["hyperparameters"]["values"], trial["score"])
    return records


def _check_best(best_config_path, trials, objective="nll"):
    """The written config holds the values of a trial with the best score, and fit reads it as is."""
    best = RunConfig.load(best_config_path)
    scores = [score for _, _, score in trials.values()]
    best_score = min(scores) if objective == "nll" else max(scores)
    winners = [values for _, values, score in trials.values() if score == best_score]
    assert any(all(getattr(best, name) == value for name, value in values.items()) for values in winners)
    config, *_ = fit.parse_config(["--config", str(best_config_path)])
    assert config == best
    return best


def test_help_states_the_range_without_tensorflow():
    code = ("import sys, contextlib, io\nimport training.tune as t\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try: t.main(['--help'])\n    except SystemExit: pass\n"
            "text = ''.join(out.getvalue().split())\n"  # argparse wraps lines, even inside --kl-max
            "print('tensorflow' in sys.modules, 'log-uniformlyfrom[--kl-min,--kl-max](default:1e-08)' in text, "
            "'largestkl_scaletried(default:0.01)' in text)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr


def test_bad_flag_exits_2_with_one_line():
    out = subprocess.run([sys.executable, "-m", "training.tune", "--tuner", "grid"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: argument --tuner: invalid choice: 'grid'") and "bayesian" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--kl-min", "0"], "--kl-min must be > 0 (kl_scale is searched on a log scale), got 0.0"),
    (["--kl-min", "1e-3", "--kl-max", "1e-4"], "--kl-max (0.0001) must be larger than --kl-min (0.001)"),
    (["--tune-inner-lr", "--inner-lr-min", "-1"], "--inner-lr-min must be > 0"),
    (["--tune-inner-steps", "--inner-steps-min", "3", "--inner-steps-max", "3"], "must be larger than --inner-steps-min"),
    (["--tuner", "random", "--random-trials", "2"], "--random-trials applies only to --tuner bayesian"),
    (["--max-trials", "0"], "--max-trials must be >= 1, got 0"),
    (["--val-tasks", "0"], "trials are scored on validation tasks: --val-tasks must be >= 1"),
    (["--ways", "1"], "--ways must be an integer >= 2"),
    (["--config", "/nonexistent/config.json"], "cannot read config /nonexistent/config.json"),
])
def test_bad_settings_fail_with_one_line(args, message, data_dir, tmp_path, capsys):
    assert tune.main([*args, "--data-dir", str(data_dir), "--output", str(tmp_path / "t")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "t").exists()


def test_a_trainval_config_is_refused(tmp_path, data_dir, capsys):
    path = tmp_path / "trainval.json"
    path.write_text(json.dumps(RunConfig(trainval=True).to_dict()))
    assert tune.main(["--config", str(path), "--data-dir", str(data_dir), "--output", str(tmp_path / "t")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "trains on its validation classes (--trainval)" in lines[0], lines
    assert not (tmp_path / "t").exists()


def test_a_baseline_config_is_refused(tmp_path, data_dir, capsys):
    path = tmp_path / "protonet.json"
    path.write_text(json.dumps(RunConfig(method="protonet").to_dict()))
    assert tune.main(["--config", str(path), "--data-dir", str(data_dir), "--output", str(tmp_path / "t")]) == 2
    assert "is a protonet run: the KL scale exists only in the abml model" in capsys.readouterr().err


def test_random_search_writes_a_config_fit_trains_and_resumes(tmp_path, data_dir, capsys):
    out = tmp_path / "search"
    args = ["--tuner", "random", "--objective", "nll", "--max-trials", "2", "--kl-min", "1e-6", "--kl-max", "1e-1",
            *TINY, "--data-dir", str(data_dir), "--output", str(out), "--verbose", "0"]
    assert tune.main(args) == 0
    printed = capsys.readouterr().out
    trials = _trials(out / "search")
    assert len(trials) == 2 and all(status == "COMPLETED" for status, _, _ in trials.values())
    kl_values = [values["kl_scale"] for _, values, _ in trials.values()]
    assert all(1e-6 <= kl <= 1e-1 for kl in kl_values) and len(set(kl_values)) == 2
    assert printed.count("[tuner0] trial kl_scale=") == 2  # progress, one line per trial
    best = _check_best(out / "best_config.json", trials)
    # Only the searched values come from the trials; the rest is the base config for a full run.
    assert (best.epochs, best.steps_per_epoch, best.inner_steps, best.queries) == (20, 100, 1, 2)
    assert f"python -m training.fit --config {out / 'best_config.json'}" in printed

    # The same command again resumes the finished search: no new trial, the same answer.
    before = (out / "best_config.json").read_text()
    assert tune.main(args) == 0
    assert "[tuner0] trial" not in capsys.readouterr().out and len(_trials(out / "search")) == 2
    assert (out / "best_config.json").read_text() == before
    # Other settings on the same folder would mix incomparable trials.
    assert tune.main([*args, "--kl-max", "1e-2"]) == 2
    assert "holds a search with other settings (space)" in capsys.readouterr().err


def test_bayesian_search_over_the_inner_loop_and_best_model(tmp_path, data_dir):
    from tfp_abml import tuning

    out = tmp_path / "search"
    assert tune.main(["--tuner", "bayesian", "--random-trials", "1", "--max-trials", "2", "--objective", "nll",
                      "--tune-inner-lr", "--inner-lr-min", "0.1", "--inner-lr-max", "0.5", "--tune-inner-steps",
                      "--inner-steps-min", "1", "--inner-steps-max", "2", *TINY, "--data-dir", str(data_dir),
                      "--output", str(out), "--verbose", "0"]) == 0
    trials = _trials(out / "search")
    assert len(trials) == 2 and all(status == "COMPLETED" for status, _, _ in trials.values())
    for _, values, _ in trials.values():
        assert sorted(values) == ["inner_lr", "inner_steps", "kl_scale"]
        assert 0.1 <= values["inner_lr"] <= 0.5 and values["inner_steps"] in (1, 2)
    best = _check_best(out / "best_config.json", trials)

    # Keras Tuner's get_best_models rebuilds the best trial's model and loads its checkpoint.
    base = RunConfig.load(out / "best_config.json")
    space = tuning.SearchSpace(1e-8, 1e-2, inner_lr=(0.1, 0.5), inner_steps=(1, 2))
    tuner = tuning.make_tuner("bayesian", tuning.FewShotHyperModel(base, space, 2), "nll", 2, out, random_trials=1)
    model = tuner.get_best_models(1)[0]
    assert (model.kl_scale, model.inner_steps) == (best.kl_scale, best.inner_steps)
    trial = tuner.oracle.get_best_trials(1)[0]
    fresh = tuner.hypermodel.build(trial.hyperparameters)
    assert any(not (a.numpy() == b.numpy()).all() for a, b in zip(model.weights, fresh.weights))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_chief_and_worker_on_localhost(tmp_path, data_dir):
    """Keras Tuner's chief/worker mode: the worker runs the trials, the chief's oracle records them."""
    port = str(_free_port())
    common = ["--tuner", "random", "--max-trials", "2", *TINY, "--data-dir", str(data_dir), "--verbose", "0"]

    def start(tuner_id, output):
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": port, "TF_CPP_MIN_LOG_LEVEL": "3"}
        return subprocess.Popen([sys.executable, "-m", "training.tune", *common, "--output", str(output)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    chief = start("chief", tmp_path / "chief")
    worker = start("tuner1", tmp_path / "worker")
    try:
        worker_out, worker_err = worker.communicate(timeout=300)
        chief_out, chief_err = chief.communicate(timeout=60)
    finally:
        for process in (worker, chief):
            if process.poll() is None:
                process.kill()
    assert worker.returncode == 0, worker_err[-3000:]
    assert chief.returncode == 0, chief_err[-3000:]
    assert worker_out.count("[tuner1] trial kl_scale=") == 2 and "[tuner1] done: ran 2 trials" in worker_out
    assert "[chief] trial" not in chief_out  # the chief ran none
    trials = _trials(tmp_path / "chief" / "search")  # the chief's oracle holds both
    assert len(trials) == 2 and all(status == "COMPLETED" for status, _, _ in trials.values())
    assert len(list((tmp_path / "worker" / "search").glob("trial_*/checkpoint.weights.h5"))) == 2
    assert not (tmp_path / "worker" / "best_config.json").exists()
    _check_best(tmp_path / "chief" / "best_config.json", trials, objective="accuracy")


def test_init_weights_makes_every_trial_start_from_the_trained_weights(tmp_path):
    import keras
    import keras_tuner
    import numpy as np

    from tfp_abml import tuning

    base = RunConfig(ways=3, shots=1, queries=2, inner_steps=1, meta_batch=1, val_tasks=1, seed=0).validate()
    trained = base.compiled_model()
    trained(base.example_inputs())
    trained.optimizer.build(trained.trainable_variables)
    rng = np.random.default_rng(0)
    for variable in trained.trainable_variables:  # "trained": away from the seeded initial weights
        variable.assign(variable + 0.1 * rng.standard_normal(variable.shape).astype("float32"))
    trained.optimizer.iterations.assign(500)  # the file carries the optimizer's step: trials must not
    trained.save_weights(str(tmp_path / "best.weights.h5"))

    config, *_ = tune.parse(["--config", str(_write(tmp_path / "config.json", base)), "--init-weights", str(tmp_path)])
    assert config.init_weights == str((tmp_path / "best.weights.h5").resolve())
    for kl_scale in (1e-6, 1e-3):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("kl_scale", kl_scale)
        model = tuning.FewShotHyperModel(config, tuning.SearchSpace(kl_min=1e-6, kl_max=1e-3)).build(hp)
        for got, want in zip(model.trainable_variables, trained.trainable_variables):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert int(model.optimizer.iterations.numpy()) == 0 and model.kl_scale == kl_scale
    keras.backend.clear_session()


def _write(path, config):
    path.write_text(json.dumps(config.to_dict()))
    return path

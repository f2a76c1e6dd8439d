"""Training as the papers did: training task shape apart from the evaluation one (``--train-ways``),
learning-rate schedules that a resume continues, and the best validation epoch's weights kept.

All runs are tiny models on real Omniglot, seconds each.
"""

import json

import keras
import numpy as np
import pytest

from tfp_abml.checkpointing import BEST_RECORD, BEST_WEIGHTS, best_epoch, keep_best
from tfp_abml.errors import UserInputError
from tfp_abml.run_config import RunConfig
from tfp_abml.runs import load_run
from training import evaluate, export, fit

TINY = ["--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "1", "--inner-steps", "1",
        "--embedding-dim", "16", "--hidden-units", "16", "--noise-dim", "8", "--verbose", "0"]


def _history(output):
    return json.loads((output / "history.json").read_text())


def test_step_and_cosine_schedules_follow_keras_over_optimizer_steps():
    step = RunConfig(lr_schedule="step", lr_decay_episodes=8, meta_batch=4, learning_rate=1e-3).learning_rate_schedule()
    assert [float(step(s)) for s in (0, 1, 2, 3, 4, 6)] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4])
    cosine = RunConfig(lr_schedule="cosine", lr_decay_episodes=10, meta_batch=1, learning_rate=1e-3).learning_rate_schedule()
    assert [float(cosine(s)) for s in (0, 5, 10)] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-9)
    assert RunConfig(learning_rate=1e-3).learning_rate_schedule() == 1e-3
    with pytest.raises(UserInputError, match="unknown --lr-schedule 'linear'"):
        RunConfig(lr_schedule="linear").validate()


def test_a_resumed_schedule_continues_where_it_stopped(data_dir, tmp_path):
    args = [*TINY, "--data-dir", str(data_dir), "--steps-per-epoch", "2", "--val-tasks", "0",
            "--lr-schedule", "step", "--lr-decay-episodes", "3", "--learning-rate", "1e-3"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert fit.main([*args, "--output", str(whole), "--epochs", "4"]) == 0
    assert fit.main([*args, "--output", str(resumed), "--epochs", "2"]) == 0
    assert fit.main([*args, "--output", str(resumed), "--epochs", "4"]) == 0
    expected = _history(whole)
    # After epochs of 2 steps: steps 2, 4, 6, 8 -> floor(step / 3) halvings.
    assert expected["learning_rate"] == pytest.approx([1e-3 * 0.5 ** (s // 3) for s in (2, 4, 6, 8)])
    got = _history(resumed)
    assert got["learning_rate"] == pytest.approx(expected["learning_rate"], rel=1e-7)
    # Same seed, same episodes, same schedule: the same losses (see test_interruption for the tolerance).
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)


def test_keep_best_saves_only_a_new_best_and_mends_a_missed_save(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    history = {"epoch": [1], "val_accuracy": [0.5]}
    assert keep_best(model, tmp_path, history) == (1, 0.5)
    first = model.get_weights()
    model.set_weights([w + 1 for w in first])
    history = {"epoch": [1, 2], "val_accuracy": [0.5, 0.4]}  # worse: the saved weights stay
    assert keep_best(model, tmp_path, history) == (1, 0.5)
    saved = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    saved.load_weights(str(tmp_path / BEST_WEIGHTS))
    for a, b in zip(saved.get_weights(), first):
        np.testing.assert_array_equal(a, b)
    history = {"epoch": [1, 2, 3], "val_accuracy": [0.5, 0.4, 0.5]}  # a tie is not better
    assert keep_best(model, tmp_path, history) == (1, 0.5)
    assert json.loads((tmp_path / BEST_RECORD).read_text()) == {"epoch": 1, "val_accuracy": 0.5}
    history = {"epoch": [1, 2, 3, 4], "val_accuracy": [0.5, 0.4, 0.5, 0.6]}
    assert keep_best(model, tmp_path, history) == (4, 0.6)
    assert json.loads((tmp_path / BEST_RECORD).read_text())["epoch"] == 4
    assert best_epoch({"epoch": [1, 2], "loss": [1.0, 0.5]}) is None  # no validation, no best
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_RECORD, BEST_WEIGHTS]  # no temporary files left


@pytest.fixture(scope="module")
def agnostic_run(tmp_path_factory, data_dir):
    """abml (aligned posterior, pooled task encoding) trained and validated 4-way, evaluated 3-way."""
    output = tmp_path_factory.mktemp("agnostic") / "run"
    assert fit.main([*TINY, "--data-dir", str(data_dir), "--output", str(output), "--train-ways", "4",
                     "--train-queries", "3", "--steps-per-epoch", "3", "--epochs", "3", "--val-tasks", "4"]) == 0
    return output


def test_train_ways_trains_at_its_shape_and_keeps_the_evaluation_shape(agnostic_run):
    config = json.loads((agnostic_run / "config.json").read_text())
    assert (config["ways"], config["train_ways"], config["queries"], config["train_queries"]) == (3, 4, 2, 3)
    history = _history(agnostic_run)
    assert history["epoch"] == [1, 2, 3] and len(history["val_accuracy"]) == 3
    record = json.loads((agnostic_run / BEST_RECORD).read_text())
    assert (record["epoch"], record["val_accuracy"]) == best_epoch(history)
    # The default evaluation shape is --ways; the same weights serve any N.
    for ways in (None, 5, 20):
        config, model = load_run(agnostic_run, ways=ways)
        assert config.ways == (ways or 3) and model.ways == (ways or 3)
        assert model.loaded_weights.startswith(BEST_WEIGHTS)
        probabilities = model(config.example_inputs()).numpy()
        assert probabilities.shape == (1, config.ways * config.queries, config.ways)


def test_best_and_last_weights_are_the_checkpoints_they_name(agnostic_run):
    import tensorflow as tf

    from tfp_abml.run_config import RunConfig as Config

    config, best = load_run(agnostic_run, weights="best")
    _, last = load_run(agnostic_run, weights="last")
    assert last.loaded_weights.startswith("model.weights.h5")  # the run ended: its final weights
    best_epoch_number = json.loads((agnostic_run / BEST_RECORD).read_text())["epoch"]
    # "best" is the checkpoint of the best epoch, variable for variable ("last" that of epoch 3).
    reference = Config.load(agnostic_run / "config.json").build_model()
    reference(config.example_inputs())
    checkpoint = agnostic_run / "checkpoints" / f"ckpt-{best_epoch_number}"
    if checkpoint.with_name(checkpoint.name + ".index").is_file():  # max_to_keep=2: epoch 1's may be gone
        tf.train.Checkpoint(model=reference).restore(str(checkpoint)).expect_partial()
        for a, b in zip(best.get_weights(), reference.get_weights()):
            np.testing.assert_array_equal(a, b)
    same = all(np.array_equal(a, b) for a, b in zip(best.get_weights(), last.get_weights()))
    assert same == (best_epoch_number == 3)


def test_a_ways_agnostic_run_evaluates_and_exports_at_other_ways(agnostic_run, tmp_path):
    import tensorflow as tf

    assert evaluate.main(["--run", str(agnostic_run), "--ways", "5", "--tasks", "4", "--no-ood",
                          "--verbose", "0"]) == 0
    result = json.loads((agnostic_run / "eval_test.json").read_text())
    assert (result["ways"], result["shots"]) == (5, 1) and result["weights"].startswith(BEST_WEIGHTS)
    assert export.main(["--run", str(agnostic_run), "--ways", "20", "--output", str(tmp_path / "sm" / "1")]) == 0
    served = tf.saved_model.load(str(tmp_path / "sm" / "1")).signatures["serving_default"]
    rng = np.random.default_rng(0)
    out = served(support_images=tf.constant(rng.uniform(size=(20, 28, 28, 1)), tf.float32),
                 support_labels=tf.range(20, dtype=tf.int32),
                 query_images=tf.constant(rng.uniform(size=(7, 28, 28, 1)), tf.float32))["probabilities"].numpy()
    assert out.shape == (7, 20) and np.allclose(out.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--method", "maml", "--train-ways", "10"], "maml has an N-way output layer"),
    (["--posterior", "paper", "--train-ways", "10"], "abml's posterior depends on N unless"),
    (["--train-ways", "1"], "--train-ways must be an integer >= 2"),
    (["--train-shots", "10", "--train-queries", "11"], "--train-shots 10 + --train-queries 11 = 21 is more than"),
    (["--train-ways", "700"], "--train-ways 700 is larger than the 688 classes of the val split"),
    (["--lr-decay-episodes", "0"], "--lr-decay-episodes must be an integer >= 1"),
    (["--lr-schedule", "linear"], "argument --lr-schedule: invalid choice"),
    (["--residual-head", "--hidden-units", "32"], "every --hidden-units must equal --embedding-dim 64, got [32]"),
    (["--method", "protonet", "--residual-head"], "--residual-head applies only to --method abml"),
    (["--method", "protonet", "--train-samples", "4"], "--train-samples draws from abml's weight posterior"),
    (["--train-samples", "0"], "--train-samples must be an integer >= 1, got 0"),
    (["--method", "protonet", "--prior", "learned"], "--prior is abml's weight prior; protonet has none"),
])
def test_bad_protocol_flags_exit_2_with_one_line(args, message, data_dir, tmp_path, capsys):
    output = tmp_path / "run"
    # Tiny, so that a case the checks let through fails in seconds rather than training a full run.
    tiny = ["--epochs", "1", "--steps-per-epoch", "1", "--val-tasks", "0"]
    assert fit.main([*args, *tiny, "--data-dir", str(data_dir), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not output.exists()


def test_a_maml_run_refuses_other_ways(tmp_path, data_dir, capsys):
    from tfp_abml.checkpointing import write_json_atomic

    run = tmp_path / "maml-run"
    write_json_atomic(run / "config.json", RunConfig(method="maml", ways=5, data_dir=str(data_dir)).to_dict())
    assert evaluate.main(["--run", str(run), "--ways", "20"]) == 2
    assert "was trained 5-way and maml has an N-way output layer: evaluate with --ways 5" in capsys.readouterr().err


@pytest.mark.parametrize("settings, expected", [
    # (given, (inner_steps, inner_lr, meta_batch, steps in evaluation)): Finn et al. (2017), A.1; Li et al. (2017)
    (dict(method="maml"), (1, 0.4, 32, 3)),
    (dict(method="maml", ways=20), (5, 0.1, 16, 5)),
    (dict(method="metasgd"), (1, 0.4, 32, 1)),
    (dict(method="metasgd", ways=20), (1, 0.1, 16, 1)),
    (dict(method="maml", inner_steps=2), (2, 0.4, 32, 2)),  # one's own steps apply at test too
    (dict(method="maml", eval_inner_steps=7), (1, 0.4, 32, 7)),
    (dict(method="abml"), (1, 0.5, 4, 1)),  # the aligned posterior: one step (docs/benchmarks.md)
    (dict(method="abml", posterior="paper"), (5, 0.5, 4, 5)),  # the paper's posterior, its 5 steps
    (dict(method="protonet", meta_batch=8), (5, 0.5, 8, 5)),
])
def test_maml_and_metasgd_default_to_their_papers_settings(settings, expected):
    config = RunConfig(**settings).validate()
    assert (config.inner_steps, config.inner_lr, config.meta_batch, config.resolved_eval_inner_steps) == expected
    again = RunConfig.from_dict(config.to_dict())  # config.json keeps what was resolved
    assert again.to_dict() == config.to_dict()


def test_a_config_from_before_eval_inner_steps_evaluates_as_it_trained():
    old = {k: v for k, v in RunConfig(method="maml", inner_steps=1, inner_lr=0.4, meta_batch=4).to_dict().items()
           if k != "eval_inner_steps"}
    assert RunConfig.from_dict(old).resolved_eval_inner_steps == 1


@pytest.mark.parametrize("method", ["maml", "abml"])
def test_evaluation_adapts_with_eval_inner_steps_and_training_with_inner_steps(method):
    """The model with 1 training step and 3 evaluation steps predicts, outside training, what the same
    weights predict with 3 steps everywhere; in training, what they predict with 1 step."""
    import tensorflow as tf

    base = dict(method=method, ways=3, shots=1, queries=2, inner_lr=0.1, seed=0, eval_samples=2, meta_batch=1)
    two_kinds = RunConfig(**base, inner_steps=1, eval_inner_steps=3).validate().build_model()
    three = RunConfig(**base, inner_steps=3).validate().build_model()
    one = RunConfig(**base, inner_steps=1).validate().build_model()
    images = tf.constant(np.random.default_rng(0).random((1, 6, 28, 28, 1)), tf.float32)
    task = {"support_images": images[:, :3], "support_labels": tf.constant([[0, 1, 2]]), "query_images": images[:, 3:]}
    for model in (two_kinds, three, one):
        model(task)
    if method == "maml":
        outputs = lambda model, training: model.logits(task, training=training).numpy()
    else:  # the posterior means after adaptation: no Flipout draws to align
        outputs = lambda model, training: model.adapted_posterior(
            model.embed(images, training)[:, :3], task["support_labels"],
            model.inner_steps if training else model.eval_inner_steps)[-1].kernel_loc.numpy()

    def pair(other, training):  # same weights and random streams (abml's noise) before each comparison
        other.set_weights(two_kinds.get_weights())
        streams = lambda model: [v for v in model.variables if v.path.endswith("seed_generator_state")]
        for mine, theirs in zip(streams(other), streams(two_kinds)):  # not among get_weights()
            mine.assign(theirs)
        return outputs(two_kinds, training), outputs(other, training)

    np.testing.assert_allclose(*pair(three, False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(*pair(one, True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(*pair(one, False), rtol=1e-5, atol=1e-6)



def test_protocol_fit_flags_reach_only_their_method(tmp_path):
    """benchmarks/protocol.py --fit-flags METHOD=FLAGS: appended to that method's training.fit command."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
    import protocol

    flags = {"abml": "--residual-head --hidden-units 64"}
    abml = protocol.fit_command("abml", "data", 1, tmp_path, fit_flags=flags)
    start = abml.index("--residual-head")
    assert abml[start:start + 3] == ["--residual-head", "--hidden-units", "64"]
    assert "--residual-head" not in protocol.fit_command("protonet", "data", 1, tmp_path, fit_flags=flags)
    args = fit.build_parser().parse_args(abml[abml.index("training.fit") + 1:])  # training.fit takes them
    assert args.residual_head and args.hidden_units == [64]
    with pytest.raises(SystemExit):
        protocol.main(["--data-dir", "data", "--fit-flags", "reptile=--residual-head"])


def test_kl_scale_fine_tunes_start_from_the_run_at_their_own_scale(tmp_path):
    """benchmarks/kl_scale.py: each fine-tune is a training.fit of the run's config from its weights."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
    import kl_scale

    command = kl_scale.fit_command(tmp_path / "run", 1e-4, tmp_path / "kl-0.0001", "data", 12, 1e-4)
    args = fit.build_parser().parse_args(command[command.index("training.fit") + 1:])
    assert (args.config, args.init_weights) == (str(tmp_path / "run" / "config.json"), str(tmp_path / "run"))
    assert (args.kl_scale, args.epochs, args.lr_schedule, args.learning_rate) == (1e-4, 12, "constant", 1e-4)
    assert kl_scale.run_folder(tmp_path, 1e-4).name == "kl-0.0001"
    flagged = kl_scale.fit_command(tmp_path / "run", 1e-4, tmp_path / "out", "data", 12, 1e-4, "--train-samples 8")
    assert fit.build_parser().parse_args(flagged[flagged.index("training.fit") + 1:]).train_samples == 8
    assert args.train_samples == 1


def test_every_baseline_has_its_protocol_and_published_numbers():
    """benchmarks/protocol.py: matching trains as ProtoNet (60-way), metasgd as MAML (5-way, K queries),
    and each has the four published Omniglot figures its table is measured against."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
    import protocol

    parse = lambda method, shots: fit.build_parser().parse_args([*protocol.protocol(method, shots), "--data-dir", "d"])
    matching, protonet = parse("matching", 5), parse("protonet", 5)
    assert (matching.method, matching.ways, matching.shots, matching.queries) == ("matching", 60, 5, 5)
    assert {k: v for k, v in vars(matching).items() if k != "method"} == \
        {k: v for k, v in vars(protonet).items() if k != "method"}
    metasgd, maml = parse("metasgd", 5), parse("maml", 5)
    assert (metasgd.method, metasgd.ways, metasgd.queries) == ("metasgd", 5, 5)
    assert {k: v for k, v in vars(metasgd).items() if k != "method"} == \
        {k: v for k, v in vars(maml).items() if k != "method"}
    assert protocol.SERVES["metasgd"] == [5] and "matching" not in protocol.SERVES
    assert set(protocol.PROTOCOLS) - set(protocol.PUBLISHED) == {"abml"}  # its paper's numbers are elsewhere
    for method in protocol.PUBLISHED:
        assert set(protocol.PUBLISHED[method]) == {1, 5}
        assert all(set(by_ways) == {5, 20} for by_ways in protocol.PUBLISHED[method].values())
    assert protocol.episodes_per_epoch("metasgd") == 32 * 20 and protocol.episodes_per_epoch("matching") == 100
    assert protocol.published("protonet", 1, "vinyals") == {5: 98.8, 20: 96.0}
    assert protocol.published("protonet", 1, "lake") == {} == protocol.published("protonet", 1, "lake-rotated")


def test_a_trainval_run_trains_on_both_splits_and_is_evaluated_at_its_final_weights(data_dir, tmp_path, capsys):
    """--trainval (Snell et al.'s final run): validation sees trained classes, so no best weights are kept."""
    output = tmp_path / "trainval"
    assert fit.main([*TINY, "--method", "protonet", "--data-dir", str(data_dir), "--output", str(output),
                     "--trainval", "--steps-per-epoch", "2", "--epochs", "2", "--val-tasks", "2"]) == 0
    config = RunConfig.load(output / "config.json")
    assert config.trainval and config.sampler("train").images.shape[0] == 4112 + 688
    assert config.sampler("val").images.shape[0] == 688  # validation and test keep their own classes
    assert len(_history(output)["val_accuracy"]) == 2
    assert not (output / BEST_WEIGHTS).exists() and not (output / BEST_RECORD).exists()
    assert evaluate.main(["--run", str(output), "--tasks", "2", "--no-ood", "--verbose", "0"]) == 0
    assert json.loads((output / "eval_test.json").read_text())["weights"].startswith("model.weights.h5")
    capsys.readouterr()
    assert evaluate.main(["--run", str(output), "--tasks", "2", "--no-ood", "--calibrate", "--calibration-tasks", "2",
                          "--verbose", "0"]) == 0
    assert "warning: this run trained on its validation classes (--trainval)" in capsys.readouterr().err
    assert json.loads((output / "calibration.json").read_text())["trained_on_split"] is True
    with pytest.raises(UserInputError, match="trainval must be true or false"):
        RunConfig(trainval="yes").validate()

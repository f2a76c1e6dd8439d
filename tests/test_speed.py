"""The speed work's library code: the fused batch norm layer, the --jit auto rule, the benchmark's CLI.

No timings are asserted here (they depend on the machine and its load); benchmarks/speed.py
measures them.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_abml import jit_choice
from tfp_abml.encoders import build_encoder
from tfp_abml.fused_batch_norm import FusedBatchNormalization, fuse_batch_norm, set_fused
from tfp_abml.run_config import RunConfig

from tests.conftest import REPO


def _plain_conv4():
    """Conv-4 with Keras's own batch norm, the same weights as ``build_encoder``'s."""
    fused = build_encoder("conv4", 28)
    plain = keras.models.clone_model(fused, clone_function=lambda layer: (
        keras.layers.BatchNormalization.from_config(layer.get_config())
        if isinstance(layer, FusedBatchNormalization) else layer.__class__.from_config(layer.get_config())))
    plain.set_weights(fused.get_weights())
    return plain, fused


# The fused layer (float32, what training runs) against Keras's batch norm in float64 (the
# reference: FusedBatchNormV3 has no float64 kernel on CPU). Keras's own layer in float32 is not a
# reference: without oneDNN it computes the variance with cancellation and its gradients here
# move by 8% of their largest entry (measured, TF_ENABLE_ONEDNN_OPTS=0), while the fused layer
# stays within 3e-6 of float64 with oneDNN on, off, and at AVX2 with one thread. The loss is a
# random linear function of the outputs: sum(out ** 2) of normalised outputs is nearly constant,
# so its gradients are a cancellation too. A planted bug (the fused layer's gradient x 0.9) moves
# them by 0.1. FUSED_TOLERANCE is 30x the floor.
FUSED_TOLERANCE = 1e-4


@pytest.mark.numerics
def test_fused_batch_norm_matches_keras_values_gradients_and_moving_statistics():
    from tests.conftest import float64_models

    plain, fused = _plain_conv4()
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in fused.layers) == 4
    assert [v.path for v in plain.weights] == [v.path for v in fused.weights]  # checkpoints load both ways
    with float64_models():
        reference, _ = _plain_conv4()
    reference.set_weights([w.astype(np.float64) for w in fused.get_weights()])
    images = tf.random.uniform((12, 28, 28, 1))
    cotangent = tf.constant(np.random.default_rng(0).normal(size=(12, 64)))
    for training in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            expected = reference(tf.cast(images, tf.float64), training=training)
            got = fused(images, training=training)
            losses = [tf.reduce_sum(expected * cotangent), tf.reduce_sum(tf.cast(got, tf.float64) * cotangent)]
        scale = float(tf.reduce_max(tf.abs(expected)))
        np.testing.assert_allclose(got, expected, rtol=FUSED_TOLERANCE, atol=FUSED_TOLERANCE * scale)
        for a, b in zip(tape.gradient(losses[0], reference.trainable_variables),
                        tape.gradient(losses[1], fused.trainable_variables)):
            scale = float(tf.reduce_max(tf.abs(a)))
            np.testing.assert_allclose(b, a, rtol=FUSED_TOLERANCE, atol=FUSED_TOLERANCE * scale)
    for a, b in zip(reference.get_weights(), fused.get_weights()):  # moving mean and (biased) variance
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def _second_order(model, images):
    weights = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_sum(model(images, training=True) ** 2)
        grads = inner.gradient(loss, weights)
        norm = tf.add_n([tf.reduce_sum(g ** 2) for g in grads])
    return outer.gradient(norm, weights)


@pytest.mark.numerics
def test_second_order_maml_differentiates_keras_ops_not_the_fused_kernel():
    """TensorFlow's second derivative of the fused kernel is inexact behind a convolution, so
    second-order MAML switches it off; with it off the layer's second derivatives are Keras's."""
    plain, fused = _plain_conv4()
    maml = RunConfig(method="maml").build_model()
    assert not any(layer.fused for layer in maml.encoder.layers if isinstance(layer, FusedBatchNormalization))
    assert all(layer.fused for layer in RunConfig(method="maml", first_order=True).build_model().encoder.layers
               if isinstance(layer, FusedBatchNormalization))
    set_fused(fused, False)
    images = tf.random.uniform((6, 28, 28, 1))
    for a, b in zip(_second_order(plain, images), _second_order(fused, images)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(tf.reduce_max(tf.abs(a))))


def test_fuse_batch_norm_leaves_a_model_without_batch_norm_alone():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert fuse_batch_norm(model) is model


def test_jit_auto_is_off_unless_a_long_run_asks_for_a_measurement(monkeypatch, tmp_path):
    monkeypatch.setenv("TFP_ABML_CACHE_DIR", str(tmp_path))
    measured = []
    monkeypatch.setattr(jit_choice, "measure_in_subprocess",
                        lambda config: measured.append(config) or {"xla": True, "xla_ms": 5.0, "no_xla_ms": 9.0})
    assert RunConfig(jit="on").keras_jit_compile() is True
    assert RunConfig(jit="off").keras_jit_compile(measure=True) is False
    assert RunConfig().keras_jit_compile() is False  # library code: no measurement, off
    assert RunConfig(epochs=1, steps_per_epoch=10).keras_jit_compile(measure=True) is False  # too short
    assert measured == []
    long_run = RunConfig(epochs=20, steps_per_epoch=100)
    assert long_run.keras_jit_compile(measure=True) is True
    assert long_run.keras_jit_compile(measure=True) is True  # from the cache
    assert len(measured) == 1
    cache = json.loads((tmp_path / "jit_auto.json").read_text())
    (key, entry), = cache.items()
    assert key.startswith(jit_choice.device_key()) and entry["xla_ms"] == 5.0
    assert RunConfig(epochs=20, steps_per_epoch=100, shots=5).keras_jit_compile(measure=True)  # another shape
    assert len(measured) == 2
    maml = RunConfig(method="maml", epochs=20, steps_per_epoch=100)
    assert jit_choice.model_key(maml) != jit_choice.model_key(RunConfig(method="maml", task_loop="map_fn"))
    assert jit_choice.model_key(maml) == jit_choice.model_key(RunConfig(method="maml", task_loop="unrolled"))


def test_jit_measurement_batch_has_the_pipeline_layout():
    inputs, labels = jit_choice.synthetic_batch(RunConfig(ways=3, shots=2, queries=4, meta_batch=2))
    assert inputs["support_images"].shape == (2, 6, 28, 28, 1) and inputs["query_images"].shape == (2, 12, 28, 28, 1)
    assert inputs["support_labels"].numpy().tolist() == [[0, 0, 1, 1, 2, 2]] * 2 and labels.shape == (2, 12)


def test_speed_benchmark_help_runs():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--full" in result.stdout and "interleaved" in result.stdout


def test_speed_benchmark_times_a_group_and_writes_every_target(tmp_path, data_dir):
    # The smallest real run: two contenders interleaved on the real pipeline, one block each.
    output = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--data-dir", str(data_dir),
                             "--skip", "flipout", "speedups", "torch", "serving", "--settings", "5w1s",
                             # abml, not maml: meta-batch 4 against maml's 32 (the same interleaving, less work)
                             "--methods", "protonet", "abml", "--jit", "off", "--repeats", "1", "--block-seconds", "0.05",
                             "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(output.read_text())
    assert saved["complete"] is True and saved["command"].startswith("python benchmarks/speed.py")
    rows = saved["training"]
    assert [(row["method"], row["jit"]) for row in rows] == [("protonet", "off"), ("abml", "off")]
    for row in rows:
        assert row["encoder"] == "conv4" and row["image_size"] == 28 and (row["ways"], row["shots"]) == (5, 1)
        assert row["ms_per_episode"] > 0 and len(row["blocks_ms_per_episode"]) == 1
        assert abs(row["episodes_per_second"] * row["ms_per_episode"] - 1000.0) < 1e-6
    assert "data_dir" not in rows[0] and str(output) in result.stdout


def test_maml_task_loop_speedup_times_every_loop(data_dir):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from speed_cases import maml_task_loop_speedup

    # meta-batch 4, not maml's default 32 (Finn et al.'s): the loops' code is the same, at an eighth of the work.
    settings = {"encoder": "conv4", "image_size": 28, "ways": 5, "shots": 1, "meta_batch": 4, "data_dir": str(data_dir)}
    row = maml_task_loop_speedup(settings, block_seconds=0.05, repeats=1, log=lambda message: None)
    for loop in ("unrolled", "map_fn", "sequential"):
        assert row[f"{loop}_first_step_s"] > 0 and row[f"{loop}_ms_per_episode"] > 0
    for loop in ("map_fn", "sequential"):
        assert row[f"{loop}_first_step_speedup"] == row["unrolled_first_step_s"] / row[f"{loop}_first_step_s"]
        assert row[f"{loop}_over_unrolled_time_per_episode"] == (row[f"{loop}_ms_per_episode"]
                                                                 / row["unrolled_ms_per_episode"])


def _one_training_step(method, jit, dtype="float32", **config):
    keras.utils.set_random_seed(0)
    config = RunConfig(method=method, ways=3, shots=2, queries=2, inner_steps=2, inner_lr=0.01, meta_batch=2, **config)
    model = config.build_model()
    if jit and method == "maml" and config.task_loop == "auto":
        model.task_loop = "map_fn"  # XLA over the mapped loop, against Conv-4's unrolled one
    # SGD, not Adam: Adam's first step is about lr * sign(gradient), which round-off can flip.
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit)
    rng = np.random.default_rng(0)
    inputs = {"support_images": tf.constant(rng.uniform(size=(2, 6, 28, 28, 1)), dtype),
              "support_labels": tf.constant([[0, 0, 1, 1, 2, 2]] * 2),
              "query_images": tf.constant(rng.uniform(size=(2, 6, 28, 28, 1)), dtype)}
    model(inputs)
    before = [v.numpy() for v in model.trainable_variables]
    logs = model.train_on_batch(inputs, tf.constant([[0, 0, 1, 1, 2, 2]] * 2), return_dict=True)
    return logs, before, [v.numpy() for v in model.trainable_variables]


@pytest.mark.numerics
@pytest.mark.parametrize("method,dtype,tolerance,config", [
    ("protonet", "float32", 1e-3, {}),
    # In float32 round-off alone moves maml's outer gradient here by a few percent (the support
    # sets are 6 noise images, batch norm over them is ill-conditioned); float64 shows whether
    # XLA computes the same function. XLA has no float64 MaxPoolGradGrad on CPU, so second
    # order cannot run in float64 and is checked only to compile and agree in loss (below).
    ("maml", "float64", 1e-9, {"first_order": True}),
    ("maml", "float64", 1e-9, {"first_order": True, "task_loop": "sequential"}),  # a tape in a tf.while_loop
])
def test_xla_compiled_training_step_matches_the_uncompiled_one(method, dtype, tolerance, config):
    """``--jit on`` compiles the whole outer update, inner loop included, with XLA: same weights
    and batch -> same loss and the same updated weights (round-off aside)."""
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)  # the global policy outlives set_floatx once a layer was built
    try:
        (logs_off, init_off, after_off), (logs_on, init_on, after_on) = (
            _one_training_step(method, jit, dtype, **config) for jit in (False, True))
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    for a, b in zip(init_off, init_on):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(logs_on["loss"], logs_off["loss"], rtol=1e-5)  # logged in float32
    for before, off, on in zip(init_off, after_off, after_on):
        step = np.max(np.abs(off - before))
        np.testing.assert_allclose(on - before, off - before, rtol=tolerance, atol=tolerance * step + 1e-12)


@pytest.mark.parametrize("method", ["abml", "maml"])
def test_xla_compiled_noisy_or_second_order_step_trains_like_the_uncompiled_one(method):
    """abml draws its noise from stateless random ops, which XLA on CPU draws differently;
    second-order maml runs only in float32 (see above). So: the losses agree loosely (the noise
    moves abml's by under 1% here), and the step moves most weights (maml: the same ones) by finite amounts."""
    (logs_off, _, after_off), (logs_on, init, after_on) = (_one_training_step(method, jit) for jit in (False, True))
    np.testing.assert_allclose(logs_on["loss"], logs_off["loss"], rtol=0.02 if method == "abml" else 1e-5)
    moved = [not np.array_equal(on, before) for before, on in zip(init, after_on)]
    if method == "maml":
        assert moved == [not np.array_equal(off, before) for before, off in zip(init, after_off)]
    assert sum(moved) > len(moved) / 2 and all(np.all(np.isfinite(on)) for on in after_on)


def test_speed_report_prints_every_maml_task_loop_against_unrolled(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speed

    row = {"encoder": "conv4", "image_size": 28, "ways": 5, "shots": 1, "unrolled_first_step_s": 20.0,
           "unrolled_ms_per_episode": 100.0}
    for loop, first, ms in (("map_fn", 10.0, 110.0), ("sequential", 8.0, 120.0)):
        row |= {f"{loop}_first_step_s": first, f"{loop}_ms_per_episode": ms,
                f"{loop}_first_step_speedup": 20.0 / first, f"{loop}_over_unrolled_time_per_episode": ms / 100.0}
    speed.print_report({"machine": "m", "cpu": "c", "load_average_before": 0.0, "load_average_after": 0.0,
                        "maml_task_loop": [row], "targets": []})
    out = capsys.readouterr().out
    assert "unrolled: first step   20.0 s,   100.0 ms per episode" in out
    assert "map_fn     first step   10.0 s (2.00x faster),   110.0 ms per episode (1.10x the time)" in out
    assert "sequential first step    8.0 s (2.50x faster),   120.0 ms per episode (1.20x the time)" in out


def test_flipout_case_times_layer_and_each_part_of_its_forward_pass(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speed
    from speed_cases import flipout_case

    tf.random.set_seed(0)
    row = {"shape": [2, 3, 4, 5], **flipout_case((2, 3, 4, 5), iterations=3, repeats=1)}
    for mode in ("forward", "forward+backward"):
        timed = row[mode]
        assert timed["flipout_us"] > 0 and timed["dense_us"] > 0
        assert timed["ratio"] == timed["flipout_us"] / timed["dense_us"]
    assert row["loop_us"] > 0
    assert list(row["forward_parts_us"]) == ["kernel noise", "sign draws", "scales", "product"]
    speed.print_report({"machine": "m", "cpu": "c", "load_average_before": 0.0, "load_average_after": 0.0,
                        "flipout": [row], "targets": speed.check_targets({"flipout": [row]})})
    out = capsys.readouterr().out
    assert "2 x 3 x 4->5" in out and "kernel noise" in out and "Flipout dense / deterministic dense" in out


def test_a_training_group_killed_for_memory_is_recorded_and_the_run_goes_on(tmp_path, data_dir, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import child_process
    import speed

    commands = []

    def killed(command, timeout=None, poll_seconds=0.2, capture=True):
        commands.append(command)
        return -9, 3 * child_process.GIB, "", "", False

    monkeypatch.setattr(child_process, "run_child", killed)
    output = tmp_path / "speed.json"
    speed.main(["--data-dir", str(data_dir), "--skip", "flipout", "speedups", "torch", "serving",
                "--methods", "protonet", "maml", "--output", str(output)])
    saved = json.loads(output.read_text())
    assert saved["complete"] is True and saved["training"] == [] and len(commands) == 2  # 5w1s, then 5w5s
    for failed, shots in zip(saved["training_failed"], (1, 5)):
        assert (failed["encoder"], failed["shots"], failed["peak_rss_gib"]) == ("conv4", shots, 3.0)
        assert failed["entries"] == [["protonet", "off"], ["maml", "off"]]
        assert failed["status"].startswith("killed by SIGKILL") and "data_dir" not in failed
    group = json.loads(commands[0][commands[0].index("--child-group") + 1])
    assert group["settings"]["data_dir"] == str(data_dir) and group["entries"] == [["protonet", "off"], ["maml", "off"]]
    assert "conv4 28px 5w1s (protonet XLA off, maml XLA off) not timed: killed by SIGKILL" in capsys.readouterr().out


def test_a_training_group_that_fails_with_an_error_stops_the_run(tmp_path, data_dir):
    output = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--data-dir", str(tmp_path / "nothing"),
                             "--skip", "flipout", "speedups", "torch", "serving", "--settings", "5w1s",
                             "--methods", "protonet", "--output", str(output)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0 and "a training group failed: exit status 1" in result.stderr
    assert str(tmp_path / "nothing") in result.stderr  # the child's own error names the missing folder
    saved = json.loads(output.read_text())
    assert saved["complete"] is False and saved["training"] == []


def test_serving_latency_serves_every_draw_count_and_the_model_without_its_inner_loop(tmp_path, data_dir):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speed_cases

    settings = {"ways": 3, "shots": 1, "queries": 2, "data_dir": str(data_dir), "image_size": 28}
    result = speed_cases.serving_latency(settings, train_steps=1, calls=2, warmup=1, folder=str(tmp_path),
                                         draws=(10,), eval_tasks=2)
    assert set(result["draws"]) == {"10"} and result["p50_ms"] == result["draws"]["10"]["p50_ms"]
    without = result["without_inner_loop"]
    assert (without["draws"], without["inner_steps"], without["trained_inner_steps"]) == (10, 0, 5)
    assert without["p50_ms"] > 0 and without["p50_over_inner_loop"] > 0
    # One export per draw count, and one more without the inner loop.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["draws10", "inner0"]


def test_speed_method_names_build_their_configs():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from speed_cases import method_config

    inner0 = method_config("abml-inner0", ways=5, shots=1)
    assert (inner0.inner_steps, inner0.learn_inner_lr, inner0.posterior) == (0, False, "aligned")
    assert method_config("abml-inner5", ways=5, shots=1).inner_steps == 5
    assert method_config("abml-default", ways=5, shots=1).inner_steps == 1
    assert method_config("abml", ways=5, shots=1).inner_steps == 5  # the paper's posterior, the paper's steps

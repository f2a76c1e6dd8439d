"""Numerical faults: bounded posterior scales, finite KL, extreme inputs, and training that stops cleanly.

Each case either gives finite numbers or stops with a message that names the step; nothing
broken is ever saved.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_abml.checkpointing import TrainingState, checkpoint_callback
from tfp_abml.episodic import EpisodicModel
from tfp_abml.flipout import SCALE_CEILING, SCALE_FLOOR, DenseParams, kl_to_standard_normal, scale_from_rho
from tfp_abml.run_config import RunConfig
from training import fit

EXTREME_RHO = [-np.inf, -1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30, np.inf]


def test_posterior_scales_are_positive_and_bounded_with_finite_gradients():
    rho = tf.constant(EXTREME_RHO, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(rho)
        scale = scale_from_rho(rho)
    gradient = tape.gradient(scale, rho).numpy()
    scale = scale.numpy()
    assert np.all(scale >= np.float32(SCALE_FLOOR)) and np.all(scale <= np.float32(SCALE_FLOOR + SCALE_CEILING))
    assert np.all(np.isfinite(gradient)) and np.all(gradient >= 0)
    assert np.all(np.diff(scale) >= 0)  # monotone: a larger rho never gives a smaller scale
    # Below a scale of 1 the ceiling changes nothing that matters: softplus(rho) + floor within 1e-6.
    useful = tf.constant(np.linspace(-10.0, 0.5, 50), tf.float32)
    np.testing.assert_allclose(scale_from_rho(useful).numpy(), (tf.nn.softplus(useful) + SCALE_FLOOR).numpy(),
                               rtol=1e-6)


def test_kl_stays_finite_for_extreme_rho():
    rho = tf.constant(EXTREME_RHO, tf.float32)[None, :, None]  # [T=1, in=9, out=1]
    params = DenseParams(kernel_loc=tf.fill((1, 9, 1), 3.0), kernel_rho=rho,
                         bias_loc=tf.zeros((1, 1)), bias_rho=tf.fill((1, 1), 1e30))
    kl = kl_to_standard_normal(params).numpy()
    assert np.all(np.isfinite(kl)) and np.all(kl >= 0)


def _tiny(method, **kwargs):
    config = RunConfig(method=method, ways=3, shots=2, queries=2, inner_steps=2, embedding_dim=16,
                       hidden_units=(16,), noise_dim=8, **kwargs)
    model = config.build_model()
    model(config.example_inputs())
    return model


def _task(fill, rng):
    images = lambda count: (np.full((1, count, 28, 28, 1), fill, np.float32) if fill is not None
                            else rng.uniform(size=(1, count, 28, 28, 1)).astype(np.float32))
    inputs = {"support_images": tf.constant(images(6)), "support_labels": tf.constant([[0, 0, 1, 1, 2, 2]]),
              "query_images": tf.constant(images(6))}
    return inputs, tf.constant([[0, 0, 1, 1, 2, 2]])


def _finite(tensors):
    return all(bool(tf.reduce_all(tf.math.is_finite(t))) for t in tensors if t is not None)


@pytest.mark.parametrize("method", ["abml", "protonet", "maml"])
@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all-black", "all-white"])
def test_uniform_images_give_finite_losses_gradients_and_probabilities(method, fill):
    """Identical images make batch norm's variance 0 and every embedding the same: still finite."""
    model = _tiny(method)
    inputs, labels = _task(fill, None)
    with tf.GradientTape() as tape:
        values = model.episode(inputs, labels, training=True)
    gradients = tape.gradient(values["loss"], model.trainable_variables)
    assert _finite([values["loss"], values["nll"], values["probabilities"], *gradients])
    probabilities = model(inputs).numpy()
    assert np.all(np.isfinite(probabilities)) and np.allclose(probabilities.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("inner_lr, finite", [(1e6, True), (1e12, False)])
def test_a_huge_inner_learning_rate_is_finite_or_named_by_the_guard(inner_lr, finite, tmp_path):
    """At 1e6 the loss is enormous but finite; at 1e12 it overflows, and the training guard says where."""
    model = _tiny("abml", inner_lr=inner_lr, kl_scale=1e-6)
    inputs, labels = _task(None, np.random.default_rng(0))
    with tf.GradientTape() as tape:
        values = model.episode(inputs, labels, training=True)
    gradients = tape.gradient(values["loss"], model.trainable_variables)
    assert _finite([values["loss"], values["kl"], *gradients]) == finite
    if finite:
        return
    fault = _fit_with_guard(model, (inputs, labels), tmp_path)
    assert fault.startswith("the loss became") and "at step 1 of epoch 1" in fault and "no checkpoint yet" in fault
    assert not (tmp_path / "checkpoints" / "checkpoint").exists()


class _KinkedModel(EpisodicModel):
    """Loss ``sqrt(w^2)`` at ``w = 0``: the loss is 0, its gradient NaN; the loss shows nothing wrong."""

    def __init__(self, **kwargs):
        super().__init__(ways=2, **kwargs)
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")

    def predict_episode(self, inputs, training=False):
        count = tf.shape(inputs["query_images"])[1]
        return tf.fill((tf.shape(inputs["query_images"])[0], count, 2), 0.5)

    def episode(self, inputs, query_labels, training):
        loss = tf.sqrt(tf.square(self.w))
        return {"loss": loss, "nll": loss, "probabilities": self.predict_episode(inputs)}


def _fit_with_guard(model, batch, directory, steps=3):
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    state = TrainingState(model, directory / "checkpoints")
    guard = checkpoint_callback(state, directory / "history.json")
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, epochs=2, steps_per_epoch=steps, callbacks=[guard], verbose=0)
    return guard.fault


def test_a_non_finite_gradient_with_a_finite_loss_stops_at_that_step(tmp_path):
    model = _KinkedModel()
    inputs = {"support_images": tf.zeros((1, 2, 4, 4, 1)), "support_labels": tf.constant([[0, 1]]),
              "query_images": tf.zeros((1, 2, 4, 4, 1))}
    fault = _fit_with_guard(model, (inputs, tf.constant([[0, 1]])), tmp_path)
    assert fault is not None and fault.startswith("a gradient became NaN or infinite (the loss, 0, was still finite)")
    assert "at step 1 of epoch 1" in fault
    assert not (tmp_path / "checkpoints" / "checkpoint").exists() and not (tmp_path / "history.json").exists()


def test_fit_with_a_huge_inner_lr_stops_cleanly_or_trains_finite(tmp_path, data_dir, capsys):
    """End to end at --inner-lr 1e6: whatever happens, no traceback, nothing non-finite saved."""
    output = tmp_path / "run"
    code = fit.main(["--data-dir", str(data_dir), "--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "1",
                     "--steps-per-epoch", "3", "--epochs", "2", "--val-tasks", "0", "--inner-steps", "1",
                     "--embedding-dim", "16", "--hidden-units", "16", "--noise-dim", "8", "--inner-lr", "1e6",
                     "--output", str(output), "--verbose", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("error: training stopped:") and "--inner-lr" in err[0]
        assert " at step " in err[0] and " of epoch " in err[0]
    history = json.loads((output / "history.json").read_text()) if (output / "history.json").exists() else {}
    assert all(np.isfinite(v).all() for v in history.values())
    latest = tf.train.latest_checkpoint(str(output / "checkpoints"))
    for name, _ in tf.train.list_variables(latest) if latest else []:
        value = tf.train.load_variable(latest, name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name

"""The weight prior of the KL: the paper's N(0, I) and the meta-learned one (tfp_abml.prior)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_abml.flipout import DenseParams, rho_from_scale, scale_from_rho
from tfp_abml.prior import LearnedPrior, standard_normal_kl

SHAPES = [(6, 6), (6, 4)]  # one hidden layer, a 4-way output layer


def _posterior(rng, tasks=3, shapes=SHAPES):
    params = []
    for fan_in, fan_out in shapes:
        draw = lambda *shape: tf.constant(rng.normal(size=shape), tf.float32)
        params.append(DenseParams(draw(tasks, fan_in, fan_out), draw(tasks, fan_in, fan_out) - 2.0,
                                  draw(tasks, fan_out), draw(tasks, fan_out) - 2.0))
    return params


def _numpy_kl(mu, sigma, m, s):
    return np.log(s / sigma) + (sigma ** 2 + (mu - m) ** 2) / (2 * s ** 2) - 0.5


def test_learned_prior_starts_as_the_standard_normal():
    params = _posterior(np.random.default_rng(0))
    prior = LearnedPrior(SHAPES)
    np.testing.assert_allclose(prior.kl(params).numpy(), standard_normal_kl(params).numpy(), rtol=1e-5)


@pytest.mark.parametrize("ways", [4, 9])
def test_learned_prior_kl_matches_the_closed_form_with_a_class_symmetric_output_layer(ways):
    """Hidden layer: one (m, s) per weight; output layer: one per input unit and one for all biases,
    the same for every class unit, whatever N is."""
    rng = np.random.default_rng(1)
    shapes = [(6, 6), (6, ways)]
    params = _posterior(rng, shapes=shapes)
    prior = LearnedPrior(SHAPES)  # built 4-way: the output prior does not depend on N
    assert prior.kernel_loc_1.shape == (6, 1) and prior.bias_loc_1.shape == (1,)
    for index in range(2):
        shapes = [t.shape for t in prior.layer(index).tensors()]
        prior.set_layer(index, DenseParams(*(rng.normal(size=shape).astype(np.float32) * 0.5 for shape in shapes)))
    expected = np.zeros(3)
    for index, posterior in enumerate(params):
        layer = prior.layer(index)
        for loc, rho, m, r in ((posterior.kernel_loc, posterior.kernel_rho, layer.kernel_loc, layer.kernel_rho),
                               (posterior.bias_loc, posterior.bias_rho, layer.bias_loc, layer.bias_rho)):
            m, s = np.asarray(m), scale_from_rho(r).numpy()
            if index == 1:  # broadcast by hand over the class units
                m, s = np.broadcast_to(m, loc.shape[1:]), np.broadcast_to(s, loc.shape[1:])
            kl = _numpy_kl(loc.numpy(), scale_from_rho(rho).numpy(), m[None], s[None])
            expected += kl.reshape(3, -1).sum(-1)
    np.testing.assert_allclose(prior.kl(params).numpy(), expected, rtol=1e-4)
    assert not np.allclose(expected, standard_normal_kl(params).numpy(), rtol=1e-2)


def test_prior_at_the_posterior_costs_nothing_and_the_outer_loss_moves_it():
    rng = np.random.default_rng(2)
    prior = LearnedPrior(SHAPES)
    # One task whose posterior is the prior itself (the output layer: the same for every class unit).
    params = []
    for index, (fan_in, fan_out) in enumerate(SHAPES):
        kernel, bias = prior.layer(index).kernel_loc.shape, prior.layer(index).bias_loc.shape
        prior.set_layer(index, DenseParams(rng.normal(size=kernel), rho_from_scale(rng.uniform(0.1, 0.5, size=kernel)),
                                           rng.normal(size=bias), rho_from_scale(rng.uniform(0.1, 0.5, size=bias))))
        layer = prior.layer(index)
        widen = lambda t, shape: tf.broadcast_to(t, shape)[None]
        params.append(DenseParams(widen(layer.kernel_loc, (fan_in, fan_out)), widen(layer.kernel_rho, (fan_in, fan_out)),
                                  widen(layer.bias_loc, (fan_out,)), widen(layer.bias_rho, (fan_out,))))
    np.testing.assert_allclose(prior.kl(params).numpy(), [0.0], atol=1e-3)
    shifted = [DenseParams(p.kernel_loc + 1.0, p.kernel_rho, p.bias_loc + 1.0, p.bias_rho) for p in params]
    with tf.GradientTape() as tape:
        kl = tf.reduce_sum(prior.kl(shifted))
    grads = tape.gradient(kl, prior.trainable_weights)
    assert float(kl) > 1.0 and all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_a_learned_prior_model_trains_its_prior_and_keeps_it_through_a_keras_file(tmp_path):
    from tfp_abml.run_config import RunConfig

    config = RunConfig(ways=3, shots=1, queries=2, inner_steps=1, eval_samples=2, seed=0, prior="learned",
                       kl_scale=1e-2).validate()
    model = config.build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    inputs = config.example_inputs()
    rng = np.random.default_rng(3)
    inputs["support_images"] = tf.constant(rng.random(inputs["support_images"].shape), tf.float32)
    inputs["query_images"] = tf.constant(rng.random(inputs["query_images"].shape), tf.float32)
    labels = tf.constant([[0, 0, 1, 1, 2, 2]])
    model(inputs)
    before = [t.numpy().copy() for i in range(2) for t in model.prior.layer(i).tensors()]
    model.train_on_batch(inputs, labels)
    after = [t.numpy() for i in range(2) for t in model.prior.layer(i).tensors()]
    # Adam's first step moves each variable by about its rate (1e-2); the prior moves PRIOR_RATE times that.
    assert all(np.abs(a - b).max() > 0.3 for a, b in zip(before, after))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.prior is not None
    for saved, restored in zip(model.prior.weights, loaded.prior.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    assert config.build_model().prior is not None and RunConfig(ways=3).build_model().prior is None

"""Flipout against direct weight sampling: same marginal mean and variance, decorrelated examples."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_abml.flipout import (SIGN_BITS, DenseParams, dense_sampled_weights, flipout_dense, kl_to_standard_normal,
                              rademacher, random_signs, rho_from_scale, scale_from_rho)

pytestmark = pytest.mark.numerics  # compares computations: also run under other kernels (.ci/run)

SAMPLES = 20000


def _params(fan_in=3, fan_out=2, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: tf.constant(rng.normal(size=shape), tf.float32)
    scale = lambda *shape: rho_from_scale(tf.constant(rng.uniform(0.2, 0.8, size=shape), tf.float32))
    return DenseParams(f(1, fan_in, fan_out), scale(1, fan_in, fan_out), f(1, fan_out), scale(1, fan_out))


def _independent_draws(fn, inputs, params, samples=SAMPLES):
    """``samples`` independent outputs ``[samples, M, out]``: one task per draw, all with the same posterior."""
    tile = lambda t: tf.tile(t, [samples] + [1] * (len(t.shape) - 1))
    return fn(tile(inputs), DenseParams(*[tile(t) for t in params.tensors()])).numpy()


def test_mean_and_variance_match_direct_weight_sampling():
    params = _params()
    x = tf.constant([[[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]]])  # [T=1, M=2, in=3]
    flip = _independent_draws(flipout_dense, x, params)
    direct = _independent_draws(dense_sampled_weights, x, params)
    exact_mean = (x[0] @ params.kernel_loc[0] + params.bias_loc).numpy()
    exact_var = ((x[0] ** 2) @ scale_from_rho(params.kernel_rho[0]) ** 2
                 + scale_from_rho(params.bias_rho) ** 2).numpy()
    # Tolerance: 5 standard errors of the Monte-Carlo mean, 6% relative for the variance.
    se = np.sqrt(exact_var / SAMPLES)
    np.testing.assert_array_less(np.abs(flip.mean(0) - exact_mean), 5 * se)
    np.testing.assert_allclose(flip.var(0), exact_var, rtol=0.06)
    np.testing.assert_array_less(np.abs(direct.mean(0) - exact_mean), 5 * se)
    np.testing.assert_allclose(direct.var(0), exact_var, rtol=0.06)
    np.testing.assert_allclose(flip.var(0), direct.var(0), rtol=0.08)


def test_sign_flips_decorrelate_examples_of_a_batch():
    # Zero bias scale and zero kernel mean isolate the kernel perturbation.
    params = _params(4, 1)
    params = DenseParams(tf.zeros_like(params.kernel_loc), params.kernel_rho, tf.zeros_like(params.bias_loc),
                         rho_from_scale(1e-3) * tf.ones_like(params.bias_rho))
    x = tf.constant([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])  # two identical examples
    flip = _independent_draws(flipout_dense, x, params, 4000)[..., 0]
    shared = _independent_draws(dense_sampled_weights, x, params, 4000)[..., 0]
    assert np.corrcoef(shared.T)[0, 1] > 0.99  # one draw shared by the batch
    assert abs(np.corrcoef(flip.T)[0, 1]) < 0.1  # Flipout: pseudo-independent


def test_signs_from_packed_bits_are_fair_and_independent_in_every_bit_lane():
    import keras

    count = 16 * 40000 + 5  # not a whole number of words: the tail is cut, not padded with -1
    signs = random_signs(count, seed=keras.random.SeedGenerator(3)).numpy()
    assert signs.shape == (count,) and set(np.unique(signs)) == {-1.0, 1.0}
    lanes = signs[:count - 5].reshape(-1, SIGN_BITS)  # sign b of every word: each lane a fair coin
    np.testing.assert_array_less(np.abs(lanes.mean(0)), 5 / np.sqrt(lanes.shape[0]))
    # Neighbouring lanes (bits of one word) and words uncorrelated.
    assert np.abs(np.corrcoef(lanes.T)[~np.eye(SIGN_BITS, dtype=bool)]).max() < 5 / np.sqrt(lanes.shape[0])
    assert abs(np.corrcoef(lanes[:-1, 0], lanes[1:, 0])[0, 1]) < 5 / np.sqrt(lanes.shape[0])
    assert rademacher((2, 3, 5), seed=0).shape == (2, 3, 5)


def test_gradients_reach_loc_and_scale():
    params = _params()
    x = tf.random.normal((1, 5, 3))
    tensors = params.tensors()
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = flipout_dense(x, DenseParams(*tensors))
        loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, tensors)
    for name, grad in zip(("kernel_loc", "kernel_rho", "bias_loc", "bias_rho"), grads):
        assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0, name


def test_mean_only_uses_the_posterior_means():
    params = _params()
    x = tf.random.normal((1, 4, 3))
    expected = tf.einsum("tmi,tio->tmo", x, params.kernel_loc) + params.bias_loc[:, None]
    np.testing.assert_allclose(flipout_dense(x, params, mean_only=True).numpy(), expected.numpy(), rtol=1e-6)


def test_kl_matches_closed_form_and_is_zero_at_the_prior():
    params = _params(3, 2)
    kl = kl_to_standard_normal(params).numpy()
    closed = 0.0
    for loc, rho in ((params.kernel_loc, params.kernel_rho), (params.bias_loc, params.bias_rho)):
        s = scale_from_rho(rho).numpy()
        closed += np.sum(0.5 * (s ** 2 + loc.numpy() ** 2 - 1) - np.log(s))
    np.testing.assert_allclose(kl, [closed], rtol=1e-5)
    prior = DenseParams(tf.zeros((1, 3, 2)), rho_from_scale(tf.ones((1, 3, 2))), tf.zeros((1, 2)),
                        rho_from_scale(tf.ones((1, 2))))
    np.testing.assert_allclose(kl_to_standard_normal(prior).numpy(), [0.0], atol=1e-4)


def test_scale_stays_positive_for_extreme_rho():
    rho = tf.constant([-1e4, -50.0, 0.0, 50.0])
    scale = scale_from_rho(rho).numpy()
    assert np.all(scale > 0) and np.all(np.isfinite(scale))

"""Encoders, task encoding and the LSTM posterior: shapes, invariances, positivity."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_abml.encoders import build_encoder
from tfp_abml.errors import UserInputError
from tfp_abml.flipout import scale_from_rho
from tfp_abml.posterior import AmortizedPosterior
from tfp_abml.task_encoding import ClassMeanConcat, ClassMeanPool, class_means


def test_conv4_embeds_28px_images_in_64_dimensions():
    encoder = build_encoder("conv4", 28)
    assert encoder(tf.zeros((3, 28, 28, 1))).shape == (3, 64)
    assert sum(1 for layer in encoder.layers if layer.__class__.__name__ == "Conv2D") == 4
    assert build_encoder("conv4", 28, embedding_dim=32)(tf.zeros((2, 28, 28, 1))).shape == (2, 32)


def test_efficientnet_b0_takes_grey_32px_images():
    encoder = build_encoder("efficientnet_b0", 32, channels=1, embedding_dim=16)
    assert encoder(tf.random.uniform((2, 32, 32, 1))).shape == (2, 16)
    assert any(layer.name == "efficientnetb0" for layer in encoder.layers)


def test_encoder_errors_name_the_fix():
    with pytest.raises(UserInputError, match="unknown encoder"):
        build_encoder("resnet")
    with pytest.raises(UserInputError, match="at least 32"):
        build_encoder("efficientnet_b0", 28)
    with pytest.raises(UserInputError, match="efficientnet_b0"):
        build_encoder("conv4", 28, weights="imagenet")


def test_class_means_average_each_label():
    embeddings = tf.constant([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]])
    labels = tf.constant([[0, 0, 1, 1]])
    np.testing.assert_allclose(class_means(embeddings, labels, 2).numpy(), [[[2.0, 0.0], [0.0, 3.0]]])


def test_task_encoding_is_a_random_order_of_the_class_means():
    rng = np.random.default_rng(0)
    embeddings = tf.constant(rng.normal(size=(2, 15, 4)), tf.float32)
    labels = tf.constant(np.tile(np.repeat(np.arange(5), 3), (2, 1)), tf.int32)
    layer = ClassMeanConcat(5, seed=1)
    means = class_means(embeddings, labels, 5).numpy()
    orders = set()
    for _ in range(10):
        h0 = layer(embeddings, labels).numpy().reshape(2, 5, 4)
        for task in range(2):
            # Each block of h0 is one class mean, each mean appears once.
            match = [int(np.argmin(np.abs(means[task] - block).sum(-1))) for block in h0[task]]
            assert sorted(match) == list(range(5))
            np.testing.assert_allclose(h0[task], means[task][match], rtol=1e-6)
            orders.add(tuple(match))
    assert len(orders) > 1


def test_pooled_task_encoding_is_the_mean_and_spread_of_the_class_means_in_any_label_order():
    rng = np.random.default_rng(0)
    embeddings = tf.constant(rng.normal(size=(2, 15, 4)), tf.float32)
    labels = np.tile(np.repeat(np.arange(5), 3), (2, 1))
    layer = ClassMeanPool(5)
    h0 = layer(embeddings, tf.constant(labels, tf.int32)).numpy()
    means = class_means(embeddings, tf.constant(labels, tf.int32), 5).numpy()
    np.testing.assert_allclose(h0, np.concatenate([means.mean(1), means.std(1)], -1), rtol=1e-4, atol=1e-5)
    relabelled = rng.permutation(5)[labels]  # the same classes under other labels
    np.testing.assert_allclose(layer(embeddings, tf.constant(relabelled, tf.int32)).numpy(), h0, rtol=1e-5)
    assert layer.output_dim(4) == h0.shape[-1] == 8


def test_posterior_emits_every_layer_with_positive_scales():
    posterior = AmortizedPosterior([(8, 6), (6, 3)], units=10, noise_dim=4, seed=0)
    params = posterior(tf.random.normal((2, 10)))
    assert [p.kernel_loc.shape for p in params] == [(2, 8, 6), (2, 6, 3)]
    assert [p.bias_rho.shape for p in params] == [(2, 6), (2, 3)]
    for p in params:
        assert float(tf.reduce_min(scale_from_rho(p.kernel_rho))) > 0
        np.testing.assert_allclose(scale_from_rho(p.kernel_rho).numpy(), 0.01, rtol=0.05)


def test_posterior_depends_on_the_task_and_on_the_noise():
    posterior = AmortizedPosterior([(8, 3)], units=10, noise_dim=4, seed=0)
    h0 = tf.random.normal((1, 10))
    with tf.GradientTape() as tape:
        tape.watch(h0)
        loc = posterior(h0)[0].kernel_loc
    assert float(tf.reduce_sum(tf.abs(tape.gradient(loc, h0)))) > 0  # a function of the task
    again = posterior(h0)[0].kernel_loc
    assert not np.allclose(loc.numpy(), again.numpy())  # fresh hyperprior noise every call

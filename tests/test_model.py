"""AmortizedBNN end to end: shapes, gradients into every part, loss falling on real Omniglot."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_abml.data import episode_dataset, make_sampler
from tfp_abml.encoders import build_encoder
from tfp_abml.model import AmortizedBNN


@pytest.fixture(scope="module")
def train_sampler(data_dir):
    return make_sampler("omniglot", "train", ways=5, shots=1, queries=5, seed=0, data_dir=data_dir)


def _model(**kwargs):
    return AmortizedBNN(build_encoder("conv4", 28), ways=5, seed=0, **kwargs)


def test_call_returns_query_probabilities(train_sampler):
    inputs, _ = next(iter(episode_dataset(train_sampler, 3)))
    probabilities = _model(eval_samples=3)(inputs).numpy()
    assert probabilities.shape == (3, 25, 5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("first_order, variant", [
    (False, {}), (True, {}), (False, {"posterior": "aligned", "learn_inner_lr": True}),
    (False, {"posterior": "aligned", "task_encoding": "pool"}),
    (False, {"posterior": "aligned", "residual_head": True, "train_samples": 3}),
    (False, {"posterior": "aligned", "prior": "learned"})])
def test_outer_gradient_reaches_encoder_posterior_and_scale(train_sampler, first_order, variant):
    inputs, labels = next(iter(episode_dataset(train_sampler, 2)))
    model = _model(kl_scale=1e-3, first_order=first_order, inner_steps=2, **variant)
    model(inputs)
    with tf.GradientTape() as tape:
        loss = model.episode(inputs, labels, training=True)["loss"]
    grads = tape.gradient(loss, model.trainable_variables)
    empty = [v.path for v, g in zip(model.trainable_variables, grads)
             if g is None or float(tf.reduce_sum(tf.abs(g))) == 0.0]
    assert not empty, empty
    assert any("lstm_cell" in v.path for v in model.trainable_variables)
    assert any("conv2d" in v.path for v in model.trainable_variables)


def test_train_samples_loss_is_the_nll_of_the_posterior_predictive(train_sampler, monkeypatch):
    """With S draws the training query loss is -log mean_s p_s(y), not the mean of -log p_s(y)."""
    inputs, labels = next(iter(episode_dataset(train_sampler, 2)))
    model = _model(train_samples=4, posterior="aligned")
    model(inputs)
    logits = np.random.default_rng(0).normal(scale=3.0, size=(4, 2, 25, 5))
    monkeypatch.setattr(model, "draw_logits", lambda params, queries, samples: tf.constant(logits, tf.float32))
    out = model.episode(inputs, labels, training=True)
    draws = np.exp(logits - logits.max(-1, keepdims=True))
    draws /= draws.sum(-1, keepdims=True)  # [S, T, M, N]
    picked = np.take_along_axis(draws, labels.numpy()[None, ..., None].astype(int), -1)[..., 0]  # [S, T, M]
    expected = -np.log(picked.mean(0)).mean()
    np.testing.assert_allclose(float(out["nll"]), expected, rtol=1e-5)
    assert expected < -np.log(picked).mean() - 0.1  # the per-draw mean is another (larger) number
    np.testing.assert_allclose(out["probabilities"].numpy(), draws.mean(0), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="train_samples must be >= 1"):
        _model(train_samples=0)


def test_second_order_gradient_differs_from_first_order(train_sampler):
    inputs, labels = next(iter(episode_dataset(train_sampler, 2)))
    grads = {}
    for first_order in (False, True):
        keras.utils.set_random_seed(5)
        model = _model(first_order=first_order, inner_steps=1, inner_lr=1.0)
        model(inputs)
        keras.utils.set_random_seed(7)
        with tf.GradientTape() as tape:
            loss = model.episode(inputs, labels, training=True)["loss"]
        grads[first_order] = tape.gradient(loss, model.encoder.trainable_variables[0]).numpy()
    assert not np.allclose(grads[False], grads[True], rtol=1e-3, atol=1e-7)


def test_inner_steps_fit_the_support_set(train_sampler):
    """More inner steps at the paper's rate lower the support loss of a fresh model."""
    inputs, _ = next(iter(episode_dataset(train_sampler, 4)))
    model = _model()
    embeddings = model.embed(inputs["support_images"], training=True)
    labels = inputs["support_labels"]
    losses = []
    for steps in (0, 5):
        model.inner_steps = steps
        params = model.adapted_posterior(embeddings, labels)
        losses.append(float(model.support_loss(params, embeddings, labels)))
    assert losses[1] < losses[0] - 0.05


def test_fit_lowers_the_query_loss_on_real_omniglot(train_sampler):
    model = _model(kl_scale=1e-6)
    model.compile(optimizer=keras.optimizers.Adam(3e-4))
    history = model.fit(episode_dataset(train_sampler, 4), steps_per_epoch=20, epochs=3, verbose=0, shuffle=False)
    nll = history.history["nll"]
    assert nll[-1] < nll[0] - 0.1, nll
    assert history.history["accuracy"][-1] > 0.4  # chance is 0.2
    result = model.evaluate(episode_dataset(train_sampler, 4, start=10_000, episodes=20), verbose=0,
                            return_dict=True)
    assert set(result) == {"loss", "nll", "kl", "accuracy"} and result["accuracy"] > 0.3


@pytest.mark.parametrize("hidden_units, residual", [((16,), False), ((), False), ((64,), True)])
def test_aligned_output_is_a_prototype_classifier_before_the_inner_loop(train_sampler, hidden_units, residual):
    """Mean logits of the aligned posterior = -a |g(x) - p_n|^2 + (a term shared by all classes)."""
    inputs, _ = next(iter(episode_dataset(train_sampler, 2)))
    model = _model(posterior="aligned", hidden_units=hidden_units, residual_head=residual)
    embeddings = model.embed(inputs["support_images"], training=True)
    labels = tf.cast(inputs["support_labels"], tf.int32)
    queries = model.embed(inputs["query_images"], training=True)
    params = model.initial_posterior(embeddings, labels)
    logits = model.head(queries, params, mean_only=True)

    def features(x):
        for layer in params[:-1]:
            x = (x if residual else 0.0) + tf.nn.relu(model.head.dense(x, layer, mean_only=True))
        return x

    prototypes = tf.stack([tf.reduce_mean(tf.boolean_mask(features(embeddings)[t], labels[t] == n), axis=0)
                           for t in range(2) for n in range(5)])
    prototypes = tf.reshape(prototypes, (2, 5, -1))
    distances = tf.reduce_sum(tf.square(features(queries)[:, :, None] - prototypes[:, None]), axis=-1)
    shared = (logits + model.prototype_scale * distances).numpy()  # [T, M, N]: equal across n
    np.testing.assert_allclose(shared, np.repeat(shared[..., :1], 5, axis=-1), rtol=1e-4, atol=1e-3)
    # The LSTM emits one scale per input unit of the output layer, shared by the classes.
    scales = params[-1].kernel_rho.numpy()
    np.testing.assert_array_equal(scales, np.repeat(scales[..., :1], 5, axis=-1))


def test_residual_head_adds_each_hidden_layer_to_its_input():
    """Mean-weight logits of a residual head against numpy: a = z + relu(z W1 + b1), twice, then a W + b."""
    from tfp_abml.bayesian_head import BayesianMLP
    from tfp_abml.flipout import DenseParams

    rng = np.random.default_rng(0)
    head = BayesianMLP(8, (8, 8), 3, residual=True)
    z = rng.standard_normal((2, 5, 8)).astype(np.float32)
    layers = [{"kernel": rng.standard_normal((2, i, o)).astype(np.float32),
               "bias": rng.standard_normal((2, o)).astype(np.float32)} for i, o in head.layer_shapes]
    params = [DenseParams(kernel_loc=tf.constant(l["kernel"]), kernel_rho=tf.zeros_like(l["kernel"]),
                          bias_loc=tf.constant(l["bias"]), bias_rho=tf.zeros_like(l["bias"])) for l in layers]
    expected = z
    for layer in layers[:-1]:
        expected = expected + np.maximum(np.einsum("tmi,tio->tmo", expected, layer["kernel"]) + layer["bias"][:, None], 0)
    expected = np.einsum("tmi,tio->tmo", expected, layers[-1]["kernel"]) + layers[-1]["bias"][:, None]
    np.testing.assert_allclose(head(tf.constant(z), params, mean_only=True).numpy(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="every hidden width equal to the input size 8"):
        BayesianMLP(8, (4,), 3, residual=True)


def test_learned_inner_rates_start_at_inner_lr_and_change_the_adaptation(train_sampler):
    inputs, _ = next(iter(episode_dataset(train_sampler, 2)))
    model = _model(posterior="aligned", learn_inner_lr=True, inner_lr=0.5)
    model(inputs)
    np.testing.assert_allclose([float(r) for r in model.inner_learning_rates()], 0.5, rtol=1e-6)
    embeddings = model.embed(inputs["support_images"], training=True)
    labels = tf.cast(inputs["support_labels"], tf.int32)
    generators = [model.posterior.seed_generator, model.task_encoder.seed_generator, model.flipout_seed]
    states = [g.state.numpy() for g in generators]

    def adapted_output_bias():
        for generator, state in zip(generators, states):  # the same noise for both calls
            generator.state.assign(state)
        return model.adapted_posterior(embeddings, labels)[-1].bias_loc.numpy()

    before = adapted_output_bias()
    np.testing.assert_array_equal(before, adapted_output_bias())
    model.inner_log_lrs[-2].assign(np.log(2.0))  # the output layer's bias means
    assert not np.allclose(before, adapted_output_bias(), atol=1e-5)


def test_train_and_test_on_batch_take_one_meta_batch_and_refuse_sample_weights(train_sampler):
    # Keras packs train_on_batch's arguments as (x, y, sample_weight); an episode has no weights.
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    inputs, labels = next(iter(episode_dataset(train_sampler, 2)))
    assert np.isfinite(model.train_on_batch(inputs, labels, return_dict=True)["loss"])
    assert np.isfinite(model.test_on_batch(inputs, labels, return_dict=True)["loss"])
    with pytest.raises(ValueError, match="no sample weights"):
        model.train_on_batch(inputs, labels, sample_weight=np.ones(2))

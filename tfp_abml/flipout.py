"""Functional Flipout dense layer: the weights come in as a distribution, not as layer variables.

A mean-field Gaussian weight posterior ``W ~ N(M, S^2)`` (element-wise) is
sampled once per task as ``W = M + S * E`` with ``E ~ N(0, I)``. Flipout
(Wen et al., 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations
on Mini-Batches", ICLR) gives every example ``x_n`` of the batch its own
pseudo-independent perturbation by flipping signs with Rademacher vectors
``r_n`` (inputs) and ``s_n`` (outputs):

    y_n = x_n M + ((x_n * r_n) (S * E)) * s_n + b,    b = m_b + s_b * e_b

Marginally each ``y_n`` is distributed exactly as ``x_n W`` with ``W`` drawn
from the posterior (``E`` and ``r_n E s_n^T`` have the same law), so

    E[y_n]   = x_n M + m_b
    Var[y_n] = (x_n^2) (S^2) + s_b^2

while two examples of a batch no longer share one weight draw: for the weight
part their covariance is ``0`` where plain weight sampling makes it
``sum_i x_ni x_mi S_i^2``. The cost is two matrix products instead of one.

The functions below take a leading task axis ``T`` so that a meta-batch of
tasks, each with its own posterior, runs as one batched product. They follow
``tfp.layers.DenseFlipout`` in meaning, but ``tfp.layers`` needs Keras 2, and
here the posterior is an input produced by another network.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# Scales lie in (SCALE_FLOOR, SCALE_FLOOR + SCALE_CEILING) whatever rho is. The floor keeps
# log-densities and -log(scale) in the KL finite; the ceiling keeps scale^2 in the KL and the
# Flipout noise finite when an inner step of a huge learning rate throws rho far out (the
# prior's scale is 1, so scales near the ceiling are never useful). The ceiling is smooth
# (tanh), so below about 10 the scale is softplus(rho) + SCALE_FLOOR to float32 precision
# and rho keeps a gradient.
SCALE_FLOOR = 1e-4
SCALE_CEILING = 1e3


def scale_from_rho(rho):
    """Positive, bounded scale from an unconstrained parameter.

    ``SCALE_FLOOR + SCALE_CEILING * tanh(softplus(rho) / SCALE_CEILING)``, i.e. about
    ``softplus(rho) + SCALE_FLOOR`` for any useful scale.
    """
    return SCALE_FLOOR + SCALE_CEILING * tf.math.tanh(tf.nn.softplus(rho) / SCALE_CEILING)


def rho_from_scale(scale):
    """Inverse of :func:`scale_from_rho`, for initialising rho at a chosen scale."""
    scale = tf.convert_to_tensor(scale, tf.float32)
    return tfp.math.softplus_inverse(SCALE_CEILING * tf.math.atanh((scale - SCALE_FLOOR) / SCALE_CEILING))


@dataclasses.dataclass
class DenseParams:
    """Posterior of one dense layer, per task: kernel ``[T, in, out]``, bias ``[T, out]``.

    ``*_rho`` are unconstrained; the scale is :func:`scale_from_rho` of them. These
    four tensors are what the inner loop adapts.
    """

    kernel_loc: tf.Tensor
    kernel_rho: tf.Tensor
    bias_loc: tf.Tensor
    bias_rho: tf.Tensor

    def tensors(self):
        return [self.kernel_loc, self.kernel_rho, self.bias_loc, self.bias_rho]

    @classmethod
    def from_tensors(cls, tensors):
        return cls(*tensors)


SIGN_BITS = 16  # signs per uniform word: randint(0, 2**16) is 16 independent fair bits


def random_signs(count, seed=None, dtype=tf.float32):
    """``count`` independent random signs, +1 or -1 with equal probability, as a flat vector.

    One draw of ``ceil(count / 16)`` uniform 16-bit words, each unpacked into 16 signs: on a CPU the
    cost of random ops on small tensors is per element drawn, so this is far cheaper than one draw
    per sign.
    """
    count = tf.cast(count, tf.int32)
    words = keras.random.randint(tf.reshape((count + SIGN_BITS - 1) // SIGN_BITS, [1]), 0, 1 << SIGN_BITS,
                                 seed=seed, dtype="int32")
    bits = tf.bitwise.bitwise_and(words[:, None], tf.constant([1 << b for b in range(SIGN_BITS)], tf.int32))
    return tf.reshape(tf.where(bits > 0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype)), [-1])[:count]


def rademacher(shape, seed=None, dtype=tf.float32):
    """Random signs of ``shape``, +1 or -1 with equal probability (:func:`random_signs`)."""
    shape = tf.convert_to_tensor(shape, tf.int32)
    return tf.reshape(random_signs(tf.reduce_prod(shape), seed, dtype), shape)


def flipout_dense(inputs, params: DenseParams, seed=None, mean_only=False):
    """Flipout forward pass of a Gaussian dense layer, batched over tasks.

    Args:
      inputs: ``[T, M, in]`` float32, M examples per task.
      params: the layer's posterior, kernel ``[T, in, out]``, bias ``[T, out]``.
      seed: a ``keras.random.SeedGenerator`` (or int / None) for E, r, s.
      mean_only: use the posterior means (``y = x M + m_b``), no sampling.

    Returns:
      ``[T, M, out]`` pre-activations.
    """
    mean = tf.einsum("tmi,tio->tmo", inputs, params.kernel_loc) + params.bias_loc[:, None, :]
    if mean_only:
        return mean
    # All of the layer's noise from two random calls: one Gaussian draw for kernel and bias (the bias
    # as one more kernel row), one for the input and output signs of every example.
    kernel_shape = tf.shape(params.kernel_loc)  # [T, in, out]
    noise = keras.random.normal(kernel_shape + tf.constant([0, 1, 0]), seed=seed)
    kernel_noise = scale_from_rho(params.kernel_rho) * noise[:, :-1]
    bias = scale_from_rho(params.bias_rho) * noise[:, -1]
    sign_shape = tf.shape(mean) + tf.stack([0, 0, kernel_shape[1]])  # [T, M, in + out]
    in_signs, out_signs = tf.split(tf.reshape(random_signs(tf.reduce_prod(sign_shape), seed=seed), sign_shape),
                                   [kernel_shape[1], kernel_shape[2]], axis=-1)
    perturbation = tf.einsum("tmi,tio->tmo", inputs * in_signs, kernel_noise) * out_signs
    return mean + perturbation + bias[:, None, :]


def dense_sampled_weights(inputs, params: DenseParams, seed=None):
    """Reference estimator: one weight draw per task shared by all its examples (no Flipout)."""
    kernel = params.kernel_loc + scale_from_rho(params.kernel_rho) * keras.random.normal(
        tf.shape(params.kernel_loc), seed=seed)
    bias = params.bias_loc + scale_from_rho(params.bias_rho) * keras.random.normal(tf.shape(params.bias_loc),
                                                                                    seed=seed)
    return tf.einsum("tmi,tio->tmo", inputs, kernel) + bias[:, None, :]


def kl_to_normal(loc, scale, prior_loc, prior_scale):
    """Per-task sum of ``KL(N(loc, scale^2) || N(prior_loc, prior_scale^2))``, computed by TFP: ``[T]``.
    The prior broadcasts against the posterior's ``[T, ...]`` (without its task axis)."""
    kl = tfd.kl_divergence(tfd.Normal(loc, scale), tfd.Normal(prior_loc, prior_scale))
    return tf.reduce_sum(tf.reshape(kl, (tf.shape(kl)[0], -1)), axis=-1)


def kl_to_standard_normal(params: DenseParams):
    """``KL(q || N(0, 1))`` summed over the layer's weights and biases, per task: ``[T]``.

    Closed form per weight: ``0.5 * (s^2 + m^2 - 1) - log s``.
    """
    return (kl_to_normal(params.kernel_loc, scale_from_rho(params.kernel_rho), 0.0, 1.0)
            + kl_to_normal(params.bias_loc, scale_from_rho(params.bias_rho), 0.0, 1.0))

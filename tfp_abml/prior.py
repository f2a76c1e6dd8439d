"""Priors of the Bayesian head: the paper's N(0, I), or one meta-learned across tasks.

The outer loss charges ``kl_scale * KL(q_task || p)``. With the paper's ``p = N(0, I)`` the KL
pulls every posterior mean towards zero, the aligned output layer's prototype means included
(``kernel_loc[:, n] = 2 a p_n``): a larger ``kl_scale`` widens the posterior but also shrinks
what it classifies with (``benchmarks/kl_scale.py``). A meta-learned prior (Ravi & Beatson,
2019, "Amortized Bayesian Meta-Learning", ICLR; there under a hyperprior, here as empirical
Bayes) makes ``p = N(m, s^2)`` trainable: the outer loop moves ``m`` and ``s`` to where the
tasks' posteriors lie, so the KL charges a posterior for departing from the population of
tasks, not from zero::

    KL(N(mu, sigma^2) || N(m, s^2)) = log(s / sigma) + (sigma^2 + (mu - m)^2) / (2 s^2) - 1/2

per weight, summed. Hidden layers get one ``(m, s)`` per weight. The output layer's units are
the task's classes, which come in no fixed order, so its prior is class-symmetric: one
``(m, s)`` per input unit for the kernel, one for all biases, shared by every output unit. That
also keeps the prior independent of N (a ways-agnostic model stays one). It starts at N(0, 1):
a learned prior is the paper's prior at initialisation.

Adam moves every variable by about its learning rate per step, whatever the gradient's size. The
network's weights need small moves; the prior's means and rhos must travel distances of order one
(from N(0, 1) to where posteriors with scales of a few hundredths lie). The variables therefore
hold ``m / rate`` and ``rho / rate``: the prior moves ``rate`` times faster than the network
(``PRIOR_RATE`` = 100: 0.01 per step at Adam's 1e-4, so that a fine-tune of a few hundred steps
can reach it), as the posterior heads move ten times slower (:mod:`tfp_abml.posterior`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_abml.flipout import DenseParams, kl_to_normal, kl_to_standard_normal, rho_from_scale, scale_from_rho

PRIOR_RATE = 100.0


def standard_normal_kl(params):
    """``KL(q || N(0, I))`` over all layers, per task ``[T]`` (the paper's prior)."""
    return tf.add_n([kl_to_standard_normal(layer) for layer in params])


class LearnedPrior(keras.layers.Layer):
    """Trainable Gaussian prior over the weights of a head with ``layer_shapes`` [(in, out), ...].

    ``kl(params)`` is ``KL(q || p)`` per task ``[T]`` for posteriors ``params`` (one
    :class:`~tfp_abml.flipout.DenseParams` per layer). Variables are attributes, one per tensor:
    tf.train.Checkpoint does not see variables kept in a Python list of a Keras 3 layer.
    """

    def __init__(self, layer_shapes, initial_scale=1.0, rate=PRIOR_RATE, **kwargs):
        super().__init__(**kwargs)
        self.layer_shapes = [tuple(int(d) for d in s) for s in layer_shapes]
        self.rate = float(rate)
        rho = keras.initializers.Constant(float(rho_from_scale(initial_scale)) / self.rate)
        last = len(self.layer_shapes) - 1
        for index, (fan_in, fan_out) in enumerate(self.layer_shapes):
            # The output layer: per input unit, shared by the N class units (class-symmetric).
            kernel, bias = ((fan_in, 1), (1,)) if index == last else ((fan_in, fan_out), (fan_out,))
            for name, shape, initializer in (("kernel_loc", kernel, "zeros"), ("kernel_rho", kernel, rho),
                                             ("bias_loc", bias, "zeros"), ("bias_rho", bias, rho)):
                setattr(self, f"{name}_{index}", self.add_weight(shape=shape, initializer=initializer,
                                                                 name=f"prior_{name}_{index}"))
        self.built = True  # its weights exist from the start; nothing depends on an input shape

    NAMES = ("kernel_loc", "kernel_rho", "bias_loc", "bias_rho")

    def layer(self, index):
        """The prior of layer ``index`` as :class:`DenseParams` without a task axis."""
        return DenseParams(*(self.rate * getattr(self, f"{name}_{index}") for name in self.NAMES))

    def set_layer(self, index, params):
        """Set the prior of layer ``index`` to ``params`` (:class:`DenseParams` shaped as :meth:`layer`)."""
        for name, value in zip(self.NAMES, params.tensors()):
            getattr(self, f"{name}_{index}").assign(tf.convert_to_tensor(value, tf.float32) / self.rate)

    def kl(self, params):
        total = 0.0
        for index, posterior in enumerate(params):
            prior = self.layer(index)
            total += kl_to_normal(posterior.kernel_loc, scale_from_rho(posterior.kernel_rho),
                                  prior.kernel_loc, scale_from_rho(prior.kernel_rho))
            total += kl_to_normal(posterior.bias_loc, scale_from_rho(posterior.bias_rho),
                                  prior.bias_loc, scale_from_rho(prior.bias_rho))
        return total

    def mean_scales(self):
        """Mean prior scale of each layer's kernel and bias (for reports)."""
        return [{"kernel": float(tf.reduce_mean(scale_from_rho(self.layer(i).kernel_rho))),
                 "bias": float(tf.reduce_mean(scale_from_rho(self.layer(i).bias_rho)))}
                for i in range(len(self.layer_shapes))]

"""Amortized posterior: an LSTM that emits the Gaussian posterior of a BNN one layer per step.

Given a task encoding ``h0`` (:mod:`tfp_abml.task_encoding`), the LSTM runs one
step per BNN layer ``l = 1..L``, fed Gaussian noise (the hyperprior of the
paper) at every step::

    (o_l, h_l, c_l) = LSTM(eps_l, (h_{l-1}, c_{l-1})),     eps_l ~ N(0, I),   c_0 = 0
    loc_l = A_l o_l + a_l,    rho_l = B_l o_l + b_l,       scale_l = softplus(rho_l) + floor

``loc_l`` and ``rho_l`` cover every kernel and bias entry of layer l, so the
posterior is mean-field given the noise, while the recurrence lets layer l's
posterior depend on what was emitted for the layers before it -- the
"sequential nature" of a BNN the paper builds on.

With ``symmetric_output=True`` the last step emits an output layer that treats
every class alike: zero means and one scale per input unit (kernel) and one for
all biases. h0 concatenates the class means in a random order, so the LSTM cannot
know which output unit belongs to which label; whatever it emits per unit is
noise to the classifier. The model then sets the output means from the labelled
class prototypes (:meth:`tfp_abml.model.AmortizedBNN.aligned_output`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_abml.flipout import DenseParams, rho_from_scale


class AmortizedPosterior(keras.layers.Layer):
    """``h0 [T, units]`` -> list of :class:`DenseParams`, one per BNN layer in ``layer_shapes``."""

    def __init__(self, layer_shapes, units, noise_dim=32, initial_scale=0.01, head_multiplier=0.1, seed=None,
                 symmetric_output=False, **kwargs):
        super().__init__(**kwargs)
        # Each head maps `units` LSTM outputs to thousands of weights; one Adam step of size lr on
        # every head weight moves every generated weight by about lr * units * |o|, coherently --
        # at lr 1e-3 that is larger than the weights themselves. Emitting multiplier * Dense(o),
        # with the Dense kernel initialised 1/multiplier larger, keeps the initial posterior and
        # slows its updates by `head_multiplier`.
        self.head_multiplier = float(head_multiplier)
        self.layer_shapes = [tuple(s) for s in layer_shapes]
        self.units, self.noise_dim = int(units), int(noise_dim)
        self.symmetric_output = bool(symmetric_output)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.cell = keras.layers.LSTMCell(self.units, name="lstm_cell")
        rho_bias = float(rho_from_scale(initial_scale))
        # Each head is its own attribute: tf.train.Checkpoint does not see layers kept in a Python
        # list of a Keras 3 layer, so listed heads were silently left out of training checkpoints.
        # With a symmetric output there is no loc head for the last layer.
        for index, (fan_in, fan_out) in enumerate(self.layer_shapes):
            size = fan_in * fan_out + fan_out
            if self.symmetric_output and index == len(self.layer_shapes) - 1:
                size = fan_in + 1  # one rho per input unit, one for the biases; no means
            else:
                setattr(self, f"loc_head_{index}", keras.layers.Dense(
                    size, kernel_initializer=keras.initializers.VarianceScaling(
                        1.0 / self.head_multiplier ** 2, mode="fan_avg", distribution="uniform"),
                    name=f"loc_head_{index}"))
            # Small kernel, bias at the initial scale: posteriors start narrow and alike.
            setattr(self, f"rho_head_{index}", keras.layers.Dense(
                size, kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3 / self.head_multiplier),
                bias_initializer=keras.initializers.Constant(rho_bias / self.head_multiplier),
                name=f"rho_head_{index}"))

    @property
    def loc_heads(self):
        return [getattr(self, f"loc_head_{i}") for i in range(len(self.layer_shapes)) if hasattr(self, f"loc_head_{i}")]

    @property
    def rho_heads(self):
        return [getattr(self, f"rho_head_{i}") for i in range(len(self.layer_shapes))]

    def build(self, input_shape):
        self.cell.build((None, self.noise_dim))
        for head in [*self.loc_heads, *self.rho_heads]:
            head.build((None, self.units))

    def call(self, h0):
        tasks = tf.shape(h0)[0]
        state = [h0, tf.zeros_like(h0)]
        params = []
        for index, ((fan_in, fan_out), rho_head) in enumerate(zip(self.layer_shapes, self.rho_heads)):
            loc_head = getattr(self, f"loc_head_{index}", None)
            noise = keras.random.normal((tasks, self.noise_dim), seed=self.seed_generator)
            output, state = self.cell(noise, state)
            rho = self.head_multiplier * rho_head(output)
            if loc_head is None:  # class-symmetric output layer
                params.append(DenseParams(
                    kernel_loc=tf.zeros((tasks, fan_in, fan_out)),
                    kernel_rho=tf.tile(rho[:, :fan_in, None], (1, 1, fan_out)),
                    bias_loc=tf.zeros((tasks, fan_out)), bias_rho=tf.tile(rho[:, fan_in:], (1, fan_out))))
                continue
            loc = self.head_multiplier * loc_head(output)
            split = fan_in * fan_out
            params.append(DenseParams(
                kernel_loc=tf.reshape(loc[:, :split], (tasks, fan_in, fan_out)),
                kernel_rho=tf.reshape(rho[:, :split], (tasks, fan_in, fan_out)),
                bias_loc=loc[:, split:], bias_rho=rho[:, split:]))
        return params

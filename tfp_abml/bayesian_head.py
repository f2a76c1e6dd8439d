"""The Bayesian MLP whose weight posterior the LSTM generates: a stack of functional Flipout layers.

For embeddings ``z`` of dimension D and layer widths ``(h_1, ..., h_{L-1}, N)``::

    a_0 = z,   a_l = relu(flipout_dense(a_{l-1}, q_l)),   logits = flipout_dense(a_{L-1}, q_L)

With ``residual=True`` every hidden layer adds to its input (widths equal to D)::

    a_l = a_{l-1} + relu(flipout_dense(a_{l-1}, q_l))

so the features the output layer sees keep all of ``z`` (He et al., 2016): a prototype classifier
on them is at least the encoder's own ProtoNet, and the task-specific hidden layer refines it
rather than squeezing the embedding through one ReLU layer.

The head owns no variables: ``q_l`` (one :class:`DenseParams` per layer) is an
argument, produced per task by :mod:`tfp_abml.posterior` and adapted by
:mod:`tfp_abml.inner_loop`.
"""

from __future__ import annotations

import tensorflow as tf

from tfp_abml.flipout import DenseParams, flipout_dense


class BayesianMLP:
    """Shapes and forward pass of a Bayesian MLP from ``input_dim`` through ``hidden_units`` to ``outputs``."""

    def __init__(self, input_dim, hidden_units, outputs, residual=False):
        widths = [int(input_dim), *[int(u) for u in hidden_units], int(outputs)]
        if residual and any(int(u) != int(input_dim) for u in hidden_units):
            raise ValueError(f"a residual head needs every hidden width equal to the input size {input_dim}, "
                             f"got {list(hidden_units)}")
        self.layer_shapes = list(zip(widths[:-1], widths[1:]))
        self.residual = bool(residual)

    @property
    def num_layers(self):
        return len(self.layer_shapes)

    @property
    def num_weights(self):
        return sum(i * o + o for i, o in self.layer_shapes)

    @staticmethod
    def dense(inputs, layer, seed=None, mean_only=False):
        """One layer's pre-activations under its posterior ``layer`` (Flipout, or the means)."""
        return flipout_dense(inputs, layer, seed=seed, mean_only=mean_only)

    def features(self, inputs, hidden_params, seed=None, mean_only=False):
        """The last hidden layer's activations ``a_{L-1}`` under the hidden layers' posteriors."""
        hidden = inputs
        for layer in hidden_params:
            activation = tf.nn.relu(self.dense(hidden, layer, seed=seed, mean_only=mean_only))
            hidden = hidden + activation if self.residual else activation
        return hidden

    def __call__(self, inputs, params, seed=None, mean_only=False):
        """Logits ``[T, M, outputs]`` for inputs ``[T, M, input_dim]`` under posteriors ``params``."""
        features = self.features(inputs, params[:-1], seed=seed, mean_only=mean_only)
        return self.dense(features, params[-1], seed=seed, mean_only=mean_only)

    @staticmethod
    def flatten(params):
        return [t for layer in params for t in layer.tensors()]

    @staticmethod
    def unflatten(tensors):
        return [DenseParams.from_tensors(tensors[i:i + 4]) for i in range(0, len(tensors), 4)]

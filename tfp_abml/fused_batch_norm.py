"""Batch norm through TensorFlow's fused kernel: the same layer, about 2x faster encoders on CPU.

Keras 3's ``BatchNormalization`` computes batch statistics with ``moments`` and normalises
with separate element-wise ops; differentiated (and, for MAML, differentiated twice) that
is some twenty broadcasting ops per layer. On this project's CPU machine they took about
half of every Conv-4 training step (TF profiler: ``Mul``, ``Sum``, ``Mean``, ``Tile``,
``SquaredDifference``), more than the convolutions. ``FusedBatchNormV3`` does the forward
pass, and its registered gradient the backward pass, each as one oneDNN kernel.

First derivatives only: TensorFlow's registered gradient of the fused gradient (what a
second-order method differentiates) is off by 0.3% to 60% behind a convolution (measured
against float64 Keras ops; alone it is exact). Every layer has a ``fused`` switch, and
:func:`set_fused` turns it off in a whole model: second-order MAML and Meta-SGD, which
differentiate the encoder twice, run Keras's own ops; ``abml``, ProtoNet and Matching
Networks differentiate the encoder once (``abml``'s second-order inner loop is on its head).

:class:`FusedBatchNormalization` is a ``keras.layers.BatchNormalization`` with the same
variables, names, settings and results (to float32 round-off): in training mode on a 4-D
channels-last float32 input it normalises with the fused kernel and updates the moving
statistics exactly as Keras does (with the biased batch variance; the kernel reports the
unbiased one, which is converted back). Anything else (inference with moving averages, a
mask, renorm, other layouts or dtypes, other backends) goes to Keras's own code.
:func:`fuse_batch_norm` rebuilds a model with every batch norm layer replaced.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfp_abml")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that trains through ``tf.raw_ops.FusedBatchNormV3``."""

    fused = True  # see set_fused

    def _fusable(self, inputs, training, mask):
        return (self.fused and keras.backend.backend() == "tensorflow" and training and self.trainable and mask is None
                and not self.renorm and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3) and inputs.dtype == "float32" and self.compute_dtype == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), inputs.dtype)
        beta = self.beta if self.center else tf.zeros((channels,), inputs.dtype)
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.convert_to_tensor(gamma), offset=tf.convert_to_tensor(beta),
            mean=tf.constant([], inputs.dtype), variance=tf.constant([], inputs.dtype), epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel multiplies the batch variance by n / (n - 1) (n values per channel, when n > 1);
        # Keras's moving variance averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), inputs.dtype)
        variance = unbiased_variance * tf.where(count > 1.0, (count - 1.0) / tf.maximum(count, 1.0), 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs


def set_fused(model, enabled):
    """Turn the fused kernel of every :class:`FusedBatchNormalization` in ``model`` on or off."""
    for layer in _all_layers(model):
        if isinstance(layer, FusedBatchNormalization):
            layer.fused = bool(enabled)


def _fused_clone(layer):
    if type(layer) is keras.layers.BatchNormalization:
        return FusedBatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def fuse_batch_norm(model):
    """``model`` (a functional ``keras.Model``) rebuilt with :class:`FusedBatchNormalization` layers.

    Layer names and configs are kept (so checkpoints and weight files of the plain model
    load into the fused one and back), and so are the weights: an ImageNet-initialised
    backbone stays initialised.
    """
    if not any(type(layer) is keras.layers.BatchNormalization for layer in _all_layers(model)):
        return model
    fused = keras.models.clone_model(model, clone_function=_fused_clone, recursive=True)
    fused.set_weights(model.get_weights())
    return fused


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)

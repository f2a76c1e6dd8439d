"""MAML (Finn, Abbeel & Levine, 2017) and Meta-SGD (Li et al., 2017) on the shared encoders.

The network is the encoder followed by a dense N-way output layer. For each task, all its
weights ``theta`` take K SGD steps on the support loss,

    theta_{k+1} = theta_k - alpha * grad L_support(theta_k)

and the outer loss is the query loss at ``theta_K``, differentiated through the inner steps
(second order unless ``first_order``). MAML uses one fixed ``alpha``; Meta-SGD learns an
``alpha`` of the same shape as every weight, meta-trained with ``theta_0``.

The network runs functionally through Keras 3's ``stateless_call`` with the adapted weights
as tensors. Batch norm uses the statistics of the batch at hand, in training and evaluation, as
in the original MAML.

The T tasks of a meta-batch are adapted one after another, either unrolled in the graph
(``task_loop="unrolled"``) or in a ``tf.map_fn`` (``"map_fn"``), which holds one task's K second-
order inner steps instead of T copies. Same numbers either way (tested); the trade, measured by
``benchmarks/speed.py`` (README, Speed): the unrolled graph runs 1.1-1.2x faster per episode, the
mapped one traces and optimizes in about half the time. For EfficientNetB0 that is minutes per
traced function (training, evaluation, export), so :class:`tfp_abml.run_config.RunConfig` maps
there and unrolls for Conv-4 unless told otherwise (``--task-loop``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_abml.episodic import LogitModel
from tfp_abml.fused_batch_norm import set_fused
from tfp_abml.inner_loop import sgd_adapt


class MAML(LogitModel):
    batch_norm_over_meta_batch = False  # one network call per task: batch norm sees one task at a time

    def __init__(self, encoder, ways, inner_steps=5, inner_lr=0.4, first_order=False, task_loop="unrolled",
                 **kwargs):
        super().__init__(ways, **kwargs)
        if task_loop not in ("unrolled", "map_fn"):
            raise ValueError(f"task_loop must be 'unrolled' or 'map_fn', not {task_loop!r}")
        self.encoder = encoder
        self.inner_steps, self.inner_lr, self.first_order = int(inner_steps), float(inner_lr), bool(first_order)
        self.task_loop = task_loop
        # Second order differentiates the encoder twice, which the fused batch norm kernel does
        # not do exactly (tfp_abml.fused_batch_norm); first order differentiates it once.
        set_fused(encoder, self.first_order)
        self.network = keras.Model(encoder.inputs, keras.layers.Dense(self.ways, name="classifier")(encoder.outputs[0]),
                                   name="network")

    def inner_learning_rates(self):
        return self.inner_lr

    def _logits(self, weights, images):
        state = [v.value for v in self.network.non_trainable_variables]
        logits, _ = self.network.stateless_call(weights, state, images, training=True)
        return logits

    def _adapt(self, support_images, support_labels):
        def support_loss(weights):
            logits = self._logits(weights, support_images)
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=support_labels, logits=logits))

        initial = [v.value for v in self.network.trainable_variables]
        return sgd_adapt(initial, support_loss, self.inner_steps, self.inner_learning_rates(), self.first_order)

    def _task_logits(self, task):
        support_images, support_labels, query_images = task
        return self._logits(self._adapt(support_images, support_labels), query_images)

    def logits(self, inputs, training=False):
        """Query logits ``[T, M, N]``, each task with its own adapted weights."""
        tasks = (inputs["support_images"], tf.cast(inputs["support_labels"], tf.int32), inputs["query_images"])
        if self.task_loop == "map_fn":
            return tf.map_fn(self._task_logits, tasks, fn_output_signature=tf.as_dtype(self.network.compute_dtype))
        # Unrolled: the meta-batch size must be static, as it is in training and export.
        return tf.stack([self._task_logits([part[t] for part in tasks]) for t in range(tasks[0].shape[0])])


class MetaSGD(MAML):
    """MAML with a learned inner learning rate per weight (initialised at ``inner_lr``)."""

    def __init__(self, encoder, ways, inner_steps=1, inner_lr=0.4, first_order=False, task_loop="unrolled", **kwargs):
        super().__init__(encoder, ways, inner_steps=inner_steps, inner_lr=inner_lr, first_order=first_order,
                         task_loop=task_loop, **kwargs)
        self.learning_rates = [
            self.add_weight(shape=v.shape, initializer=keras.initializers.Constant(inner_lr),
                            name=f"lr_{v.path.replace('/', '_')}")
            for v in self.network.trainable_variables]

    def inner_learning_rates(self):
        return [rate.value for rate in self.learning_rates]

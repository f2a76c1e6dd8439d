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

The T tasks of a meta-batch are adapted one after another, in one of three ``task_loop``\ s:

- ``"unrolled"``: T copies of the inner loop in the graph, differentiated together;
- ``"map_fn"``: one copy in a ``tf.map_fn``, differentiated as a loop (the graph holds one task's
  K second-order inner steps instead of T copies, but the outer backward pass still keeps every
  task's activations);
- ``"sequential"``: one task at a time in a ``tf.while_loop`` whose body takes that task's outer
  gradient and adds it to a running sum, as PyTorch users of ``higher`` call ``backward()`` per task.
  Only training steps differ (evaluation maps): a task's activations can be freed before the next
  task starts, instead of being kept for one backward pass over the whole meta-batch.

Same numbers every way (tested). Trade-offs, measured by ``benchmarks/speed.py`` and
``benchmarks/memory.py`` (README, Speed and Memory): the unrolled graph runs 1.07-1.19x faster
per episode than the others; the mapped one traces in half its time, the sequential one in about
a quarter (EfficientNetB0: 119 s against 531 s) and needs the least memory (the only loop that fits
EfficientNetB0 at 84 px 5-way 5-shot in 24 GiB). So :class:`tfp_abml.run_config.RunConfig` runs
sequential for EfficientNetB0 and unrolls for Conv-4 unless told otherwise (``--task-loop``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_abml.choices import TASK_LOOPS as CONFIG_TASK_LOOPS
from tfp_abml.distribute import replica_loss
from tfp_abml.episodic import LogitModel
from tfp_abml.fused_batch_norm import set_fused
from tfp_abml.inner_loop import sgd_adapt

TASK_LOOPS = tuple(loop for loop in CONFIG_TASK_LOOPS if loop != "auto")  # RunConfig resolves "auto"


class MAML(LogitModel):
    batch_norm_over_meta_batch = False  # one network call per task: batch norm sees one task at a time

    def __init__(self, encoder, ways, inner_steps=5, inner_lr=0.4, first_order=False, task_loop="unrolled",
                 eval_inner_steps=None, **kwargs):
        super().__init__(ways, **kwargs)
        # Steps at evaluation and serving (MAML's paper: 3 at test after 1 in training, 5-way); None: as training.
        self.eval_inner_steps = int(inner_steps if eval_inner_steps is None else eval_inner_steps)
        if task_loop not in TASK_LOOPS:
            raise ValueError(f"task_loop must be one of {', '.join(TASK_LOOPS)}, not {task_loop!r}")
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

    def _adapt(self, support_images, support_labels, training=True):
        def support_loss(weights):
            logits = self._logits(weights, support_images)
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=support_labels, logits=logits))

        initial = [v.value for v in self.network.trainable_variables]
        steps = self.inner_steps if training else self.eval_inner_steps
        return sgd_adapt(initial, support_loss, steps, self.inner_learning_rates(), self.first_order)

    def _task_logits(self, task, training=True):
        support_images, support_labels, query_images = task
        return self._logits(self._adapt(support_images, support_labels, training), query_images)

    def logits(self, inputs, training=False):
        """Query logits ``[T, M, N]``, each task with its own adapted weights (``eval_inner_steps`` unless training)."""
        tasks = (inputs["support_images"], tf.cast(inputs["support_labels"], tf.int32), inputs["query_images"])
        if self.task_loop in ("map_fn", "sequential"):  # "sequential" differs in train_step only
            return tf.map_fn(lambda task: self._task_logits(task, training), tasks,
                             fn_output_signature=tf.as_dtype(self.network.compute_dtype))
        # Unrolled: the meta-batch size must be static, as it is in training and export.
        return tf.stack([self._task_logits([part[t] for part in tasks], training) for t in range(tasks[0].shape[0])])

    def train_step(self, data):
        if self.task_loop != "sequential":
            return super().train_step(data)
        inputs, query_labels = self._unpack(data)
        tasks = (inputs["support_images"], tf.cast(inputs["support_labels"], tf.int32), inputs["query_images"],
                 tf.cast(query_labels, tf.int32))
        count = tf.shape(tasks[0])[0]
        variables = self.trainable_variables

        def one_task(t, gradient_sums, logits_so_far):
            support_images, support_labels, query_images, labels = (part[t] for part in tasks)
            with tf.GradientTape() as tape:
                logits = self._task_logits((support_images, support_labels, query_images))
                nll = self.logit_values(logits, labels)["nll"]
                # Every task has the same number of queries: the mean over tasks of this is the episode's loss.
                loss = replica_loss(nll / tf.cast(count, nll.dtype))
            gradients = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return t + 1, [s + g for s, g in zip(gradient_sums, gradients)], logits_so_far.write(t, logits)

        start = (tf.constant(0), [tf.zeros(v.shape, v.dtype) for v in variables],
                 tf.TensorArray(tf.as_dtype(self.network.compute_dtype), size=count))
        # parallel_iterations=1: two tasks in flight would hold two tasks' activations.
        _, gradients, logits_array = tf.while_loop(lambda t, *_: t < count, one_task, start, parallel_iterations=1)
        self.optimizer.apply(gradients, variables)
        return self._record(self.logit_values(logits_array.stack(), query_labels), query_labels)


class MetaSGD(MAML):
    """MAML with a learned inner learning rate per weight (initialised at ``inner_lr``)."""

    def __init__(self, encoder, ways, inner_steps=1, inner_lr=0.4, first_order=False, task_loop="unrolled",
                 eval_inner_steps=None, **kwargs):
        super().__init__(encoder, ways, inner_steps=inner_steps, inner_lr=inner_lr, first_order=first_order,
                         task_loop=task_loop, eval_inner_steps=eval_inner_steps, **kwargs)
        # One attribute per rate, not a list, so that tf.train.Checkpoint sees them (see AmortizedBNN).
        self.learning_rate_count = len(self.network.trainable_variables)
        for i, v in enumerate(self.network.trainable_variables):
            setattr(self, f"learning_rate_{i}", self.add_weight(
                shape=v.shape, initializer=keras.initializers.Constant(inner_lr), name=f"lr_{v.path.replace('/', '_')}"))

    @property
    def learning_rates(self):
        """The learned inner learning rates, one tensor per weight tensor of the network."""
        return [getattr(self, f"learning_rate_{i}") for i in range(self.learning_rate_count)]

    def inner_learning_rates(self):
        return [rate.value for rate in self.learning_rates]

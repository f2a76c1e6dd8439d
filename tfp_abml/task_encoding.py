"""Task encodings: a support set's embeddings -> one vector per task, the LSTM's initial state h0.

The paper's encoding (:class:`ClassMeanConcat`): average the support embeddings
of each class, then concatenate the N class means in a random order,

    h0 = [mean_{pi(1)}, ..., mean_{pi(N)}],    pi ~ Uniform(permutations of N)

so the encoding does not depend on which label a class happens to get. Its size,
N * D, grows with the ways, and so does the LSTM (20-way Conv-4: 1,280 units).

:class:`ClassMeanPool` is a permutation-invariant alternative for the aligned
posterior, whose LSTM only emits what all classes share: the mean and standard
deviation over classes of the class means, ``[mean_n m_n, std_n m_n]``, size 2D
whatever N is. Any Keras layer with the same call signature can take the place of
either in :class:`tfp_abml.model.AmortizedBNN`.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def class_means(embeddings, labels, ways):
    """Per-class mean embeddings ``[T, N, D]`` from ``[T, M, D]`` embeddings and ``[T, M]`` labels."""
    one_hot = tf.one_hot(labels, ways, dtype=embeddings.dtype)  # [T, M, N]
    sums = tf.einsum("tmn,tmd->tnd", one_hot, embeddings)
    counts = tf.reduce_sum(one_hot, axis=1)[..., None]
    return sums / tf.maximum(counts, 1.0)


class ClassMeanConcat(keras.layers.Layer):
    """h0 = class-mean embeddings concatenated in a random class order: ``[T, N * D]``."""

    def __init__(self, ways, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.ways = int(ways)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def output_dim(self, embedding_dim):
        return self.ways * int(embedding_dim)

    def call(self, embeddings, labels):
        means = class_means(embeddings, labels, self.ways)
        tasks = tf.shape(means)[0]
        order = tf.argsort(keras.random.uniform((tasks, self.ways), seed=self.seed_generator), axis=-1)
        shuffled = tf.gather(means, order, batch_dims=1)
        return tf.reshape(shuffled, (tasks, self.ways * means.shape[-1]))


class ClassMeanPool(keras.layers.Layer):
    """h0 = mean and standard deviation over classes of the class-mean embeddings: ``[T, 2 * D]``."""

    def __init__(self, ways, **kwargs):
        super().__init__(**kwargs)
        self.ways = int(ways)

    def output_dim(self, embedding_dim):
        return 2 * int(embedding_dim)

    def call(self, embeddings, labels):
        means = class_means(embeddings, labels, self.ways)
        center = tf.reduce_mean(means, axis=1)
        spread = tf.sqrt(tf.reduce_mean(tf.square(means - center[:, None]), axis=1) + 1e-6)
        return tf.concat([center, spread], axis=-1)


TASK_ENCODINGS = {"concat": ClassMeanConcat, "pool": ClassMeanPool}

"""Prototypical Networks (Snell, Swersky & Zemel, 2017, "Prototypical Networks for Few-shot Learning").

Each class is represented by the mean of its support embeddings, ``c_n``; a query ``x``
is classified by a softmax over negative squared Euclidean distances::

    p(y = n | x) = softmax_n( -|| f(x) - c_n ||^2 )
"""

from __future__ import annotations

import tensorflow as tf

from tfp_abml.episodic import LogitModel, embed_tasks, split_support_query
from tfp_abml.task_encoding import class_means


class PrototypicalNetwork(LogitModel):
    serves_any_ways = True  # prototypes / attention over the support set, for any N

    def __init__(self, encoder, ways, transductive_batch_norm=True, **kwargs):
        super().__init__(ways, **kwargs)
        self.encoder = encoder
        self.transductive_batch_norm = bool(transductive_batch_norm)

    def logits(self, inputs, training=False):
        images = tf.concat([inputs["support_images"], inputs["query_images"]], axis=1)
        embeddings = embed_tasks(self.encoder, images, training or self.transductive_batch_norm)
        support, query = split_support_query(embeddings, inputs)
        prototypes = class_means(support, tf.cast(inputs["support_labels"], tf.int32), self.ways)
        return -tf.reduce_sum(tf.square(query[:, :, None, :] - prototypes[:, None, :, :]), axis=-1)

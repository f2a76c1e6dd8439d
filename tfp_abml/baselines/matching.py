"""Matching Networks (Vinyals et al., 2016, "Matching Networks for One Shot Learning").

A query attends over the support set with a softmax of cosine similarities, and its
class distribution is the attention mass on each label::

    a(x, x_i) = softmax_i( tau * cos(f(x), g(x_i)) ),     p(y = n | x) = sum_i a(x, x_i) [y_i = n]

with ``f = g`` the shared encoder (no full-context embeddings). Cosines lie in [-1, 1], so a
plain softmax over them cannot become confident; ``tau`` is a learned inverse temperature
(initially 10), as in most re-implementations.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_abml.episodic import EpisodicModel, embed_tasks, mean_nll, split_support_query


class MatchingNetwork(EpisodicModel):
    serves_any_ways = True  # prototypes / attention over the support set, for any N

    def __init__(self, encoder, ways, initial_temperature=10.0, transductive_batch_norm=True, **kwargs):
        super().__init__(ways, **kwargs)
        self.encoder = encoder
        self.transductive_batch_norm = bool(transductive_batch_norm)
        self.temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(initial_temperature),
                                           name="temperature")

    def probabilities(self, inputs, training=False):
        images = tf.concat([inputs["support_images"], inputs["query_images"]], axis=1)
        embeddings = embed_tasks(self.encoder, images, training or self.transductive_batch_norm)
        support, query = split_support_query(embeddings, inputs)
        cosine = tf.einsum("tmd,tsd->tms", tf.math.l2_normalize(query, -1), tf.math.l2_normalize(support, -1))
        attention = tf.nn.softmax(self.temperature * cosine, axis=-1)
        one_hot = tf.one_hot(tf.cast(inputs["support_labels"], tf.int32), self.ways)
        return tf.einsum("tms,tsn->tmn", attention, one_hot)

    def episode(self, inputs, query_labels, training):
        probabilities = self.probabilities(inputs, training)
        nll = mean_nll(probabilities, query_labels)
        return {"loss": nll, "nll": nll, "probabilities": probabilities}

    def predict_episode(self, inputs, training=False):
        return self.probabilities(inputs, training)

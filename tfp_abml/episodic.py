"""Base class of every few-shot learner here: one Keras training loop over meta-batches of tasks.

A subclass implements ``episode(inputs, query_labels, training)``, returning at least
``loss`` (what the outer optimizer minimises), ``nll`` and ``probabilities`` (query
predictions ``[T, M, N]``); any extra scalars named in ``extra_metrics`` are tracked too.
This class turns that into ``train_step`` (one outer update with ``tf.GradientTape``),
``test_step`` and ``call``, so that methods differ only in how they adapt to a task.

Every subclass is Keras-serialisable without code of its own: its constructor arguments are
recorded as it is made (Keras objects such as the encoder serialised as Keras objects), so
``model.save("x.keras")`` and ``keras.saving.load_model("x.keras")`` round-trip every method.
"""

from __future__ import annotations

import contextlib

import inspect

import keras
import tensorflow as tf

from tfp_abml.distribute import replica_loss, step_logs


def embed_tasks(encoder, images, training):
    """Apply an encoder of ``[M, H, W, C]`` images to ``[T, M, H, W, C]``: embeddings ``[T, M, D]``."""
    shape = tf.shape(images)
    flat = tf.reshape(images, tf.concat([[-1], shape[2:]], axis=0))
    embeddings = encoder(flat, training=training)
    return tf.reshape(embeddings, (shape[0], shape[1], embeddings.shape[-1]))


def split_support_query(embeddings, inputs):
    """Split embeddings of ``concat([support, query], axis=1)`` back into the two sets."""
    n_support = tf.shape(inputs["support_images"])[1]
    return embeddings[:, :n_support], embeddings[:, n_support:]


def query_accuracy(probabilities, labels):
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))


def mean_nll(probabilities, labels):
    """Mean negative log-probability of the true labels, floored at 1e-12 to stay finite."""
    picked = tf.gather(probabilities, tf.cast(labels, tf.int32), batch_dims=2)
    return -tf.reduce_mean(tf.math.log(tf.maximum(picked, 1e-12)))


def _is_keras_object(value):
    return isinstance(value, (keras.layers.Layer, keras.Model))


class EpisodicModel(keras.Model):
    """A meta-learner trained on ``({support_images, support_labels, query_images}, query_labels)``."""

    extra_metrics = ()
    # Batch norm normalises over all tasks of a meta-batch at once (one encoder call for all of them),
    # so tfp_abml.distribute synchronises it across replicas; False where each task is normalised alone.
    batch_norm_over_meta_batch = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every method loads from a .keras file by name, e.g. "tfp_abml>AmortizedBNN".
        keras.saving.register_keras_serializable(package="tfp_abml")(cls)

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls, *args, **kwargs)
        # Keras's own automatic config skips constructors that take a Keras object (the encoder):
        # record the arguments here, for get_config.
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(inspect.signature(cls.__init__).parameters)))  # self
        arguments.update(arguments.pop("kwargs", {}))
        instance._constructor_arguments = arguments
        return instance

    def get_config(self):
        config, keras_objects = {}, []
        for key, value in self._constructor_arguments.items():
            if key in ("name", "trainable", "dtype"):
                continue
            if _is_keras_object(value):
                value = keras.saving.serialize_keras_object(value)
                keras_objects.append(key)
            elif isinstance(value, tuple):
                value = list(value)
            config[key] = value
        return {**config, "name": self.name, "keras_objects": keras_objects}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in config.pop("keras_objects", []):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def get_build_config(self):
        # A task of one example per class at the encoder's input shape creates every variable.
        height, width, channels = self.encoder.input_shape[1:]
        return {"image_shape": [int(height), int(width), int(channels)]}

    def build_from_config(self, config):
        self(self.example_inputs(config["image_shape"]))

    def example_inputs(self, image_shape=None):
        """A one-task batch of zeros, one support and one query image per class: creates the variables."""
        shape = tuple(image_shape or self.encoder.input_shape[1:])
        images = tf.zeros((1, self.ways, *shape))
        return {"support_images": images, "support_labels": tf.range(self.ways, dtype=tf.int32)[None],
                "query_images": images}

    def __init__(self, ways, **kwargs):
        super().__init__(**kwargs)
        self.ways = int(ways)
        names = ("loss", "nll", *self.extra_metrics, "accuracy")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def episode(self, inputs, query_labels, training):
        raise NotImplementedError

    def predict_episode(self, inputs, training=False):
        """Query probabilities ``[T, M, N]``; subclasses may skip the loss work."""
        raise NotImplementedError

    # The name, among evaluation_predictions', of what predict_episode returns (and a SavedModel serves).
    served_prediction = "prediction"
    # Whether the weights serve any number of classes (RunConfig.ways_agnostic says why for each method).
    serves_any_ways = False

    @contextlib.contextmanager
    def traced_for_ways(self, ways):
        """Within this context the forward pass is traced for ``ways`` classes, which may be a scalar
        int32 tensor: a SavedModel of a model that serves any N takes N from each request's labels.

        Only for models with ``serves_any_ways`` (their weights do not depend on N; only the
        attributes of :meth:`_set_ways` do). The previous N is restored on exit.
        """
        if not self.serves_any_ways:
            raise ValueError(f"{type(self).__name__}'s weights depend on the number of classes")
        previous = self._set_ways(ways)
        try:
            yield
        finally:
            self._set_ways(previous)

    def _set_ways(self, ways):
        previous, self.ways = self.ways, ways
        return previous

    def evaluation_predictions(self, inputs, samples=None, with_draws=False):
        """Named query predictions ``[T, M, N]`` for evaluation; Bayesian models add their variants.

        With ``with_draws``, also ``{name: [S, T, M, N]}``: the posterior draws behind each named
        prediction that is their mean (none for a point-estimate model).
        """
        predictions = {self.served_prediction: self.predict_episode(inputs)}
        return (predictions, {}) if with_draws else predictions

    def call(self, inputs, training=False):
        return self.predict_episode(inputs, training=training)

    def _record(self, values, query_labels):
        values = dict(values, accuracy=query_accuracy(values["probabilities"], query_labels))
        for name, tracker in self.trackers.items():
            tracker.update_state(values[name])
        return step_logs({name: tracker.result() for name, tracker in self.trackers.items()})

    def _unpack(self, data):
        # fit() passes (inputs, labels); train_on_batch/test_on_batch pack (x, y, sample_weight).
        inputs, query_labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if query_labels is None or sample_weight is not None:
            raise ValueError("an episodic model takes (inputs, query_labels) with no sample weights: inputs a dict "
                             "of support_images, support_labels and query_images, labels [tasks, ways * queries]")
        return inputs, query_labels

    def train_step(self, data):
        inputs, query_labels = self._unpack(data)
        with tf.GradientTape() as tape:
            values = self.episode(inputs, query_labels, training=True)
            # With replicas (tfp_abml.distribute) the optimizer sums their gradients: each differentiates its share.
            loss = replica_loss(values["loss"])
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._record(values, query_labels)

    def test_step(self, data):
        inputs, query_labels = self._unpack(data)
        return self._record(self.episode(inputs, query_labels, training=False), query_labels)

    def make_train_function(self, force=False):
        # Optimizer slots created inside the first traced step make tf.function trace the step a
        # second time (measured: abml's first step 6.6 s -> 4.3 s, maml's 28.8 s -> 21.1 s). Built
        # here first, one trace; under a tf.distribute strategy Keras builds them itself.
        import tensorflow as tf

        if self.built and self.optimizer is not None and not self.optimizer.built and not tf.distribute.has_strategy():
            self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 workaround (tfp_abml.distribute): under a tf.distribute strategy fit first builds
        # the model from a batch reduced with strategy.reduce, which fails on our dict of inputs under
        # MultiWorkerMirroredStrategy. A model built from example inputs has nothing left to build.
        if self.built and all(layer.built for layer in self._flatten_layers()) and \
                (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class LogitModel(EpisodicModel):
    """An EpisodicModel whose subclass gives query ``logits(inputs, training)``; trained by cross-entropy."""

    def logits(self, inputs, training=False):
        raise NotImplementedError

    @staticmethod
    def logit_values(logits, query_labels):
        """The episode's values from query logits: mean cross-entropy (loss and NLL), probabilities."""
        nll = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(query_labels, tf.int32), logits=logits))
        return {"loss": nll, "nll": nll, "probabilities": tf.nn.softmax(logits)}

    def episode(self, inputs, query_labels, training):
        return self.logit_values(self.logits(inputs, training), query_labels)

    def predict_episode(self, inputs, training=False):
        return tf.nn.softmax(self.logits(inputs, training))

"""Few-shot predictions with their uncertainty from a trained model: the package's Python entry point.

::

    clf = tfp_abml.FewShotClassifier.load("savedmodels/omniglot-5w1s/1")
    result = clf.predict(support_images, support_labels, query_images, min_confidence=0.9)
    result.predicted, result.probabilities, result.entropy, result.mutual_information, result.uncertain

``load`` takes a training run folder (``training.fit --output``; its best validation weights), a
``.keras`` file (``model.save``) or a SavedModel folder (``training.export``). ``predict`` takes one
task: support images with their class names (any hashable labels, every class at least one
image) and query images, as numpy arrays or tensors, uint8 in 0..255 or floating point in [0, 1],
grey (``[count, H, W]`` or ``[..., 1]``) or RGB, of any size, or lists of single images of
different sizes; each image is resized to the model's input size (area averaging) and converted
to its channels, as the SavedModel does.

The uncertainty measures, per query (natural logarithms, nats):

* ``confidence`` -- the largest class probability; ``uncertain`` flags ``confidence <
  min_confidence``: the predictions to abstain on or to hand to a person;
* ``entropy`` -- ``H(p) = -sum_n p_n log p_n`` of the predictive distribution, total uncertainty;
* ``mutual_information`` -- for the Bayesian model, ``H(mean_s p_s) - mean_s H(p_s)`` over its
  posterior draws: the part of the entropy that comes from not knowing the weights (epistemic),
  which grows on inputs unlike the support set; ``None`` for models without a posterior.

Queries go through the model in chunks of ``batch_size`` with the whole support set each time:
with the transductive batch norm of these models the statistics come from the support set and
that chunk, as in training (where a task holds ``N x queries`` query images).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from tfp_abml.calibration import apply_temperature, served_temperature
from tfp_abml.errors import UserInputError

DEFAULT_BATCH_SIZE = 100  # queries per model call


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What ``FewShotClassifier.predict`` returns for ``M`` queries of an ``N``-class task."""

    classes: np.ndarray  # [N] the class names, in the order of the probability columns
    probabilities: np.ndarray  # [M, N] float32, rows sum to 1 (Bayesian model: posterior predictive)
    predicted: np.ndarray  # [M] the most probable class name of each query
    confidence: np.ndarray  # [M] its probability
    entropy: np.ndarray  # [M] predictive entropy, nats
    mutual_information: np.ndarray | None  # [M] epistemic part of the entropy, nats; None without a posterior
    uncertain: np.ndarray  # [M] bool: confidence below min_confidence (all False when none was given)
    min_confidence: float | None = None

    def __len__(self):
        return len(self.predicted)


# -- input preparation ------------------------------------------------------------------------


def _one_image(image, name, index):
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise UserInputError(f"{name}[{index}] has shape {array.shape}: give [height, width] (grey) or "
                             "[height, width, 1 or 3] images")
    return array


def _scaled(array, name):
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise UserInputError(f"{name} holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise UserInputError(f"{name} are floating point with values in [{low:g}, {high:g}]: give floats in "
                                 "[0, 1] or uint8 pixels in 0..255")
        return array
    raise UserInputError(f"{name} have dtype {array.dtype}: give uint8 pixels (0..255) or floats in [0, 1]")


def prepare_images(images, size, channels, name="images"):
    """float32 ``[count, size, size, channels]`` in [0, 1] from whatever ``predict`` accepts."""
    import tensorflow as tf

    if isinstance(images, (list, tuple)):
        if not images:
            raise UserInputError(f"{name} is empty: give at least one image")
        pictures = [_one_image(image, name, i) for i, image in enumerate(images)]
    else:
        array = np.asarray(images)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):  # a batch of grey images
            array = array[..., None]
        if array.ndim != 4:
            raise UserInputError(f"{name} has shape {array.shape}: give [count, height, width] (grey), "
                                 "[count, height, width, channels], or a list of images")
        if array.shape[0] == 0:
            raise UserInputError(f"{name} is empty: give at least one image")
        pictures = [array]
    batches = []
    for picture in pictures:
        if picture.shape[-1] == 4:  # RGBA: drop alpha
            picture = picture[..., :3]
        scaled = _scaled(picture, name)
        batch = tf.constant(scaled if scaled.ndim == 4 else scaled[None])
        if channels == 1 and batch.shape[-1] == 3:
            batch = tf.reduce_mean(batch, axis=-1, keepdims=True)
        elif channels == 3 and batch.shape[-1] == 1:
            batch = tf.repeat(batch, 3, axis=-1)
        if batch.shape[1:3] != (size, size):
            batch = tf.clip_by_value(tf.image.resize(batch, (size, size), method="area"), 0.0, 1.0)
        batches.append(batch.numpy())
    return np.concatenate(batches).astype(np.float32)


def class_order(labels):
    """The distinct labels in order of first appearance, and each label's index in that order."""
    labels = list(np.asarray(labels).tolist()) if not isinstance(labels, (list, tuple)) else list(labels)
    order, index = [], {}
    for label in labels:
        try:
            if label not in index:
                index[label] = len(order)
                order.append(label)
        except TypeError:
            raise UserInputError(f"support label {label!r} is not hashable: give class names as strings or "
                                 "numbers") from None
    return order, np.asarray([index[label] for label in labels], np.int32)


def _names_array(names):
    array = np.asarray(names)
    if array.ndim != 1:  # e.g. tuples as names
        array = np.empty(len(names), dtype=object)
        array[:] = names
    return array


# -- backends: a Keras model, or a SavedModel ---------------------------------------------------


class _KerasBackend:
    """An EpisodicModel in this process; rebuilt for another N where its weights do not depend on N."""

    def __init__(self, model, source, image_size=None):
        self.models = {model.ways: model}
        self.source = source
        self.ways = model.ways
        height, width, self.channels = model.encoder.input_shape[1:]
        self.image_size = image_size or int(height)
        self.bayesian = hasattr(model, "predictive_draws")
        self.max_images = None

    def model_for(self, ways):
        if ways in self.models:
            return self.models[ways]
        trained = self.models[self.ways]
        if ways < 2:
            raise UserInputError(f"the support set has {ways} class: a few-shot task needs at least 2 classes")
        import keras

        config = dict(trained.get_config(), ways=ways)
        model = type(trained).from_config(config)
        model.build_from_config(trained.get_build_config())
        shapes = [tuple(v.shape) for v in trained.weights], [tuple(v.shape) for v in model.weights]
        if shapes[0] != shapes[1]:
            raise UserInputError(f"{self.source} was trained {self.ways}-way and its weights depend on the number "
                                 f"of classes ({type(trained).__name__}): give {self.ways} classes, or use a "
                                 "model whose weights serve any N (protonet, matching, abml --posterior aligned)")
        model.set_weights(trained.get_weights())
        del keras
        self.models[ways] = model
        return model

    def __call__(self, support, labels, query, ways, draws):
        import tensorflow as tf

        model = self.model_for(ways)
        inputs = {"support_images": tf.constant(support[None]), "support_labels": tf.constant(labels[None]),
                  "query_images": tf.constant(query[None])}
        temperature = served_temperature(model)
        if draws and self.bayesian:
            samples = model.predictive_draws(inputs).numpy()[:, 0]
            return _tempered(samples.mean(axis=0), temperature), samples
        return _tempered(model.predict_episode(inputs).numpy()[0], temperature), None


class _SavedModelBackend:
    """A SavedModel of ``training.export``: N fixed at export; image size and N read from ``metadata``."""

    def __init__(self, path):
        from tfp_abml.serving import load_saved_model

        self.source = path
        self.loaded = load_saved_model(path)
        signatures = self.loaded.signatures
        if "serving_default" not in signatures:
            raise UserInputError(f"{path} has no serving_default signature: export the model with training.export")
        self.bayesian = "posterior_draws" in signatures
        if "metadata" in signatures:
            meta = {key: value.numpy() for key, value in signatures["metadata"]().items()}
            self.ways, self.image_size = int(meta["ways"]), int(meta["image_size"])
            # Exports before N-from-labels serve their trained N only.
            self.min_ways, self.max_ways = int(meta.get("min_ways", self.ways)), int(meta.get("max_ways", self.ways))
            self.channels, self.max_images = int(meta["channels"]), int(meta["max_request_images"])
            self.temperature = float(meta.get("temperature", 1.0))  # absent in exports before calibration
        else:  # exported before the metadata signature: the served N shows in its error messages only
            from tfp_abml.export import MAX_REQUEST_IMAGES

            self.ways, self.image_size, self.channels, self.max_images = None, None, 1, MAX_REQUEST_IMAGES
            self.min_ways = self.max_ways = None
            self.temperature = 1.0

    def __call__(self, support, labels, query, ways, draws):
        import tensorflow as tf

        if self.min_ways is not None and not self.min_ways <= ways <= self.max_ways:
            served = (f"{self.ways}-way tasks" if self.min_ways == self.max_ways
                      else f"tasks of {self.min_ways} to {self.max_ways} classes")
            fix = (f"give {self.ways} classes, or export a run whose weights serve any N (protonet, matching, "
                   "abml --posterior aligned --task-encoding pool) with training.export" if self.min_ways == self.max_ways
                   else f"split the task, or export with training.export --max-ways {ways}")
            raise UserInputError(f"{self.source} serves {served} and the support set has {ways} classes: {fix}")
        inputs = dict(support_images=tf.constant(support), support_labels=tf.constant(labels),
                      query_images=tf.constant(query))
        try:
            if draws and self.bayesian:  # the draws are unscaled; serving_default applies the temperature
                samples = self.loaded.signatures["posterior_draws"](**inputs)["sample_probabilities"].numpy()
                return _tempered(samples.mean(axis=0), self.temperature), samples
            return self.loaded.signatures["serving_default"](**inputs)["probabilities"].numpy(), None
        except tf.errors.InvalidArgumentError as err:
            raise UserInputError(f"{self.source} refused the task: {_assertion_message(err.message)}") from None


def _tempered(probabilities, temperature):
    """Probabilities after the model's temperature scaling (:mod:`tfp_abml.calibration`)."""
    return probabilities if temperature == 1.0 else apply_temperature(probabilities, temperature).astype(np.float32)


def _assertion_message(message):
    """The check's own words from a graph's InvalidArgumentError ("assertion failed: [words] ...")."""
    import re

    found = re.search(r"assertion failed: \[([^\]]+)\]", message)
    if found:
        return found.group(1)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else message


class FewShotClassifier:
    """A trained few-shot model that predicts query classes, with their uncertainty, from a support set."""

    def __init__(self, backend):
        self._backend = backend

    @classmethod
    def load(cls, path, weights="best"):
        """From a training run folder, a ``.keras`` file or a SavedModel folder.

        ``weights`` (run folders only): ``"best"`` validation epoch where the run kept one, or ``"last"``.
        """
        path = pathlib.Path(path)
        if not path.exists():
            raise UserInputError(f"{path} does not exist: give a training run folder, a .keras file or a "
                                 "SavedModel folder (e.g. savedmodels/omniglot-5w1s/1)")
        if path.is_file():
            if path.suffix != ".keras":
                raise UserInputError(f"{path} is a file but not a .keras model: give a .keras file, a training "
                                     "run folder or a SavedModel folder")
            import keras

            import tfp_abml.model  # noqa: F401  registers the methods' classes with Keras
            import tfp_abml.baselines  # noqa: F401

            try:
                model = keras.saving.load_model(path, compile=False)
            except (ValueError, TypeError, OSError) as err:
                raise UserInputError(f"cannot load {path}: {str(err).splitlines()[0][:300]}") from err
            return cls(_KerasBackend(model, path))
        if (path / "config.json").is_file():
            from tfp_abml.runs import load_run

            config, model = load_run(path, weights=weights)
            return cls(_KerasBackend(model, path, config.resolved_image_size))
        if (path / "saved_model.pb").is_file():
            return cls(_SavedModelBackend(path))
        versions = sorted(p for p in path.iterdir() if (p / "saved_model.pb").is_file())
        hint = f": did you mean {versions[-1]}?" if versions else ""
        raise UserInputError(f"{path} is neither a training run (no config.json) nor a SavedModel (no "
                             f"saved_model.pb){hint}")

    @property
    def bayesian(self):
        """Whether the model has a posterior over its weights (then ``mutual_information`` is given)."""
        return self._backend.bayesian

    @property
    def ways(self):
        """The number of classes the model was trained for (None: not recorded in the SavedModel)."""
        return self._backend.ways

    def predict(self, support_images, support_labels, query_images, min_confidence=None,
                batch_size=DEFAULT_BATCH_SIZE, progress=None):
        """Class probabilities and uncertainty of ``query_images`` given a labelled support set.

        ``min_confidence`` in (0, 1]: flag queries whose top probability is below it. ``progress``:
        called with the number of queries done after each chunk (e.g. a progress bar's update).
        Returns a :class:`Prediction`.
        """
        if min_confidence is not None and not 0.0 < float(min_confidence) <= 1.0:
            raise UserInputError(f"min_confidence must be in (0, 1], got {min_confidence}")
        if int(batch_size) < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        classes, labels = class_order(support_labels)
        size = self._backend.image_size
        if size is None:  # an old SavedModel: it resizes itself; send one common size
            first = np.asarray(support_images[0] if isinstance(support_images, (list, tuple)) else support_images[0])
            size = int(first.shape[0])
        support = prepare_images(support_images, size, self._backend.channels, "support_images")
        query = prepare_images(query_images, size, self._backend.channels, "query_images")
        if len(labels) != len(support):
            raise UserInputError(f"{len(support)} support images and {len(labels)} support labels: give one label "
                                 "per support image")
        if len(classes) < 2:
            raise UserInputError(f"the support set has one class ({classes[0]!r}): a few-shot task needs at "
                                 "least 2 classes")
        chunk = int(batch_size)
        if self._backend.max_images is not None:
            room = self._backend.max_images - len(support)
            if room < 1:
                raise UserInputError(f"the support set has {len(support)} images, more than the "
                                     f"{self._backend.max_images} the model serves per request: use fewer shots")
            chunk = min(chunk, room)
        probabilities, mutual_information = [], []
        for start in range(0, len(query), chunk):
            mean, draws = self._backend(support, labels, query[start:start + chunk], len(classes), draws=True)
            probabilities.append(mean)
            if draws is not None:
                from tfp_abml.metrics import mutual_information as information

                mutual_information.append(information(draws))
            if progress is not None:
                progress(min(start + chunk, len(query)))
        probabilities = np.concatenate(probabilities).astype(np.float32)
        from tfp_abml.metrics import entropy

        names = _names_array(classes)
        top = probabilities.argmax(axis=-1)
        confidence = probabilities.max(axis=-1)
        uncertain = (confidence < min_confidence) if min_confidence is not None else np.zeros(len(top), bool)
        return Prediction(classes=names, probabilities=probabilities, predicted=names[top], confidence=confidence,
                          entropy=entropy(probabilities).astype(np.float32),
                          mutual_information=(np.concatenate(mutual_information).astype(np.float32)
                                              if mutual_information else None),
                          uncertain=uncertain, min_confidence=min_confidence)

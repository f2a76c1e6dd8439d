"""SavedModel export: one few-shot task in, query probabilities out, adaptation inside the graph.

The ``serving_default`` signature takes a whole task:

* ``support_images`` float32 ``[N*K, H, W, C]`` and ``query_images`` float32 ``[M, H, W, C]``,
  as decoded from the dataset's PNGs and scaled to [0, 1] (Omniglot: background 1, ink 0),
  any spatial size, C = 1 (grey) or 3 (RGB), converted to the model's channels (RGB averaged to
  grey for Omniglot models, grey repeated to RGB for miniImageNet models);
* ``support_labels`` int32 ``[N*K]``, every label 0..N-1 present, N the trained ways;

and returns ``probabilities`` float32 ``[M, N]``: for the Bayesian model the posterior predictive
over the model's ``eval_samples`` draws, temperature-scaled when the run was calibrated
(``training.evaluate --calibrate``; :mod:`tfp_abml.calibration`). The Bayesian model has a second
signature, ``posterior_draws``, with the same inputs and ``sample_probabilities`` ``[S, M, N]``,
one row set per draw, unscaled (for the epistemic uncertainty); every model has ``metadata``: no
inputs, and the ``ways``, ``image_size``, ``channels``, ``max_request_images``, ``method`` and
``temperature`` (1.0: none) it serves. Resizing to the encoder's size happens inside. A
malformed request fails with an ``InvalidArgumentError`` that says what is wrong, before anything
is computed from it (see ``checked_request``); a wrong dtype is refused by the signature itself.

Written with ``keras.export.ExportArchive`` (which tracks the model's variables, unlike a plain
``tf.saved_model.save`` of a wrapper) to a temporary folder that is renamed into place.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import keras
import tensorflow as tf

from tfp_abml.calibration import apply_temperature_tf, served_temperature
from tfp_abml.errors import UserInputError

# Per request, support and query together: they bound what one request can make a server
# allocate. 2048 images is a 20-way 50-shot support set with as many queries again; 2**26
# values (256 MB of float32) hold 2048 RGB images of 105 x 105.
MAX_REQUEST_IMAGES = 2048
MAX_REQUEST_VALUES = 2 ** 26
# The most classes a SavedModel of a model that serves any N takes per request (training.export
# --max-ways): a bound on what one request can make it allocate, far above the benchmarks' 20 ways.
MAX_SERVED_WAYS = 100

# The signature declares no ranks: with a declared rank TensorFlow takes it as known, folds
# every rank check to "true" and lets a 3-D image batch through to fail somewhere deep with a
# misleading message. Without one, ``checked_request`` checks the ranks and says which is wrong.
INPUT_SIGNATURE = [tf.TensorSpec(None, tf.float32, name="support_images"),
                   tf.TensorSpec(None, tf.int32, name="support_labels"),
                   tf.TensorSpec(None, tf.float32, name="query_images")]


def _with_rank(tensor, rank, message):
    """``tensor`` after a runtime check of its rank, with that rank known statically from then on.

    A reshape to its own leading dimensions, not ``tf.ensure_shape``: TensorFlow's graph
    optimiser runs an EnsureShape before the checks it depends on, and its message is vaguer.
    """
    with tf.control_dependencies([tf.debugging.assert_equal(tf.rank(tensor), rank, message=message)]):
        tensor = tf.identity(tensor)
    shape = tf.shape(tensor)
    return tf.reshape(tensor, tf.stack([shape[i] for i in range(rank)]))


def request_ways(support_labels, max_ways):
    """N of a request to a model that serves any N: one more than the largest label, checked to lie
    in 2..``max_ways`` (``checked_request`` then checks that every label 0..N-1 has an example)."""
    support_labels = _with_rank(support_labels, 1, "support_labels must be 1-D, one label per support image")
    with tf.control_dependencies([tf.debugging.assert_positive(tf.size(support_labels),
                                                               message="the support set is empty")]):
        ways = tf.reduce_max(support_labels) + 1
    with tf.control_dependencies([
            tf.debugging.assert_greater_equal(ways, 2, message="a few-shot task needs labels of at least 2 classes"),
            tf.debugging.assert_less_equal(ways, max_ways, message=(
                f"the request has more than {max_ways} classes, the most this model serves: split the task"))]):
        return tf.identity(ways)


def checked_request(support_images, support_labels, query_images, ways):
    """The three request tensors, made to depend on every check of the request.

    Each failed check is an ``InvalidArgumentError`` that names the problem: a wrong rank
    (checked first), a request over the size limits (next, before any pixel is read), an empty
    set, lengths or channels that differ, labels outside 0..N-1 or a label without an example
    (``ways``: N, an int or, for models that serve any N, the scalar tensor of :func:`request_ways`),
    empty images, NaN or infinite pixels, pixels outside [0, 1]. Whatever is computed from the
    returned tensors runs only after all checks passed.
    """
    support_images = _with_rank(support_images, 4, "support_images must be 4-D [count, height, width, "
                                                   "channels]: add a channel axis to grey images")
    query_images = _with_rank(query_images, 4, "query_images must be 4-D [count, height, width, channels]: "
                                               "add a channel axis to grey images")
    support_labels = _with_rank(support_labels, 1, "support_labels must be 1-D, one label per support image")
    count = tf.shape(support_images)[0] + tf.shape(query_images)[0]
    values = tf.size(support_images, out_type=tf.int64) + tf.size(query_images, out_type=tf.int64)
    with tf.control_dependencies([
            tf.debugging.assert_less_equal(count, MAX_REQUEST_IMAGES, message=(
                f"the request holds more than {MAX_REQUEST_IMAGES} images (support and query together): "
                "split the query set over several requests")),
            tf.debugging.assert_less_equal(values, tf.constant(MAX_REQUEST_VALUES, tf.int64), message=(
                f"the request holds more than {MAX_REQUEST_VALUES} pixel values: send smaller images "
                "(the model resizes them to its own size anyway) or fewer of them"))]):
        checks = [
            tf.debugging.assert_positive(tf.shape(support_images)[0], message="the support set is empty"),
            tf.debugging.assert_positive(tf.shape(query_images)[0], message="the query set is empty"),
            tf.debugging.assert_equal(tf.shape(support_images)[0], tf.shape(support_labels)[0],
                                      message="support_images and support_labels differ in length"),
            tf.debugging.assert_equal(tf.shape(support_images)[-1], tf.shape(query_images)[-1],
                                      message="support and query images differ in channels"),
            tf.debugging.assert_non_negative(support_labels, message="support_labels must be 0..N-1"),
        ]
        if isinstance(ways, int):
            checks += [tf.debugging.assert_less(support_labels, ways,
                                                message=f"support_labels must be 0..{ways - 1} (this model is {ways}-way)"),
                       tf.debugging.assert_equal(tf.size(tf.unique(support_labels).y), ways,
                                                 message=f"every label 0..{ways - 1} needs a support example")]
        else:
            checks.append(tf.debugging.assert_equal(tf.size(tf.unique(support_labels).y), ways, message=(
                "every label 0..N-1 needs a support example, N being one more than the largest label")))
        for images, name in ((support_images, "support_images"), (query_images, "query_images")):
            channels = tf.shape(images)[-1]
            checks += [
                tf.debugging.assert_equal(tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)), True,
                                          message=f"{name} must have 1 (grey) or 3 (RGB) channels"),
                tf.debugging.assert_positive(tf.shape(images)[1:3], message=f"{name} has images of height or width 0"),
                tf.debugging.assert_all_finite(images, message=f"{name} holds NaN or infinite values"),
                tf.debugging.assert_equal(tf.reduce_all((images >= 0.0) & (images <= 1.0)), True, message=(
                    f"{name} must be scaled to [0, 1] as in training (PNG pixels 0..255: divide by 255)")),
            ]
    with tf.control_dependencies(checks):
        return tf.identity(support_images), tf.identity(support_labels), tf.identity(query_images)


def _at_size(images, size, model_channels, name):
    channels = tf.shape(images)[-1]
    tf.debugging.assert_equal(tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)), True,
                              message=f"{name} must have 1 (grey) or 3 (RGB) channels")
    if model_channels == 3:
        converted = tf.cond(tf.equal(channels, 1), lambda: tf.repeat(images[..., :1], 3, axis=-1),
                            lambda: images[..., :3])
    else:
        converted = tf.cond(tf.equal(channels, 3), lambda: tf.reduce_mean(images, axis=-1, keepdims=True),
                            lambda: images[..., :1])
    converted = tf.ensure_shape(converted, [None, None, None, model_channels])
    return tf.clip_by_value(tf.image.resize(converted, (size, size), method="area"), 0.0, 1.0)


def _task_inputs(model, image_size, support_images, support_labels, query_images, ways):
    """The model's one-task input batch from a checked request, resized and converted to its channels."""
    channels = model.encoder.input_shape[-1]  # 1 for Omniglot runs, 3 for miniImageNet runs
    support_images, support_labels, query_images = checked_request(support_images, support_labels,
                                                                   query_images, ways)
    return {"support_images": _at_size(support_images, image_size, channels, "support_images")[None],
            "support_labels": support_labels[None],
            "query_images": _at_size(query_images, image_size, channels, "query_images")[None]}


def _traced(model, max_ways, compute):
    """``compute(ways, ...)`` for the request's N: the model's own N, or with ``max_ways`` (a model
    that serves any N) the N of each request, read from its labels."""

    def function(support_images, support_labels, query_images):
        if max_ways is None:
            return compute(model.ways, support_images, support_labels, query_images)
        ways = request_ways(tf.convert_to_tensor(support_labels), max_ways)
        with model.traced_for_ways(ways):
            return compute(ways, support_images, support_labels, query_images)

    return function


def serving_function(model, image_size, max_ways=None):
    """The ``serving_default`` function of ``model`` (an EpisodicModel) for ``image_size`` inputs
    (``max_ways``: serve any N up to it, see :func:`export_saved_model`)."""
    temperature = served_temperature(model)

    def serve(ways, support_images, support_labels, query_images):
        inputs = _task_inputs(model, image_size, support_images, support_labels, query_images, ways)
        probabilities = model.predict_episode(inputs)[0]
        if temperature != 1.0:
            probabilities = apply_temperature_tf(probabilities, temperature)
        return {"probabilities": probabilities}

    return _traced(model, max_ways, serve)


def draws_function(model, image_size, max_ways=None):
    """The ``posterior_draws`` function: ``[S, M, N]`` query probabilities, one per posterior draw
    (their mean is ``serving_default``'s answer before temperature scaling), for models with
    ``predictive_draws``."""

    def draws(ways, support_images, support_labels, query_images):
        inputs = _task_inputs(model, image_size, support_images, support_labels, query_images, ways)
        return {"sample_probabilities": model.predictive_draws(inputs)[:, 0]}

    return _traced(model, max_ways, draws)


def metadata_function(model, image_size, max_ways=None):
    """The ``metadata`` function: what a client needs to know to send a task (no inputs). ``ways`` is
    the trained N; ``min_ways``..``max_ways`` the N it serves (both ``ways`` for a fixed-N model)."""
    values = {"ways": tf.constant(model.ways, tf.int32), "image_size": tf.constant(int(image_size), tf.int32),
              "min_ways": tf.constant(model.ways if max_ways is None else 2, tf.int32),
              "max_ways": tf.constant(model.ways if max_ways is None else max_ways, tf.int32),
              "channels": tf.constant(int(model.encoder.input_shape[-1]), tf.int32),
              "max_request_images": tf.constant(MAX_REQUEST_IMAGES, tf.int32),
              "method": tf.constant(type(model).__name__),
              "temperature": tf.constant(served_temperature(model), tf.float32)}
    return lambda: dict(values)


def check_output(path):
    """Refuse an export path that is a file, or a folder other than an earlier export.

    An export replaces an earlier SavedModel at ``path``; it must never delete a folder of
    anything else because of a mistyped ``--output``.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--output {path} is a file: give a folder for the SavedModel, e.g. savedmodels/name/1")
    if path.is_dir() and any(path.iterdir()) and not (path / "saved_model.pb").is_file():
        raise UserInputError(f"--output {path} is a folder that holds no SavedModel; refusing to replace it: "
                             "give a new or empty folder, e.g. savedmodels/name/1")
    return path


def export_saved_model(model, image_size, path, any_ways=None, max_ways=None):
    """Write ``model`` as a SavedModel with the task signature to ``path`` (replacing an earlier one).

    ``any_ways`` (default: whether the model's weights serve any N, ``model.serves_any_ways``):
    the SavedModel takes N from each request's labels (one more than the largest), from 2 to
    ``max_ways`` (default :data:`MAX_SERVED_WAYS`), and refuses more with an ``InvalidArgumentError``
    that says so. Otherwise it serves the model's own N only.
    """
    path = check_output(path)
    any_ways = model.serves_any_ways if any_ways is None else bool(any_ways)
    if any_ways and not model.serves_any_ways:
        raise UserInputError(f"{type(model).__name__}'s weights depend on the number of classes: it serves "
                             f"{model.ways}-way tasks only")
    max_ways = MAX_SERVED_WAYS if max_ways is None else max_ways
    if any_ways and (isinstance(max_ways, bool) or not isinstance(max_ways, int) or max_ways < 2):
        raise UserInputError(f"--max-ways must be an integer >= 2, got {max_ways!r}")
    served = max_ways if any_ways else None
    path.parent.mkdir(parents=True, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serving_function(model, image_size, served),
                         input_signature=INPUT_SIGNATURE)
    if hasattr(model, "predictive_draws"):
        archive.add_endpoint(name="posterior_draws", fn=draws_function(model, image_size, served),
                             input_signature=INPUT_SIGNATURE)
    archive.add_endpoint(name="metadata", fn=metadata_function(model, image_size, served), input_signature=[])
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        archive.write_out(str(staging / "model"), verbose=False)
        if path.exists():
            shutil.rmtree(path)
        (staging / "model").rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path

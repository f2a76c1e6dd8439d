"""SavedModel export: one few-shot task in, query probabilities out, adaptation inside the graph.

The ``serving_default`` signature takes a whole task:

* ``support_images`` float32 ``[N*K, H, W, C]`` and ``query_images`` float32 ``[M, H, W, C]``,
  as decoded from the dataset's PNGs and scaled to [0, 1] (Omniglot: background 1, ink 0),
  any spatial size, C = 1 (grey) or 3 (RGB, averaged to grey);
* ``support_labels`` int32 ``[N*K]``, every label 0..N-1 present, N the trained ways;

and returns ``probabilities`` float32 ``[M, N]``: for the Bayesian model the posterior predictive
over the model's ``eval_samples`` draws. Resizing to the encoder's size happens inside. A
malformed request fails with an ``InvalidArgumentError`` that says what is wrong.

Written with ``keras.export.ExportArchive`` (which tracks the model's variables, unlike a plain
``tf.saved_model.save`` of a wrapper) to a temporary folder that is renamed into place.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import keras
import tensorflow as tf


def _grey_at_size(images, size, name):
    channels = tf.shape(images)[-1]
    tf.debugging.assert_equal(tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)), True,
                              message=f"{name} must have 1 (grey) or 3 (RGB) channels")
    grey = tf.cond(tf.equal(channels, 3), lambda: tf.reduce_mean(images, axis=-1, keepdims=True),
                   lambda: images[..., :1])
    grey = tf.ensure_shape(grey, [None, None, None, 1])
    return tf.clip_by_value(tf.image.resize(grey, (size, size), method="area"), 0.0, 1.0)


def serving_function(model, image_size):
    """The ``serving_default`` function of ``model`` (an EpisodicModel) for ``image_size`` inputs."""
    ways = model.ways

    def serve(support_images, support_labels, query_images):
        tf.debugging.assert_positive(tf.shape(support_images)[0], message="the support set is empty")
        tf.debugging.assert_positive(tf.shape(query_images)[0], message="the query set is empty")
        tf.debugging.assert_equal(tf.shape(support_images)[0], tf.shape(support_labels)[0],
                                  message="support_images and support_labels differ in length")
        tf.debugging.assert_equal(tf.shape(support_images)[-1], tf.shape(query_images)[-1],
                                  message="support and query images differ in channels")
        tf.debugging.assert_non_negative(support_labels, message="support_labels must be 0..N-1")
        tf.debugging.assert_less(support_labels, ways, message=f"support_labels must be 0..{ways - 1} "
                                                               f"(this model is {ways}-way)")
        present = tf.size(tf.unique(support_labels).y)
        tf.debugging.assert_equal(present, ways, message=f"every label 0..{ways - 1} needs a support example")
        inputs = {"support_images": _grey_at_size(support_images, image_size, "support_images")[None],
                  "support_labels": support_labels[None],
                  "query_images": _grey_at_size(query_images, image_size, "query_images")[None]}
        return {"probabilities": model.predict_episode(inputs)[0]}

    return serve


def export_saved_model(model, image_size, path):
    """Write ``model`` as a SavedModel with the task signature to ``path`` (replacing it)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serving_function(model, image_size), input_signature=[
        tf.TensorSpec([None, None, None, None], tf.float32, name="support_images"),
        tf.TensorSpec([None], tf.int32, name="support_labels"),
        tf.TensorSpec([None, None, None, None], tf.float32, name="query_images")])
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        archive.write_out(str(staging / "model"), verbose=False)
        if path.exists():
            shutil.rmtree(path)
        (staging / "model").rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path

"""What the exported signature does with requests a client can get wrong: each fails with a clear error.

Checked on a real SavedModel (exported from an untrained 5-way ProtoNet; no training needed)
called through its ``serving_default`` signature, as TF Serving calls it: wrong dtypes are
refused by the signature, everything else by the checks inside the graph, before any work.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfp_abml import export
from tfp_abml.run_config import RunConfig

WAYS = 5


def _exported_protonet(folder, **export_options):
    """serving_default of an untrained 5-way ProtoNet exported to ``folder``."""
    config = RunConfig(method="protonet", ways=WAYS)
    model = config.build_model()
    model(config.example_inputs())
    path = export.export_saved_model(model, config.resolved_image_size, folder / "1", **export_options)
    return tf.saved_model.load(str(path)).signatures["serving_default"]


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    # The fixed-N checks; a model that serves any N: see the end of this file.
    return _exported_protonet(tmp_path_factory.mktemp("sm"), any_ways=False)


def _task(rng=np.random.default_rng(0)):
    support = rng.uniform(size=(2 * WAYS, 28, 28, 1)).astype(np.float32)
    labels = np.repeat(np.arange(WAYS, dtype=np.int32), 2)
    query = rng.uniform(size=(7, 28, 28, 1)).astype(np.float32)
    return support, labels, query


def test_a_valid_request_answers_one_distribution_per_query(serve):
    support, labels, query = _task()
    probabilities = serve(support_images=tf.constant(support), support_labels=tf.constant(labels),
                          query_images=tf.constant(query))["probabilities"].numpy()
    assert probabilities.shape == (7, WAYS) and np.allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def _set(name, value):
    return lambda task: {**task, name: value(task[name])}


BAD = [
    # dtypes: refused by the signature itself
    ("uint8 images", _set("support_images", lambda x: (x * 255).astype(np.uint8)), "expected to be a float tensor"),
    ("float64 images", _set("query_images", lambda x: x.astype(np.float64)), "expected to be a float tensor"),
    ("int64 labels", _set("support_labels", lambda x: x.astype(np.int64)), "expected to be a int32 tensor"),
    ("float labels", _set("support_labels", lambda x: x.astype(np.float32)), "expected to be a int32 tensor"),
    # shapes
    ("3-D support images", _set("support_images", lambda x: x[..., 0]), "support_images must be 4-D"),
    ("5-D query images", _set("query_images", lambda x: x[None]), "query_images must be 4-D"),
    ("2-D labels", _set("support_labels", lambda x: x[None]), "support_labels must be 1-D"),
    ("fewer labels than images", _set("support_labels", lambda x: x[:-1]), "differ in length"),
    ("images of height 0", _set("query_images", lambda x: x[:, :0]), "query_images has images of height or width 0"),
    ("2 channels", lambda t: {**t, "support_images": np.repeat(t["support_images"], 2, -1),
                              "query_images": np.repeat(t["query_images"], 2, -1)}, "1 \\(grey\\) or 3 \\(RGB\\)"),
    ("grey support, RGB query", _set("query_images", lambda x: np.repeat(x, 3, -1)), "differ in channels"),
    # label ranges
    ("label 5 in a 5-way model", _set("support_labels", lambda x: np.where(x == 4, 5, x).astype(np.int32)),
     "support_labels must be 0..4 \\(this model is 5-way\\)"),
    ("negative label", _set("support_labels", lambda x: np.where(x == 0, -1, x).astype(np.int32)), "0..N-1"),
    ("a label without an example", _set("support_labels", lambda x: np.where(x == 4, 3, x).astype(np.int32)),
     "every label 0..4 needs a support example"),
    # empty sets
    ("empty support set", lambda t: {**t, "support_images": t["support_images"][:0],
                                     "support_labels": t["support_labels"][:0]}, "the support set is empty"),
    ("empty query set", _set("query_images", lambda x: x[:0]), "the query set is empty"),
    # pixel values
    ("NaN pixel", _set("query_images", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x)
                       .astype(np.float32)), "query_images holds NaN or infinite values"),
    ("0..255 pixels", _set("support_images", lambda x: x * 255), "must be scaled to \\[0, 1\\]"),
    # oversized requests
    ("too many images", _set("query_images", lambda x: np.zeros((export.MAX_REQUEST_IMAGES, 1, 1, 1), np.float32)),
     f"more than {export.MAX_REQUEST_IMAGES} images"),
]


@pytest.mark.parametrize("change, message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_request_fails_with_a_clear_error(serve, change, message):
    support, labels, query = _task()
    task = change({"support_images": support, "support_labels": labels, "query_images": query})
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(**{name: tf.constant(value) for name, value in task.items()})


def test_too_many_pixel_values_are_refused_before_any_work(monkeypatch, tmp_path):
    """The value limit, lowered for the test: 2**26 real values would take a gigabyte to build."""
    monkeypatch.setattr(export, "MAX_REQUEST_VALUES", 20_000)
    config = RunConfig(method="protonet", ways=WAYS)
    model = config.build_model()
    model(config.example_inputs())
    serve = tf.function(export.serving_function(model, 28), input_signature=export.INPUT_SIGNATURE)
    support, labels, query = _task()  # 17 images of 784 values: 13,328 in all
    serve(support, labels, query)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 20000 pixel values"):
        serve(support, labels, np.zeros((7, 50, 50, 1), np.float32))  # 7,840 + 17,500


@pytest.fixture(scope="module")
def serve_any_ways(tmp_path_factory):
    return _exported_protonet(tmp_path_factory.mktemp("any"), max_ways=8)


@pytest.mark.parametrize("name, change, message", [
    ("2-D labels", _set("support_labels", lambda x: x[None]), "support_labels must be 1-D"),
    ("empty support set", lambda t: {**t, "support_images": t["support_images"][:0],
                                     "support_labels": t["support_labels"][:0]}, "the support set is empty"),
    ("a label past the last class", _set("support_labels", lambda x: np.where(x == 4, 5, x).astype(np.int32)),
     "every label 0..N-1 needs a support example"),
    ("negative label", _set("support_labels", lambda x: np.where(x == 0, -1, x).astype(np.int32)), "0..N-1"),
    ("one class", _set("support_labels", lambda x: np.zeros_like(x)), "at least 2 classes"),
    ("more classes than it serves", lambda t: {**t, "support_images": np.zeros((9, 28, 28, 1), np.float32),
                                               "support_labels": np.arange(9, dtype=np.int32)},
     "more than 8 classes"),
])
def test_a_model_serving_any_n_refuses_bad_labels_clearly(serve_any_ways, name, change, message):
    support, labels, query = _task()
    request = change({"support_images": support, "support_labels": labels, "query_images": query})
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve_any_ways(**{k: tf.constant(v) for k, v in request.items()})
    # The same model answers any valid N up to its maximum.
    keep = labels < 3
    answer = serve_any_ways(support_images=tf.constant(support[keep]), support_labels=tf.constant(labels[keep]),
                            query_images=tf.constant(query))["probabilities"].numpy()
    assert answer.shape == (len(query), 3)

"""A small client for a few-shot SavedModel behind TF Serving's REST API, and a local stand-in.

TF Serving's REST ``:predict`` call takes a JSON body in one of two forms. The row form
(``"instances"``) requires every input to share its first dimension, which a task cannot do: the
support set has N*K images and the query set M. So the body here is the columnar form::

    {"signature_name": "serving_default",
     "inputs": {"support_images": [...], "support_labels": [...], "query_images": [...]}}

and the reply is ``{"outputs": [[...], ...]}``: with a single named output (``probabilities``)
TF Serving drops the name, with several it answers ``{"outputs": {"name": value, ...}}``, and on
failure ``{"error": "message"}`` with an HTTP error status.

The client checks a task before sending it, because the server's checks (in the SavedModel's
graph, see ``tfp_abml.export``) come back as an HTTP 400 after a possibly large upload, and some
mistakes it cannot see at all: uint8 images in 0..255 or a support and query set prepared at
different sizes give a well-formed but wrong answer. Only the standard library (``json``,
``urllib``) is used for the HTTP call, so a client needs numpy and nothing else.

``answer_predict`` answers such a body from a SavedModel directory in-process, the way the model
server does (same body, same reply, same error form); the tests use it for the JSON round trip
and behind a local HTTP server, since the model server itself cannot be installed everywhere.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np

from tfp_abml.errors import UserInputError

SIGNATURE = "serving_default"
INPUTS = ("support_images", "support_labels", "query_images")
OUTPUT = "probabilities"


class ServingError(RuntimeError):
    """The server could not be reached or refused the request; the message says which and why."""


def _images(name, images):
    try:
        array = np.asarray(images)
    except ValueError as err:  # ragged nested lists
        raise UserInputError(f"{name} holds images of different shapes: resize them to one size first") from err
    if array.dtype == object:
        raise UserInputError(f"{name} holds images of different shapes: resize them to one size first")
    if array.ndim != 4:
        raise UserInputError(f"{name} must be [count, height, width, channels], got shape {array.shape}: "
                             "add the channel axis with images[..., None] for grey images")
    if array.shape[0] == 0:
        set_name = "support" if name.startswith("support") else "query"
        raise UserInputError(f"{name} is empty: a task needs at least one {set_name} image")
    if not np.issubdtype(array.dtype, np.floating):
        hint = " (uint8 PNG pixels: divide by 255.0)" if np.issubdtype(array.dtype, np.integer) else ""
        raise UserInputError(f"{name} must be floating point in [0, 1], got dtype {array.dtype}{hint}")
    if array.shape[-1] not in (1, 3):
        raise UserInputError(f"{name} must have 1 (grey) or 3 (RGB) channels, got {array.shape[-1]}")
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise UserInputError(f"{name} has empty images, shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UserInputError(f"{name} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise UserInputError(f"{name} must be scaled to [0, 1] as the model was trained, got values in "
                             f"[{low:g}, {high:g}]")
    return array.astype(np.float32)


def _labels(labels, count, ways):
    array = np.asarray(labels)
    if array.ndim != 1:
        raise UserInputError(f"support_labels must be one label per support image, shape [{count}], "
                             f"got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise UserInputError(f"support_labels must be integers 0..N-1, got dtype {array.dtype}")
    if array.shape[0] != count:
        raise UserInputError(f"support_labels has {array.shape[0]} labels for {count} support images: "
                             "give one label per support image")
    present = sorted(set(array.tolist()))
    if ways is not None and present != list(range(ways)):
        raise UserInputError(f"support_labels must be 0..{ways - 1} with every label present (the model is "
                             f"{ways}-way), got {present}")
    if present != list(range(len(present))):
        raise UserInputError(f"support_labels must number the classes 0..N-1 with every label present, "
                             f"got {present}: relabel the support classes 0, 1, ... in any order")
    return array.astype(np.int32)


def check_task(support_images, support_labels, query_images, ways=None):
    """Validated float32 / int32 copies of one task, or UserInputError naming what is wrong.

    ``ways``, when given, is the number of classes the served model was trained for; labels must
    then be exactly ``0..ways-1``. Support and query images must share height, width and channels:
    the model resizes each set on its own, so two sizes would be blurred differently.
    """
    support = _images("support_images", support_images)
    query = _images("query_images", query_images)
    if support.shape[1:] != query.shape[1:]:
        raise UserInputError(f"support images are {support.shape[1:]} and query images {query.shape[1:]} "
                             "(height, width, channels): prepare both sets the same way")
    labels = _labels(support_labels, support.shape[0], ways)
    return support, labels, query


def predict_request(support_images, support_labels, query_images, ways=None, signature_name=SIGNATURE):
    """TF Serving's columnar ``:predict`` body for one task, after ``check_task``; a JSON-ready dict."""
    support, labels, query = check_task(support_images, support_labels, query_images, ways)
    return {"signature_name": signature_name,
            "inputs": {"support_images": support.tolist(), "support_labels": labels.tolist(),
                       "query_images": query.tolist()}}


def parse_predict_response(reply, output=OUTPUT, queries=None):
    """The ``[M, N]`` float32 array from a ``:predict`` reply (a dict, or its JSON text).

    Reads ``{"outputs": value}`` (a single named output, whose name TF Serving drops) or
    ``{"outputs": {"probabilities": value, ...}}`` (several outputs); ``{"error": ...}`` raises
    ServingError. ``queries``, when given, is the number of query images sent.
    """
    if isinstance(reply, (str, bytes)):
        try:
            reply = json.loads(reply)
        except json.JSONDecodeError as err:
            raise ServingError(f"the reply is not JSON ({err}): is this a TF Serving REST port?") from err
    if not isinstance(reply, dict):
        raise ServingError(f"the reply must be a JSON object, got {type(reply).__name__}")
    if "error" in reply:
        raise ServingError(f"the model server refused the request: {reply['error']}")
    if "outputs" not in reply:
        raise ServingError(f"the reply has no 'outputs' (keys: {sorted(reply)}): send the columnar 'inputs' form")
    outputs = reply["outputs"]
    if isinstance(outputs, dict):
        if output not in outputs:
            raise ServingError(f"the reply has outputs {sorted(outputs)}, not {output!r}")
        outputs = outputs[output]
    probabilities = np.asarray(outputs, dtype=np.float32)
    if probabilities.ndim != 2:
        raise ServingError(f"expected {output} of shape [queries, ways], got shape {probabilities.shape}")
    if queries is not None and probabilities.shape[0] != queries:
        raise ServingError(f"sent {queries} query images, got {probabilities.shape[0]} rows of {output}")
    return probabilities


def predict_url(host="localhost", port=8501, model="omniglot", version=None):
    """``http://host:port/v1/models/MODEL[/versions/V]:predict``."""
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"http://{host}:{int(port)}/v1/models/{model}{version_part}:predict"


def post_json(url, body, timeout=60.0):
    """POST ``body`` as JSON to ``url``; the parsed reply (an error reply raises ServingError)."""
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (json.JSONDecodeError, AttributeError):
            pass
        raise ServingError(f"{url} answered HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ServingError(f"cannot reach {url} ({reason}): is tensorflow_model_server running with "
                           "--rest_api_port on that port, and the model name right?") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ServingError(f"{url} did not answer JSON ({err}): is this a TF Serving REST port?") from err


def predict(support_images, support_labels, query_images, host="localhost", port=8501, model="omniglot",
            version=None, ways=None, timeout=60.0):
    """Query probabilities ``[M, N]`` for one task from a TF Serving REST endpoint."""
    body = predict_request(support_images, support_labels, query_images, ways)
    reply = post_json(predict_url(host, port, model, version), body, timeout)
    return parse_predict_response(reply, queries=len(body["inputs"]["query_images"]))


# -- answering locally, as the model server does ------------------------------------------------


def load_saved_model(path):
    """``tf.saved_model.load(path)``, with a clear error for a folder that is not a SavedModel."""
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(path))
    except (OSError, ValueError) as err:
        raise UserInputError(f"cannot load a SavedModel from {path} ({err}): pass the version folder that "
                             "training.export wrote, e.g. savedmodels/omniglot-5w1s/1") from err


def answer_predict(saved_model, body):
    """``(http_status, reply)`` for a ``:predict`` body, answered as TF Serving answers it.

    ``saved_model`` is a SavedModel directory or the result of ``tf.saved_model.load``. Like the
    model server, this takes the columnar ``inputs`` form (a map of names, or a bare value for a
    one-input signature), converts each input to the dtype of the signature, runs it, and replies
    ``{"outputs": value}`` for one output or a map of names for several; a bad body or an op
    error gives ``{"error": message}`` with status 400. The row ``instances`` form is refused
    with a reason: it cannot carry support and query sets of different sizes.
    """
    import tensorflow as tf

    loaded = saved_model if hasattr(saved_model, "signatures") else load_saved_model(saved_model)
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as err:
            return 400, {"error": f"JSON Parse error: {err}"}
    if not isinstance(body, dict):
        return 400, {"error": "JSON Value: request body is not an object"}
    name = body.get("signature_name", SIGNATURE)
    if name not in loaded.signatures:
        return 400, {"error": f"Serving signature name: \"{name}\" not found in signature def"}
    signature = loaded.signatures[name]
    specs = signature.structured_input_signature[1]
    if "instances" in body:
        return 400, {"error": "the row 'instances' form needs every input to share its first dimension, which "
                              "a task's support and query sets do not: send the columnar 'inputs' form"}
    if "inputs" not in body:
        return 400, {"error": "Missing 'inputs' or 'instances' key"}
    given = body["inputs"]
    if not isinstance(given, dict):
        if len(specs) != 1:
            return 400, {"error": f"this signature takes {len(specs)} named inputs: send 'inputs' as an object"}
        given = {next(iter(specs)): given}
    missing = sorted(set(specs) - set(given))
    unknown = sorted(set(given) - set(specs))
    if missing or unknown:
        return 400, {"error": f"inputs do not match the signature: missing {missing}, unknown {unknown}"}
    try:
        tensors = {key: tf.constant(given[key], dtype=spec.dtype) for key, spec in specs.items()}
        results = signature(**tensors)
    except (tf.errors.OpError, ValueError, TypeError) as err:
        message = getattr(err, "message", None) or str(err)
        return 400, {"error": message}
    values = {key: value.numpy().tolist() for key, value in results.items()}
    return 200, {"outputs": next(iter(values.values())) if len(values) == 1 else values}

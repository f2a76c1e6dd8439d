"""``tfp_abml.serving``: TF Serving's REST body and reply, through JSON and HTTP, against a real SavedModel."""

import http.server
import json
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tfp_abml import serving
from tfp_abml.errors import UserInputError
from training import export, fit


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, data_dir):
    """A ProtoNet (deterministic, so two calls must agree exactly) trained briefly and exported."""
    root = tmp_path_factory.mktemp("serving")
    assert fit.main(["--method", "protonet", "--data-dir", str(data_dir), "--ways", "5", "--shots", "2",
                     "--queries", "3", "--steps-per-epoch", "3", "--epochs", "1", "--val-tasks", "0",
                     "--output", str(root / "run"), "--verbose", "0"]) == 0
    path = root / "savedmodels" / "omniglot" / "1"
    assert export.main(["--run", str(root / "run"), "--output", str(path), "--ways", "5"]) == 0  # fixed N
    return path


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(str(saved_model))


def _task(data_dir, seed=3):
    from tfp_abml.data import make_sampler

    sampler = make_sampler("omniglot", "test", ways=5, shots=2, queries=3, seed=seed, data_dir=data_dir,
                           image_size=28)
    s_img, s_lab, q_img, q_lab = sampler.sample(0)
    return s_img[..., None] / 255.0, s_lab, q_img[..., None] / 255.0, q_lab


def _direct(loaded, support, labels, query):
    return loaded.signatures["serving_default"](
        support_images=tf.constant(support, tf.float32), support_labels=tf.constant(labels, tf.int32),
        query_images=tf.constant(query, tf.float32))["probabilities"].numpy()


def test_json_round_trip_gives_what_the_signature_gives(loaded, data_dir):
    support, labels, query, _ = _task(data_dir)
    body = serving.predict_request(support, labels, query, ways=5)
    assert body["signature_name"] == "serving_default"
    assert sorted(body["inputs"]) == ["query_images", "support_images", "support_labels"]
    assert np.asarray(body["inputs"]["support_images"]).shape == (10, 28, 28, 1)
    status, reply = serving.answer_predict(loaded, json.loads(json.dumps(body)))
    assert status == 200, reply
    reply = json.loads(json.dumps(reply))
    assert list(reply) == ["outputs"] and isinstance(reply["outputs"], list)  # one output: name dropped
    got = serving.parse_predict_response(reply, queries=15)
    expected = _direct(loaded, support, labels, query)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.shape == (15, 5) and np.allclose(got.sum(-1), 1, atol=1e-5)
    assert len(set(got.argmax(-1))) > 1  # answers that depend on the query, not a constant


def test_a_request_the_server_refuses_comes_back_as_its_error(loaded, data_dir):
    support, labels, query, _ = _task(data_dir)
    body = serving.predict_request(support, labels, query)
    body["inputs"]["support_labels"] = [label + 1 for label in body["inputs"]["support_labels"]]
    status, reply = serving.answer_predict(loaded, body)
    assert status == 400 and "support_labels must be 0..4" in reply["error"]
    with pytest.raises(serving.ServingError, match="support_labels must be 0..4"):
        serving.parse_predict_response(reply)
    for bad, message in [({"inputs": {**body["inputs"], "extra": [1]}}, "unknown \\['extra'\\]"),
                         ({"inputs": {"query_images": [[[[0.0]]]]}}, "missing \\['support_images'"),
                         ({"instances": [{}]}, "columnar 'inputs' form"),
                         ({"signature_name": "nope", "inputs": {}}, "\"nope\" not found"),
                         ("{not json", "JSON Parse error")]:
        status, reply = serving.answer_predict(loaded, bad)
        assert status == 400 and re.search(message, reply["error"]), reply


class _FakeModelServer(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST ``:predict`` route for one model name, answered by ``serving.answer_predict``."""

    route = re.compile(r"^/v1/models/(?P<name>[^/:]+)(/versions/(?P<version>\d+))?:predict$")
    model_name, model, requests = "omniglot", None, []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        match = self.route.match(self.path)
        type(self).requests.append(self.path)
        if not match or match["name"] != self.model_name:
            self._reply(404, {"error": f"Servable not found for request: Latest({match and match['name']})"})
            return
        self._reply(*serving.answer_predict(self.model, body))

    def _reply(self, status, reply):
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def model_server(loaded):
    handler = type("Handler", (_FakeModelServer,), {"model": loaded, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_client_over_http(model_server, loaded, data_dir):
    port, handler = model_server
    support, labels, query, _ = _task(data_dir, seed=4)
    expected = _direct(loaded, support, labels, query)
    got = serving.predict(support, labels, query, host="127.0.0.1", port=port, model="omniglot", ways=5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    versioned = serving.predict(support, labels, query, host="127.0.0.1", port=port, version=1)
    np.testing.assert_allclose(versioned, expected, rtol=0, atol=1e-6)
    assert handler.requests == ["/v1/models/omniglot:predict", "/v1/models/omniglot/versions/1:predict"]

    with pytest.raises(serving.ServingError, match="HTTP 404: Servable not found"):
        serving.predict(support, labels, query, host="127.0.0.1", port=port, model="omniglot-20w")
    body = serving.predict_request(support, labels, query)
    body["inputs"]["support_labels"][0] = 7  # past the client's checks, so the graph's check answers
    with pytest.raises(serving.ServingError, match="(?s)HTTP 400: .*support_labels must be 0..4"):
        serving.post_json(serving.predict_url("127.0.0.1", port), body)


def test_unreachable_server_is_named():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(serving.ServingError, match=f"cannot reach http://127.0.0.1:{port}/v1/models/omniglot:predict"):
        serving.predict(np.ones((2, 4, 4, 1)), [0, 1], np.ones((1, 4, 4, 1)), host="127.0.0.1", port=port)


_S, _L, _Q = np.ones((4, 8, 8, 1), np.float32), np.array([0, 1, 0, 1]), np.ones((3, 8, 8, 1), np.float32)


@pytest.mark.parametrize("task, ways, message", [
    ((_S, _L + 1, _Q), None, "number the classes 0..N-1 with every label present, got \\[1, 2\\]"),
    ((_S, np.array([0, 2, 0, 2]), _Q), None, "got \\[0, 2\\]"),
    ((_S, _L, _Q), 5, "must be 0..4 with every label present \\(the model is 5-way\\), got \\[0, 1\\]"),
    ((_S, _L.astype(np.float32), _Q), None, "must be integers 0..N-1, got dtype float32"),
    ((_S, _L[:3], _Q), None, "3 labels for 4 support images"),
    ((_S, _L[:, None], _Q), None, "one label per support image, shape \\[4\\]"),
    ((_S[:0], _L[:0], _Q), None, "support_images is empty"),
    ((_S, _L, _Q[:0]), None, "query_images is empty"),
    ((_S, _L, np.ones((3, 9, 8, 1), np.float32)), None, "support images are \\(8, 8, 1\\) and query images \\(9, 8, 1\\)"),
    ((_S, _L, np.ones((3, 8, 8, 3), np.float32)), None, "prepare both sets the same way"),
    ((np.ones((4, 8, 8, 2), np.float32), _L, _Q), None, "1 \\(grey\\) or 3 \\(RGB\\) channels, got 2"),
    ((_S[..., 0], _L, _Q), None, "\\[count, height, width, channels\\], got shape \\(4, 8, 8\\)"),
    ((np.full((4, 8, 8, 1), 255, np.uint8), _L, _Q), None, "dtype uint8 \\(uint8 PNG pixels: divide by 255.0\\)"),
    ((_S * 255, _L, _Q), None, "scaled to \\[0, 1\\].*\\[255, 255\\]"),
    ((_S * np.nan, _L, _Q), None, "NaN or infinite"),
    (([np.ones((8, 8, 1)), np.ones((9, 8, 1))], [0, 1], _Q), None, "images of different shapes"),
])
def test_client_refuses_bad_tasks_before_sending(task, ways, message):
    with pytest.raises(UserInputError, match=message):
        serving.predict_request(*task, ways=ways)


def test_the_client_needs_no_tensorflow():
    code = "import sys, tfp_abml.serving; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_reply_forms():
    single = {"outputs": [[0.25, 0.75], [1.0, 0.0]]}
    np.testing.assert_array_equal(serving.parse_predict_response(json.dumps(single)), single["outputs"])
    several = {"outputs": {"probabilities": [[0.5, 0.5]], "logits": [[0.0, 0.0]]}}
    np.testing.assert_array_equal(serving.parse_predict_response(several), [[0.5, 0.5]])
    for reply, message in [({"error": "Servable not found"}, "refused the request: Servable not found"),
                           ({"predictions": [[1.0]]}, "no 'outputs'"),
                           ({"outputs": {"logits": [[0.0]]}}, "not 'probabilities'"),
                           ({"outputs": [0.5, 0.5]}, "shape \\[queries, ways\\], got shape \\(2,\\)"),
                           ("<html>", "not JSON")]:
        with pytest.raises(serving.ServingError, match=message):
            serving.parse_predict_response(reply)
    with pytest.raises(serving.ServingError, match="sent 3 query images, got 2 rows"):
        serving.parse_predict_response(single, queries=3)


def test_local_answer_names_outputs_only_when_there_are_several(tmp_path):
    """TF Serving drops the output name for a one-output signature and keys a map by name otherwise."""

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def both(self, x):
            return {"double": 2 * x, "square": x * x}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def one(self, x):
            return {"double": 2 * x}

    module = Two()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.both, "one": module.one})
    status, reply = serving.answer_predict(tmp_path / "m", {"inputs": {"x": [1.0, 3.0]}})
    assert status == 200 and reply == {"outputs": {"double": [2.0, 6.0], "square": [1.0, 9.0]}}
    status, reply = serving.answer_predict(str(tmp_path / "m"), {"signature_name": "one", "inputs": [1.0, 3.0]})
    assert status == 200 and reply == {"outputs": [2.0, 6.0]}
    with pytest.raises(UserInputError, match="cannot load a SavedModel from"):
        serving.answer_predict(tmp_path / "missing", {"inputs": {}})

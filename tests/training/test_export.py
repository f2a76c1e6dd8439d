"""Export -> load -> the same predictions; bad requests fail with clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from training import export, fit


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("runs") / "protonet"
    assert fit.main(["--method", "protonet", "--data-dir", str(data_dir), "--ways", "5", "--shots", "2",
                     "--queries", "3", "--steps-per-epoch", "5", "--epochs", "1", "--val-tasks", "0",
                     "--output", str(run), "--verbose", "0"]) == 0
    return run


def _task(data_dir, size=105):
    from tfp_abml.data import make_sampler

    sampler = make_sampler("omniglot", "test", ways=5, shots=2, queries=3, seed=9, data_dir=data_dir,
                           image_size=size)
    s_img, s_lab, q_img, _ = sampler.sample(0)
    to_float = lambda x: (x[..., None] / 255.0).astype(np.float32)
    return to_float(s_img), s_lab.astype(np.int32), to_float(q_img)


def test_saved_model_matches_the_keras_model(protonet_run, data_dir, tmp_path):
    from tfp_abml.runs import load_run

    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(protonet_run), "--output", str(out)]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    support, labels, query = _task(data_dir, 28)
    served = serve(support_images=tf.constant(support), support_labels=tf.constant(labels),
                   query_images=tf.constant(query))["probabilities"].numpy()
    _, model = load_run(protonet_run)
    expected = model.predict_episode({"support_images": support[None], "support_labels": labels[None],
                                      "query_images": query[None]})[0].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    # Full-size 105 px PNG-scale images are resized inside the graph; RGB is averaged to grey.
    support, labels, query = _task(data_dir, 105)
    big = serve(support_images=tf.constant(np.repeat(support, 3, -1)), support_labels=tf.constant(labels),
                query_images=tf.constant(np.repeat(query, 3, -1)))["probabilities"].numpy()
    assert big.shape == (15, 5) and np.allclose(big.sum(-1), 1, atol=1e-5)
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", str(out),
                            "--all"], capture_output=True, text=True, timeout=120)
    assert "serving_default" in shown.stdout and "support_labels" in shown.stdout and "probabilities" in shown.stdout


def test_a_calibrated_run_serves_its_temperature_scaled_prediction(protonet_run, data_dir, tmp_path):
    import json
    import shutil

    from tfp_abml.calibration import apply_temperature
    from tfp_abml.runs import load_run, save_calibration

    run = tmp_path / "run"
    shutil.copytree(protonet_run, run)
    _, model = load_run(run)
    save_calibration(run, {"temperatures": {"prediction": 2.5}, "weights": "another epoch's weights"})
    assert load_run(run)[1].temperatures == {}  # fitted to other weights: not applied
    save_calibration(run, {"temperatures": {"prediction": 2.5}, "weights": model.loaded_weights})
    assert load_run(run)[1].temperatures == {"prediction": 2.5}
    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(run), "--output", str(out)]) == 0
    loaded = tf.saved_model.load(str(out))
    support, labels, query = _task(data_dir, 28)
    served = loaded.signatures["serving_default"](support_images=tf.constant(support), support_labels=tf.constant(labels),
                                                  query_images=tf.constant(query))["probabilities"].numpy()
    raw = model.predict_episode({"support_images": support[None], "support_labels": labels[None],
                                 "query_images": query[None]})[0].numpy()
    np.testing.assert_allclose(served, apply_temperature(raw, 2.5), atol=1e-5)
    assert not np.allclose(served, raw, atol=1e-3)
    assert float(loaded.signatures["metadata"]()["temperature"].numpy()) == 2.5
    assert json.loads((run / "calibration.json").read_text())["temperatures"] == {"prediction": 2.5}


@pytest.mark.parametrize("change, message", [
    (lambda s, l, q: (s, l + 1, q), "support_labels must be 0..4"),
    (lambda s, l, q: (s, np.where(l == 4, 0, l).astype(np.int32), q), "every label 0..4"),
    (lambda s, l, q: (s[:0], l[:0], q), "support set is empty"),
    (lambda s, l, q: (s, l[:-1], q), "differ in length"),
    (lambda s, l, q: (np.repeat(s, 2, -1), l, np.repeat(q, 2, -1)), "1 \\(grey\\) or 3 \\(RGB\\) channels"),
])
def test_bad_requests_fail_clearly(protonet_run, data_dir, tmp_path_factory, change, message):
    out = tmp_path_factory.getbasetemp() / "bad_requests_model"
    if not out.exists():
        assert export.main(["--run", str(protonet_run), "--output", str(out)]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    support, labels, query = change(*_task(data_dir, 28))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(support_images=tf.constant(support), support_labels=tf.constant(labels),
              query_images=tf.constant(query))


def test_bayesian_model_exports_its_posterior_predictive(tmp_path, data_dir):
    run = tmp_path / "abml"
    assert fit.main(["--data-dir", str(data_dir), "--ways", "5", "--shots", "2", "--queries", "3",
                     "--steps-per-epoch", "5", "--epochs", "1", "--val-tasks", "0", "--output", str(run),
                     "--verbose", "0"]) == 0
    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(run), "--output", str(out), "--samples", "3"]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    support, labels, query = _task(data_dir, 28)
    first, second = (serve(support_images=tf.constant(support), support_labels=tf.constant(labels),
                           query_images=tf.constant(query))["probabilities"].numpy() for _ in range(2))
    assert first.shape == (15, 5) and np.allclose(first.sum(-1), 1, atol=1e-5)
    assert not np.allclose(first, second)  # fresh posterior draws per request

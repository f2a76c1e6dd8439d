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


def test_a_model_that_serves_any_n_takes_n_from_the_labels(protonet_run, data_dir, tmp_path):
    from tfp_abml.data import make_sampler
    from tfp_abml.runs import load_run

    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(protonet_run), "--output", str(out), "--max-ways", "20"]) == 0
    loaded = tf.saved_model.load(str(out))
    meta = {k: v.numpy() for k, v in loaded.signatures["metadata"]().items()}
    assert (meta["ways"], meta["min_ways"], meta["max_ways"]) == (5, 2, 20)
    serve = loaded.signatures["serving_default"]
    for ways in (20, 3):  # the run was trained 5-way
        sampler = make_sampler("omniglot", "test", ways=ways, shots=2, queries=3, seed=9, data_dir=data_dir, image_size=28)
        s_img, s_lab, q_img, _ = sampler.sample(0)
        support, query = (s_img[..., None] / 255.0).astype(np.float32), (q_img[..., None] / 255.0).astype(np.float32)
        served = serve(support_images=tf.constant(support), support_labels=tf.constant(s_lab),
                       query_images=tf.constant(query))["probabilities"].numpy()
        _, model = load_run(protonet_run, ways=ways)
        expected = model.predict_episode({"support_images": support[None], "support_labels": s_lab[None],
                                          "query_images": query[None]})[0].numpy()
        assert served.shape == (3 * ways, ways)
        np.testing.assert_allclose(served, expected, atol=1e-5)
    images = tf.zeros((21, 28, 28, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 20 classes"):
        serve(support_images=images, support_labels=tf.range(21), query_images=images[:2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="every label 0..N-1 needs a support example"):
        serve(support_images=images[:3], support_labels=tf.constant([0, 1, 3]), query_images=images[:2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2 classes"):
        serve(support_images=images[:2], support_labels=tf.constant([0, 0]), query_images=images[:2])


def test_export_calibrate_fits_and_serves_the_temperature(protonet_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(protonet_run, run)
    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(run), "--output", str(out), "--calibrate", "--calibration-tasks", "6"]) == 0
    temperature = json.loads((run / "calibration.json").read_text())["temperatures"]["prediction"]
    served = float(tf.saved_model.load(str(out)).signatures["metadata"]()["temperature"].numpy())
    assert served == pytest.approx(temperature, rel=1e-6) and temperature != 1.0


def test_max_ways_errors(protonet_run, tmp_path, capsys):
    assert export.main(["--run", str(protonet_run), "--output", str(tmp_path / "a"), "--max-ways", "1"]) == 2
    assert "--max-ways must be >= 2" in capsys.readouterr().err
    assert export.main(["--run", str(protonet_run), "--output", str(tmp_path / "b"), "--ways", "5",
                        "--max-ways", "9"]) == 2
    assert "serves 5-way tasks only" in capsys.readouterr().err
    assert export.main(["--run", str(protonet_run), "--output", str(tmp_path / "c"), "--eval-inner-steps", "0"]) == 2
    assert "--eval-inner-steps applies to methods with an inner loop" in capsys.readouterr().err


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
        assert export.main(["--run", str(protonet_run), "--output", str(out), "--ways", "5"]) == 0  # fixed N
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
    # The default abml serves any N: a 3-way request to a fresh load equals the Keras model rebuilt
    # for 3 ways on its first draw (same seeds; the posterior draws advance a seed state per call).
    from tfp_abml.runs import load_run

    keep = np.isin(labels, [0, 1, 2])
    three = dict(support_images=tf.constant(support[keep]), support_labels=tf.constant(labels[keep]),
                 query_images=tf.constant(query))
    served = tf.saved_model.load(str(out)).signatures["serving_default"](**three)["probabilities"].numpy()
    _, model = load_run(run, ways=3)
    model.eval_samples = 3
    expected = model.predict_episode({k: v[None] for k, v in three.items()})[0].numpy()
    assert served.shape == (15, 3)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    # --eval-inner-steps 0: the SavedModel serves the posterior without the inner loop, as the Keras
    # model loaded with the same setting does; with 1 training epoch that differs from the default.
    out = tmp_path / "savedmodel-no-inner-loop" / "1"
    assert export.main(["--run", str(run), "--output", str(out), "--samples", "3", "--eval-inner-steps", "0"]) == 0
    unadapted = tf.saved_model.load(str(out)).signatures["serving_default"](**three)["probabilities"].numpy()
    _, model = load_run(run, ways=3, eval_inner_steps=0)
    model.eval_samples = 3
    np.testing.assert_allclose(unadapted, model.predict_episode({k: v[None] for k, v in three.items()})[0].numpy(),
                               atol=1e-5)
    assert not np.allclose(unadapted, served, atol=1e-4)

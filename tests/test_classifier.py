"""tfp_abml.FewShotClassifier: one trained model loaded three ways, real Omniglot tasks, clear errors."""

import math

import numpy as np
import pytest

import tfp_abml
from tfp_abml.errors import UserInputError
from tfp_abml.metrics import entropy, mutual_information


def _fit(run, data_dir, method, ways=5):
    from training import fit

    assert fit.main(["--method", method, "--data-dir", str(data_dir), "--ways", str(ways), "--shots", "1",
                     "--queries", "3", "--steps-per-epoch", "5", "--epochs", "1", "--val-tasks", "0",
                     "--inner-steps", "1", "--eval-samples", "4", "--output", str(run), "--verbose", "0"]) == 0
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """A protonet and an abml run trained briefly on real Omniglot, each also as .keras and SavedModel."""
    from training import export

    from tfp_abml.runs import load_run

    root = tmp_path_factory.mktemp("classifier")
    made = {}
    for method in ("protonet", "abml"):
        run = _fit(root / method, data_dir, method)
        _, model = load_run(run)
        model.save(root / f"{method}.keras")
        assert export.main(["--run", str(run), "--output", str(root / f"{method}-savedmodel" / "1")]) == 0
        made[method] = {"run": run, "keras": root / f"{method}.keras", "savedmodel": root / f"{method}-savedmodel" / "1"}
    return made


@pytest.fixture(scope="module")
def task(data_dir):
    from tfp_abml.data import omniglot_task

    return omniglot_task(data_dir, ways=5, shots=1, queries=3, seed=4, image_size=28)


def test_protonet_predicts_the_same_from_a_run_a_keras_file_and_a_saved_model(runs, task):
    support, names, query, _ = task
    results = {kind: tfp_abml.FewShotClassifier.load(path).predict(support, names, query)
               for kind, path in runs["protonet"].items()}
    for kind, result in results.items():
        assert result.probabilities.shape == (15, 5), kind
        np.testing.assert_allclose(result.probabilities, results["run"].probabilities, atol=1e-5, err_msg=kind)
        assert list(result.classes) == list(dict.fromkeys(names)), kind  # columns in order of first appearance
        assert result.mutual_information is None  # no posterior
    result = results["run"]
    np.testing.assert_array_equal(result.predicted, result.classes[result.probabilities.argmax(-1)])
    np.testing.assert_allclose(result.entropy, entropy(result.probabilities), rtol=1e-5)


def test_predictions_follow_the_class_names_not_their_order(runs, task):
    support, names, query, _ = task
    clf = tfp_abml.FewShotClassifier.load(runs["protonet"]["run"])
    first = clf.predict(support, names, query)
    order = np.random.default_rng(0).permutation(len(names))
    second = clf.predict(support[order], names[order], query)
    np.testing.assert_array_equal(first.predicted, second.predicted)
    columns = [list(second.classes).index(c) for c in first.classes]
    np.testing.assert_allclose(second.probabilities[:, columns], first.probabilities, atol=1e-5)


def test_images_as_uint8_floats_grey_rgb_or_lists_predict_alike(runs, task):
    support, names, query, _ = task
    clf = tfp_abml.FewShotClassifier.load(runs["protonet"]["run"])
    reference = clf.predict(support, names, query).probabilities
    variants = {"float": (support / 255.0, query / 255.0), "grey without channel axis": (support[..., 0], query[..., 0]),
                "rgb": (np.repeat(support, 3, -1), np.repeat(query, 3, -1)),
                "lists": (list(support), list(query))}
    for name, (s, q) in variants.items():
        np.testing.assert_allclose(clf.predict(s, names, q).probabilities, reference, atol=1e-5, err_msg=name)
    # Larger pictures are resized to the model's 28 px, of any size each.
    big = [np.kron(image, np.ones((3, 3, 1), np.uint8)) for image in query]  # 84 px
    big[0] = np.kron(query[0], np.ones((2, 2, 1), np.uint8))  # 56 px
    resized = clf.predict(support, names, big).probabilities
    np.testing.assert_allclose(resized, reference, atol=1e-5)  # area averaging of k x k blocks is exact


def test_bayesian_model_gives_mutual_information_from_its_draws(runs, task):
    support, names, query, _ = task
    for kind, path in runs["abml"].items():
        clf = tfp_abml.FewShotClassifier.load(path)
        assert clf.bayesian, kind
        result = clf.predict(support, names, query, min_confidence=0.5)
        assert result.mutual_information.shape == (15,), kind
        assert np.all(result.mutual_information >= 0) and np.all(result.mutual_information <= result.entropy + 1e-6)
        assert np.all(result.entropy <= math.log(5) + 1e-5)
        np.testing.assert_array_equal(result.uncertain, result.confidence < 0.5)
    # The classifier's numbers are the model's: same Flipout stream, same draws.
    clf = tfp_abml.FewShotClassifier.load(runs["abml"]["run"])
    model = clf._backend.models[5]
    streams = [v for v in model.variables if v.path.endswith("seed_generator_state")]  # LSTM noise, Flipout
    states = [v.numpy() for v in streams]
    result = clf.predict(support, names, query)
    for variable, state in zip(streams, states):
        variable.assign(state)
    classes, labels = list(result.classes), np.asarray([list(result.classes).index(n) for n in names], np.int32)
    draws = model.predictive_draws({"support_images": support[None] / 255.0, "support_labels": labels[None],
                                    "query_images": query[None] / 255.0}).numpy()[:, 0]
    assert draws.shape == (4, 15, 5) and classes
    np.testing.assert_allclose(result.probabilities, draws.mean(0), atol=1e-6)
    np.testing.assert_allclose(result.mutual_information, mutual_information(draws), atol=1e-5)


def test_mutual_information_against_hand_computed_values():
    same = np.tile([[0.7, 0.2, 0.1]], (4, 1))[:, None]  # 4 draws that agree: no epistemic part
    np.testing.assert_allclose(mutual_information(same), [0.0], atol=1e-12)
    opposite = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # two sure draws that disagree: log 2
    np.testing.assert_allclose(mutual_information(opposite), [math.log(2)], rtol=1e-9)


def test_other_class_counts_where_the_weights_allow(runs, task, data_dir):
    from tfp_abml.data import omniglot_task
    from tfp_abml.run_config import RunConfig

    support, names, query, _ = omniglot_task(data_dir, ways=3, shots=1, queries=2, seed=5, image_size=28)
    result = tfp_abml.FewShotClassifier.load(runs["protonet"]["run"]).predict(support, names, query)
    assert result.probabilities.shape == (6, 3)
    # The SavedModel of a model that serves any N takes N from the labels: the same answer.
    served = tfp_abml.FewShotClassifier.load(runs["protonet"]["savedmodel"]).predict(support, names, query)
    np.testing.assert_allclose(served.probabilities, result.probabilities, atol=1e-5)
    assert tfp_abml.FewShotClassifier.load(runs["abml"]["savedmodel"]).predict(support, names, query).probabilities.shape == (6, 3)
    from training import export

    fixed = runs["protonet"]["keras"].parent / "protonet-5way" / "1"
    assert export.main(["--run", str(runs["protonet"]["run"]), "--ways", "5", "--output", str(fixed)]) == 0
    with pytest.raises(UserInputError, match="serves 5-way tasks"):
        tfp_abml.FewShotClassifier.load(fixed).predict(support, names, query)
    maml = RunConfig(method="maml", ways=5, inner_steps=1).validate().build_model()
    maml(maml.example_inputs())
    path = runs["protonet"]["keras"].parent / "maml.keras"
    maml.save(path)
    with pytest.raises(UserInputError, match="weights depend on the number of classes"):
        tfp_abml.FewShotClassifier.load(path).predict(support, names, query)


@pytest.mark.parametrize("change, message", [
    (lambda s, n, q: (s, np.asarray(["a"] * len(n)), q), "one class"),
    (lambda s, n, q: (s, n[:-1], q), "5 support images and 4 support labels"),
    (lambda s, n, q: (s, n, q[:0]), "query_images is empty"),
    (lambda s, n, q: (s * 2.0, n, q), "values in"),
    (lambda s, n, q: (s.astype(np.int16), n, q), "dtype int16"),
    (lambda s, n, q: (s[:, :, :, :, None], n, q), "has shape"),
])
def test_bad_tasks_fail_with_one_clear_message(runs, task, change, message):
    support, names, query, _ = task
    support, names, query = change(support / np.float32(255.0), names, query / np.float32(255.0))
    clf = tfp_abml.FewShotClassifier.load(runs["protonet"]["run"])
    with pytest.raises(UserInputError, match=message):
        clf.predict(support, names, query)


def test_bad_paths_fail_with_one_clear_message(tmp_path, runs):
    with pytest.raises(UserInputError, match="does not exist"):
        tfp_abml.FewShotClassifier.load(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="not a .keras model"):
        tfp_abml.FewShotClassifier.load(tmp_path / "notes.txt")
    with pytest.raises(UserInputError, match="did you mean .*1"):
        tfp_abml.FewShotClassifier.load(runs["protonet"]["savedmodel"].parent)


def test_a_calibrated_run_predicts_its_temperature_scaled_probabilities(runs, task, tmp_path):
    import shutil

    from tfp_abml.calibration import apply_temperature
    from tfp_abml.runs import load_run, save_calibration

    support, names, query, _ = task
    run = tmp_path / "run"
    shutil.copytree(runs["protonet"]["run"], run)
    raw = tfp_abml.FewShotClassifier.load(run).predict(support, names, query).probabilities
    save_calibration(run, {"temperatures": {"prediction": 3.0}, "weights": load_run(run)[1].loaded_weights})
    scaled = tfp_abml.FewShotClassifier.load(run).predict(support, names, query).probabilities
    np.testing.assert_allclose(scaled, apply_temperature(raw, 3.0), atol=1e-5)
    assert scaled.max(-1).mean() < raw.max(-1).mean()

"""``python -m training.evaluate`` on short real runs of the Bayesian model and a baseline."""

import json

import pytest

from training import evaluate, fit


@pytest.mark.parametrize("method", ["abml", "protonet"])
def test_evaluate_writes_scores_with_intervals_and_a_diagram(method, tmp_path, data_dir, capsys, monkeypatch):
    run = tmp_path / method
    assert fit.main(["--method", method, "--data-dir", str(data_dir), "--ways", "5", "--shots", "1",
                     "--queries", "5", "--steps-per-epoch", "20", "--epochs", "1", "--val-tasks", "0",
                     "--output", str(run), "--verbose", "0"]) == 0
    assert evaluate.main(["--run", str(run), "--tasks", "24", "--samples", "4", "--verbose", "0", "--calibrate",
                          "--calibration-tasks", "8"]) == 0
    result = json.loads((run / "eval_test.json").read_text())
    assert (run / "reliability_test.png").stat().st_size > 1000
    expected = {"posterior_predictive", "mean_weights"} if method == "abml" else {"prediction"}
    assert set(result["predictions"]) == expected | {f"{name}_temperature_scaled" for name in expected}
    calibration = json.loads((run / "calibration.json").read_text())
    assert set(calibration["temperatures"]) == expected and calibration["split"] == "val"
    assert all(calibration["nll_after"][name] <= calibration["nll_before"][name] + 1e-9 for name in expected)
    for name, scores in result["predictions"].items():
        assert 0.3 < scores["accuracy"] <= 1 and 0 < scores["accuracy_ci95"] < 0.2
        assert scores["nll"] > 0 and 0 <= scores["brier"] <= 2 and 0 <= scores["ece"] <= 1
        assert scores["nll_ci95"][0] <= scores["nll"] <= scores["nll_ci95"][1]
        assert 0 <= scores["aurc"] <= 1 and 0 <= scores["accuracy_at_50_coverage"] <= 1
        assert 0 <= scores["ood_auroc"] <= 1 and scores["ood_auroc"] == scores["ood"]["entropy"]["auroc"]
        information = "mutual_information" in scores["ood"]
        assert information == (method == "abml" and name == "posterior_predictive"), name
        # Temperature scaling never changes the predicted class.
        base = name.replace("_temperature_scaled", "")
        assert scores["accuracy"] == result["predictions"][base]["accuracy"]
    assert result["tasks"] == 24 and result["ece_bins"] == 15
    assert result["command"] == (f"python -m training.evaluate --run {run} --tasks 24 --samples 4 --verbose 0 "
                                 "--calibrate --calibration-tasks 8")
    assert "accuracy" in capsys.readouterr().out
    # Inner steps at prediction other than the run's: abml without its inner loop; an error for protonet.
    args = ["--run", str(run), "--tasks", "8", "--samples", "2", "--verbose", "0", "--no-ood", "--eval-inner-steps"]
    if method == "abml":
        trained = json.loads((run / "config.json").read_text())["inner_steps"]
        assert trained > 0 and result["eval_inner_steps"] == trained
        scores = {}
        for steps in (str(trained), "0"):
            assert evaluate.main([*args, steps]) == 0
            scores[steps] = json.loads((run / "eval_test.json").read_text())
            assert scores[steps]["eval_inner_steps"] == int(steps)
        assert scores["0"]["predictions"]["mean_weights"]["nll"] != \
            pytest.approx(scores[str(trained)]["predictions"]["mean_weights"]["nll"], rel=1e-4)
        _uncertainty_benchmark_with_and_without_the_inner_loop(run, tmp_path, monkeypatch, capsys)
    else:
        assert evaluate.main([*args, "1"]) == 2
        assert "--eval-inner-steps applies to methods with an inner loop" in capsys.readouterr().err
    # The same tasks under a corruption: their own file, other scores.
    assert evaluate.main(["--run", str(run), "--tasks", "8", "--samples", "2", "--verbose", "0", "--no-ood",
                          "--corruption", "gaussian_noise", "--severity", "5"]) == 0
    shifted = json.loads((run / "eval_test_gaussian_noise5.json").read_text())
    assert shifted["corruption"] == "gaussian_noise" and shifted["severity"] == 5
    assert (run / "reliability_test_gaussian_noise5.png").is_file()


def test_evaluate_errors(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert evaluate.main(["--run", str(tmp_path), "--tasks", "0"]) == 2


def test_bad_corruption_and_calibration_flags(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path), "--corruption", "fog"]) == 2
    assert "invalid choice: 'fog'" in capsys.readouterr().err
    assert evaluate.main(["--run", str(tmp_path), "--calibrate", "--calibration-tasks", "0"]) == 2
    assert "--calibration-tasks must be >= 1" in capsys.readouterr().err


def _uncertainty_benchmark_with_and_without_the_inner_loop(run, tmp_path, monkeypatch, capsys):
    """benchmarks/uncertainty.py --eval-inner-steps: one run under two names, on the same tasks."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import uncertainty

    monkeypatch.setattr(uncertainty, "RESULTS", tmp_path)
    common = ["--data-dir", json.loads((run / "config.json").read_text())["data_dir"], "--run", f"a={run}"]
    with pytest.raises(SystemExit):
        uncertainty.main([*common, "--eval-inner-steps", "b=0"])
    assert "--eval-inner-steps names no --run: b" in capsys.readouterr().err
    uncertainty.main([*common, "--run", f"b={run}", "--eval-inner-steps", "b=0", "--ways", "5", "--tasks", "4",
                      "--calibration-tasks", "4", "--corruption-ways", "0", "--samples", "2", "--tag", "t"])
    rows = json.loads((tmp_path / "uncertainty_omniglot_1shot-t.json").read_text())["results"]["5-way 1-shot"]
    trained = json.loads((run / "config.json").read_text())["inner_steps"]
    assert rows["a"]["model"]["eval_inner_steps"] == trained > 0 and rows["b"]["model"]["eval_inner_steps"] == 0
    a, b = (rows[name]["in_distribution"] for name in ("a [mean_weights]", "b [mean_weights]"))
    assert a["nll"] != pytest.approx(b["nll"], rel=1e-4)  # the same tasks, adapted or not

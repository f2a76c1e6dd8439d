"""``python -m training.evaluate`` on short real runs of the Bayesian model and a baseline."""

import json

import pytest

from training import evaluate, fit


@pytest.mark.parametrize("method", ["abml", "protonet"])
def test_evaluate_writes_scores_with_intervals_and_a_diagram(method, tmp_path, data_dir, capsys):
    run = tmp_path / method
    assert fit.main(["--method", method, "--data-dir", str(data_dir), "--ways", "5", "--shots", "1",
                     "--queries", "5", "--steps-per-epoch", "20", "--epochs", "1", "--val-tasks", "0",
                     "--output", str(run), "--verbose", "0"]) == 0
    assert evaluate.main(["--run", str(run), "--tasks", "24", "--samples", "4", "--verbose", "0"]) == 0
    result = json.loads((run / "eval_test.json").read_text())
    assert (run / "reliability_test.png").stat().st_size > 1000
    expected = {"posterior_predictive", "mean_weights"} if method == "abml" else {"prediction"}
    assert set(result["predictions"]) == expected
    for scores in result["predictions"].values():
        assert 0.3 < scores["accuracy"] <= 1 and 0 < scores["accuracy_ci95"] < 0.2
        assert scores["nll"] > 0 and 0 <= scores["brier"] <= 2 and 0 <= scores["ece"] <= 1
        assert 0 <= scores["ood_auroc"] <= 1
    assert result["tasks"] == 24 and result["ece_bins"] == 15
    assert "accuracy" in capsys.readouterr().out


def test_evaluate_errors(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert evaluate.main(["--run", str(tmp_path), "--tasks", "0"]) == 2

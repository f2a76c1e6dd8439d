"""python -m training.predict on real Omniglot PNGs and JPEGs with a committed SavedModel; bad input."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

from training import predict

MODEL = predict.pathlib.Path(__file__).resolve().parents[2] / "savedmodels" / "omniglot-5w1s" / "1"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, data_dir):
    """A 5-way 1-shot task of Omniglot test characters as a user's folders: support/<class>/, query/<class>/."""
    from PIL import Image

    from tfp_abml.data import omniglot_task

    root = tmp_path_factory.mktemp("predict")
    support, names, query, truth = omniglot_task(data_dir, ways=5, shots=1, queries=4, seed=11)
    for kind, images, labels in (("support", support, names), ("query", query, truth)):
        for i, (image, name) in enumerate(zip(images, labels)):
            folder = root / kind / name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(image[..., 0])
            if i % 3 == 1:  # some RGB JPEGs among the grey PNGs
                picture.convert("RGB").save(folder / f"{i}.jpg", quality=95)
            else:
                picture.save(folder / f"{i}.png")
    return root


def test_prints_a_table_and_writes_csv_json_and_a_sheet(folders, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main(["--model", str(MODEL), "--support", str(folders / "support"), "--query",
                         str(folders / "query"), "--output", str(out / "predictions.csv"),
                         "--sheet", str(out / "sheet.png"), "--min-confidence", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "predicted" in printed and "accuracy" in printed and "(true classes from the query folders)" in printed
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 20
    assert {"file", "predicted", "probability", "entropy", "uncertain", "true_class"} <= set(rows[0])
    accuracy = np.mean([r["predicted"] == r["true_class"] for r in rows])
    assert accuracy >= 0.8  # the committed model scores ~98% on such tasks; chance is 20%
    for row in rows:
        assert (float(row["probability"]) < 0.9) == (row["uncertain"] == "True")
    assert (out / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert predict.main(["--model", str(MODEL), "--support", str(folders / "support"), "--query",
                         *map(str, sorted((folders / "query").rglob("*.png"))[:3]), "--output",
                         str(out / "three.json"), "--verbose", "0"]) == 0
    data = json.loads((out / "three.json").read_text())
    assert len(data["predictions"]) == 3 and len(data["classes"]) == 5
    assert "true_class" not in data["predictions"][0]  # loose files: no known classes


def _copy(folders, tmp_path):
    shutil.copytree(folders / "support", tmp_path / "support")
    return tmp_path / "support"


@pytest.mark.parametrize("case, message", [
    ("one class", "has one class"),
    ("empty class", "holds no images"),
    ("not an image", "cannot be read as an image"),
    ("zero bytes", "is empty \\(0 bytes\\)"),
    ("bad output", "give a file ending in .csv or .json"),
    ("missing query", "does not exist"),
    ("loose support", "has no class folders"),
])
def test_bad_input_is_one_error_line_and_exit_2(folders, tmp_path, capsys, case, message):
    support, query, extra = _copy(folders, tmp_path), str(folders / "query"), []
    classes = sorted(support.iterdir())
    if case == "one class":
        for folder in classes[1:]:
            shutil.rmtree(folder)
    elif case == "empty class":
        (support / "empty").mkdir()
    elif case == "not an image":
        (classes[0] / "notes.png").write_text("not a picture")
    elif case == "zero bytes":
        (classes[0] / "blank.png").write_bytes(b"")
    elif case == "bad output":
        extra = ["--output", str(tmp_path / "predictions.txt")]
    elif case == "missing query":
        query = str(tmp_path / "nowhere")
    elif case == "loose support":
        for file in support.rglob("*.png"):
            file.rename(support / file.name)
        for folder in classes:
            shutil.rmtree(folder)
    output = tmp_path / "result.csv"
    outputs = extra or ["--output", str(output)]
    code = predict.main(["--model", str(MODEL), "--support", str(support), "--query", query, *outputs])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
    assert not output.exists()


def test_the_committed_model_serves_fewer_classes_than_it_was_checked_at(folders, tmp_path):
    """Its SavedModel takes N from the labels: a 3-class support set gets 3-way answers."""
    support = _copy(folders, tmp_path)
    for folder in sorted(support.iterdir())[3:]:
        shutil.rmtree(folder)
    out = tmp_path / "three.json"
    assert predict.main(["--model", str(MODEL), "--support", str(support), "--query", str(folders / "query"),
                         "--output", str(out), "--verbose", "0"]) == 0
    data = json.loads(out.read_text())
    kept = sorted(p.name for p in support.iterdir())
    assert sorted(data["classes"]) == kept and {row["predicted"] for row in data["predictions"]} <= set(kept)

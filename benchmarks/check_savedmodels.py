"""Check the committed SavedModels with TensorFlow alone: no tfp_abml import, nothing trained.

    python benchmarks/check_savedmodels.py --data-dir ../shared/data [--tasks 600]

Reads the Omniglot PNGs straight from Lake's zips, builds seeded test tasks of the Vinyals split
(each character at 0/90/180/270 degrees a class), feeds each task to the model's
``serving_default`` signature as the images come from the PNGs (105 x 105, scaled to [0, 1], white
background 1.0) and scores the returned probabilities: accuracy with its 95% interval
(1.96 x std over tasks / sqrt(tasks)) and ECE over 15 equal-width confidence bins. The tasks are
not the ones ``benchmarks/accuracy.py`` drew, and the Bayesian models sample their posterior
afresh on every call, so the figures agree with that benchmark's within its intervals, not exactly.
Writes ``benchmarks/results/savedmodels_check.json``.
"""

import argparse
import json
import os
import pathlib
import re
import sys
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHIVES = ("images_background.zip", "images_evaluation.zip")


def test_classes(data_dir):
    """float32 ``[classes, 20, 105, 105, 1]`` of the Vinyals test split, rotations included."""
    entries = [line.strip().split("/") for line in
               (data_dir / "omniglot" / "splits" / "vinyals" / "test.txt").read_text().splitlines() if line.strip()]
    wanted = {f"{alphabet}/{character}" for alphabet, character, _ in entries}
    pngs = {}
    for archive in ARCHIVES:
        with zipfile.ZipFile(data_dir / "omniglot" / archive) as zf:
            for name in sorted(zf.namelist()):
                parts = name.split("/")
                if len(parts) == 4 and name.endswith(".png") and f"{parts[1]}/{parts[2]}" in wanted:
                    pngs.setdefault(f"{parts[1]}/{parts[2]}", []).append(zf.read(name))
    missing = wanted - set(pngs)
    if missing:
        sys.exit(f"error: {len(missing)} test characters not found in the archives, e.g. {sorted(missing)[0]}")
    decoded = {key: np.stack([tf.io.decode_png(data, channels=1).numpy() for data in images])
               for key, images in pngs.items()}
    classes = [np.rot90(decoded[f"{a}/{c}"], k=int(rot[3:]) // 90, axes=(1, 2)) for a, c, rot in entries]
    return np.stack(classes).astype(np.float32) / 255.0


def expected_calibration_error(probabilities, labels, bins=15):
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
                     for b in range(bins) if np.any(which == b)))


def check(model_dir, classes, ways, shots, queries, tasks, seed):
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    rng = np.random.default_rng(seed)
    accuracies, all_probabilities, all_labels = [], [], []
    start = time.perf_counter()
    for task in range(tasks):
        chosen = rng.choice(len(classes), ways, replace=False)
        support, query = [], []
        for c in chosen:
            order = rng.permutation(classes.shape[1])
            support.append(classes[c, order[:shots]])
            query.append(classes[c, order[shots:shots + queries]])
        labels = np.repeat(np.arange(ways, dtype=np.int32), queries)
        probabilities = serve(support_images=tf.constant(np.concatenate(support)),
                              support_labels=tf.constant(np.repeat(np.arange(ways, dtype=np.int32), shots)),
                              query_images=tf.constant(np.concatenate(query)))["probabilities"].numpy()
        accuracies.append(np.mean(probabilities.argmax(axis=1) == labels))
        all_probabilities.append(probabilities)
        all_labels.append(labels)
        if (task + 1) % 100 == 0:
            print(f"  {model_dir}: {task + 1}/{tasks} tasks, {time.perf_counter() - start:.0f} s", flush=True)
    accuracies = np.array(accuracies)
    return {"accuracy": float(accuracies.mean()),
            "ci95": float(1.96 * accuracies.std() / np.sqrt(tasks)),
            "ece": expected_calibration_error(np.concatenate(all_probabilities), np.concatenate(all_labels)),
            "tasks": tasks, "queries_per_class": queries, "seed": seed,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding omniglot/images_*.zip and omniglot/splits/vinyals/")
    p.add_argument("--models", nargs="+", default=["5w1s", "5w5s", "20w1s", "20w5s"])
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "savedmodels_check.json"))
    args = p.parse_args(argv)
    classes = test_classes(pathlib.Path(args.data_dir))
    print(f"{classes.shape[0]} test classes of {classes.shape[1]} images {classes.shape[2]}x{classes.shape[3]}")
    results = {}
    for setting in args.models:
        match = re.fullmatch(r"(\d+)w(\d+)s", setting)
        if not match:
            sys.exit(f"error: --models takes settings like 5w1s, got {setting!r}")
        ways, shots = map(int, match.groups())
        model_dir = ROOT / "savedmodels" / f"omniglot-{setting}" / "1"
        results[setting] = check(model_dir, classes, ways, shots, args.queries, args.tasks, args.seed)
        r = results[setting]
        print(f"{setting}: {100 * r['accuracy']:.1f} +- {100 * r['ci95']:.1f}%  ECE {100 * r['ece']:.1f}%", flush=True)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"tensorflow": tf.__version__, "results": results}, indent=2))
    temporary.replace(output)


if __name__ == "__main__":
    main()

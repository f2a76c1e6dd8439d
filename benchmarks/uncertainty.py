"""Uncertainty where it matters: every trained model on the same tasks, in distribution, on unseen classes and under shift.

    python benchmarks/uncertainty.py --data-dir ../shared/data --tag step80 \
        --run abml=runs/protocol-step80/omniglot-60w1s-abml \
        --run protonet=runs/protocol-step80/omniglot-60w1s-protonet

For each ``--ways`` (1-shot) and each model: temperatures are fitted by NLL on
``--calibration-tasks`` validation tasks (Guo et al., 2017; never on test tasks) for every
prediction the model offers, so each row also appears temperature-scaled (``+ TS``). Then, on the
same seeded test tasks for every model:

* in distribution (``--tasks``): accuracy, NLL, Brier, ECE (15 bins) with bootstrap 95% intervals
  over tasks, mean confidence, accuracy at 50/80/90% coverage and AURC;
* unseen classes (``--tasks`` 2N-way tasks, half the classes absent from the support set): AUROC
  and FPR at 95% TPR of one minus the max probability, the entropy and, for posterior predictives
  and ensembles, the mutual information;
* shift, Omniglot-C (``tfp_abml.data.corruptions``): every corruption at every severity on
  ``--corruption-tasks`` tasks at ``--corruption-ways``, every image of the task corrupted:
  accuracy, NLL, ECE and mean confidence, and per severity the median ECE over corruptions.

``--ensemble NAME=DIR,DIR,...`` adds a deep ensemble of trained runs (probabilities averaged).
``--eval-inner-steps NAME=K`` predicts with ``K`` inner steps for the run named ``NAME`` (a run
may be given twice under two names, to compare it with and without its inner loop on the same
tasks: under shift the support images are corrupted too, so what the inner loop has to fit
changes).
Writes ``benchmarks/results/uncertainty_omniglot_1shot[-TAG].json`` and ``.md`` (the tables),
``..._<N>way_shift.png`` (ECE and accuracy across corruptions against severity, one box per model)
and ``omniglot_c_examples.png`` (one character under every corruption and severity).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
SHIFT_MEASURES = ("accuracy", "nll", "ece", "mean_confidence", "nll_difference")


def named_path(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, path


def row_names(model_name, served, names):
    """Table labels for a model's named predictions: the served one is the model's name."""
    labels = {}
    for name in names:
        base = name.replace("_temperature_scaled", "")
        label = model_name if base == served else f"{model_name} [{base}]"
        labels[name] = label + (" + TS" if name.endswith("_temperature_scaled") else "")
    return labels


def named_steps(text):
    name, path = named_path(text)
    if not path.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=K with K a whole number of inner steps, got {text!r}")
    return name, int(path)


def load(name, paths, ways, data_dir, samples, queries=None, eval_inner_steps=None):
    from tfp_abml.evaluation import Ensemble
    from tfp_abml.runs import load_run

    loaded = [load_run(path, ways=ways, data_dir=data_dir, queries=queries, eval_inner_steps=eval_inner_steps)
              for path in paths]
    config = loaded[0][0]
    model = loaded[0][1] if len(loaded) == 1 else Ensemble([m for _, m in loaded])
    if samples is not None and hasattr(model, "eval_samples"):
        model.eval_samples = samples
    return config, model, [m.loaded_weights for _, m in loaded]


def measure_model(name, paths, ways, args, log):
    import numpy as np

    from tfp_abml.data.corruptions import CORRUPTIONS
    from tfp_abml.evaluation import evaluate, fit_temperatures, task_sampler

    config, model, weights = load(name, paths, ways, args.data_dir, args.samples, args.queries,
                                  dict(args.eval_inner_steps).get(name))
    started = time.perf_counter()
    temperatures = fit_temperatures(config, model, args.calibration_tasks, args.seed, progress=False)["temperatures"]
    log(f"{name} {ways}-way: temperatures {', '.join(f'{n} {t:.3f}' for n, t in temperatures.items())} "
        f"({time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    clean = evaluate(model, task_sampler(config, "test", args.seed),
                     task_sampler(config, "test", args.seed + 1, ways=2 * ways), tasks=args.tasks,
                     meta_batch=config.meta_batch, progress=False, temperatures=temperatures, seed=args.seed)
    labels = row_names(name, model.served_prediction, clean["predictions"])
    rows = {labels[n]: {"in_distribution": s} for n, s in clean["predictions"].items()}
    log(f"{name} {ways}-way: in distribution and unseen classes ({time.perf_counter() - started:.0f} s)")
    if ways in args.corruption_ways:
        started = time.perf_counter()
        for corruption in args.corruptions or CORRUPTIONS:
            for severity in args.severities:
                shifted = evaluate(model, task_sampler(config, "test", args.seed, corruption=corruption,
                                                       severity=severity),
                                   tasks=args.corruption_tasks, meta_batch=config.meta_batch, progress=False,
                                   temperatures=temperatures, seed=args.seed)
                for n, s in shifted["predictions"].items():
                    rows[labels[n]].setdefault("shift", {}).setdefault(corruption, {})[str(severity)] = {
                        k: s[k] for k in SHIFT_MEASURES if k in s}
        log(f"{name} {ways}-way: {len(args.corruptions or CORRUPTIONS)} corruptions x {len(args.severities)} "
            f"severities ({time.perf_counter() - started:.0f} s)")
        for row in rows.values():
            row["shift_median_ece"] = {str(s): float(np.median([row["shift"][c][str(s)]["ece"] for c in row["shift"]]))
                                       for s in args.severities}
    meta = {"runs": [str(p) for p in paths], "weights": weights, "temperatures": temperatures,
            "samples": getattr(model, "eval_samples", None), "eval_inner_steps": getattr(model, "eval_inner_steps", None)}
    return {label: dict(row, model=meta) for label, row in rows.items()}


def table(results):
    lines = []
    for ways, rows in results.items():
        lines += [f"\n### {ways}-way 1-shot\n",
                  "| model | accuracy | NLL | ECE | Brier | acc. @80% cov. | AURC | OOD AUROC (1-max p / entropy / MI) "
                  "| FPR@95 (entropy) | median shift ECE, sev. 1..5 |", "|---" * 10 + "|"]
        for label, row in rows.items():
            s = row["in_distribution"]
            ood = s.get("ood", {})
            aurocs = " / ".join(f"{ood[k]['auroc']:.3f}" if k in ood else "-"
                                for k in ("max_probability", "entropy", "mutual_information"))
            fpr = f"{100 * ood['entropy']['fpr_at_95_tpr']:.1f}%" if "entropy" in ood else "-"
            shift = " / ".join(f"{100 * v:.1f}" for v in row.get("shift_median_ece", {}).values()) or "-"
            lines.append(
                f"| {label} | {100 * s['accuracy']:.2f} +- {100 * s['accuracy_ci95']:.2f}% "
                f"| {s['nll']:.3f} [{s['nll_ci95'][0]:.3f}, {s['nll_ci95'][1]:.3f}] "
                f"| {100 * s['ece']:.2f}% [{100 * s['ece_ci95'][0]:.2f}, {100 * s['ece_ci95'][1]:.2f}] "
                f"| {s['brier']:.4f} | {100 * s['accuracy_at_80_coverage']:.2f}% | {s['aurc']:.4f} | {aurocs} "
                f"| {fpr} | {shift} |")
        lines += paired_table(rows)
    return "\n".join(lines) + "\n"


def paired_table(rows):
    """What the weight uncertainty buys: each paired NLL difference (the posterior predictive minus the
    posterior means, same tasks) in distribution, and over the corruption suite the number of
    conditions where the interval lies wholly below zero (better) or above (worse)."""
    import numpy as np

    paired = {label: row for label, row in rows.items() if "nll_difference" in row["in_distribution"]}
    if not paired:
        return []
    lines = ["", "NLL of the posterior predictive minus the posterior means' on the same tasks (paired bootstrap "
             "95% interval over tasks); under shift: conditions (corruption x severity) where the whole "
             "interval is below zero (predictive better) or above (worse), and the median difference per severity.",
             "", "| prediction | in distribution | shift: better / worse / conditions | median shift difference, sev. 1..5 |",
             "|---|---|---|---|"]
    for label, row in paired.items():
        d = row["in_distribution"]["nll_difference"]
        shifted = [v["nll_difference"] for c in row.get("shift", {}).values() for v in c.values() if "nll_difference" in v]
        counts = "-"
        medians = "-"
        if shifted:
            better = sum(v["ci95"][1] < 0 for v in shifted)
            worse = sum(v["ci95"][0] > 0 for v in shifted)
            counts = f"{better} / {worse} / {len(shifted)}"
            severities = sorted({s for c in row["shift"].values() for s in c}, key=int)
            medians = " / ".join(f"{np.median([c[s]['nll_difference']['difference'] for c in row['shift'].values()]):+.4f}"
                                 for s in severities)
        lines.append(f"| {label} | {d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | {counts} "
                     f"| {medians} |")
    return lines


def plot_shift(rows, ways, severities, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The served prediction of each model, raw and temperature-scaled (not the posterior-mean rows).
    shifted = {label: row for label, row in rows.items() if "shift" in row and "[" not in label}
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(shifted), 1)
    for axis, measure, scale in ((axes[0], "ece", 100), (axes[1], "accuracy", 100)):
        for i, (label, row) in enumerate(shifted.items()):
            data = [[scale * row["shift"][c][str(s)][measure] for c in row["shift"]] for s in severities]
            positions = [s + (i - (len(shifted) - 1) / 2) * width for s in severities]
            boxes = axis.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, manage_ticks=False)
            colour = (plt.cm.tab10 if len(shifted) <= 10 else plt.cm.tab20)(i)
            for box in boxes["boxes"]:
                box.set_facecolor(colour)
            axis.plot([], [], color=colour, linewidth=8, label=label)
        axis.set_xticks(severities)
        axis.set_xlabel("Omniglot-C severity (each box: the corruptions)")
        axis.set_ylabel({"ece": "ECE (%)", "accuracy": "accuracy (%)"}[measure])
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Omniglot {ways}-way 1-shot under shift")
    figure.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    tmp.replace(path)


def plot_examples(data_dir, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from tfp_abml.data.corruptions import CORRUPTIONS, corrupt
    from tfp_abml.data.splits import omniglot_split

    image = omniglot_split("test", "vinyals", data_dir, 28).images[3, :1]
    figure, axes = plt.subplots(len(CORRUPTIONS), 6, figsize=(6, 8.4))
    for row, name in enumerate(CORRUPTIONS):
        axes[row, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
        for severity in range(6):
            shown = image[0] if severity == 0 else corrupt(image, name, severity, np.random.default_rng(severity))[0]
            axes[row, severity].imshow(shown, cmap="gray", vmin=0, vmax=255)
    for severity in range(6):
        axes[0, severity].set_title("clean" if severity == 0 else f"severity {severity}", fontsize=7)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def replot(path):
    """The shift plots of a results file, from its numbers (``--replot``)."""
    import json

    record = json.loads(path.read_text())
    for setting, rows in record["results"].items():
        ways = int(setting.split("-way")[0])
        shifted = [row for row in rows.values() if "shift" in row]
        if shifted:
            severities = sorted({int(s) for c in shifted[0]["shift"].values() for s in c})
            out = path.with_name(f"{path.stem}_{ways}way_shift.png")
            plot_shift(rows, ways, severities, out)
            print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--run", type=named_path, action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--ensemble", type=named_path, action="append", default=[], metavar="NAME=DIR,DIR,...")
    p.add_argument("--eval-inner-steps", type=named_steps, action="append", default=[], metavar="NAME=K",
                   help="inner steps at prediction for the --run NAME (abml, maml, metasgd; default: the run's own)")
    p.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--calibration-tasks", type=int, default=300)
    p.add_argument("--corruption-tasks", type=int, default=200)
    p.add_argument("--corruption-ways", type=int, nargs="+", default=[5])
    p.add_argument("--corruptions", nargs="+", default=None)
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--samples", type=int, default=None, help="posterior draws (Bayesian models); default the run's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=None,
                   help="queries per class of every task (default: the first run's own --queries; "
                        "benchmarks/protocol.py evaluates with 15)")
    p.add_argument("--tag", default="")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="only redraw the shift plots of a results file this script wrote (nothing is evaluated)")
    args = p.parse_args(argv)
    if args.replot:
        return replot(pathlib.Path(args.replot))
    models = [(name, [path]) for name, path in args.run] + [(name, paths.split(",")) for name, paths in args.ensemble]
    if not models:
        p.error("give at least one --run NAME=DIR or --ensemble NAME=DIR,DIR")
    unknown = sorted({name for name, _ in args.eval_inner_steps} - {name for name, _ in args.run})
    if unknown:
        p.error(f"--eval-inner-steps names no --run: {', '.join(unknown)}")
    from tfp_abml.checkpointing import write_json_atomic

    suffix = f"-{args.tag}" if args.tag else ""
    began = time.perf_counter()
    log = lambda text: print(f"[{(time.perf_counter() - began) / 60:5.1f} min] {text}", flush=True)
    results = {}
    for ways in args.ways:
        results[ways] = {}
        for name, paths in models:
            results[ways].update(measure_model(name, paths, ways, args, log))
        if ways in args.corruption_ways:
            plot_shift(results[ways], ways, args.severities, RESULTS / f"uncertainty_omniglot_1shot{suffix}_{ways}way_shift.png")
    out = RESULTS / f"uncertainty_omniglot_1shot{suffix}.json"
    write_json_atomic(out, {"command": "python benchmarks/uncertainty.py " + " ".join(argv or sys.argv[1:]),
                            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
                            "minutes": (time.perf_counter() - began) / 60, "seed": args.seed,
                            "tasks": args.tasks, "corruption_tasks": args.corruption_tasks,
                            "queries_per_class": args.queries or "the run's",
                            "calibration_tasks": args.calibration_tasks,
                            "results": {f"{w}-way 1-shot": rows for w, rows in results.items()}})
    text = table(results)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(f"# Uncertainty benchmark{suffix}\n\n`{json.loads(out.read_text())['command']}`\n{text}")
    tmp.replace(out.with_suffix(".md"))
    plot_examples(args.data_dir, RESULTS / "omniglot_c_examples.png")
    print(text)
    print(f"wrote {out} and its .md and plots")


if __name__ == "__main__":
    main()

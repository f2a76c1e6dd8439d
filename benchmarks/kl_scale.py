"""The KL scale, measured: one trained abml run fine-tuned at each ``kl_scale``, every result on the same tasks.

    python benchmarks/kl_scale.py --data-dir ../shared/data --run runs/protocol-residual80/omniglot-60w1s-abml \
        --kl-scales 1e-6 1e-5 1e-4 1e-3 --epochs 12 --tag residual80

Training abml from scratch per ``kl_scale`` costs an hour or more of CPU each; the posterior's
scales, which the KL term acts on, settle far faster. So every value starts from the same trained
weights (``training.fit --init-weights``) and trains ``--epochs`` more epochs (of the run's own
steps and task shape) at a constant ``--learning-rate``, the run's own ``kl_scale`` included as the
control (it gets the same extra training). Epochs, not minutes: every value gets the same updates
whatever else shares the machine. Two fine-tunes run at a time (``--parallel``).

For each value: validation NLL and accuracy of its best epoch (``history.json``: the selection
criterion, never test tasks), then ``training.evaluate`` on ``--tasks`` test tasks at each
``--eval-ways`` 1-shot (the same seeded tasks for every value): accuracy, NLL, ECE, OOD AUROC of
the posterior predictive, the NLL of the posterior means beside it (what the weight uncertainty
adds), and the mean posterior scale per layer after the inner loop on 20 validation tasks.

Writes ``benchmarks/results/kl_scale_omniglot[-TAG].json`` (every figure and command, and
``best_kl_scale``, lowest validation NLL) and ``kl_scale_omniglot[-TAG].png`` (the measures
against ``kl_scale``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shlex
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

from protocol import evaluate  # noqa: E402  (benchmarks/ is this script's folder: on sys.path)


def fit_command(run, kl_scale, output, data_dir, epochs, learning_rate, fit_flags=""):
    return [sys.executable, "-m", "training.fit", "--config", str(pathlib.Path(run) / "config.json"),
            "--init-weights", str(run), "--kl-scale", f"{kl_scale:g}", "--lr-schedule", "constant",
            "--learning-rate", f"{learning_rate:g}", "--epochs", str(epochs), *shlex.split(fit_flags),
            "--data-dir", str(data_dir), "--output", str(output), "--verbose", "2"]


def fine_tune_all(run, kl_scales, runs_dir, data_dir, epochs, learning_rate, parallel, fit_flags=""):
    """Fine-tune at every ``kl_scale``, ``parallel`` at a time; a finished fine-tune is not redone."""
    pending = [k for k in kl_scales if not (run_folder(runs_dir, k) / "model.weights.h5").is_file()]
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        children = []
        for kl_scale in batch:
            log = open(runs_dir / f"kl-{kl_scale:g}.log", "a")
            command = fit_command(run, kl_scale, run_folder(runs_dir, kl_scale), data_dir, epochs, learning_rate,
                                  fit_flags)
            children.append((kl_scale, log, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)))
            print(f"kl_scale {kl_scale:g}: fine-tuning for {epochs} epochs, log in {log.name}", flush=True)
        for kl_scale, log, child in children:
            code = child.wait()
            log.close()
            if code != 0:
                raise SystemExit(f"error: the fine-tune at kl_scale {kl_scale:g} failed; see its log")


def run_folder(runs_dir, kl_scale):
    return runs_dir / f"kl-{kl_scale:g}"


def posterior_scales(run, tasks=20):
    """Mean posterior scale of each layer's kernel and bias after the inner loop, over 5-way 1-shot
    validation tasks, and the learned prior's (None for the standard prior)."""
    import tensorflow as tf

    from tfp_abml.data import episode_dataset
    from tfp_abml.flipout import scale_from_rho
    from tfp_abml.runs import load_run

    config, model = load_run(run, ways=5, shots=1, queries=5)
    validation = config.validation_sampler()
    inputs, _ = next(iter(episode_dataset(validation, tasks, episodes=tasks)))
    params, _ = model.adapt_and_embed_queries(inputs, training=False)  # as evaluation adapts
    posterior = [{"kernel": float(tf.reduce_mean(scale_from_rho(layer.kernel_rho))),
                  "bias": float(tf.reduce_mean(scale_from_rho(layer.bias_rho)))} for layer in params]
    return posterior, (model.prior.mean_scales() if model.prior is not None else None)


def plot(rows, path, ways):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["kl_scale"] for r in rows]
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.4))
    for ax, (title, key) in zip(axes, [("accuracy (%)", "accuracy"), ("NLL", "nll"), ("ECE (%)", "ece"),
                                       ("OOD AUROC (entropy)", "ood_auroc")]):
        for w in ways:
            values = [r["test"][f"{w}-way"]["posterior_predictive"][key] for r in rows]
            values = [100 * v for v in values] if key in ("accuracy", "ece") else values
            ax.plot(scales, values, "o-", label=f"{w}-way 1-shot")
            if key == "nll":
                means = [r["test"][f"{w}-way"]["mean_weights"]["nll"] for r in rows]
                ax.plot(scales, means, "x--", color=ax.lines[-1].get_color(), label=f"{w}-way, posterior means")
        ax.set_title(title)
    axes[1].legend(fontsize=7)
    ax = axes[4]
    for depth in range(len(rows[0]["posterior_scales"])):
        ax.plot(scales, [r["posterior_scales"][depth]["kernel"] for r in rows], "s-", label=f"layer {depth + 1} kernel")
    ax.set_yscale("log")
    ax.set_title("mean posterior scale (adapted)")
    ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("kl_scale")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)


def summary(result):
    keep = ("accuracy", "accuracy_ci95", "nll", "nll_ci95", "ece", "ece_ci95", "brier", "ood_auroc", "ood")
    return {name: {k: v for k, v in prediction.items() if k in keep}
            for name, prediction in result["predictions"].items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--run", required=True, help="a trained abml run (training.fit --output)")
    p.add_argument("--kl-scales", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4, 1e-3])
    p.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs per kl_scale (the run's steps per epoch)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="constant Adam rate of the fine-tunes")
    p.add_argument("--parallel", type=int, default=2, help="fine-tunes at a time")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--eval-ways", type=int, nargs="+", default=[5])
    p.add_argument("--fit-flags", default="", metavar="FLAGS",
                   help='more training.fit flags for every fine-tune, e.g. "--train-samples 8"')
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    from tfp_abml.checkpointing import read_json, write_json_atomic
    from tfp_abml.run_config import RunConfig

    if RunConfig.load(pathlib.Path(args.run) / "config.json").method != "abml":
        raise SystemExit(f"error: {args.run} is not an abml run: the KL scale is abml's")
    suffix = f"-{args.tag}" if args.tag else ""
    runs_dir = REPO / "runs" / f"kl-scale{suffix}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    kl_scales = sorted(set(args.kl_scales))
    base = pathlib.Path(args.run).resolve()
    fine_tune_all(base, kl_scales, runs_dir, args.data_dir, args.epochs,
                  args.learning_rate, args.parallel, args.fit_flags)

    rows = []
    for kl_scale in kl_scales:
        run = run_folder(runs_dir, kl_scale)
        history, best = read_json(run / "history.json", {}), read_json(run / "best.json", {})
        epoch = history["epoch"].index(best["epoch"]) if best.get("epoch") in history.get("epoch", []) else -1
        row = {"kl_scale": kl_scale, "epochs": len(history.get("epoch", [])),
               "fit_command": shlex.join(["python", *fit_command(base, kl_scale, run, args.data_dir, args.epochs,
                                                                args.learning_rate, args.fit_flags)[1:]]),
               "val_nll": history["val_nll"][epoch], "val_accuracy": history["val_accuracy"][epoch],
               "val_kl": history.get("val_kl", [None])[epoch], "test": {}}
        for ways in args.eval_ways:
            result = evaluate("abml", run, ways, args.tasks, args.data_dir)  # protocol.py's evaluation
            row["test"][f"{ways}-way"] = {"command": result["command"], **summary(result)}
        row["posterior_scales"], row["prior_scales"] = posterior_scales(run)
        rows.append(row)
        s = row["test"][f"{args.eval_ways[0]}-way"]
        print(f"kl_scale {kl_scale:g}: val NLL {row['val_nll']:.4f}; test {args.eval_ways[0]}-way "
              f"{100 * s['posterior_predictive']['accuracy']:.2f}% NLL {s['posterior_predictive']['nll']:.4f} "
              f"(means {s['mean_weights']['nll']:.4f}) ECE {100 * s['posterior_predictive']['ece']:.2f}% "
              f"AUROC {s['posterior_predictive']['ood_auroc']:.3f}; output scale "
              f"{row['posterior_scales'][-1]['kernel']:.3g}", flush=True)
    best = min(rows, key=lambda r: r["val_nll"])
    out = RESULTS / f"kl_scale_omniglot{suffix}.json"
    write_json_atomic(out, {"command": "python benchmarks/kl_scale.py " + " ".join(argv or sys.argv[1:]),
                            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
                            "base_run_config": read_json(pathlib.Path(args.run) / "config.json", {}),
                            "best_kl_scale": best["kl_scale"], "rows": rows})
    figure = RESULTS / f"kl_scale_omniglot{suffix}.png"
    plot(rows, figure, args.eval_ways)
    print(f"lowest validation NLL at kl_scale {best['kl_scale']:g}; wrote {out} and {figure}")


if __name__ == "__main__":
    main()

"""Evaluate a trained run on fresh tasks: ``python -m training.evaluate --run DIR --tasks 600``.

Reports accuracy with its 95% confidence interval (1.96 x std / sqrt(tasks)), NLL, Brier
score and expected calibration error (15 equal-width bins) for every prediction the model
offers (for the Bayesian model: the posterior predictive over ``--samples`` draws and the
prediction of the posterior means), and the AUROC of predictive entropy separating queries
from classes absent from the support set (and of one minus the max probability, and of mutual
information for the posterior predictive, each with its FPR at 95% TPR). NLL, Brier and ECE carry
bootstrap 95% intervals over tasks; selective prediction gives the accuracy at 50/80/90% coverage
and the area under the risk-coverage curve (AURC). ``--calibrate`` fits temperature scaling on
validation tasks and stores it in the run; ``--corruption NAME --severity S`` evaluates the same
tasks under an Omniglot-C corruption. Writes ``DIR/eval_<split>[_<corruption><severity>].json``
and ``DIR/reliability_<split>[...].png``.
"""

from __future__ import annotations

import pathlib
import shlex
import sys

from tfp_abml.choices import CORRUPTIONS
from tfp_abml.errors import UserInputError
from tfp_abml.output_location import check_writable
from training._cli import Parser, run_command


def build_parser():
    p = Parser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory written by training.fit")
    p.add_argument("--tasks", type=int, default=600, help="test tasks (and as many OOD tasks)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="classes to draw tasks from")
    p.add_argument("--samples", type=int, default=None, help="posterior samples (Bayesian model); default the run's")
    p.add_argument("--ways", type=int, default=None,
                   help="override the run's ways (models that serve any N: protonet, matching, abml with "
                        "--posterior aligned --task-encoding pool)")
    p.add_argument("--weights", default="best", choices=("best", "last"),
                   help="best: the best validation epoch's weights (best.weights.h5) where the run has them; "
                        "last: the newest (a finished run's model.weights.h5, else the latest checkpoint)")
    p.add_argument("--shots", type=int, default=None, help="override the run's shots")
    p.add_argument("--eval-inner-steps", type=int, default=None,
                   help="inner SGD steps at prediction instead of the run's (abml, maml, metasgd; 0: none); "
                        "benchmarks/test_time.py measures the choice on validation tasks")
    p.add_argument("--queries", type=int, default=None, help="override the run's queries per class")
    p.add_argument("--data-dir", default=None, help="override the run's data directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation tasks")
    p.add_argument("--no-ood", action="store_true", help="skip the out-of-distribution pass")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature per prediction by NLL on validation tasks (never test tasks), store it in "
                        "the run (calibration.json: export then serves the scaled prediction) and report both")
    p.add_argument("--calibration-tasks", type=int, default=300, help="validation tasks --calibrate fits on")
    p.add_argument("--corruption", default=None, choices=CORRUPTIONS,
                   help="corrupt every image of the same tasks (Omniglot-C, see docs/evaluation.md)")
    p.add_argument("--severity", type=int, default=3, choices=(1, 2, 3, 4, 5), help="severity of --corruption")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1))
    return p


def run(args):
    from tfp_abml.checkpointing import write_json_atomic
    from tfp_abml.evaluation import evaluate_run
    from tfp_abml.metrics import ECE_BINS, plot_reliability
    from tfp_abml.runs import calibrate_run, load_run

    for flag in ("tasks", "samples", "ways", "shots", "queries", "calibration_tasks"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserInputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    run_dir = pathlib.Path(args.run)
    if (run_dir / "config.json").is_file():  # load_run names a folder that is not a run
        check_writable(run_dir, "--run")  # eval_<split>.json and the plot go there
        _check_folder_classes(run_dir, args)
    config, model = load_run(run_dir, weights=args.weights, ways=args.ways, shots=args.shots, queries=args.queries,
                             data_dir=args.data_dir, eval_inner_steps=args.eval_inner_steps)
    if args.verbose:
        print(f"evaluating {run_dir} with the weights of {model.loaded_weights}", flush=True)
    if args.calibrate:
        record = calibrate_run(run_dir, config, model, args.calibration_tasks, args.seed, args.samples,
                               progress=bool(args.verbose))
        print("temperatures (fitted on validation tasks): " + ", ".join(
            f"{name} {t:.3f} (NLL {record['nll_before'][name]:.3f} -> {record['nll_after'][name]:.3f})"
            for name, t in record["temperatures"].items()), flush=True)
    result = evaluate_run(config, model, args.split, args.tasks, args.seed, args.samples, ood=not args.no_ood,
                          progress=bool(args.verbose), corruption=args.corruption,
                          severity=args.severity if args.corruption else None)
    curves = {name: (p, result["labels"]) for name, p in result.pop("probabilities").items()}
    result.pop("labels")
    result.pop("mutual_information")
    suffix = f"{args.split}_{args.corruption}{args.severity}" if args.corruption else args.split
    result.update(command=getattr(args, "command", None), method=config.method, split=args.split, seed=args.seed,
                  ece_bins=ECE_BINS,
                  corruption=args.corruption, severity=args.severity if args.corruption else None,
                  temperatures=getattr(model, "temperatures", {}),
                  ways=config.ways, shots=config.shots, queries=config.queries, weights=model.loaded_weights,
                  samples=args.samples or getattr(model, "eval_samples", None),
                  eval_inner_steps=getattr(model, "eval_inner_steps", None),
                  confidence_interval="95%: 1.96 x std over tasks / sqrt(tasks)")
    write_json_atomic(run_dir / f"eval_{suffix}.json", result)
    figure = run_dir / f"reliability_{suffix}.png"
    shift = f", {args.corruption} at severity {args.severity}" if args.corruption else ""
    plot_reliability(curves, figure, title=f"{config.method}, {config.dataset} {config.ways}-way {config.shots}-shot, "
                                           f"{args.split}{shift} ({args.tasks} tasks)")
    print(format_table(result))
    print(f"wrote {run_dir / f'eval_{suffix}.json'} and {figure}")
    return result


def _check_folder_classes(run_dir, args):
    """A ``--dataset folder`` or ``tfds:NAME`` run: are the classes its ``classes.json`` records still
    those of the folder (of the TFDS dataset's seeded split)? Checked from the listing (TFDS's
    metadata), before the model is built."""
    import dataclasses

    from tfp_abml.data import tfds_datasets
    from tfp_abml.data.folder import check_recorded_classes
    from tfp_abml.run_config import RunConfig

    config = RunConfig.load(run_dir / "config.json")
    if tfds_datasets.is_tfds_dataset(config.dataset):
        for split in dict.fromkeys([args.split, "val"] if args.calibrate else [args.split]):
            tfds_datasets.check_recorded_classes(run_dir, config.dataset, args.data_dir or config.data_dir,
                                                 config.class_split, split)
        return
    if config.dataset != "folder":
        return
    data_dir = args.data_dir or config.data_dir
    config = dataclasses.replace(config, data_dir=data_dir)
    for split in dict.fromkeys([args.split, "val"] if args.calibrate else [args.split]):
        note = check_recorded_classes(run_dir, config.data_dir, config.class_split, split)
        if note:
            print(note, file=sys.stderr)


def format_table(result):
    """Accuracy, NLL, Brier, ECE, AURC and OOD AUROC (entropy; mutual information where there are draws);
    then each paired NLL difference (the posterior predictive against the posterior means)."""
    lines = [f"{'prediction':36s} {'accuracy':>16s} {'NLL':>7s} {'Brier':>7s} {'ECE':>7s} {'AURC':>7s} "
             f"{'OOD AUROC':>10s} {'(MI)':>6s}"]
    for name, s in result["predictions"].items():
        ood = f"{s['ood_auroc']:.3f}" if "ood_auroc" in s else "-"
        information = s.get("ood", {}).get("mutual_information")
        information = f"{information['auroc']:.3f}" if information else "-"
        lines.append(f"{name:36s} {100 * s['accuracy']:7.2f} +- {100 * s['accuracy_ci95']:5.2f}% "
                     f"{s['nll']:7.3f} {s['brier']:7.3f} {100 * s['ece']:6.2f}% {s['aurc']:7.4f} {ood:>10s} "
                     f"{information:>6s}")
    for name, s in result["predictions"].items():
        if "nll_difference" in s:
            d = s["nll_difference"]
            lines.append(f"{name} minus {d['reference']}: NLL {d['difference']:+.4f} "
                         f"(paired 95% interval over tasks [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}])")
    return "\n".join(lines)


def main(argv=None):
    def body(args):
        args = sys.argv[1:] if args is None else list(args)
        parsed = build_parser().parse_args(args)
        parsed.command = shlex.join(["python", "-m", "training.evaluate", *args])
        run(parsed)

    return run_command(body, argv)


if __name__ == "__main__":
    sys.exit(main())

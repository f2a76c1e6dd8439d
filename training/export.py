"""Export a trained run as a SavedModel for TF Serving: ``python -m training.export --run DIR --output PATH``.

The SavedModel's ``serving_default`` signature takes one task (``support_images``,
``support_labels``, ``query_images``) and returns ``probabilities``; see ``tfp_abml.export``.
Serve it with TF Serving, e.g.::

    docker run -p 8501:8501 -v "$PWD/savedmodels/omniglot-5w1s:/models/omniglot-5w1s" \\
        -e MODEL_NAME=omniglot-5w1s tensorflow/serving
"""

from __future__ import annotations

import sys

from tfp_abml.errors import UserInputError
from tfp_abml.output_location import check_writable
from training._cli import Parser, run_command


def build_parser():
    p = Parser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory written by training.fit")
    p.add_argument("--output", required=True, help="SavedModel folder, e.g. savedmodels/omniglot-5w1s/1")
    p.add_argument("--samples", type=int, default=None,
                   help="posterior samples baked into the signature (Bayesian model); default the run's")
    p.add_argument("--data-dir", default=None, help="override the run's data directory")
    p.add_argument("--eval-inner-steps", type=int, default=None,
                   help="inner SGD steps at prediction instead of the run's (abml, maml, metasgd; 0: none); "
                        "benchmarks/test_time.py measures the choice on validation tasks")
    p.add_argument("--ways", type=int, default=None,
                   help="serve exactly this many classes per request; without it a model whose weights serve any "
                        "N (protonet, matching, abml --posterior aligned --task-encoding pool) takes N from each "
                        "request's labels, up to --max-ways, and any other model serves its trained N")
    p.add_argument("--calibrate", action="store_true",
                   help="first fit the served prediction's temperature on validation tasks and store it in the run, "
                        "as training.evaluate --calibrate does; the SavedModel then serves the scaled prediction")
    p.add_argument("--calibration-tasks", type=int, default=300, help="validation tasks --calibrate fits on")
    p.add_argument("--max-ways", type=int, default=None,
                   help="the most classes per request a model that serves any N accepts (default 100)")
    p.add_argument("--weights", default="best", choices=("best", "last"),
                   help="best: the best validation epoch's weights where the run has them; last: the newest "
                        "(a finished run's model.weights.h5, else the latest checkpoint)")
    return p


def run(argv):
    args = build_parser().parse_args(argv)
    from tfp_abml.export import MAX_SERVED_WAYS, check_output, export_saved_model
    from tfp_abml.runs import load_run

    if args.samples is not None and args.samples < 1:
        raise UserInputError(f"--samples must be >= 1, got {args.samples}")
    check_output(args.output)  # before loading the model, not after
    check_writable(args.output)
    if args.ways is not None and args.ways < 2:
        raise UserInputError(f"--ways must be >= 2, got {args.ways}")
    if args.calibration_tasks < 1:
        raise UserInputError(f"--calibration-tasks must be >= 1, got {args.calibration_tasks}")
    if args.max_ways is not None and args.max_ways < 2:
        raise UserInputError(f"--max-ways must be >= 2, got {args.max_ways}")
    config, model = load_run(args.run, weights=args.weights, ways=args.ways, data_dir=args.data_dir,
                             eval_inner_steps=args.eval_inner_steps)
    if args.samples is not None and hasattr(model, "eval_samples"):
        model.eval_samples = args.samples
    if args.calibrate:
        from tfp_abml.runs import calibrate_run

        check_writable(args.run, "--run")  # calibration.json goes into the run
        record = calibrate_run(args.run, config, model, args.calibration_tasks)
        name = model.served_prediction
        print(f"temperature of {name}: {record['temperatures'][name]:.3f} (NLL on {args.calibration_tasks} validation "
              f"tasks {record['nll_before'][name]:.3f} -> {record['nll_after'][name]:.3f})")
    any_ways = model.serves_any_ways and args.ways is None
    if args.max_ways is not None and not any_ways:
        raise UserInputError(f"--max-ways applies to models that serve any N without --ways; this export serves "
                             f"{config.ways}-way tasks only")
    path = export_saved_model(model, config.resolved_image_size, args.output, any_ways=any_ways,
                              max_ways=args.max_ways)
    served = f"2 to {args.max_ways or MAX_SERVED_WAYS} classes, N from the labels" if any_ways else f"{config.ways}-way"
    print(f"wrote {path}: serving_default(support_images, support_labels, query_images) -> probabilities "
          f"[{served}, {config.method}, weights of {model.loaded_weights}]")


def main(argv=None):
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Ablation of the amortized BNN: each change to the paper's method, trained alike, scored alike.

    python benchmarks/ablation.py --data-dir ../shared/data --setting 5w1s --episodes 3000

Every variant trains from scratch for the same number of episodes (not wall-clock time, so
that a busy machine changes how long it takes, not the result), with the same seed, then is
evaluated on the same ``--tasks`` seeded test tasks of the Vinyals split (accuracy with 95% CI,
ECE over 15 bins, NLL, OOD AUROC), as in ``benchmarks/accuracy.py``. Writes
``benchmarks/results/ablation_omniglot_<setting>.json`` and ``ablation_omniglot_<setting>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from accuracy import ABML_VARIANTS as VARIANTS  # noqa: E402
from accuracy import RESULTS, headline, parse_setting, train_and_evaluate  # noqa: E402

def write_table(path, results):
    rows = ["| variant | change | acc. (95% CI) | ECE | NLL | OOD AUROC | mean-weight acc. | train s |",
            "|---|---|---|---|---|---|---|---|"]
    for name, result in results["variants"].items():
        h, mean = headline(result), result["predictions"].get("mean_weights", {})
        rows.append(f"| {name} | {VARIANTS[name][0]} | {100 * h['accuracy']:.1f} +- {100 * h['accuracy_ci95']:.1f}% "
                    f"| {100 * h['ece']:.1f}% | {h['nll']:.3f} | {h.get('ood_auroc', float('nan')):.3f} "
                    f"| {100 * mean.get('accuracy', float('nan')):.1f}% | {result['train_seconds']:.0f} |")
    text = "\n".join(rows) + f"\n\nBudget: {results['budget']}\n"
    path.write_text(text)
    return text


def main(argv=None):
    from tfp_abml.checkpointing import write_json_atomic
    from tfp_abml.run_config import RunConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--setting", default="5w1s")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--episodes", type=int, default=3000, help="training episodes per variant")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs/ablation")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args(argv)
    ways, shots = parse_setting(args.setting)
    epochs = max(args.episodes // (args.meta_batch * args.steps_per_epoch), 1)

    path = RESULTS / f"ablation_omniglot_{args.setting}.json"
    budget = (f"{epochs * args.steps_per_epoch * args.meta_batch} training episodes per variant (conv4, meta-batch "
              f"{args.meta_batch}, 15 queries per class, 5 inner steps at 0.5, seed {args.seed}); {args.tasks} test "
              f"tasks of the Vinyals split; trained on {platform.machine()} with {os.cpu_count()} CPU cores")
    previous = json.loads(path.read_text()) if path.is_file() else {}
    results = {"budget": budget, "variants": {}}
    if previous.get("budget") == budget:
        results["variants"] = dict(previous["variants"])
    for name in args.variants:
        print(f"== {args.setting} {name}", flush=True)
        config = RunConfig(ways=ways, shots=shots, epochs=epochs, steps_per_epoch=args.steps_per_epoch,
                           meta_batch=args.meta_batch, val_tasks=0, seed=args.seed, data_dir=args.data_dir,
                           **VARIANTS[name][1]).validate()
        output = pathlib.Path(args.runs_dir) / f"{args.setting}-{name.replace(' ', '').replace(',', '-')}"
        results["variants"][name] = train_and_evaluate(config, output, None, args.tasks, args.seed, args.verbose)
        results["variants"] = {k: results["variants"][k] for k in VARIANTS if k in results["variants"]}
        write_json_atomic(path, results)
        h = headline(results["variants"][name])
        print(f"{args.setting} {name}: {100 * h['accuracy']:.2f} +- {100 * h['accuracy_ci95']:.2f}% "
              f"ECE {100 * h['ece']:.2f}%", flush=True)
    print(write_table(RESULTS / f"ablation_omniglot_{args.setting}.md", results))


if __name__ == "__main__":
    main()

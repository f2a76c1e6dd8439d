"""Re-export a committed SavedModel with the current signatures, from its own variables, untrained.

    python benchmarks/upgrade_savedmodel.py savedmodels/omniglot-5w1s/1 --ways 5

For SavedModels written before ``posterior_draws`` and ``metadata`` existed (see
``tfp_abml.export``), when the training run they came from is gone: the model is rebuilt from
``RunConfig`` settings (``--method``, ``--ways``, the architecture defaults unless given), every
variable of the old SavedModel is copied into it in order, each checked to have the same shape and
the same name (the SavedModel keeps the last part of each path), and it is exported again in
place (atomically). The new SavedModel's variables are then compared with the old ones, value for
value; any mismatch stops before anything is replaced.
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="the SavedModel version folder, e.g. savedmodels/omniglot-5w1s/1")
    p.add_argument("--method", default="abml")
    p.add_argument("--ways", type=int, required=True, help="the ways the SavedModel serves")
    p.add_argument("--eval-samples", type=int, default=10, help="posterior draws per request (the old default)")
    args = p.parse_args(argv)

    import tensorflow as tf

    from tfp_abml.export import export_saved_model
    from tfp_abml.run_config import RunConfig

    old = tf.saved_model.load(args.path)
    values = [(v.name.split(":")[0], v.numpy()) for v in old.variables]
    config = RunConfig(method=args.method, ways=args.ways, eval_samples=args.eval_samples).validate()
    model = config.build_model()
    model(model.example_inputs())
    if len(model.variables) != len(values):
        raise SystemExit(f"error: {args.path} has {len(values)} variables, the rebuilt model {len(model.variables)}")
    for variable, (name, value) in zip(model.variables, values):
        if tuple(variable.shape) != value.shape or variable.path.split("/")[-1] != name.split("/")[-1]:
            raise SystemExit(f"error: variable {variable.path} {tuple(variable.shape)} does not match {name} "
                             f"{value.shape}: give the settings the model was trained with")
        variable.assign(value)
    export_saved_model(model, config.resolved_image_size, args.path)
    new = tf.saved_model.load(args.path)
    for (name, value), variable in zip(values, new.variables):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=name)
    print(f"re-exported {args.path}: {len(values)} variables unchanged, signatures {sorted(new.signatures)}")


if __name__ == "__main__":
    main()

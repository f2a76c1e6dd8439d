"""``python -m tfp_abml.jit_measurement <config JSON>``: the separate process of ``--jit auto``.

:func:`tfp_abml.jit_choice.measure_in_subprocess` starts it with a run's ``RunConfig.to_dict()``;
it rebuilds the config, times the training step with and without XLA
(:func:`tfp_abml.jit_choice.measure`) and prints the result as its last line of JSON.

A module of its own because it reads a ``RunConfig``, which itself calls ``jit_choice``: kept
here, above both, the imports point one way.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfp_abml.jit_choice import measure
    from tfp_abml.run_config import RunConfig

    config = RunConfig.from_dict(json.loads(argv[0]))
    print(json.dumps(measure(config)))


if __name__ == "__main__":
    main(sys.argv[1:])

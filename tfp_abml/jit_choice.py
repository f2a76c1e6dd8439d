"""``--jit auto``: XLA or not for the outer update, chosen per device from a measurement.

Whether XLA pays depends on the device and the model: on this project's 2-core CPU it made
the Conv-4 step 1.7x and the EfficientNetB0 step 4.3x slower (benchmarks/speed.py), while on
GPUs it usually helps. So ``auto`` measures instead of assuming, once per device and model
shape, and remembers the answer:

1. ``--jit on`` / ``--jit off``: as given.
2. ``auto`` where no measurement is asked for (``RunConfig.compiled_model()`` from library code,
   tests, tuning trials): off.
3. ``auto`` in ``training.fit`` (which asks for one) on a run of fewer than
   :data:`MEASURE_MIN_STEPS` outer updates: off. A measurement (an XLA compile plus a few timed
   steps each way) costs more than such a run could save.
4. ``auto`` in ``training.fit`` otherwise: the cached choice for this device and model shape,
   else a measurement. A separate process builds the run's model twice, XLA on and off, warms
   both up (compile excluded), times their training steps interleaved on batches of the run's
   shapes, and XLA is chosen only if it is at least :data:`XLA_MARGIN` faster (it also compiles
   again for every new input shape). The result, with both timings, is cached in
   ``$TFP_ABML_CACHE_DIR/jit_auto.json`` (default ``~/.cache/tfp_abml/``).

The device key names the GPU model(s), or the CPU model and core count, and the TensorFlow
version; the model key holds every setting that changes the step's computation.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from tfp_abml.choices import MAML_METHODS

MEASURE_MIN_STEPS = 1000
XLA_MARGIN = 0.10
SHAPE_SETTINGS = ("method", "dataset", "encoder", "image_size", "embedding_dim", "hidden_units", "residual_head",
                  "posterior", "learn_inner_lr", "task_encoding", "noise_dim", "ways", "shots", "queries",
                  "inner_steps", "first_order", "meta_batch", "train_samples", "prior")


def cache_path():
    root = os.environ.get("TFP_ABML_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tfp_abml")
    return pathlib.Path(root) / "jit_auto.json"


def device_key():
    """``"GPU <names> | TF <version>"`` or ``"CPU <model> x <cores> | TF <version>"``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        device = "GPU " + ", ".join(names)
    else:
        device = f"CPU {_cpu_model()} x {os.cpu_count()}"
    return f"{device} | TF {tf.__version__}"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def model_key(config):
    values = {name: getattr(config, name) for name in SHAPE_SETTINGS}
    values["hidden_units"] = list(values["hidden_units"])
    values["image_size"] = config.resolved_image_size
    if config.method in MAML_METHODS:  # each task loop is a different graph for XLA
        values["task_loop"] = config.resolved_task_loop
    return json.dumps(values, sort_keys=True)


def resolve(config, measure=False, log=print):
    """``True`` (XLA) or ``False`` for ``config`` on this device, following the rule above."""
    if config.jit != "auto":
        return config.jit == "on"
    if not measure or config.epochs * config.steps_per_epoch < MEASURE_MIN_STEPS:
        return False
    path, key = cache_path(), f"{device_key()} | {model_key(config)}"
    cache = _read(path)
    if key not in cache:
        log(f"--jit auto: timing the training step with and without XLA on this device (once; cached in {path})",
            flush=True)
        cache = _read(path)  # another process may have measured meanwhile
        cache[key] = measure_in_subprocess(config)
        _write(path, cache)
    entry = cache[key]
    log(f"--jit auto: XLA {'on' if entry['xla'] else 'off'} (measured here: {entry['xla_ms']:.0f} ms per step "
        f"with XLA, {entry['no_xla_ms']:.0f} ms without)", flush=True)
    return bool(entry["xla"])


def measure_in_subprocess(config):
    """Run :func:`measure` in a fresh process (``python -m tfp_abml.jit_measurement``), so that nothing
    of it (memory, random streams, compiled functions) touches the caller's run. Returns the cache entry."""
    from tfp_abml.errors import UserInputError

    result = subprocess.run([sys.executable, "-m", "tfp_abml.jit_measurement", json.dumps(config.to_dict())],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UserInputError(f"--jit auto could not time the training step: {result.stderr.strip()[-2000:]}; "
                             "pass --jit on or --jit off")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(config, repeats=3, steps=3):
    """Median ms per outer update with XLA and without, interleaved, on random batches of the run's shapes."""
    import statistics
    import time

    import keras
    import tensorflow as tf

    batch = synthetic_batch(config)
    trains = {}
    for xla in (True, False):
        keras.utils.set_random_seed(config.seed)
        model = config.build_model()
        model.compile(optimizer=keras.optimizers.Adam(config.resolved_learning_rate), jit_compile=xla)
        model(config.example_inputs())
        iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        model.make_train_function()
        trains[xla] = (model.train_function, iterator)
        for _ in range(2):  # trace, compile, warm up
            float(model.train_function(iterator)["loss"])
    times = {True: [], False: []}
    for _ in range(repeats):
        for xla, (train, iterator) in trains.items():
            start = time.perf_counter()
            for _ in range(steps):
                logs = train(iterator)
            float(logs["loss"])
            times[xla].append(1000.0 * (time.perf_counter() - start) / steps)
    xla_ms, no_xla_ms = statistics.median(times[True]), statistics.median(times[False])
    return {"xla": xla_ms <= (1.0 - XLA_MARGIN) * no_xla_ms, "xla_ms": xla_ms, "no_xla_ms": no_xla_ms}


def synthetic_batch(config):
    """One meta-batch of random images and balanced labels in the layout of the episode pipeline."""
    import tensorflow as tf

    size, tasks, ways = config.resolved_image_size, config.meta_batch, config.ways
    labels = lambda per_class: tf.tile(tf.repeat(tf.range(ways, dtype=tf.int32), per_class)[None], (tasks, 1))
    inputs = {"support_images": tf.random.uniform((tasks, ways * config.shots, size, size, config.channels)),
              "support_labels": labels(config.shots),
              "query_images": tf.random.uniform((tasks, ways * config.queries, size, size, config.channels))}
    return inputs, labels(config.queries)


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write(path, cache):
    from tfp_abml.checkpointing import write_json_atomic

    write_json_atomic(path, cache)

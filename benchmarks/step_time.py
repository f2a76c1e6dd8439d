"""Time per training episode of AmortizedBNN: encoders x XLA on/off, on this machine.

    python benchmarks/step_time.py --data-dir ../shared/data [--ways 5 --shots 1 --repeats 5]

For each setting: build the model, compile the outer update (``jit_compile`` on or off), warm
up (tracing and compilation excluded), then time ``--repeats`` blocks of ``--steps`` outer
updates and report the median block as milliseconds per episode (one outer update trains
``--meta-batch`` episodes). Batches are prefetched into memory first, so only the update is
timed. Writes ``benchmarks/results/step_time_<machine>.json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine_name():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    kind = f"{len(gpus)}gpu" if gpus else "cpu"
    return f"{platform.machine()}-{os.cpu_count()}cores-{kind}"


def time_setting(config, batches, jit, steps, repeats):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = config.build_model()
    model.compile(optimizer=keras.optimizers.Adam(config.resolved_learning_rate), jit_compile=jit)
    model(batches[0][0])
    step = tf.function(model.train_step, jit_compile=jit)
    step(batches[0])  # trace (and compile, with XLA)
    step(batches[1])
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            result = step(batches[i % len(batches)])
        float(result["loss"])  # wait for the last step
        blocks.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(blocks) / (steps * config.meta_batch)


def main(argv=None):
    from tfp_abml.checkpointing import write_json_atomic
    from tfp_abml.data import episode_dataset
    from tfp_abml.run_config import RunConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="outer updates per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks; the median is reported")
    parser.add_argument("--encoders", nargs="*", default=["conv4", "efficientnet_b0"])
    args = parser.parse_args(argv)

    rows = []
    for encoder in args.encoders:
        config = RunConfig(encoder=encoder, ways=args.ways, shots=args.shots, meta_batch=args.meta_batch,
                           posterior="paper", data_dir=args.data_dir).validate()  # as its committed results
        batches = list(episode_dataset(config.sampler("train"), config.meta_batch, episodes=8 * config.meta_batch))
        for jit in (False, True):
            ms = time_setting(config, batches, jit, args.steps, args.repeats)
            rows.append({"encoder": encoder, "image_size": config.resolved_image_size, "jit": jit,
                         "ms_per_episode": round(ms, 2), "episodes_per_second": round(1000.0 / ms, 2)})
            print(f"{encoder:16s} {config.resolved_image_size:3d}px  jit={'on ' if jit else 'off'}  "
                  f"{ms:8.1f} ms/episode  {1000.0 / ms:6.1f} episodes/s", flush=True)
    machine = machine_name()
    result = {"machine": machine, "ways": args.ways, "shots": args.shots, "queries": RunConfig.queries,
              "meta_batch": args.meta_batch, "inner_steps": RunConfig.inner_steps,
              "timing": f"median of {args.repeats} blocks of {args.steps} outer updates after warm-up",
              "rows": rows}
    write_json_atomic(RESULTS / f"step_time_{machine}.json", result)
    print(f"wrote {RESULTS / f'step_time_{machine}.json'}")


if __name__ == "__main__":
    main()

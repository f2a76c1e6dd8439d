"""Peak memory of training, one configuration per process.

    python benchmarks/memory.py --data-dir ../shared/data                       # Conv-4, every method, minutes
    python benchmarks/memory.py --data-dir ../shared/data --encoders efficientnet_b0-84 \\
        --settings 5w1s --methods maml --task-loops unrolled map_fn           # what --task-loop costs in memory

Each configuration (method, encoder and image size, ways and shots, MAML's task loop, meta-batch)
is built, traced and trained for a few outer steps as ``training.fit`` trains it, in a child
process of its own, so that one configuration's peak is not another's. The parent reads the
child's resident-memory high-water mark (``VmHWM`` in ``/proc/<pid>/status``) while it runs: a
child the kernel kills for want of memory still leaves its last reading, recorded as a lower
bound with how it ended. The peak includes tracing and TensorFlow's graph optimization of the
step (not measured apart). Writes
``benchmarks/results/memory_<machine>.json`` after every configuration (``"complete": false``
until the end) and prints a table. Times printed beside the peaks (first step; ms per episode over
two steps, not interleaved) are for orientation only: ratios come from ``benchmarks/speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from child_process import GIB, how_it_ended, proc_kib_field_bytes, run_child  # noqa: E402
from speed import ENCODER_SIZES, SETTINGS, _settings, cpu_model, machine_name  # noqa: E402

from tfp_abml.run_config import MAML_METHODS, TASK_LOOPS  # noqa: E402  (no TensorFlow imported)

RESULTS = HERE / "results"


def build_parser():
    from speed_cases import METHODS

    p = argparse.ArgumentParser(prog="python benchmarks/memory.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("TFP_ABML_DATA_DIR"))
    p.add_argument("--encoders", nargs="+", choices=list(ENCODER_SIZES), default=["conv4-28"])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--task-loops", nargs="+", choices=TASK_LOOPS, default=["auto"],
                   help="MAML's task loop(s) to measure (maml and metasgd only; others run once)")
    p.add_argument("--meta-batch", type=int, nargs="+", default=[None],
                   help="tasks per outer step (default: training.fit's); several to see how memory scales")
    p.add_argument("--steps", type=int, default=4, help="outer steps each child runs, at least 4 (the first traces)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a child is stopped")
    p.add_argument("--output", default=None, help="JSON path; default benchmarks/results/memory_<machine>.json")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one configuration, as JSON
    return p


def configurations(args):
    """The ``spec`` dicts to measure, in order: encoder, setting, method, task loop, meta-batch."""
    specs = []
    for encoder in args.encoders:
        for setting in args.settings:
            for method in args.methods:
                loops = args.task_loops if method in MAML_METHODS else [None]
                for loop in loops:
                    for meta_batch in args.meta_batch:
                        spec = {"method": method, **_settings(args, encoder, setting)}
                        if loop is not None:
                            spec["task_loop"] = loop
                        if meta_batch is not None:
                            spec["meta_batch"] = meta_batch
                        specs.append(spec)
    return specs


def measure(spec, steps, timeout):
    """One configuration in its own process: the row to record."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(spec),
               "--steps", str(steps)]
    returncode, peak, stdout, stderr, timed_out = run_child(command, timeout)
    row = {key: value for key, value in spec.items() if key != "data_dir"}
    row["status"] = how_it_ended(returncode, timed_out)
    if returncode == 0:
        report = json.loads(stdout.strip().splitlines()[-1])
        peak = max(peak, report.pop("peak_bytes"))
        row.update(report)
    else:
        row["stderr_tail"] = stderr
    row["peak_rss_gib"] = peak / GIB
    return row


def child(spec, steps):
    """In the child: build, trace and train ``spec`` for ``steps`` outer steps; print one JSON line."""
    import resource

    import speed_cases

    spec = dict(spec)
    method = spec.pop("method")
    config = speed_cases.method_config(method, jit="off", **spec)
    block, per_step = speed_cases.training_contender(config, block_seconds=0.0)  # runs 4 steps
    model = block.model
    for _ in range(max(0, steps - 4)):
        block()
    report = {"task_loop_resolved": getattr(model, "task_loop", None), "meta_batch": config.meta_batch,
              "first_step_s": block.compile_seconds, "ms_per_episode_rough": 1000.0 * per_step / config.meta_batch,
              "steps": max(steps, 4), "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    print(json.dumps(report), flush=True)


def print_report(result):
    print(f"\nmachine {result['machine']} ({result['cpu']}), {result['memory_total_gib']:.1f} GiB\n")
    print(f"{'method':13s} {'encoder':16s} {'px':>3s} {'setting':7s} {'tasks':>5s} {'task loop':10s} "
          f"{'peak GiB':>9s} {'first step s':>12s}  status")
    for row in result["rows"]:
        first = f"{row['first_step_s']:12.1f}" if "first_step_s" in row else f"{'-':>12s}"
        bound = ">=" if row["status"] != "ok" else "  "
        print(f"{row['method']:13s} {row['encoder']:16s} {row['image_size']:3d} {row['ways']}w{row['shots']}s    "
              f"{row.get('meta_batch', '-')!s:>5s} {row.get('task_loop_resolved') or row.get('task_loop', '-'):10s} "
              f"{bound}{row['peak_rss_gib']:7.2f} {first}  {row['status']}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.child:
        return child(json.loads(args.child), args.steps)
    if not sys.platform.startswith("linux"):
        raise SystemExit("benchmarks/memory.py reads /proc/<pid>/status: it runs on Linux only")
    from tfp_abml.checkpointing import write_json_atomic

    result = {"machine": machine_name(), "cpu": cpu_model(), "cores": os.cpu_count(),
              "memory_total_gib": (proc_kib_field_bytes("/proc/meminfo", "MemTotal") or 0) / GIB,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "measure": "peak resident memory (VmHWM) of a child process that builds, traces and trains one "
                         f"configuration for {max(args.steps, 4)} outer steps, XLA off",
              "command": "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": []}
    output = pathlib.Path(args.output or RESULTS / f"memory_{result['machine']}.json")
    start = time.perf_counter()
    specs = configurations(args)
    for index, spec in enumerate(specs, 1):
        label = " ".join(f"{k}={v}" for k, v in spec.items() if k != "data_dir")
        print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {index}/{len(specs)} {label}", flush=True)
        row = measure(spec, args.steps, args.timeout)
        print(f"        peak {row['peak_rss_gib']:.2f} GiB, {row['status']}", flush=True)
        result["rows"].append(row)
        result["complete"] = index == len(specs)
        write_json_atomic(output, result)  # after every child, so that hours of runs survive a cut
    result["minutes"] = (time.perf_counter() - start) / 60
    write_json_atomic(output, result)
    print_report(result)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

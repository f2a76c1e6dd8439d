"""What ``benchmarks/speed.py`` times: each case builds its contenders, warms them up, and times
them interleaved (A, B, A, B, ...) so that load from other processes falls on all of them alike.

A contender is a function ``block()`` that runs one timed block of work to completion and
returns ``(seconds, units)``: units are episodes for training, calls for serving, layer
applications for the Flipout comparison. :func:`interleaved` runs the blocks in turn and keeps
the median per contender.
"""

from __future__ import annotations

import os
import re
import statistics
import time

# Time per episode of a method, contenders of one training group (same encoder, image size,
# ways, shots, XLA setting). "abml" is the paper's method (--posterior paper), "abml-aligned" is
# --posterior aligned with the paper's concatenated task encoding, fixed inner step size and 5 steps,
# "abml-default" is training.fit's default (aligned, pooled task encoding, learned inner step sizes,
# 1 inner step), "abml-innerK" the same with K inner steps (--inner-steps K, e.g. abml-inner0 without
# the inner loop; by --methods only, not in the grid).
METHODS = ("abml", "abml-aligned", "abml-default", "protonet", "matching", "maml", "metasgd")
FLIPOUT_SHAPES = ((4, 80, 64, 64), (4, 80, 64, 5), (4, 25, 64, 64), (4, 5, 64, 64))  # T, M, in, out


def interleaved(contenders, repeats, warmup_rounds=1):
    """``{name: block}`` -> ``{name: {"median_s_per_unit", "blocks_s_per_unit"}}``, blocks run in turn.

    ``warmup_rounds`` untimed rounds go first: a contender built minutes before (while the
    others were traced) ran its first block several times slower than the rest, whatever it was.
    """
    for _ in range(warmup_rounds):
        for block in contenders.values():
            block()
    per_unit = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, block in contenders.items():
            seconds, units = block()
            per_unit[name].append(seconds / units)
    return {name: {"median_s_per_unit": statistics.median(values), "blocks_s_per_unit": values}
            for name, values in per_unit.items()}


def _clock(run, units):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start, units


# -- Flipout dense vs a deterministic dense -----------------------------------------------------

def flipout_case(shape, iterations, repeats):
    """Flipout dense over a deterministic dense of the same batched shape, forward and forward+backward,
    and where the forward time goes.

    Each block is one ``tf.function`` call that applies the layer ``iterations`` times in a
    ``tf.while_loop`` (each application feeds the next, so nothing is hoisted out of the loop):
    this times the layer inside a graph, as training runs it, not Python's call overhead.
    The deterministic layer is ``einsum(x, kernel) + bias``; the Flipout layer
    (:func:`tfp_abml.flipout.flipout_dense`) also draws its noise and signs, and its backward
    pass gives gradients for twice the parameters (means and rhos).

    ``forward_parts_us``: each part of the Flipout forward pass alone, timed in the same loop and
    interleaved with the rest, minus the loop's own cost (``loop_us``, a body that computes nothing):
    the noise (one Gaussian draw for kernel and bias, as the layer draws it), the sign draw
    (one call for input and output signs), the scales of kernel and bias from their rhos, and one batched product.
    """
    import keras
    import tensorflow as tf

    from tfp_abml.flipout import DenseParams, flipout_dense, random_signs, rho_from_scale, scale_from_rho

    tasks, examples, fan_in, fan_out = shape
    x = tf.random.normal((tasks, examples, fan_in))
    cotangent = tf.random.normal((tasks, examples, fan_out))
    kernel = 0.1 * tf.random.normal((tasks, fan_in, fan_out))
    bias = tf.zeros((tasks, fan_out))
    rho = float(rho_from_scale(0.01))
    flip_params = [kernel, tf.fill(kernel.shape, rho), bias, tf.fill(bias.shape, rho)]
    dense_params = [kernel, bias]
    seed = keras.random.SeedGenerator(0)

    def flipout(inputs, params):
        return flipout_dense(inputs, DenseParams(*params), seed=seed)

    def dense(inputs, params):
        return tf.einsum("tmi,tio->tmo", inputs, params[0]) + params[1][:, None, :]

    # The parts take the loop's inputs so that none is hoisted out of the loop: the draws through
    # the seed generator's state, the rest through a [1, 1, 1] corner of the inputs.
    corner = lambda inputs: inputs[:1, :1, :1]
    parts = {
        "loop": lambda inputs, params: inputs,
        "kernel noise": lambda inputs, params: keras.random.normal((tasks, fan_in + 1, fan_out), seed=seed),
        "sign draws": lambda inputs, params: random_signs(tasks * examples * (fan_in + fan_out), seed=seed)[:1],
        "scales": lambda inputs, params: (scale_from_rho(params[1] + corner(inputs))[:1, :1, :1]
                                          + scale_from_rho(params[3] + corner(inputs)[0])[:1, None, :1]),
        "product": lambda inputs, params: tf.einsum("tmi,tio->tmo", inputs, params[0]),
    }

    results = {}
    for backward in (False, True):
        runs = {"flipout": _looped_layer(flipout, flip_params, x, cotangent, iterations, backward),
                "dense": _looped_layer(dense, dense_params, x, cotangent, iterations, backward)}
        if not backward:
            runs |= {name: _looped_layer(part, flip_params, x, cotangent, iterations, False)
                     for name, part in parts.items()}
        for run in runs.values():
            run()  # trace
        timed = interleaved({name: (lambda run=run: _clock(lambda: float(run()), iterations))
                             for name, run in runs.items()}, repeats)
        us = {name: 1e6 * t["median_s_per_unit"] for name, t in timed.items()}
        results["forward+backward" if backward else "forward"] = {
            "flipout_us": us["flipout"], "dense_us": us["dense"], "ratio": us["flipout"] / us["dense"]}
        if not backward:
            results["loop_us"] = us["loop"]
            results["forward_parts_us"] = {name: us[name] - us["loop"] for name in parts if name != "loop"}
    return results


def _looped_layer(layer, params, x, cotangent, iterations, backward):
    """A ``tf.function`` applying ``layer(inputs, params)`` ``iterations`` times in a while loop;
    with ``backward``, also the gradients of ``sum(outputs * cotangent)`` for inputs and params."""
    import tensorflow as tf

    def body(i, inputs, total):
        if backward:
            with tf.GradientTape() as tape:
                tape.watch([inputs, *params])
                outputs = layer(inputs, params)
                loss = tf.reduce_sum(outputs * cotangent)
            grads = tape.gradient(loss, [inputs, *params])
            used = tf.add_n([tf.reshape(g, [-1])[0] for g in grads])  # every gradient must be computed
        else:
            used = tf.reshape(layer(inputs, params), [-1])[0]
        return i + 1, inputs + 1e-6 * used, total + used

    @tf.function
    def run():
        return tf.while_loop(lambda i, *_: i < iterations, body, (tf.constant(0), x, tf.constant(0.0)))[2]

    return run


# -- training episodes per second ---------------------------------------------------------------

def method_config(method, **settings):
    """The RunConfig of a benchmark method name (see METHODS)."""
    from tfp_abml.run_config import RunConfig

    if method == "abml":
        return RunConfig(method="abml", posterior="paper", **settings).validate()
    if method == "abml-default":
        return RunConfig(method="abml", **settings).validate()
    inner = re.fullmatch(r"abml-inner(\d+)", method)
    if inner:
        return RunConfig(method="abml", inner_steps=int(inner.group(1)), **settings).validate()
    if method == "abml-aligned":
        return RunConfig(method="abml", posterior="aligned", task_encoding="concat", learn_inner_lr=False,
                         inner_steps=5, **settings).validate()
    return RunConfig(method=method, **settings).validate()


def training_contender(config, block_seconds, fused_batch_norm=None):
    """Build, compile and warm up ``config``'s model; return ``(block, step_seconds)``.

    Steps run exactly as ``model.fit`` runs them: Keras's own train function pulling
    meta-batches from the real episode pipeline (sampling, decoding and batching included).
    A block is as many outer updates as take about ``block_seconds``. ``fused_batch_norm``
    False times the encoder with Keras's own batch norm ops (as before the fused kernel).
    """
    import keras

    from tfp_abml.data import episode_dataset
    from tfp_abml.fused_batch_norm import set_fused

    keras.utils.set_random_seed(config.seed)
    model = config.build_model()
    if fused_batch_norm is not None:
        set_fused(model.encoder, fused_batch_norm)
    model.compile(optimizer=keras.optimizers.Adam(config.resolved_learning_rate), jit_compile=config.jit == "on")
    model(config.example_inputs())
    iterator = iter(episode_dataset(config.sampler("train"), config.meta_batch))
    model.make_train_function()
    train = model.train_function

    def steps(count):
        for _ in range(count):
            logs = train(iterator)
        float(logs["loss"])  # waits for the last step

    start = time.perf_counter()
    steps(1)  # trace (and compile, with XLA)
    compile_seconds = time.perf_counter() - start
    steps(1)
    seconds, _ = _clock(lambda: steps(2), 2)
    per_step = seconds / 2
    count = max(1, round(block_seconds / per_step))
    block = lambda: _clock(lambda: steps(count), count * config.meta_batch)
    block.model, block.compile_seconds = model, compile_seconds
    return block, per_step


def training_group(entries, settings, block_seconds, repeats, log=print):
    """Episodes per second of each ``(method, jit)`` entry at one setting, all timed interleaved. Returns rows."""
    import gc

    import keras

    contenders, rows = {}, []
    for method, jit in entries:
        log(f"  building {method}, XLA {jit} ...")
        contenders[(method, jit)], _ = training_contender(method_config(method, jit=jit, **settings), block_seconds)
    timed = interleaved(contenders, repeats)
    for method, jit in entries:
        ms = 1000.0 * timed[(method, jit)]["median_s_per_unit"]
        rows.append({"method": method, **settings, "jit": jit, "ms_per_episode": ms, "episodes_per_second": 1000.0 / ms,
                     "first_step_s": contenders[(method, jit)].compile_seconds,
                     "blocks_ms_per_episode": [1000.0 * s for s in timed[(method, jit)]["blocks_s_per_unit"]]})
    del contenders
    keras.backend.clear_session()
    gc.collect()
    return rows


def batch_norm_speedup(methods, settings, block_seconds, repeats, log=print):
    """Before/after of the fused batch norm kernel: each method with Keras's ops and with the kernel."""
    import gc

    import keras

    contenders = {}
    for method in methods:
        for fused in (False, True):
            log(f"  building {method}, {'fused' if fused else 'Keras'} batch norm ...")
            contenders[(method, fused)], _ = training_contender(method_config(method, jit="off", **settings),
                                                                block_seconds, fused)
    timed = interleaved(contenders, repeats)
    rows = []
    for method in methods:
        before, after = (1000.0 * timed[(method, fused)]["median_s_per_unit"] for fused in (False, True))
        rows.append({"method": method, **settings, "keras_ms_per_episode": before, "fused_ms_per_episode": after,
                     "speedup": before / after})
    del contenders
    keras.backend.clear_session()
    gc.collect()
    return rows


def maml_task_loop_speedup(settings, block_seconds, repeats, log=print, loops=("unrolled", "map_fn", "sequential")):
    """MAML's task loops (``--task-loop``) side by side: first step (trace, graph optimization, first
    run; single runs, not interleaved) and time per episode (interleaved); ratios against unrolled."""
    import gc

    import keras

    contenders = {}
    for loop in loops:
        log(f"  building maml, tasks {loop} ...")
        contenders[loop], _ = training_contender(method_config("maml", jit="off", task_loop=loop, **settings),
                                                 block_seconds)
    timed = interleaved(contenders, repeats)
    row = dict(settings)
    for loop, block in contenders.items():
        row[f"{loop}_first_step_s"] = block.compile_seconds
        row[f"{loop}_ms_per_episode"] = 1000.0 * timed[loop]["median_s_per_unit"]
        row[f"{loop}_blocks_ms_per_episode"] = [1000.0 * s for s in timed[loop]["blocks_s_per_unit"]]
    for loop in loops[1:]:  # (results before "sequential" call map_fn's first_step_speedup)
        row[f"{loop}_first_step_speedup"] = row["unrolled_first_step_s"] / row[f"{loop}_first_step_s"]
        row[f"{loop}_over_unrolled_time_per_episode"] = row[f"{loop}_ms_per_episode"] / row["unrolled_ms_per_episode"]
    del contenders
    keras.backend.clear_session()
    gc.collect()
    return row


# -- the PyTorch peer ----------------------------------------------------------------------------

def torch_peer(settings, block_seconds, repeats):
    """Our MAML (as ``training.fit`` runs it) and `higher`'s MAML (benchmarks/torch_maml.py), interleaved.

    PyTorch runs with 1 thread and with one per core, each a contender of its own, and the
    faster counts: its OpenMP threads spin while they wait, which on a shared machine made the
    all-cores setting several times slower than one thread.
    """
    import higher
    import torch

    from torch_maml import HigherMAML, torch_batch

    config = method_config("maml", jit="off", **settings)
    contenders = {"tfp_abml maml": training_contender(config, block_seconds)[0]}
    sampler = config.sampler("train")
    peer = HigherMAML(config.ways, config.inner_steps, config.inner_lr, config.resolved_learning_rate,
                      config.first_order, config.resolved_image_size, seed=config.seed)
    episode = [0]

    def peer_steps(count, threads):
        torch.set_num_threads(threads)
        for _ in range(count):  # sampling inline: a few hundred microseconds per meta-batch
            peer.step(torch_batch(sampler, episode[0], config.meta_batch))
            episode[0] += config.meta_batch

    for threads in sorted({1, os.cpu_count()}):
        peer_steps(1, threads)  # warm-up
        seconds, _ = _clock(lambda: peer_steps(1, threads), 1)
        count = max(1, round(block_seconds / seconds))
        contenders[f"higher maml, {threads} thread{'s' if threads > 1 else ''}"] = (
            lambda count=count, threads=threads: _clock(lambda: peer_steps(count, threads),
                                                        count * config.meta_batch))
    timed = interleaved(contenders, repeats)
    rows = {name: {"ms_per_episode": 1000.0 * t["median_s_per_unit"],
                   "episodes_per_second": 1.0 / t["median_s_per_unit"]} for name, t in timed.items()}
    best = max((name for name in rows if name.startswith("higher")), key=lambda n: rows[n]["episodes_per_second"])
    return {"settings": settings, "torch": torch.__version__, "higher": getattr(higher, "__version__", "0.2.1"),
            "rows": rows, "best_peer": best,
            "ratio": rows["tfp_abml maml"]["episodes_per_second"] / rows[best]["episodes_per_second"]}


# -- serving latency -----------------------------------------------------------------------------

def serving_latency(settings, train_steps, calls, warmup, folder, draws=(1, 10, 50), eval_tasks=8):
    """p50/p95 of ``serving_default`` calls on exports of one model fresh from a tiny training run,
    one export per posterior draw count in ``draws``, and one more at the default draw count without
    the inner loop (``--eval-inner-steps 0``), called in turn (interleaved, so that every export
    sees the same machine); and evaluation time per task at each draw count
    (``evaluation_predictions`` on ``eval_tasks``-task meta-batches, interleaved too).

    The first count's figures are also the top-level ``p50_ms`` etc. (the serving target)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfp_abml.data import episode_dataset
    from tfp_abml.export import export_saved_model

    config = method_config("abml", jit="off", **settings)
    keras.utils.set_random_seed(config.seed)
    model = config.build_model()
    model.compile(optimizer=keras.optimizers.Adam(config.resolved_learning_rate), jit_compile=False)
    model(config.example_inputs())
    model.fit(episode_dataset(config.sampler("train"), config.meta_batch), epochs=1, steps_per_epoch=train_steps,
              verbose=0)
    servers = {}
    for count in draws:
        model.eval_samples = count
        path = export_saved_model(model, config.resolved_image_size, os.path.join(folder, f"draws{count}", "1"))
        servers[count] = tf.saved_model.load(str(path)).signatures["serving_default"]
    # The same model served without its inner loop, at the default draw count.
    default_draws, inner_steps = config.eval_samples, model.eval_inner_steps
    model.eval_samples, model.eval_inner_steps = default_draws, 0
    path = export_saved_model(model, config.resolved_image_size, os.path.join(folder, "inner0", "1"))
    servers["inner0"] = tf.saved_model.load(str(path)).signatures["serving_default"]
    model.eval_inner_steps = inner_steps
    support, labels, query, _ = config.sampler("test").sample(0)
    as_float = lambda x: tf.constant((x[..., None] if x.ndim == 3 else x) / 255.0, tf.float32)
    request = {"support_images": as_float(support), "support_labels": tf.constant(labels, tf.int32),
               "query_images": as_float(query)}
    for _ in range(warmup):
        for serve in servers.values():
            serve(**request)["probabilities"].numpy()
    latencies = {count: [] for count in servers}
    for call in range(calls):
        order = list(servers) if call % 2 == 0 else list(reversed(servers))
        for count in order:
            start = time.perf_counter()
            servers[count](**request)["probabilities"].numpy()
            latencies[count].append(time.perf_counter() - start)
    # Evaluation: one meta-batch of tasks through evaluation_predictions (draws and posterior means).
    inputs, _ = next(iter(episode_dataset(config.sampler("test"), eval_tasks)))
    evaluators = {count: tf.function(lambda x, count=count: model.evaluation_predictions(x, count, with_draws=True))
                  for count in draws}
    for evaluate in evaluators.values():
        tf.nest.map_structure(lambda t: t.numpy(), evaluate(inputs))
    evaluation = {count: [] for count in draws}
    for call in range(max(calls // 10, 5)):
        for count in (draws if call % 2 == 0 else tuple(reversed(draws))):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), evaluators[count](inputs))
            evaluation[count].append((time.perf_counter() - start) / eval_tasks)
    by_draws = {}
    for count in draws:
        ms = 1000.0 * np.asarray(latencies[count])
        per_task = 1000.0 * np.asarray(evaluation[count])
        by_draws[str(count)] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                                "mean_ms": float(ms.mean()), "evaluation_ms_per_task_p50": float(np.median(per_task))}
    first = by_draws[str(draws[0])]
    ms = 1000.0 * np.asarray(latencies["inner0"])
    without_inner_loop = {"draws": default_draws, "inner_steps": 0, "trained_inner_steps": inner_steps,
                          "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                          "mean_ms": float(ms.mean())}
    if str(default_draws) in by_draws:  # served in the same interleaved calls: a ratio of one run
        without_inner_loop["p50_over_inner_loop"] = without_inner_loop["p50_ms"] / by_draws[str(default_draws)]["p50_ms"]
    return {"settings": settings, "support_images": int(support.shape[0]), "query_images": int(query.shape[0]),
            "calls": calls, "warmup_calls": warmup, "train_steps": train_steps, "draws": by_draws,
            "without_inner_loop": without_inner_loop,
            "evaluation_tasks_per_batch": eval_tasks, "p50_ms": first["p50_ms"], "p95_ms": first["p95_ms"],
            "mean_ms": first["mean_ms"]}

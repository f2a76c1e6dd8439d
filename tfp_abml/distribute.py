"""Training on several devices or machines with ``tf.distribute``: ``training.fit --strategy``.

* ``none``: one device, no strategy (the default; exactly the code path of a plain run).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs (without GPUs, over its
  logical CPU devices: one unless the program configured more).
* ``multi-worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines that
  ``TF_CONFIG`` lists, each with its GPUs (or its CPU).

Every strategy is data parallel over the tasks of a meta-batch: ``--meta-batch`` stays the global
number of tasks per outer update, and each of the R replicas trains on ``meta_batch / R`` of them.
What makes R replicas compute the update of one process, and why each piece is here:

* **Episodes.** Each worker's input pipeline samples only its own share of every meta-batch
  (episodes are a pure function of ``(seed, index)``, so no worker reads another's), and the
  shares of one step are exactly the meta-batch a single process would draw.
* **Gradient.** ``EpisodicModel.train_step`` averages the loss over the replica's tasks; Keras's
  optimizer sums the replicas' gradients (an all-reduce SUM), so each replica differentiates
  ``loss / R`` (:func:`replica_loss`) and the update follows the gradient of the global mean.
* **Batch norm.** The encoders' batch norm normalises with the statistics of all episodes at
  hand, i.e. of the whole meta-batch (``abml``, ``protonet``, ``matching`` embed all tasks in one
  call); with replicas each would see only its share, and the replicas' moving averages would
  drift apart. :func:`synchronize_batch_norm` makes the statistics global (Keras's
  ``synchronized=True``: one all-reduce per layer). MAML and Meta-SGD normalise each task on its
  own and are left alone.
* **Building.** :func:`call_to_build` creates the variables in a replica's context: MAML's call
  differentiates with respect to its variables, which TensorFlow allows for mirrored variables
  only there.
* **Keras 3.15 workarounds** (both in ``EpisodicModel``, both exercised by
  ``tests/training/test_distribute.py``): fit's first-batch symbolic build reduces the first
  batch with ``strategy.reduce``, which under MultiWorkerMirroredStrategy fails on a dict of
  inputs, so an already built model skips it; and fit reduces a step's logs across workers with
  ``strategy.reduce(MEAN, value, axis=0)``, which fails on scalars ("Invalid reduction dimension
  0"), so :func:`step_logs` hands it vectors of one value. ``training.fit`` also passes
  ``validation_steps``: a distributed dataset's length is unknown to Keras, and the step that
  finds its end still ran the step's random draws, and on some replicas collectives, which then
  no longer matched across replicas.
* **Output and resume.** Only the chief (worker 0, or the ``chief`` task if ``TF_CONFIG`` has one)
  reads and writes ``--output``. The other workers go through the same steps in a scratch folder
  that is deleted at the end (TensorFlow's pattern for this strategy: every worker saves, the
  others somewhere temporary, as saving may read variables through collectives; here it also
  keeps one code path). On a (re)start only the chief restores the last checkpoint;
  :func:`copy_from_chief` then gives every worker the chief's weights, optimizer state,
  random-stream state and epoch, so a restarted cluster resumes where the chief's checkpoint
  left off without a shared file system. :func:`lost_workers` turns the failure of the others
  when one worker dies into one line that says so.

Randomness: a Keras seed generator is one variable mirrored on every replica, so all replicas
draw the same random numbers per step (the ``abml`` Flipout and LSTM noise, the class order of the
task encoding) for their own tasks, where one process draws different numbers for each task of
the meta-batch. Deterministic methods (``protonet``, ``matching``, ``maml``, ``metasgd``) give one
process's result to float round-off; ``abml`` gives an equally valid estimate of the same gradient
with other noise, and one with noise shared across replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from dataclasses import dataclass

from tfp_abml.errors import UserInputError

STRATEGIES = ("none", "mirrored", "multi-worker")

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


# -- the cluster, from TF_CONFIG (no TensorFlow) -----------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster that ``TF_CONFIG`` describes."""

    workers: int  # tasks that train: the chief task, if any, and the workers
    task_type: str
    task_index: int
    has_chief: bool = False  # a "chief" task besides the workers

    @property
    def is_chief(self):
        """TensorFlow's rule: the ``chief`` task if the cluster has one, else worker 0."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief)

    @classmethod
    def from_environment(cls, environ=None):
        """Parse and check ``TF_CONFIG``; UserInputError naming what is wrong and an example that works."""
        environ = os.environ if environ is None else environ
        text = environ.get("TF_CONFIG", "").strip()
        if not text:
            raise UserInputError("--strategy multi-worker needs TF_CONFIG on every machine, naming the cluster "
                                 f"and this machine's place in it, e.g. {TF_CONFIG_EXAMPLE} (index 1 on the "
                                 "second machine); see docs/distributed.md, 'Training on several GPUs or machines'")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserInputError(f"TF_CONFIG is not valid JSON ({err}): use e.g. {TF_CONFIG_EXAMPLE}") from err
        cluster = spec.get("cluster") if isinstance(spec, dict) else None
        task = spec.get("task") if isinstance(spec, dict) else None
        if not isinstance(cluster, dict) or not isinstance(cluster.get("worker", []), list) or \
                not isinstance(cluster.get("chief", []), list) or not (cluster.get("worker") or cluster.get("chief")):
            raise UserInputError("TF_CONFIG needs \"cluster\": {\"worker\": [\"host:port\", ...]} listing every "
                                 f"machine, got {text}: use e.g. {TF_CONFIG_EXAMPLE}")
        if not isinstance(task, dict) or task.get("type") not in ("worker", "chief") or \
                not isinstance(task.get("index"), int) or isinstance(task.get("index"), bool):
            raise UserInputError("TF_CONFIG needs \"task\": {\"type\": \"worker\", \"index\": i}, this machine's "
                                 f"place in the worker list, got {json.dumps(task)}: use e.g. {TF_CONFIG_EXAMPLE}")
        members = cluster.get(task["type"], [])
        if not 0 <= task["index"] < len(members):
            raise UserInputError(f"TF_CONFIG task index {task['index']} is not in the cluster's {len(members)} "
                                 f"{task['type']} address(es): use 0 to {len(members) - 1}")
        return cls(workers=len(cluster.get("worker", [])) + len(cluster.get("chief", [])),
                   task_type=task["type"], task_index=task["index"], has_chief=bool(cluster.get("chief")))


def check_strategy(name, meta_batch, environ=None):
    """Check ``--strategy`` before TensorFlow starts; returns the Cluster for multi-worker, else None.

    The replica count of ``mirrored`` (GPUs) is only known once TensorFlow runs:
    :func:`replica_meta_batch` checks it then.
    """
    if name not in STRATEGIES:
        raise UserInputError(f"unknown --strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    if name != "multi-worker":
        return None
    cluster = Cluster.from_environment(environ)
    if meta_batch % cluster.workers:
        raise UserInputError(f"--meta-batch {meta_batch} cannot be split evenly over the {cluster.workers} workers "
                             f"of TF_CONFIG: use a multiple of {cluster.workers}")
    return cluster


def replica_meta_batch(meta_batch, replicas):
    """Tasks per replica; UserInputError if ``meta_batch`` does not split evenly."""
    if meta_batch % replicas:
        raise UserInputError(f"--meta-batch {meta_batch} cannot be split evenly over {replicas} replicas: "
                             f"use a multiple of {replicas}")
    return meta_batch // replicas


# -- strategies (TensorFlow) -------------------------------------------------------------------


def make_strategy(name):
    """The ``tf.distribute.Strategy`` for ``--strategy``; the default (no-op) strategy for ``none``.

    Call it before any other TensorFlow operation: MultiWorkerMirroredStrategy configures the
    collective operations, which TensorFlow allows only at program start.
    """
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserInputError(f"unknown --strategy {name!r}: use one of {', '.join(STRATEGIES)}")


def is_multi_worker(strategy):
    """True when ``strategy`` spans several processes (its local devices are not all replicas)."""
    return strategy.num_replicas_in_sync > 1 and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def is_chief(strategy):
    """Whether this process writes the run: always, unless it is a non-chief worker of a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and not has_chief)


def scratch_dir():
    """A fresh folder for a non-chief worker's copy of the run; :func:`remove_scratch` deletes it."""
    return pathlib.Path(tempfile.mkdtemp(prefix="tfp_abml-worker-"))


def remove_scratch(path):
    shutil.rmtree(path, ignore_errors=True)


def distributed_episodes(strategy, sampler, meta_batch, start=0, episodes=None):
    """``episode_dataset`` split over the replicas of ``strategy``: each replica gets
    ``meta_batch / replicas`` tasks of every global meta-batch ``start + s * meta_batch, ...``.

    With one replica this is ``episode_dataset`` itself. Otherwise input pipeline ``p`` of ``P``
    (one per worker) keeps the ``p``-th of ``P`` consecutive blocks of each meta-batch and batches
    it per replica; tf.distribute hands a pipeline's batches to its local replicas in turn.
    """
    import tensorflow as tf

    from tfp_abml.data import episode_dataset
    from tfp_abml.data.pipeline import indexed_episode_dataset

    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return episode_dataset(sampler, meta_batch, start=start, episodes=episodes)
    per_replica = replica_meta_batch(meta_batch, replicas)
    stop = tf.int64.max if episodes is None else start + episodes

    def pipeline_dataset(context):
        share = meta_batch // context.num_input_pipelines  # this worker's block of each meta-batch
        pipeline, pipelines = context.input_pipeline_id, context.num_input_pipelines
        indices = tf.data.Dataset.range(start, stop).filter(
            lambda index: tf.equal((index - start) // share % pipelines, pipeline))
        return indexed_episode_dataset(sampler, indices, per_replica)

    return strategy.distribute_datasets_from_function(pipeline_dataset)


def call_to_build(model, strategy, inputs):
    """Call ``model`` on ``inputs`` to create its variables: under a strategy, in each replica's context.

    MAML and Meta-SGD differentiate with respect to their own variables inside the call, and a
    tape can watch a mirrored variable only in a replica's context ("DistributedVariable.handle is
    not available outside the replica context"). Without a strategy this is ``model(inputs)``.
    """
    import logging

    import tensorflow as tf

    if not tf.distribute.in_cross_replica_context():
        model(inputs)
        return
    logger = tf.get_logger()  # once, eagerly: TensorFlow's warning about eager overhead does not apply
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        strategy.run(model, args=(inputs,))
    finally:
        logger.setLevel(level)


def synchronize_batch_norm(model, strategy):
    """With several replicas, batch-norm statistics over the whole meta-batch, as in one process.

    Only for models that normalise over the meta-batch (``batch_norm_over_meta_batch``: the
    methods that embed all tasks in one encoder call); MAML's per-task statistics need nothing.

    Keras's ``BatchNormalization(synchronized=True)`` all-reduces the sums behind the mean and
    variance across replicas (and back-propagates through that reduction); set on the built
    layers, so that weights and checkpoints are those of the plain model. Subclasses (the
    fused-kernel layer of this package) fall back to Keras's computation when synchronized.
    """
    import keras

    if strategy.num_replicas_in_sync == 1 or not getattr(model, "batch_norm_over_meta_batch", True):
        return  # MAML and Meta-SGD normalise each task on its own, on its replica, as in one process
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def copy_from_chief(strategy, variables):
    """Give every worker the chief's values of ``variables``, after the chief alone restored a checkpoint.

    One all-reduce SUM of the chief's first replica's values and zeros from everyone else: the
    other workers need no access to the chief's files.
    """
    import tensorflow as tf

    if not is_multi_worker(strategy):
        return
    variables = list(variables)

    @tf.function
    def chief_values():
        def replica_values():
            context = tf.distribute.get_replica_context()
            keep = tf.equal(context.replica_id_in_sync_group, 0)
            values = [tf.convert_to_tensor(v) for v in variables]
            values = [tf.where(keep, value, tf.zeros_like(value)) for value in values]
            # One all-reduce per dtype: tf.distribute packs the tensors of one call into one buffer.
            by_dtype = {}
            for index, value in enumerate(values):
                by_dtype.setdefault(value.dtype, []).append(index)
            for indices in by_dtype.values():
                reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [values[i] for i in indices])
                for i, value in zip(indices, reduced):
                    values[i] = value
            return values

        return strategy.run(replica_values)

    values = strategy.experimental_local_results(chief_values())[0]
    for variable, value in zip(variables, values):
        variable.assign(value)


@contextlib.contextmanager
def lost_workers(multi_worker):
    """Turn TensorFlow's errors for a worker that stopped or cannot be reached into one ``UserInputError``.

    A cluster cannot go on without any of its workers: when one dies (or is killed), the others'
    collective operations fail within seconds (TensorFlow's coordination service misses its
    heartbeats) with a long traceback. What to do instead is always the same: start every worker
    again, and the chief's last checkpoint resumes the run.
    """
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as err:
        if not multi_worker:
            raise
        # TensorFlow names the task it lost last, e.g. "... unhealthy (stopped sending heartbeats):
        # /job:worker/replica:0/task:1".
        tasks = re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", str(err))
        who = f"{tasks[-1][0]} {tasks[-1][1]}" if tasks else "a worker"
        raise UserInputError(f"training stopped: {who} of the cluster stopped or cannot be reached "
                             f"({type(err).__name__}); the last completed epoch is checkpointed in the chief's "
                             "--output: start every worker again with the same command to resume") from err


def any_worker(strategy, flag):
    """True on every worker if ``flag`` is True on any: decisions that must agree (stop training)."""
    import tensorflow as tf

    if not is_multi_worker(strategy):
        return bool(flag)
    votes = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)) > 0


# -- inside the train and test steps -----------------------------------------------------------


def replica_loss(loss):
    """The loss this replica differentiates: its tasks' mean loss / replicas (see the module doc).

    Unchanged with one replica, so that a plain run computes exactly what it always did.
    """
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss / replicas


def step_logs(logs):
    """A train or test step's logs, as Keras 3.15's fit can reduce them across workers.

    Keras reduces them with ``strategy.reduce("MEAN", value, axis=0)`` under a multi-worker
    MultiWorkerMirroredStrategy, which fails on scalars; a vector of one value reduces to the
    same scalar (the mean over replicas). Epoch logs are read from the metrics, so the history
    holds scalars either way.
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not is_multi_worker(strategy):
        return logs
    return {name: tf.reshape(value, (1,)) for name, value in logs.items()}

"""``training.fit --strategy``: two worker processes on 127.0.0.1 train like one process, resume after a
restart, and only the chief writes the run.

Each worker is ``python -m training.fit --strategy multi-worker`` with its own ``TF_CONFIG``. With a
meta-batch of 2 each of the two replicas trains on one task of every meta-batch; the update must be
the one a single process computes on both tasks.

Why the protonet comparison runs in float64: in float32 the two computations differ by round-off,
and this problem amplifies round-off. Omniglot images are nearly constant (white background), so
the first batch norm divides small deviations from a large mean by a small spread, and a change in
the last bit of the mean moves its outputs by ~3e-5; after three Adam steps the weights of one
process and of two workers then differ by up to 4e-3 in float32 (as much as two equivalent
batch-norm kernels in one process), but by 1e-11 in float64, where a wrong gradient scale, a
missing batch-norm synchronisation or a wrong share of episodes shows at 1e-4 or more. The
``abml`` model cannot be built in float64 (float32 constants in its Flipout and LSTM noise), and its
two replicas draw their own noise anyway (see tfp_abml.distribute): it is compared in float32 with
``--strategy mirrored`` over two logical CPU devices in one process, which has the same two
replicas, and agrees to 1e-6.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, float64_models
from training import fit

TINY = ["--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "2", "--steps-per-epoch", "3",
        "--val-tasks", "0", "--inner-steps", "1", "--embedding-dim", "16", "--hidden-units", "16",
        "--noise-dim", "8", "--verbose", "0"]
TIMEOUT = 300


def _env(**extra):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _start(args, variant=(), **env):
    return subprocess.Popen([sys.executable, "-m", "tests.training.fit_variant", *variant, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env))


def _finish(*processes):
    """Wait for all; on a failure or a timeout stop the others and fail with every process's output."""
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            outputs.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    failed = [o for o in outputs if o[0] != 0]
    assert len(outputs) == len(processes) and not failed, "\n---\n".join(f"rc {rc}\n{out}\n{err[-3000:]}"
                                                                        for rc, out, err in outputs)
    return outputs


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start_two_workers(args, outputs, scratch, variant=()):
    """Start worker 0 (the chief) and worker 1 of a cluster on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    return [_start([*args, "--strategy", "multi-worker", "--output", str(output)], variant,
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   TMPDIR=str(scratch))
            for index, output in enumerate(outputs)]


def _two_workers(args, outputs, scratch, variant=()):
    """Run two workers to the end; returns their (rc, stdout, stderr)."""
    return _finish(*_start_two_workers(args, outputs, scratch, variant))


def _weights(output):
    """Every array of ``model.weights.h5`` (model and optimizer variables) by its path in the file."""
    arrays = {}
    with h5py.File(output / "model.weights.h5", "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def _checkpoint(output, epoch):
    """Every value of ``checkpoints/ckpt-<epoch>`` (model, optimizer, epoch, random-stream state) by name."""
    import tensorflow as tf

    path = str(output / "checkpoints" / f"ckpt-{epoch}")
    return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def _history(output):
    return json.loads((output / "history.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def _prepared(data_dir):
    """Omniglot prepared in this session's TFDS folder before processes start that would all prepare it."""
    from tfp_abml.data import make_sampler

    make_sampler("omniglot", "train", ways=3, shots=1, queries=2, data_dir=str(data_dir))


@pytest.fixture
def scratch(tmp_path):
    """TMPDIR of the workers: the scratch folders of non-chief workers must be gone when they end."""
    path = tmp_path / "scratch"
    path.mkdir()
    yield path
    assert not list(path.glob("tfp_abml-worker-*"))


def test_two_workers_train_and_validate_like_one_process(tmp_path, data_dir, scratch):
    args = ["--method", "protonet", *TINY, "--epochs", "2", "--val-tasks", "2", "--data-dir", str(data_dir)]
    single, chief, other = tmp_path / "single", tmp_path / "chief", tmp_path / "worker1"
    workers = _start_two_workers(args, [chief, other], scratch, ["--float64"])
    with float64_models():  # the one-process reference runs here meanwhile
        assert fit.main([*args, "--output", str(single)]) == 0
    _finish(*workers)

    assert not other.exists()  # only the chief writes the run
    assert sorted(p.name for p in (chief / "checkpoints").glob("ckpt-*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    assert _history(chief)["epoch"] == [1, 2]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(_history(chief)[key], _history(single)[key], rtol=1e-9, err_msg=key)
    ours, theirs = _weights(chief), _weights(single)
    assert ours["optimizer/vars/0"] == theirs["optimizer/vars/0"] == 6  # Adam's step: 2 epochs x 3 updates
    difference = _max_difference(ours, theirs)
    print(f"largest difference of a weight or Adam moment, two workers vs one process (float64): {difference:.2g}")
    assert difference < 1e-8
    # The chief's checkpoints are those of one process, so a restarted cluster resumes like one.
    assert _max_difference(_checkpoint(chief, 2), _checkpoint(single, 2)) < 1e-8


def test_abml_on_two_workers_resumes_a_checkpoint_like_two_mirrored_replicas(tmp_path, data_dir, scratch):
    """A restart: the chief restores the last checkpoint and hands it, random-stream state included, to worker 1.

    The checkpoint is an epoch of ``--strategy none`` (the same files a cluster's chief writes, see the
    test above; and a run may change strategy when resumed); the cluster and the mirrored replicas
    both continue it for an epoch.
    """
    args = ["--method", "abml", *TINY, "--steps-per-epoch", "2", "--data-dir", str(data_dir)]
    first, chief, other, mirrored = (tmp_path / name for name in ("first", "chief", "worker1", "mirrored"))
    assert fit.main([*args, "--epochs", "1", "--output", str(first)]) == 0
    shutil.copytree(first, chief)
    shutil.copytree(first, mirrored)
    reference = _start([*args, "--epochs", "2", "--strategy", "mirrored", "--output", str(mirrored)],
                       ["--logical-cpus", "2"])
    # The workers are asked for 3 epochs but out of time after their first (--max-minutes): both must
    # stop after epoch 2, or the one that went on would wait for the other forever.
    (_, chief_out, _), _ = _two_workers([*args, "--epochs", "3", "--max-minutes", "1e-4"], [chief, other], scratch)
    _finish(reference)

    assert "Resuming" in chief_out and "after epoch 1 of 3 (optimizer step 2, next training episode 4)" in chief_out
    assert not other.exists()
    ours, theirs = _history(chief), _history(mirrored)
    assert ours["epoch"] == theirs["epoch"] == [1, 2]
    for key in ("loss", "nll", "kl", "accuracy"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, err_msg=key)
    # float32 round-off, amplified as explained above: measured 5e-7, where a worker that did not get
    # the chief's random-stream state or Adam moments differs by about 2e-3.
    weights = [_weights(output) for output in (chief, mirrored)]
    weights = [{k: v for k, v in w.items() if not k.startswith("optimizer/")} for w in weights]
    difference = _max_difference(*weights)
    print(f"largest weight difference, two workers vs two mirrored replicas (float32): {difference:.2g}")
    assert difference < 1e-4


def test_mirrored_with_one_replica_trains_as_without_a_strategy(tmp_path, data_dir):
    """On a machine without GPUs ``--strategy mirrored`` has one replica: the same run as ``none``."""
    args = ["--method", "protonet", *TINY, "--epochs", "1", "--data-dir", str(data_dir)]
    assert fit.main([*args, "--output", str(tmp_path / "none")]) == 0
    assert fit.main([*args, "--strategy", "mirrored", "--output", str(tmp_path / "mirrored")]) == 0
    assert _history(tmp_path / "mirrored")["loss"] == pytest.approx(_history(tmp_path / "none")["loss"], rel=1e-6)
    assert _max_difference(_weights(tmp_path / "mirrored"), _weights(tmp_path / "none")) < 1e-6


def test_maml_tasks_one_at_a_time_on_two_mirrored_replicas_train_like_unrolled_in_one_process(tmp_path, data_dir):
    # --task-loop sequential sums per-task outer gradients inside the replica's train step; across
    # replicas the optimizer sums again. Both sums must make the single process's mean (float64).
    args = ["--method", "maml", *TINY, "--epochs", "1", "--data-dir", str(data_dir)]
    single, mirrored = tmp_path / "single", tmp_path / "mirrored"
    replicas = _start([*args, "--task-loop", "sequential", "--strategy", "mirrored", "--output", str(mirrored)],
                      ["--float64", "--logical-cpus", "2"])
    with float64_models():
        assert fit.main([*args, "--task-loop", "unrolled", "--output", str(single)]) == 0
    _finish(replicas)
    np.testing.assert_allclose(_history(mirrored)["loss"], _history(single)["loss"], rtol=1e-9)
    difference = _max_difference(_weights(mirrored), _weights(single))
    print(f"largest difference of a weight or Adam moment, sequential on 2 replicas vs unrolled: {difference:.2g}")
    assert difference < 1e-8


def _error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


WORKER0 = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}


@pytest.mark.parametrize("tf_config, extra, message", [
    (None, [], "--strategy multi-worker needs TF_CONFIG on every machine"),
    ("{not json", [], "TF_CONFIG is not valid JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), [], 'TF_CONFIG needs "cluster"'),
    (json.dumps({**WORKER0, "task": {"type": "worker", "index": 2}}), [], "task index 2 is not in the cluster's 2"),
    (json.dumps({**WORKER0, "task": {"type": "ps", "index": 0}}), [], 'TF_CONFIG needs "task"'),
    (json.dumps(WORKER0), ["--meta-batch", "3"], "--meta-batch 3 cannot be split evenly over the 2 workers"),
])
def test_multi_worker_input_errors_are_one_line(tf_config, extra, message, monkeypatch, capsys, tmp_path, data_dir):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    output = tmp_path / "run"
    assert fit.main(["--strategy", "multi-worker", "--data-dir", str(data_dir), "--output", str(output), *extra]) == 2
    assert message in _error_line(capsys)
    assert not output.exists()


def test_a_meta_batch_that_the_replicas_cannot_share_is_refused():
    """The check ``training.fit`` makes once TensorFlow has counted the replicas (GPUs x workers)."""
    from tfp_abml.distribute import replica_meta_batch
    from tfp_abml.errors import UserInputError

    assert replica_meta_batch(8, 4) == 2
    with pytest.raises(UserInputError, match="^--meta-batch 6 cannot be split evenly over 4 replicas: use a multiple of 4$"):
        replica_meta_batch(6, 4)


def test_a_lost_worker_stops_training_with_one_line_that_says_how_to_resume():
    """What the other workers see when one dies (checked by hand: killing worker 1 of 2 with SIGKILL made
    the chief fail with this UnavailableError 10 s later; both restarted resumed from the chief's checkpoint)."""
    import tensorflow as tf

    from tfp_abml.distribute import lost_workers
    from tfp_abml.errors import UserInputError

    lost = tf.errors.UnavailableError(None, None, "Graph execution error:\n\nCollective ops is aborted by: Error "
                                                  "reported from /job:worker/task:1: The following tasks are "
                                                  "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1")
    with pytest.raises(UserInputError, match=r"^training stopped: worker 1 of the cluster stopped or cannot be reached "
                                             r"\(UnavailableError\); .* start every worker again with the same "
                                             "command to resume$"):
        with lost_workers(multi_worker=True):
            raise lost
    with pytest.raises(tf.errors.UnavailableError):  # not in a cluster: not this package's to explain
        with lost_workers(multi_worker=False):
            raise lost

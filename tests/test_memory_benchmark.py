"""benchmarks/memory.py and child_process.py: the child's peak-memory reading, how its end is told, one real run.

No memory figure is asserted beyond what the test itself allocates: peaks depend on the machine.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import child_process  # noqa: E402
import memory  # noqa: E402

MIB = 1024 ** 2


def _python(code):
    return [sys.executable, "-c", code]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_killed_for_memory_leaves_its_peak_and_is_called_killed():
    # 300 MiB touched page by page, then the child dies as the out-of-memory killer would kill it.
    code = ("import os, signal, time; block = bytearray(300 * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); "
            "time.sleep(1.0); os.kill(os.getpid(), signal.SIGKILL)")
    returncode, peak, _, _, timed_out = child_process.run_child(_python(code), timeout=60)
    assert returncode == -9 and not timed_out
    assert 300 * MIB <= peak < 1024 * MIB
    assert child_process.how_it_ended(returncode, timed_out).startswith("killed by SIGKILL (the kernel's out-of-memory")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_run_child_returns_output_stops_at_the_timeout_and_names_failures():
    returncode, peak, stdout, _, timed_out = child_process.run_child(_python("print('hello')"), timeout=60)
    assert (returncode, stdout, timed_out) == (0, "hello\n", False) and child_process.how_it_ended(0, False) == "ok"
    returncode, _, _, _, timed_out = child_process.run_child(_python("import time; time.sleep(60)"), timeout=0.5)
    assert timed_out and child_process.how_it_ended(returncode, timed_out) == "stopped: timeout"
    returncode, _, _, stderr, timed_out = child_process.run_child(_python("raise SystemExit('bad input')"), timeout=60)
    assert child_process.how_it_ended(returncode, timed_out) == "failed: exit status 1" and "bad input" in stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_run_child_uncaptured_waits_without_a_timeout_and_returns_no_output(capfd):
    returncode, peak, stdout, stderr, timed_out = child_process.run_child(
        _python("import time; time.sleep(0.5); print('progress')"), capture=False)
    assert (returncode, stdout, stderr, timed_out) == (0, "", "", False) and peak > 0
    assert "progress" in capfd.readouterr().out  # the child wrote to this process's terminal


def test_configurations_vary_the_task_loop_for_maml_methods_only(data_dir):
    args = memory.build_parser().parse_args(["--data-dir", str(data_dir), "--settings", "5w1s", "--methods", "protonet",
                                             "maml", "--task-loops", "unrolled", "map_fn", "--meta-batch", "1", "2"])
    specs = memory.configurations(args)
    assert [(s["method"], s.get("task_loop"), s["meta_batch"]) for s in specs] == [
        ("protonet", None, 1), ("protonet", None, 2),
        ("maml", "unrolled", 1), ("maml", "unrolled", 2), ("maml", "map_fn", 1), ("maml", "map_fn", 2)]
    assert all((s["encoder"], s["image_size"], s["ways"], s["shots"]) == ("conv4", 28, 5, 1) for s in specs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_benchmark_measures_real_training_and_writes_json(tmp_path, data_dir):
    output = tmp_path / "memory.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory.py"), "--data-dir", str(data_dir),
                             "--settings", "5w1s", "--methods", "protonet", "--meta-batch", "2",
                             "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(output.read_text())
    assert saved["complete"] is True and saved["command"].startswith("python benchmarks/memory.py")
    [row] = saved["rows"]
    assert (row["method"], row["encoder"], row["image_size"], row["meta_batch"]) == ("protonet", "conv4", 28, 2)
    assert row["status"] == "ok" and row["steps"] == 4 and row["first_step_s"] > 0
    # TensorFlow alone holds a few hundred MiB; the machine's memory bounds the rest.
    assert 0.2 < row["peak_rss_gib"] < saved["memory_total_gib"]
    assert "data_dir" not in row and str(output) in result.stdout
    table = result.stdout[result.stdout.index("peak GiB"):]
    assert f"{row['peak_rss_gib']:7.2f}" in table and "protonet" in table and " ok" in table

"""Run a benchmark's piece of work in a child process and read its peak memory from ``/proc``.

One configuration (``memory.py``) or one training group (``speed.py``) per child: what one costs
in memory is not another's, and a child the kernel's out-of-memory killer stops costs that piece
of work, not the whole run. The peak is the child's ``VmHWM`` (resident-memory high-water mark),
polled while it runs, so a killed child still leaves a lower bound.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

GIB = 1024.0 ** 3


def proc_kib_field_bytes(path, field):
    """``field`` of a ``/proc`` file whose lines read ``Field:   123 kB``, in bytes; None if absent or gone."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def high_water_mark_bytes(pid):
    """The process's peak resident memory so far (``VmHWM``), or None once it is gone."""
    return proc_kib_field_bytes(f"/proc/{pid}/status", "VmHWM")


def run_child(command, timeout=None, poll_seconds=0.2, capture=True):
    """Run ``command``, polling its memory high-water mark. Returns ``(returncode, peak_bytes,
    stdout, stderr_tail, timed_out)``; the peak is the last reading, a lower bound for a killed child.

    ``capture=False`` lets the child write to this process's terminal (its progress shows as it
    runs) and returns empty strings for its output; ``timeout=None`` waits however long it takes.
    """
    peak = 0
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True) as child:
        out_chunks, err_chunks = [], []
        readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)
                   for s, c in ((child.stdout, out_chunks), (child.stderr, err_chunks)) if s is not None]
        for reader in readers:
            reader.start()
        deadline, timed_out = time.monotonic() + (float("inf") if timeout is None else timeout), False
        while child.poll() is None:
            peak = max(peak, high_water_mark_bytes(child.pid) or 0)
            if time.monotonic() > deadline:
                child.kill()
                timed_out = True
                break
            time.sleep(poll_seconds)
        child.wait()
        for reader in readers:
            reader.join()
    return child.returncode, peak, "".join(out_chunks), "".join(err_chunks)[-2000:], timed_out


def how_it_ended(returncode, timed_out):
    """How a child ended, in words: "ok", "stopped: timeout", "killed by SIGKILL (...)", "failed: exit status N"."""
    if timed_out:
        return "stopped: timeout"
    if returncode == 0:
        return "ok"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = " (the kernel's out-of-memory killer sends this)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{why}"
    return f"failed: exit status {returncode}"

"""The README's Python example runs as written, on the committed SavedModel and real Omniglot."""

import re
import subprocess
import sys

from tests.conftest import REPO


def test_readme_python_example_runs_as_written(data_dir):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    code = blocks[0].replace('"../shared/data"', repr(str(data_dir)))  # the data folder of this machine
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(re.search(r"accuracy ([0-9.]+)", done.stdout).group(1))
    assert accuracy >= 0.8, done.stdout  # the committed model: ~98% on such tasks; chance 20%
    assert "None" not in done.stdout  # the Bayesian model gives its mutual information

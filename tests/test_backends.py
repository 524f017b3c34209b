"""The loss, teacher, MrKD and NumPy-pipeline tests again under JAX and PyTorch.

The Keras backend is fixed when Keras is first imported, so each backend runs
in its own ``python -m pytest`` process with ``KERAS_BACKEND`` set: the one
test command of the README then covers all three backends. JAX and PyTorch
come from the ``backends`` extra (``pip install -e ".[test,backends]"``);
where one is not installed its run is skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [
    "tests/test_losses.py",
    "tests/test_teachers.py",
    "tests/test_memory_replay.py",
    "tests/test_py_dataset.py",
]


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="run from the default (TensorFlow) suite; this process already runs one other backend",
)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_suite_passes_under_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[backends]')")
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "pytest", *FILES, "-q", "-x", "-p", "no:cacheprovider"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"KERAS_BACKEND={backend}: {summary} ({elapsed:.0f} s)")
    assert result.returncode == 0, (
        f"KERAS_BACKEND={backend} {' '.join(command[1:])} failed:\n"
        f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )

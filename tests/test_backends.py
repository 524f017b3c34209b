"""The loss, teacher, MrKD, CS-KD, PS-KD and NumPy-pipeline tests again under JAX and PyTorch.

The Keras backend is fixed when Keras is first imported, so each backend runs
in its own ``python -m pytest`` process with ``KERAS_BACKEND`` set (started in the
background at the start of the session: ``backend_runs``): the one test command of
the README then covers all three backends. JAX and PyTorch come from the ``backends``
extra (``pip install -e ".[test,backends]"``); where one is not installed its run is
skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import backend_runs
from conftest import TWO_HOST_DEVICES

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 900  # seconds, for each backend's run (about 4 min for JAX, 2 for PyTorch, on 2 cores)


@pytest.mark.slow
@pytest.mark.xdist_group("backends")
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="run from the default (TensorFlow) suite; this process already runs one other backend",
)
@pytest.mark.parametrize("backend", backend_runs.BACKENDS)
def test_suite_passes_under_backend(backend, request):
    """The backend's run of ``backend_runs.FILES``, started in the background when the session
    began (``backend_runs.start``), passed: this test waits for its exit status."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[backends]')")
    where = backend_runs.folder(backend_runs.starter_pid(request.config))
    status, log = where / f"{backend}.rc", where / f"{backend}.log"
    start = time.monotonic()
    while not status.exists() and time.monotonic() - start < TIMEOUT:
        time.sleep(1)
    text = log.read_text() if log.exists() else f"no log: {log} (was the run started?)"
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    print(f"KERAS_BACKEND={backend}: {summary} (waited {time.monotonic() - start:.0f} s)")
    returncode = int(status.read_text()) if status.exists() else None
    assert returncode == 0, (
        f"KERAS_BACKEND={backend} pytest {' '.join(backend_runs.FILES)} failed (exit "
        f"{returncode}; None: still running after {TIMEOUT} s of waiting):\n{text[-8000:]}"
    )


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="run from the default (TensorFlow) suite, which starts the JAX process itself",
)
def test_experiment_runs_on_jax_without_tensorflow_on_one_and_two_devices(tmp_path):
    """experiment.run (train.py's body) on JAX with TensorFlow unimportable, on one
    device and with keras.distribution.DataParallel over two CPU devices: the two
    runs see the same global batches, so they must end with the same weights."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[backends]')")
    from conftest import run_on_one_and_two_devices

    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "CUDA_VISIBLE_DEVICES": "",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": TWO_HOST_DEVICES,
    }
    # Any import of TensorFlow fails: the JAX path must not need it.
    runs = run_on_one_and_two_devices(tmp_path, 'sys.modules["tensorflow"] = None', env)
    one, two = runs["one_device"], runs["mirrored"]
    assert one["replicas"] == 1 and two["replicas"] == 2
    assert one["completed"] and two["completed"]
    assert one["versions"]["keras_backend"] == "jax"
    assert (tmp_path / "out" / "mirrored" / "history.csv").read_text().count("\n") == 3
    for key in ("test_error", "test_nll", "test_ece"):
        assert two[key] == pytest.approx(one[key], rel=2e-3, abs=2e-3), key
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=2e-3, atol=2e-3)


_UNEVEN_SCRIPT = """
import csv, json, sys
sys.modules["tensorflow"] = None
from keras_softkd import experiment
from keras_softkd.config import ExperimentConfig, UsageError
data_dir, out = sys.argv[1], sys.argv[2]
# float32: val_accuracy is the student's in the run's precision, test_error the saved model's
# (float32); where auto picks bfloat16 an image could fall either way.
config = dict(method="lsrkd", model="resnet20", epochs=1, data_dir=data_dir, seed=0, strategy="mirrored",
              precision="float32")
try:
    experiment.run(ExperimentConfig(batch_size=33, output_dir=out + "/odd", **config))
except UsageError as error:
    print("USAGE=" + str(error))
results = experiment.run(ExperimentConfig(batch_size=32, output_dir=out + "/run", **config))
history = list(csv.DictReader(open(out + "/run/history.csv")))
print("RESULTS=" + json.dumps({**results, "val_accuracy": float(history[-1]["val_accuracy"])}))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="run from the default (TensorFlow) suite, which starts the JAX process itself",
)
def test_experiment_on_two_jax_devices_with_sets_they_do_not_divide(tmp_path):
    """67 training and 33 test images over two devices (keras.distribution shards every
    batch evenly): the last training batch is cut to 2, the test set padded with a
    zero-weight example; every test image counts once, in the results and in the
    per-epoch val_accuracy (3/33, not 3/34). An odd --batch_size is refused up front."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[backends]')")
    from conftest import write_tiny_cifar

    data_dir = write_tiny_cifar(tmp_path / "data", train=67, test=33)
    script = tmp_path / "uneven.py"
    script.write_text(_UNEVEN_SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": TWO_HOST_DEVICES}
    result = subprocess.run([sys.executable, str(script), str(data_dir), str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line
                 and line.split("=", 1)[0] in ("USAGE", "RESULTS"))
    assert "--batch_size=33 must be a multiple of the number of devices (2, --strategy=mirrored)" in lines["USAGE"]
    results = json.loads(lines["RESULTS"])
    assert results["replicas"] == 2 and results["completed"]
    wrong = results["test_error"] * 33
    assert wrong == pytest.approx(round(wrong), abs=1e-6)  # a count out of 33 test images
    assert results["val_accuracy"] == pytest.approx(1 - results["test_error"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="run from the default (TensorFlow) suite, which starts the JAX process itself",
)
def test_gpu_benchmark_script_runs_on_jax_without_tensorflow(tmp_path):
    """benchmarks/gpu_backends.sh, shrunk (ResNet-20, one timed step, plain training and
    MrKD-3: a loss on the logits and the trainer with copies, each a compile), on JAX's CPU:
    the script a GPU machine without TensorFlow runs must not need TensorFlow."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[backends]')")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "MODEL": "resnet20", "METHODS": "ce,mrkd-3", "STEPS": "1", "WARMUP": "1", "REPEATS": "1",
           "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_backends.sh"), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "method_throughput_jax_gpu.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["ce", "mrkd-3"]
    assert all(row["images_per_second"] > 0 for row in rows)

"""Test set-up: two logical CPU devices (for tf.distribute tests), the real data path, and
how the suite runs: its order, its xdist workers, the other backends' runs in the background.

The logical devices must be configured before TensorFlow initialises, so this
runs at import time, before any test module imports keras.

``pytest`` runs the tests on pytest-xdist workers (``-n auto`` in pytest.ini: one per core,
fewer where memory is short); ``-m "not slow"`` leaves out the long end-to-end runs (the
inner loop while developing). The long tests are sent to the workers first, so that no worker
is left with one at the end while the others idle; the test that waits for the JAX and
PyTorch runs (``backend_runs``) comes last, so that those runs overlap the rest.
"""

import os
import pathlib
import re

import pytest

import backend_runs

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
#: XLA (JAX, and TensorFlow's jit_compile) compiles the tests' many small functions without
#: LLVM's costly passes: a fifth less CPU time for the JAX suite, the same results within the
#: tests' tolerances. Inherited by the subprocesses the tests start (the JAX and PyTorch runs).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", FAST_XLA)
#: Two XLA host devices, for JAX's data-parallel tests (in their own processes).
TWO_HOST_DEVICES = f"{FAST_XLA} --xla_force_host_platform_device_count=2"

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

DATA_ENV = "KERAS_SOFTKD_DATA_DIR"

#: Memory one xdist worker can reach (TensorFlow, the traced functions of its tests).
WORKER_MEMORY = 5 * 2**30


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per usable core, as many as the memory holds (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores or 1, memory // WORKER_MEMORY))


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the backend suite's wait last, the rest between (stable order)."""

    def rank(item):
        if item.nodeid.startswith(backend_runs.SUITE_TEST):
            return 2
        return 0 if item.get_closest_marker("slow") else 1

    items.sort(key=rank)


def pytest_collection_finish(session):
    """Without xdist (or in ``-n 0``), this process starts the other backends' runs."""
    controller = session.config.pluginmanager.has_plugin("dsession")  # xdist's, with workers
    if not hasattr(session.config, "workerinput") and not controller:
        backend_runs.start(session.config, [item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Under xdist the controller starts them, once, when the first worker has collected."""
    backend_runs.start(node.config, ids)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        backend_runs.stop()


#: TensorFlow's start-up chatter (C++ log lines written before its logging starts; issue 16).
TF_STARTUP = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuInit|oneDNN|cuda drivers", re.M)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> pathlib.Path:
    """No network (host names do not resolve), ``tfds.load`` must not be called, and TFDS's
    default folder is a fresh path under ``tmp_path``, returned: the data loaders must fail
    fast offline and create nothing there."""
    import socket

    import tensorflow_datasets as tfds

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def must_not_download(*args, **kwargs):
        raise AssertionError("tfds.load called offline")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(tfds, "load", must_not_download)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))
    return tmp_path / "tfds_default"


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The folder with the real CIFAR ``.npz`` files, or skip the test."""
    return real_data_folder("cifar10_test.npz", "CIFAR")


def real_data_folder(required: str, what: str) -> pathlib.Path:
    """The folder ``KERAS_SOFTKD_DATA_DIR`` names, when it holds ``required``; else the test
    is skipped, saying why (``what``: the kind of real data the test needs)."""
    path = os.environ.get(DATA_ENV)
    if not path:
        pytest.skip(f"{DATA_ENV} is not set: no real {what} files (.ci/run sets it)")
    path = pathlib.Path(path)
    if not (path / required).exists():
        pytest.skip(f"{DATA_ENV}={path} has no {required}")
    return path


_TWO_REPLICAS = []


def two_replicas():
    """The session's one MirroredStrategy over the two logical CPUs.

    Several MirroredStrategy instances in one process reuse collective instance
    keys and abort each other's all-reduces, so every test shares this one.
    """
    if not _TWO_REPLICAS:
        import tensorflow as tf

        _TWO_REPLICAS.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _TWO_REPLICAS[0]


@pytest.fixture
def mirrored_strategy():
    """Fixture form of :func:`two_replicas`."""
    return two_replicas()


def write_tiny_cifar(folder: pathlib.Path, train: int = 64, test: int = 32) -> pathlib.Path:
    """``cifar10_train.npz`` / ``cifar10_test.npz`` of random images in ``folder`` (the local-files layout)."""
    import numpy as np

    rng = np.random.RandomState(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        np.savez(
            folder / f"cifar10_{split}.npz",
            x=rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8),
            y=np.arange(n) % 10,
        )
    return folder


_ONE_AND_TWO_DEVICES_SCRIPT = """
import json, sys
{prelude}
import keras
import numpy as np
from keras_softkd import experiment
from keras_softkd.config import ExperimentConfig
data_dir, out = sys.argv[1], sys.argv[2]
results = {{}}
for strategy in ("one_device", "mirrored"):
    # float32 teachers: the runs compare float32 sums in two orders (auto could pick bfloat16)
    config = ExperimentConfig(method="mrkd", copies=2, kappa=1, model="resnet20", epochs=2,
                              batch_size=32, data_dir=data_dir, seed=2, strategy=strategy,
                              precision="float32", teacher_precision="same", output_dir=f"{{out}}/{{strategy}}")
    results[strategy] = experiment.run(config)
    student = keras.models.load_model(f"{{out}}/{{strategy}}/model.keras")
    results[strategy]["weights"] = [np.asarray(w).tolist() for w in student.get_weights()[:4]]
print("RESULTS=" + json.dumps(results))
"""


def run_on_one_and_two_devices(tmp_path: pathlib.Path, prelude: str, env: dict) -> dict:
    """``experiment.run`` (MrKD n = 2, kappa = 1, 2 epochs on tiny data, float32 teachers) with
    ``strategy`` ``one_device`` and ``mirrored``, in a fresh process whose set-up is ``prelude``
    (code run before Keras is imported). Returns ``{"one_device": results, "mirrored": results}``,
    each with the student's first four weight arrays under ``"weights"``."""
    import json
    import subprocess
    import sys

    data_dir = write_tiny_cifar(tmp_path / "data")
    script = tmp_path / "one_and_two_devices.py"
    script.write_text(_ONE_AND_TWO_DEVICES_SCRIPT.format(prelude=prelude))
    result = subprocess.run(
        [sys.executable, str(script), str(data_dir), str(tmp_path / "out")],
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULTS=")][0]
    return json.loads(line[len("RESULTS="):])


def tensorflow_only(reason):
    """Skips a test of a TensorFlow-only mechanism on the other backends, saying why."""
    import keras

    return pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason=f"{reason}: TensorFlow backend only"
    )


def to_numpy(x):
    """A variable's or tensor's value as a NumPy array (PyTorch: detached)."""
    import keras
    import numpy as np

    return np.array(keras.ops.convert_to_numpy(x))


def sync(model):
    """On JAX, ``fit`` keeps the variables' values in its state: write them back first."""
    import keras

    if keras.backend.backend() == "jax":
        model.jax_state_sync()


def killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, method: str, **settings) -> list:
    """``experiment.run`` (train.py's body) with ``method`` on a tiny network and tiny CIFAR files,
    3 epochs; then again, killed right after epoch 2's checkpoint, and run once more: the resumed
    run must end where the uninterrupted one does (metrics, weights, the history's epochs).
    Returns the resumed run's history.csv lines."""
    import keras

    from keras_softkd import experiment

    def tiny_network(name, num_classes, synchronized_batchnorm=False):
        inputs = keras.Input((32, 32, 3))
        h = keras.layers.Conv2D(4, 3, strides=4, use_bias=False)(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
        return keras.Model(inputs, keras.layers.Dense(num_classes)(h))

    monkeypatch.setattr(experiment.models, "build", tiny_network)
    data_dir = write_tiny_cifar(tmp_path / "data", train=40, test=16)
    settings = dict(method=method, epochs=3, batch_size=16, data_dir=str(data_dir), seed=1, lr=0.2,
                    **settings)
    full, resumed = run_killed_and_resumed(tmp_path, monkeypatch, settings, killed_after=1)
    return assert_resumed_equals_full(tmp_path, full, resumed, ("test_error", "test_nll", "test_ece"),
                                      epochs=3, weights_rtol=1e-6)


def assert_resumed_equals_full(tmp_path, full: dict, resumed: dict, keys, epochs: int,
                               weights_rtol: float) -> list:
    """The run resumed into ``tmp_path/resumed`` ended where the uninterrupted one in
    ``tmp_path/full`` did: the results' ``keys`` to 1e-6, the saved students' weights to
    ``weights_rtol`` (atol 1e-6), one history row per epoch (0 to ``epochs - 1``). Returns the
    resumed run's history.csv lines."""
    import keras
    import numpy as np
    import pytest

    for key in keys:
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
    a = keras.models.load_model(tmp_path / "full" / "model.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=weights_rtol, atol=1e-6)
    history = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == [str(epoch) for epoch in range(epochs)]
    return history


def run_killed_and_resumed(tmp_path, monkeypatch, settings: dict, killed_after: int) -> tuple:
    """``experiment.run(ExperimentConfig(**settings))`` into ``tmp_path/full``; then into
    ``tmp_path/resumed``, killed right after epoch ``killed_after``'s checkpoint (0-based) and
    run again. Returns both runs' results; the second start must say it resumed."""
    import pytest

    from keras_softkd import experiment
    from keras_softkd.config import ExperimentConfig

    full = experiment.run(ExperimentConfig(output_dir=str(tmp_path / "full"), **settings))

    class Killed(Exception):
        pass

    save = experiment.EpochCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch == killed_after:
            raise Killed

    monkeypatch.setattr(experiment.EpochCheckpoint, "on_epoch_end", save_then_die)
    with pytest.raises(Killed):
        experiment.run(ExperimentConfig(output_dir=str(tmp_path / "resumed"), **settings))
    monkeypatch.setattr(experiment.EpochCheckpoint, "on_epoch_end", save)
    resumed = experiment.run(ExperimentConfig(output_dir=str(tmp_path / "resumed"), **settings))
    return full, resumed

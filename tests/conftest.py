"""Test set-up: two logical CPU devices (for tf.distribute tests) and the real data path.

The logical devices must be configured before TensorFlow initialises, so this
runs at import time, before any test module imports keras.
"""

import os
import pathlib

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

DATA_ENV = "KERAS_SOFTKD_DATA_DIR"


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The folder with the real CIFAR ``.npz`` files, or skip the test."""
    path = os.environ.get(DATA_ENV)
    if not path:
        pytest.skip(f"{DATA_ENV} is not set: no real CIFAR files (.ci/run sets it)")
    path = pathlib.Path(path)
    if not (path / "cifar10_test.npz").exists():
        pytest.skip(f"{DATA_ENV}={path} has no cifar10_test.npz")
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

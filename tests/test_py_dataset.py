"""The NumPy input pipeline (``keras_softkd.data.py_dataset``), on every backend.

The augmentation is checked exactly, as ``test_data.py`` checks the tf.data one:
on "coordinate images" whose pixel (r, c) holds (r + 1, c + 1, 200), every
output pixel says where it came from, so each example's crop offsets and flip
can be read back and the batch compared with a per-example NumPy
pad-crop-flip written here. No TensorFlow is imported unless the backend is
TensorFlow.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_softkd import data
from keras_softkd.data import py_dataset
from keras_softkd.data.py_dataset import EvalPyDataset, TrainPyDataset

from augmentation_reference import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    coordinate_images,
    denormalize,
    recover_parameters,
    reference_crop_flip,
)

BACKEND = keras.backend.backend()


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3)).astype(np.uint8)


def stream(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [ds[i] for i in range(len(ds))]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


# ---------------------------------------------------------------------------
# The augmentation
# ---------------------------------------------------------------------------


def test_augment_batch_is_exact_per_example_pad_crop_flip():
    images = coordinate_images(3000)
    out = py_dataset.augment_batch(images, np.random.default_rng(7))
    assert out.shape == images.shape and out.dtype == np.uint8
    rows, columns, flips = recover_parameters(out)
    assert rows.min() == 0 and rows.max() == 8 and columns.min() == 0 and columns.max() == 8
    # Exact: each output is the NumPy pad-crop-flip with its own offsets; padding is zeros.
    np.testing.assert_array_equal(out, reference_crop_flip(images, rows, columns, flips))
    # Independent per example: all 81 offset pairs occur, each offset about 1/9, flips about 1/2.
    assert len(set(zip(rows, columns))) == 81
    assert np.all(np.abs(np.bincount(rows, minlength=9) / 3000 - 1 / 9) < 0.03)
    assert np.all(np.abs(np.bincount(columns, minlength=9) / 3000 - 1 / 9) < 0.03)
    assert abs(flips.mean() - 0.5) < 0.04
    # Rows and columns are drawn independently, the flip independently of both.
    assert abs(np.corrcoef(rows, columns)[0, 1]) < 0.06
    assert abs(np.corrcoef(rows, flips)[0, 1]) < 0.06
    again = py_dataset.augment_batch(images, np.random.default_rng(7))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, py_dataset.augment_batch(images, np.random.default_rng(8)))


def test_crop_and_flip_at_the_extreme_offsets():
    images = random_images(4, 0)
    offsets = np.array([[0, 0], [8, 8], [0, 8], [4, 4]])
    flips = np.array([False, True, True, False])
    out = py_dataset.crop_and_flip(images, offsets, flips)
    np.testing.assert_array_equal(out, reference_crop_flip(images, offsets[:, 0], offsets[:, 1], flips))
    np.testing.assert_array_equal(out[3], images[3])  # centred, not flipped: the image itself
    assert np.all(out[0, :4] == 0) and np.all(out[0, :, :4] == 0)  # top-left padding


def test_normalize_matches_definition():
    images = random_images(3, 1)
    out = py_dataset.normalize(images, "cifar10")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (images / 255.0 - CIFAR10_MEAN) / CIFAR10_STD, atol=1e-5)
    mean100 = np.array(data.DATASETS["cifar100"].mean)
    std100 = np.array(data.DATASETS["cifar100"].std)
    np.testing.assert_allclose(py_dataset.normalize(images, "cifar100"),
                               (images / 255.0 - mean100) / std100, atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="compares with the tf.data pipeline")
def test_normalize_equals_the_tf_data_pipeline_bit_for_bit():
    from keras_softkd.data import pipeline

    images = random_images(16, 2)
    for name in data.DATASETS:
        np.testing.assert_array_equal(
            py_dataset.normalize(images, name), np.asarray(pipeline.normalize(images, name))
        )


# ---------------------------------------------------------------------------
# TrainPyDataset: batches, epochs, seeds
# ---------------------------------------------------------------------------


def test_train_batches_are_augmented_per_example_and_normalised():
    images, labels = coordinate_images(256), np.arange(256) % 10
    ds = TrainPyDataset(images, labels, dataset="cifar10", batch_size=256, seed=3)
    batch_images, batch_labels = ds[0]
    assert batch_images.shape == (256, 32, 32, 3)
    assert batch_images.dtype == np.float32 and batch_labels.dtype == np.int32
    pixels = denormalize(batch_images)
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)  # normalised exactly
    out = np.round(pixels).astype(np.uint8)
    rows, columns, flips = recover_parameters(out)
    np.testing.assert_array_equal(out, reference_crop_flip(images, rows, columns, flips))
    assert len(set(zip(rows, columns))) > 40  # crops differ within the batch
    assert 0.35 < flips.mean() < 0.65
    assert np.all(out[rows < 4, 0] == 0)  # the top row is padding: zeros before normalisation
    assert np.all(out[rows >= 4, 0, 12:20] > 0)
    # the labels follow their images through the shuffle
    np.testing.assert_array_equal(batch_labels, labels[ds.indices(0, 0)])


def test_epochs_are_keyed_on_seed_and_epoch_and_resume_exactly():
    images, labels = random_images(50, 0), np.arange(50) % 10

    def make(seed=1, first_epoch=0, epochs=3, **kwargs):
        return TrainPyDataset(images, labels, dataset="cifar10", batch_size=16, seed=seed,
                              first_epoch=first_epoch, epochs=epochs, **kwargs)

    full = make()
    assert full.steps_per_epoch == 4 and len(full) == 12 and full.num_batches is None
    batches = stream(full)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2] * 3
    assert_same_batches(batches, stream(make()))  # a function of the seed
    assert_same_batches(batches[8:], stream(make(first_epoch=2)))  # resumed at epoch 2
    assert_same_batches(batches[4:8], stream(make(first_epoch=1, epochs=2)))
    assert_same_batches(batches[:4], stream(make(epochs=1)))  # epoch 0 ignores later ones
    assert not np.array_equal(batches[0][0], batches[4][0])  # new order/augmentation per epoch
    assert not np.array_equal(batches[0][0], make(seed=2)[0][0])
    for epoch in range(3):  # each epoch is a permutation of the examples
        order = np.concatenate([full.indices(epoch, b) for b in range(4)])
        assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    # Without augmentation each epoch is the images themselves, in the epoch's order.
    plain = make(augment=False)
    got = denormalize(np.concatenate([plain[i][0] for i in range(4)]))
    order = np.concatenate([plain.indices(0, b) for b in range(4)])
    np.testing.assert_allclose(got, images[order], atol=2e-3)
    np.testing.assert_array_equal(np.concatenate([plain[i][1] for i in range(4)]), labels[order])
    np.testing.assert_array_equal(order, np.concatenate([full.indices(0, b) for b in range(4)]))


@pytest.mark.parametrize(
    "workers,processes", [(2, False), (3, False), (2, True)], ids=["2 threads", "3 threads", "2 processes"]
)
def test_workers_give_the_same_stream(workers, processes):
    images, labels = random_images(40, 3), np.arange(40) % 10
    kwargs = dict(dataset="cifar10", batch_size=8, seed=5, epochs=2)
    expected = stream(TrainPyDataset(images, labels, **kwargs))
    parallel = TrainPyDataset(images, labels, workers=workers, use_multiprocessing=processes,
                              max_queue_size=4, **kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # JAX: os.fork() with threads
            assert_same_batches(stream(parallel), expected)
            # out of order and repeated requests (Keras's build-time peek) are answered alike
            for index in (3, 0, 0, 9, 1):
                np.testing.assert_array_equal(parallel[index][0], expected[index][0])
    finally:
        parallel.close()
    evaluation = EvalPyDataset(images, labels, dataset="cifar10", batch_size=16, workers=workers,
                               use_multiprocessing=processes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert_same_batches(stream(evaluation),
                                stream(EvalPyDataset(images, labels, dataset="cifar10", batch_size=16)))
    finally:
        evaluation.close()


class Recording(keras.Model):
    """A linear classifier whose eager ``train_step`` keeps every batch it is given."""

    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(10)
        self.batches = []

    def call(self, x):
        return self.dense(self.flatten(x))

    def train_step(self, *args):
        x, y = args[-1][:2]
        self.batches.append((keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y)))
        return super().train_step(*args)


@pytest.mark.parametrize("workers", [1, 2])
def test_fit_reads_the_stream_in_order_including_a_resumed_run(workers):
    """Keras's fit (build-time peek included) sees exactly the stream's batches, epoch after
    epoch, and a run resumed at epoch 1 sees the uninterrupted run's batches from there."""
    images, labels = random_images(20, 4), np.arange(20) % 10

    def run(first_epoch):
        ds = TrainPyDataset(images, labels, dataset="cifar10", batch_size=8, seed=2,
                            first_epoch=first_epoch, epochs=3, workers=workers)
        model = Recording()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fit's shuffle=True, ignored for it
            model.fit(ds, epochs=3, initial_epoch=first_epoch, steps_per_epoch=ds.steps_per_epoch,
                      verbose=0)
        ds.close()
        return model.batches, stream(ds)

    seen, expected = run(0)
    assert len(seen) == 9
    assert_same_batches(seen, expected)
    resumed, _ = run(1)
    assert_same_batches(resumed, seen[3:])


@pytest.mark.skipif(BACKEND != "jax", reason="Keras's JAX trainer reads one batch ahead")
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_fit_on_an_accelerator_reads_one_batch_past_the_stream(monkeypatch, augment_on):
    """On a GPU Keras's JAX trainer asks for the batch after the one it runs, so after the
    stream's last batch it asks for batch len(ds): served (the first of epoch `epochs`,
    dropped), and the fit ends as on a CPU."""
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # Keras's test for look-ahead
    images, labels = random_images(20, 4), np.arange(20) % 10
    ds = TrainPyDataset(images, labels, dataset="cifar10", batch_size=8, seed=2, epochs=2,
                        augment_on=augment_on)
    model = Recording()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.fit(ds, epochs=2, steps_per_epoch=ds.steps_per_epoch, verbose=0, shuffle=False)
    assert len(model.batches) == len(ds) == 6
    past = TrainPyDataset(images, labels, dataset="cifar10", batch_size=8, seed=2, first_epoch=2,
                          epochs=3)
    _assert_close_batches([ds[len(ds)]], [past[0]])


def test_eval_batches_in_order_and_evaluate():
    images, labels = random_images(10, 1), np.arange(10)
    ds = EvalPyDataset(images, labels, dataset="cifar10", batch_size=4)
    batches = stream(ds)
    assert len(ds) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    got = np.concatenate([x for x, _ in batches])
    np.testing.assert_allclose(got, (images / 255.0 - CIFAR10_MEAN) / CIFAR10_STD, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, model.predict(got, verbose=0)
    )
    np.testing.assert_allclose(model.evaluate(ds, verbose=0), float(expected), rtol=1e-5)


@pytest.mark.parametrize("count, multiple, last", [(23, 4, 4), (17, 4, 0), (24, 4, 0), (23, 1, 7)])
def test_batch_multiple_cuts_each_epochs_last_batch(count, multiple, last):
    """Several devices: every batch a multiple of the device count; the last batch of an
    epoch loses its remainder (the last examples of that epoch's order), nothing else."""
    images, labels = random_images(count, 3), np.arange(count) % 10
    ds = TrainPyDataset(images, labels, dataset="cifar10", batch_size=8, seed=5, epochs=3,
                        batch_multiple=multiple)
    sizes = [8] * (count // 8) + ([last] if last else [])
    assert ds.examples_per_epoch == sum(sizes) and ds.steps_per_epoch == len(sizes)
    plain = TrainPyDataset(images, labels, dataset="cifar10", batch_size=8, seed=5, epochs=3)
    left_out = []
    for epoch in range(3):
        got = [ds[epoch * ds.steps_per_epoch + b] for b in range(ds.steps_per_epoch)]
        assert [len(y) for _, y in got] == sizes
        seen = np.concatenate([ds.indices(epoch, b) for b in range(ds.steps_per_epoch)])
        np.testing.assert_array_equal(seen, py_dataset.epoch_order(5, epoch, count)[: sum(sizes)])
        np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels[seen])
        # The full batches are those of a run without devices, augmentation included.
        for b, (x, y) in enumerate(got[: count // 8]):
            px, py = plain[epoch * plain.steps_per_epoch + b]
            np.testing.assert_array_equal(x, px)
            np.testing.assert_array_equal(y, py)
        left_out.append(sorted(set(range(count)) - set(seen.tolist())))
    if sum(sizes) < count:  # a different remainder sits out each epoch
        assert len({tuple(out) for out in left_out}) > 1


def test_eval_padding_to_the_devices_counts_every_example_once():
    images, labels = random_images(13, 4), np.arange(13) % 10
    plain = EvalPyDataset(images, labels, dataset="cifar10", batch_size=8)
    padded = EvalPyDataset(images, labels, dataset="cifar10", batch_size=8, batch_multiple=4)
    assert plain.padding == 0 and padded.padding == 3 and len(padded) == 2
    (x0, y0, w0), (x1, y1, w1) = padded[0], padded[1]
    assert len(y0) == 8 and len(y1) == 8 and len(x1) == 8
    np.testing.assert_array_equal(w0, np.ones(8))
    np.testing.assert_array_equal(w1, [1] * 5 + [0] * 3)
    np.testing.assert_array_equal(np.concatenate([x0, x1[:5]]), np.concatenate([x for x, _ in stream(plain)]))
    np.testing.assert_array_equal(np.concatenate([y0, y1[:5]]), labels)
    # Keras: weighted metrics leave the padding out; predict returns it last.
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    logits = model.predict(plain, verbose=0)
    np.testing.assert_allclose(model.predict(padded, verbose=0)[:13], logits, rtol=1e-5, atol=1e-6)
    accuracy = np.mean(np.argmax(logits, -1) == labels)
    assert model.evaluate(padded, verbose=0, return_dict=True)["accuracy"] == pytest.approx(accuracy)
    assert EvalPyDataset(images, labels, dataset="cifar10", batch_size=8, batch_multiple=8).padding == 3
    assert EvalPyDataset(images, labels, dataset="cifar10", batch_size=4, batch_multiple=2).padding == 1


# ---------------------------------------------------------------------------
# augment_on="device": the host's draws, applied to uint8 batches by the backend
# ---------------------------------------------------------------------------


def test_device_kernel_crops_and_flips_exactly_and_normalises():
    from keras_softkd.data.device_augment import DeviceAugmenter, crop_flip_normalize

    images = random_images(40, 5)
    offsets, flips = py_dataset.draw_augmentation(np.random.default_rng(1), 40)
    offsets[:4], flips[:4] = [[0, 0], [8, 8], [0, 8], [8, 0]], [True, False, True, False]
    one, zero = np.ones(3, np.float32), np.zeros(3, np.float32)
    pixels = keras.ops.convert_to_numpy(crop_flip_normalize(images, offsets, flips, one, zero))
    np.testing.assert_array_equal(pixels, py_dataset.crop_and_flip(images, offsets, flips))
    normalised = keras.ops.convert_to_numpy(DeviceAugmenter("cifar100").augment(images, offsets, flips))
    assert normalised.dtype == np.float32
    host = py_dataset.normalize(py_dataset.crop_and_flip(images, offsets, flips), "cifar100")
    np.testing.assert_allclose(normalised, host, rtol=0, atol=4e-7)  # float32 rounding (an FMA)


def _device_and_host(cls, **kwargs):
    return [[cls(**kwargs, augment_on=where)[i] for i in range(len(cls(**kwargs)))]
            for where in ("device", "host")]


def _assert_close_batches(device, host):
    """Same structure; images equal to float32 rounding, everything else exactly."""
    assert len(device) == len(host)
    for got, want in zip(device, host):
        got = keras.tree.map_structure(keras.ops.convert_to_numpy, got)
        for a, b in zip(keras.tree.flatten(got), keras.tree.flatten(want)):
            assert a.dtype == b.dtype and a.shape == b.shape
            if b.dtype == np.float32 and b.ndim == 4:
                np.testing.assert_allclose(a, b, rtol=0, atol=4e-7)
            else:
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["labels", "no_augment", "indices", "pairs", "eval"])
def test_device_batches_equal_the_host_batches_for_a_seed(kind):
    """The same draws (offsets, flips, partners) for each (seed, epoch, batch): the device's
    batches are the host's, pixel for pixel, labels and indices exactly."""
    images, labels = coordinate_images(50), np.arange(50) % 10
    common = dict(x=images, y=labels, dataset="cifar10", batch_size=16)
    train = dict(common, seed=4, first_epoch=1, epochs=3)
    if kind == "eval":
        device, host = _device_and_host(EvalPyDataset, **common, batch_multiple=4)  # padded
    elif kind == "pairs":
        device, host = _device_and_host(py_dataset.TrainPairsPyDataset, **train)
    else:
        device, host = _device_and_host(TrainPyDataset, **train, augment=kind != "no_augment",
                                        with_indices=kind == "indices")
    _assert_close_batches(device, host)
    if kind == "labels":  # the crops read back from the device's pixels are the host's draws
        pixels = np.round(denormalize(keras.ops.convert_to_numpy(device[0][0]))).astype(np.uint8)
        rows, columns, flips = recover_parameters(pixels)
        ds = TrainPyDataset(**train)
        offsets, drawn = py_dataset.draw_augmentation(py_dataset.batch_rng(4, 1, 0), 16)
        np.testing.assert_array_equal(np.stack([rows, columns], 1), offsets)
        np.testing.assert_array_equal(flips, drawn)
        np.testing.assert_array_equal(device[0][1], labels[ds.indices(1, 0)])


def test_fit_reads_device_batches_in_order():
    images, labels = random_images(20, 4), np.arange(20) % 10
    kwargs = dict(dataset="cifar10", batch_size=8, seed=2, epochs=2)
    ds = TrainPyDataset(images, labels, **kwargs, workers=2, augment_on="device")
    model = Recording()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.fit(ds, epochs=2, steps_per_epoch=ds.steps_per_epoch, verbose=0, shuffle=False)
    ds.close()
    _assert_close_batches(model.batches, stream(TrainPyDataset(images, labels, **kwargs)))


def test_augment_where_auto_is_the_device_only_on_a_jax_accelerator(monkeypatch):
    from keras_softkd.data.inputs import augment_where

    assert [augment_where("auto", b) for b in ("tensorflow", "torch")] == ["host", "host"]
    assert augment_where("device", "torch") == "device" and augment_where("host", "jax") == "host"
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert augment_where("auto", "jax") == "host"  # on a CPU the NumPy pipeline, unchanged
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert augment_where("auto", "jax") == "device"
    assert augment_where("auto", "jax", batch_multiple=2) == "host"  # keras.distribution shards
    images, labels = random_images(8, 0), np.arange(8)
    stream_, _ = data.training_input(images, labels, dataset="cifar10", batch_size=4, seed=0,
                                     first_epoch=0, epochs=1, backend="jax")
    assert stream_.augment_on == "device"
    evaluation = data.evaluation_input(images, labels, dataset="cifar10", batch_size=4, backend="jax")
    assert evaluation.augment_on == "device"


def test_augment_on_errors():
    from keras_softkd.data.inputs import augment_where

    images, labels = random_images(4, 0), np.arange(4)
    with pytest.raises(ValueError, match=r"`augment_on` must be one of \['host', 'device'\]; got augment_on='gpu'"):
        TrainPyDataset(images, labels, dataset="cifar10", batch_size=2, seed=0, augment_on="gpu")
    with pytest.raises(ValueError, match="use_multiprocessing=True would do it from forked processes"):
        EvalPyDataset(images, labels, dataset="cifar10", batch_size=2, use_multiprocessing=True,
                      augment_on="device")
    with pytest.raises(ValueError, match=r"must be one of \['auto', 'host', 'device'\]"):
        augment_where("cpu", "jax")
    with pytest.raises(ValueError, match="on TensorFlow tf.data augments in its own graph"):
        augment_where("device", "tensorflow")


# ---------------------------------------------------------------------------
# Choosing by backend, imports, errors
# ---------------------------------------------------------------------------


def test_training_input_chooses_by_backend():
    images, labels = random_images(10, 0), np.arange(10)
    kwargs = dict(dataset="cifar10", batch_size=4, seed=0, first_epoch=1, epochs=3)
    for backend in ("jax", "torch"):
        stream_, steps = data.training_input(images, labels, backend=backend, **kwargs)
        assert isinstance(stream_, TrainPyDataset) and steps == 3 and len(stream_) == 6
        _, cut = data.training_input(images, labels, backend=backend, batch_multiple=4, **kwargs)
        assert cut == 2  # 10 examples in batches of 4 over 4 devices: 4 + 4
        assert isinstance(data.evaluation_input(images, labels, dataset="cifar10", batch_size=4,
                                                backend=backend), EvalPyDataset)
    default, _ = data.training_input(images, labels, **kwargs)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert isinstance(default, tf.data.Dataset)
    else:
        assert isinstance(default, TrainPyDataset)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow backend imports TensorFlow")
def test_importing_the_package_and_its_data_does_not_import_tensorflow():
    code = (
        "import sys, keras_softkd, keras_softkd.data as d\n"
        "import numpy as np\n"
        "ds = d.TrainPyDataset(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, int),\n"
        "                      dataset='cifar10', batch_size=2, seed=0)\n"
        "ds[0]\n"
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": BACKEND},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_argument_errors():
    images, labels = random_images(4, 0), np.arange(4)
    train = dict(dataset="cifar10", batch_size=2, seed=0)
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1; got batch_size=0"):
        TrainPyDataset(images, labels, dataset="cifar10", batch_size=0, seed=0)
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*63\); got seed=-1"):
        TrainPyDataset(images, labels, dataset="cifar10", batch_size=2, seed=-1)
    with pytest.raises(ValueError, match=r"`first_epoch` must be an integer in \[0, epochs=2\)"):
        TrainPyDataset(images, labels, first_epoch=2, epochs=2, **train)
    with pytest.raises(ValueError, match=r"`epochs` must be an integer >= 1"):
        TrainPyDataset(images, labels, epochs=0, **train)
    with pytest.raises(ValueError, match=r"`workers` must be an integer >= 1"):
        TrainPyDataset(images, labels, workers=0, **train)
    with pytest.raises(ValueError, match=r"`x` must be uint8 images of shape \(N, 32, 32, 3\)"):
        EvalPyDataset(images.astype(np.float32), labels, dataset="cifar10", batch_size=2)
    with pytest.raises(ValueError, match=r"`y` must be in \[0, 10\) for dataset='cifar10'; got values from 0 to 12"):
        EvalPyDataset(images, labels * 4, dataset="cifar10", batch_size=2)
    with pytest.raises(ValueError, match=r"`dataset` must be one of"):
        EvalPyDataset(images, labels, dataset="cifar", batch_size=2)
    with pytest.raises(ValueError, match=r"`batch_size` must be a multiple of `batch_multiple` .*"
                       r"got batch_size=2, batch_multiple=3"):
        EvalPyDataset(images, labels, dataset="cifar10", batch_size=2, batch_multiple=3)
    with pytest.raises(ValueError, match=r"4 training examples cannot fill one batch split over "
                       r"batch_multiple=8 devices"):
        TrainPyDataset(images, labels, dataset="cifar10", batch_size=8, seed=0, batch_multiple=8)
    ds = TrainPyDataset(images, labels, epochs=2, **train)
    ds[4]  # one past the stream: Keras's look-ahead on an accelerator (test_fit_on_an_accelerator_...)
    with pytest.raises(IndexError, match=r"past the stream of epochs 0 \.\. 1 \(4 batches\).*steps_per_epoch=2"):
        ds[5]
    with pytest.raises(IndexError):
        EvalPyDataset(images, labels, dataset="cifar10", batch_size=3)[2]


def test_docstring_examples():
    from keras_softkd.data import device_augment, info, inputs

    result = doctest.testmod(py_dataset)
    assert result.attempted >= 5 and result.failed == 0
    for module in (device_augment, inputs, info):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__

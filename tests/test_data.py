"""Tests of keras_softkd.data: every local format, the safe unpickler, errors,
the TFDS path (mocked), the augmentation pipeline and the subsets.

Every file is written by the test itself in the exact on-disk format; nothing
is downloaded.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from keras_softkd import data
from keras_softkd.data import pipeline, safe_pickle, sources

from augmentation_reference import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    coordinate_images,
    denormalize,
    recover_parameters,
    reference_crop_flip,
)


# ---------------------------------------------------------------------------
# Writers of the original on-disk formats
# ---------------------------------------------------------------------------


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def chw_rows(images: np.ndarray) -> np.ndarray:
    """NHWC images -> CIFAR rows of 3072 bytes (R plane, G plane, B plane)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def py2_pickle(obj) -> bytes:
    """Protocol 2 as Python 2's cPickle wrote the CIFAR files (str as BINSTRING,
    arrays through numpy.core.multiarray._reconstruct with latin-1 raw data)."""
    out = bytearray(b"\x80\x02")

    def string(value):
        raw = value.encode("latin1") if isinstance(value, str) else bytes(value)
        short = len(raw) < 256
        out.extend(b"U" + bytes([len(raw)]) + raw if short else b"T" + struct.pack("<i", len(raw)) + raw)

    def integer(value):
        out.extend(b"J" + struct.pack("<i", int(value)))

    def dump(value):
        if isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                dump(key)
                dump(item)
            out.extend(b"u")
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                dump(item)
            out.extend(b"e")
        elif isinstance(value, (str, bytes)):
            string(value)
        elif isinstance(value, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.extend(b"\x85")
            string("b")
            out.extend(b"\x87R(")
            integer(1)
            for dim in value.shape:
                integer(dim)
            out.extend(b"\x86cnumpy\ndtype\n")
            string("u1")
            integer(0)
            integer(1)
            out.extend(b"\x87R(")
            integer(3)
            string("|")
            out.extend(b"NNN")
            integer(-1)
            integer(-1)
            integer(0)
            out.extend(b"tb\x89")
            string(value.tobytes())
            out.extend(b"tb")
        else:
            integer(value)

    dump(obj)
    out.extend(b".")
    return bytes(out)


def write_tar(archive: pathlib.Path, files: dict[str, bytes]) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(blob)
            tar.addfile(member, io.BytesIO(blob))


def write_files(root: pathlib.Path, files: dict[str, bytes]) -> None:
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)


def cifar10_python_files(per_batch: int = 3) -> tuple[dict[str, bytes], dict]:
    """cifar-10-batches-py/*: five training batches and a test batch."""
    files, truth = {}, {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        images = random_images(per_batch, seed=index)
        labels = [(index + k) % 10 for k in range(per_batch)]
        batch = {
            "batch_label": f"batch {index}",
            "labels": labels,
            "data": chw_rows(images),
            "filenames": [f"img_{index}_{k}.png" for k in range(per_batch)],
        }
        # The first batch as Python 2 wrote it; the others as Python 3 writes protocol 2.
        blob = py2_pickle(batch) if index == 0 else pickle.dumps(batch, protocol=2)
        files[f"cifar-10-batches-py/{name}"] = blob
        split = "test" if name == "test_batch" else "train"
        truth[split][0].append(images)
        truth[split][1].extend(labels)
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": ["a"] * 10}, 2)
    return files, {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in truth.items()}


def assert_split(result, expected) -> None:
    x, y = result
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
    assert y.dtype == np.int32 and y.shape == (len(x),)
    np.testing.assert_array_equal(x, expected[0])
    np.testing.assert_array_equal(y, expected[1])


# ---------------------------------------------------------------------------
# Metadata and argument errors
# ---------------------------------------------------------------------------


def test_metadata():
    assert {name: info.num_classes for name, info in data.DATASETS.items()} == {
        "cifar10": 10, "cifar100": 100, "cinic10": 10}
    assert data.DATASETS["cifar100"].std == (0.2673, 0.2564, 0.2762)
    assert data.DATASETS["cinic10"].tfds_name is None
    with pytest.raises(TypeError):
        data.DATASETS["mnist"] = data.DATASETS["cifar10"]


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match=r"`dataset` must be one of \['cifar10', 'cifar100', 'cinic10'\]; got dataset='mnist'"):
        data.load("mnist", "train", tmp_path)
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'test'\] for dataset='cifar10'; got split='val'"):
        data.load("cifar10", "val", tmp_path)
    with pytest.raises(ValueError, match="split_validation"):
        data.load("cifar100", "valid", tmp_path)


# ---------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------


def test_npz_folder_and_file(tmp_path):
    x, y = random_images(5, 0), np.array([0, 3, 9, 9, 1], np.uint8)
    np.savez_compressed(tmp_path / "cifar10_test.npz", x=x, y=y, filenames=np.array(["a"] * 5))
    assert_split(data.load("cifar10", "test", tmp_path), (x, y))
    assert_split(data.load("cifar10", "test", str(tmp_path / "cifar10_test.npz")), (x, y))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "cifar10_train.npz", x=random_images(2, 0), y=np.array([0, 10]))
    with pytest.raises(ValueError, match=r"cifar10_train.npz: labels must be in \[0, 10\) for dataset='cifar10'; got values from 0 to 10"):
        data.load("cifar10", "train", tmp_path)
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((2, 28, 28, 3), np.uint8), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"cifar10_test.npz: images must be uint8 of shape \(N, 32, 32, 3\); got uint8 of shape \(2, 28, 28, 3\)"):
        data.load("cifar10", "test", tmp_path)
    np.savez(tmp_path / "cifar100_test.npz", images=random_images(2, 0))
    with pytest.raises(ValueError, match=r"must hold arrays 'x' and 'y'.*missing \['x', 'y'\]"):
        data.load("cifar100", "test", tmp_path)
    np.savez_compressed(tmp_path / "full.npz", x=random_images(50, 0), y=np.zeros(50))
    blob = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cifar100_train.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cifar100_train.npz: corrupt or truncated .npz file"):
        data.load("cifar100", "train", tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="`data_dir` must be a folder or a .npz file"):
        data.load("cifar10", "test", tmp_path / "notes.txt")


# ---------------------------------------------------------------------------
# CIFAR python pickles
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folder", "tar.gz", "folder itself"])
def test_cifar10_python(tmp_path, layout):
    files, truth = cifar10_python_files()
    if layout == "tar.gz":
        write_tar(tmp_path / "cifar-10-python.tar.gz", files)
        root = tmp_path
    else:
        write_files(tmp_path, files)
        root = tmp_path / "cifar-10-batches-py" if layout == "folder itself" else tmp_path
    assert_split(data.load("cifar10", "train", root), truth["train"])
    assert_split(data.load("cifar10", "test", root), truth["test"])


@pytest.mark.parametrize("layout", ["folder", "tar.gz"])
def test_cifar100_python_uses_fine_labels(tmp_path, layout):
    files, truth = {}, {}
    for index, split in enumerate(["train", "test"]):
        images, fine = random_images(4, index), [99, 0, 57, 3]
        files[f"cifar-100-python/{split}"] = pickle.dumps({
            b"filenames": [b"a", b"b", b"c", b"d"], b"batch_label": b"x",
            b"fine_labels": fine, b"coarse_labels": [19, 4, 0, 3], b"data": chw_rows(images),
        }, protocol=4 if split == "train" else 5)
        truth[split] = (images, np.array(fine))
    if layout == "tar.gz":
        write_tar(tmp_path / "cifar-100-python.tar.gz", files)
    else:
        write_files(tmp_path, files)
    for split in ("train", "test"):
        assert_split(data.load("cifar100", split, tmp_path), truth[split])


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = pickle.dumps({"data": Exploit(), "labels": [0]}, protocol=2)
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"refused to load the global '(posix|nt|os)\.system'"):
        safe_pickle.loads(blob)
    files, _ = cifar10_python_files()
    files["cifar-10-batches-py/test_batch"] = blob
    write_files(tmp_path, files)
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch: refused to load the global .*may be malicious"):
        data.load("cifar10", "test", tmp_path)
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")]:
        with pytest.raises(safe_pickle.UnsafePickleError, match=f"'{module}.{name}'"):
            safe_pickle.loads(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"N\x85R.")
    assert not marker.exists()


def test_python_format_errors(tmp_path):
    files, _ = cifar10_python_files()
    del files["cifar-10-batches-py/data_batch_3"]
    files["cifar-10-batches-py/test_batch"] = files["cifar-10-batches-py/test_batch"][:500]
    write_files(tmp_path, files)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py: the folder is missing \['data_batch_3'\]"):
        data.load("cifar10", "train", tmp_path)
    with pytest.raises(ValueError, match="test_batch: corrupt or truncated CIFAR pickle"):
        data.load("cifar10", "test", tmp_path)
    files, _ = cifar10_python_files()
    del files["cifar-10-batches-py/test_batch"]
    (tmp_path / "t").mkdir()
    write_tar(tmp_path / "t" / "cifar-10-python.tar.gz", files)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python.tar.gz: the archive is missing \['cifar-10-batches-py/test_batch'\]"):
        data.load("cifar10", "test", tmp_path / "t")
    assert len(data.load("cifar10", "train", tmp_path / "t")[0]) == 15
    write_tar(tmp_path / "t" / "cifar-100-python.tar.gz", {"cifar-100-python/train": b"x" * 10})
    blob = (tmp_path / "t" / "cifar-100-python.tar.gz").read_bytes()
    (tmp_path / "t" / "cifar-100-python.tar.gz").write_bytes(blob[:20])
    with pytest.raises(ValueError, match=r"cifar-100-python.tar.gz: corrupt or truncated .tar.gz archive"):
        data.load("cifar100", "train", tmp_path / "t")


# ---------------------------------------------------------------------------
# CIFAR binary
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folder", "tar.gz"])
def test_cifar10_binary(tmp_path, layout):
    files, truth = {}, {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for index, name in enumerate(names):
        images, labels = random_images(2, index), np.array([index % 10, 9], np.uint8)
        files[f"cifar-10-batches-bin/{name}"] = np.concatenate(
            [labels[:, None], chw_rows(images)], axis=1).tobytes()
        split = "test" if name.startswith("test") else "train"
        truth[split][0].append(images)
        truth[split][1].append(labels)
    (write_tar(tmp_path / "cifar-10-binary.tar.gz", files) if layout == "tar.gz"
     else write_files(tmp_path, files))
    for split, (images, labels) in truth.items():
        assert_split(data.load("cifar10", split, tmp_path),
                     (np.concatenate(images), np.concatenate(labels)))


@pytest.mark.parametrize("layout", ["folder", "tar.gz"])
def test_cifar100_binary(tmp_path, layout):
    images, coarse, fine = random_images(3, 7), np.array([1, 2, 3]), np.array([42, 99, 0])
    record = np.concatenate([coarse[:, None], fine[:, None], chw_rows(images)], axis=1)
    files = {f"cifar-100-binary/{s}.bin": record.astype(np.uint8).tobytes() for s in ("train", "test")}
    (write_tar(tmp_path / "cifar-100-binary.tar.gz", files) if layout == "tar.gz"
     else write_files(tmp_path, files))
    assert_split(data.load("cifar100", "test", tmp_path), (images, fine))


def test_truncated_binary(tmp_path):
    write_files(tmp_path, {"cifar-100-binary/test.bin": bytes(3074 * 2 + 100),
                           "cifar-100-binary/train.bin": bytes(3074)})
    with pytest.raises(ValueError, match=r"test.bin: truncated or corrupt CIFAR binary file: 6248 bytes is not a positive multiple of the 3074-byte record"):
        data.load("cifar100", "test", tmp_path)


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_image_folder(root: pathlib.Path, split: str, per_class: int = 2) -> tuple:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(CLASSES):
        (root / split / name).mkdir(parents=True)
        for k in range(per_class):
            image = random_images(1, 100 * label + k)[0]
            if label == 3 and k == 0:  # CINIC-10 holds some grayscale images
                Image.fromarray(image[..., 0], "L").save(root / split / name / f"{k}.png")
                image = np.repeat(image[..., :1], 3, axis=-1)
            else:
                Image.fromarray(image).save(root / split / name / f"{k}.png")
            images.append(image)
            labels.append(label)
    (root / split / "README.txt").write_text("not a class")
    return np.stack(images), np.array(labels)


def test_image_folder_pil_and_tensorflow_decoders(tmp_path, monkeypatch):
    truth = {split: write_image_folder(tmp_path, split) for split in ("train", "valid", "test")}
    for split in ("train", "valid", "test"):
        assert_split(data.load("cinic10", split, tmp_path), truth[split])
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now fails
    assert_split(data.load("cinic10", "valid", tmp_path), truth["valid"])


def test_image_folder_errors(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path, "test")
    Image.fromarray(np.zeros((28, 32, 3), np.uint8)).save(tmp_path / "test" / "dog" / "z.png")
    with pytest.raises(ValueError, match=r"dog/z.png: images must be 32x32 RGB, shape \(32, 32, 3\); got shape \(28, 32, 3\)"):
        data.load("cinic10", "test", tmp_path)
    (tmp_path / "test" / "dog" / "z.png").write_bytes(b"\x89PNG\r\n garbage")
    with pytest.raises(ValueError, match="dog/z.png: not a readable PNG image"):
        data.load("cinic10", "test", tmp_path)
    (tmp_path / "test" / "dog" / "z.png").unlink()
    (tmp_path / "test" / "unicorn").mkdir()
    with pytest.raises(ValueError, match=r"must have 10 class folders; found 11"):
        data.load("cinic10", "test", tmp_path)


def test_missing_files_list_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.load("cinic10", "train", tmp_path)
    message = str(error.value)
    assert f"looked for: {tmp_path}/cinic10_train.npz, {tmp_path}/train/<class>/*.png" in message
    assert "cinic10 has no TensorFlow Datasets builder" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------
# TensorFlow Datasets (mocked: no network)
# ---------------------------------------------------------------------------


def test_tfds_fallback(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(sources, "_unreachable", lambda host: None)  # as if online
    with tfds.testing.mock_data(num_examples=12):
        x, y = data.load("cifar10", "train", tmp_path)
        assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
        assert y.dtype == np.int32 and 0 <= y.min() and y.max() < 10
        x, y = data.load("cifar100", "test")
        assert x.shape == (12, 32, 32, 3) and y.max() < 100


def test_tfds_failure_names_what_was_looked_for(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(tfds, "load", offline)
    monkeypatch.setattr(sources, "_unreachable", lambda host: None)  # the host answers, TFDS fails
    with pytest.raises(FileNotFoundError) as error:
        data.load("cifar100", "train", tmp_path)
    message = str(error.value)
    assert "cifar-100-python.tar.gz" in message and "cifar-100-binary/" in message
    assert "TensorFlow Datasets could not load or download 'cifar100' (ConnectionError: no network)" in message
    assert "\n" not in message


def test_offline_without_local_files_fails_fast_and_leaves_nothing(tmp_path, offline):
    import time

    home_default = pathlib.Path("~/tensorflow_datasets").expanduser()
    home_default_existed = home_default.exists()
    folder = tmp_path / "empty"
    folder.mkdir()
    for data_dir in (folder, None):
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError) as error:
            data.load("cifar10", "train", data_dir)
        assert time.perf_counter() - start < 20
        message = str(error.value)
        assert "\n" not in message and "www.cs.toronto.edu unreachable" in message
        for name in ("cifar10_train.npz", "cifar10_test.npz", "cifar-10-python.tar.gz",
                     "cifar-10-batches-bin/", "docs/training.md"):
            assert name in message, name
    assert list(folder.iterdir()) == [] and not offline.exists()
    assert home_default.exists() == home_default_existed


# ---------------------------------------------------------------------------
# Augmentation and pipelines
# ---------------------------------------------------------------------------


def test_augment_batch_is_exact_per_example_pad_crop_flip():
    images = coordinate_images(3000)
    out = data.augment_batch(images, seed=[7, 11]).numpy()
    rows, columns, flips = recover_parameters(out)
    assert rows.min() == 0 and rows.max() == 8 and columns.min() == 0 and columns.max() == 8
    # Exact: each output is the NumPy pad-crop-flip with its own offsets; padding is zeros.
    np.testing.assert_array_equal(out, reference_crop_flip(images, rows, columns, flips))
    # Independent per example: all 81 offset pairs occur, each offset about 1/9, flips about 1/2.
    assert len(set(zip(rows, columns))) == 81
    assert np.all(np.abs(np.bincount(rows, minlength=9) / 3000 - 1 / 9) < 0.03)
    assert np.all(np.abs(np.bincount(columns, minlength=9) / 3000 - 1 / 9) < 0.03)
    assert abs(flips.mean() - 0.5) < 0.04
    assert not np.array_equal(out, data.augment_batch(images, seed=[7, 12]).numpy())
    np.testing.assert_array_equal(out, data.augment_batch(images, seed=[7, 11]).numpy())


@pytest.mark.parametrize("design", ["batched", "per_example"])
def test_train_pipeline_augments_each_example(design):
    images, labels = coordinate_images(256), np.arange(256) % 10
    build = data.train_dataset if design == "batched" else pipeline._train_dataset_per_example
    batch_images, batch_labels = next(iter(build(images, labels, dataset="cifar10", batch_size=256, seed=3)))
    assert batch_images.dtype == tf.float32 and batch_labels.dtype == tf.int32
    pixels = denormalize(batch_images.numpy())
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)  # normalised exactly
    out = np.round(pixels).astype(np.uint8)
    rows, columns, flips = recover_parameters(out)
    np.testing.assert_array_equal(out, reference_crop_flip(images, rows, columns, flips))
    assert len(set(zip(rows, columns))) > 40  # crops differ within the batch
    assert 0.35 < flips.mean() < 0.65
    assert np.all(out[rows < 4, 0] == 0)  # the top row is padding: zeros before normalisation
    assert np.all(out[rows >= 4, 0, 12:20] > 0)


def test_train_pipeline_is_seeded_and_reshuffles_each_epoch():
    images, labels = random_images(50, 0), np.arange(50) % 10

    def epochs(seed, count=2, **kwargs):
        ds = data.train_dataset(images, labels, dataset="cifar10", batch_size=16, seed=seed, **kwargs)
        return [[(a.numpy(), b.numpy()) for a, b in ds] for _ in range(count)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    for epoch, epoch_again in zip(first, again):
        for (a, b), (c, d) in zip(epoch, epoch_again):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    assert [len(b) for _, b in first[0]] == [16, 16, 16, 2]
    assert not np.array_equal(first[0][0][0], first[1][0][0])  # new order/augmentation per epoch
    assert not np.array_equal(first[0][0][0], other[0][0][0])
    # Without augmentation every epoch is a permutation of the examples.
    plain = epochs(1, augment=False)[0]
    got = denormalize(np.concatenate([a for a, _ in plain]))
    order = [int(np.argmin(np.abs(images.reshape(50, -1) - g.reshape(1, -1)).sum(1))) for g in got]
    assert sorted(order) == list(range(50)) and order != list(range(50))
    np.testing.assert_allclose(got, images[order], atol=2e-3)
    np.testing.assert_array_equal(np.concatenate([b for _, b in plain]), labels[order])
    dropped = data.train_dataset(images, labels, dataset="cifar10", batch_size=16, seed=0,
                                 drop_remainder=True)
    assert int(dropped.cardinality()) == 3 and [len(b) for _, b in dropped] == [16, 16, 16]


def test_eval_pipeline_normalises_in_order():
    images, labels = random_images(10, 1), np.arange(10)
    ds = data.eval_dataset(images, labels, dataset="cifar10", batch_size=4)
    batches = [(a.numpy(), b.numpy()) for a, b in ds]
    assert [len(b) for _, b in batches] == [4, 4, 2]
    got = np.concatenate([a for a, _ in batches])
    np.testing.assert_allclose(got, (images / 255.0 - CIFAR10_MEAN) / CIFAR10_STD, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), labels)
    np.testing.assert_array_equal(got, np.concatenate([a.numpy() for a, _ in ds]))


def test_pipeline_argument_errors():
    images, labels = random_images(4, 0), np.arange(4)
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1; got batch_size=0"):
        data.train_dataset(images, labels, dataset="cifar10", batch_size=0, seed=0)
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*63\); got seed=-1"):
        data.train_dataset(images, labels, dataset="cifar10", batch_size=2, seed=-1)
    with pytest.raises(ValueError, match=r"`shuffle_buffer` must be an integer >= 1"):
        data.train_dataset(images, labels, dataset="cifar10", batch_size=2, seed=0, shuffle_buffer=0)
    with pytest.raises(ValueError, match=r"`x` must be uint8 images of shape \(N, 32, 32, 3\)"):
        data.eval_dataset(images.astype(np.float32), labels, dataset="cifar10", batch_size=2)
    with pytest.raises(ValueError, match=r"`y` must be in \[0, 10\) for dataset='cifar10'; got values from 0 to 12"):
        data.eval_dataset(images, labels * 4, dataset="cifar10", batch_size=2)
    with pytest.raises(ValueError, match=r"`dataset` must be one of"):
        data.eval_dataset(images, labels, dataset="cifar", batch_size=2)


def test_train_pipeline_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = data.train_dataset(random_images(16, 0), np.arange(16) % 10, dataset="cifar10",
                            batch_size=8, seed=0)
    batches = list(strategy.experimental_distribute_dataset(ds))
    assert len(batches) == 2
    assert [t.shape[0] for t in strategy.experimental_local_results(batches[0][0])] == [4, 4]


# ---------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------


def test_split_validation():
    x, y = np.arange(100) * 10, np.arange(100)
    (x_train, y_train), (x_valid, y_valid) = data.split_validation(x, y, 0.1, seed=0)
    assert len(x_valid) == 10 and len(x_train) == 90
    np.testing.assert_array_equal(x_train, y_train * 10)
    assert sorted(np.concatenate([y_train, y_valid]).tolist()) == list(range(100))
    assert y_valid.max() - y_valid.min() > 50  # drawn at random, not the tail
    again = data.split_validation(x, y, 0.1, seed=0)[1][1]
    np.testing.assert_array_equal(again, y_valid)
    assert not np.array_equal(data.split_validation(x, y, 0.1, seed=1)[1][1], y_valid)
    for fraction in (0.0, 1.0, -0.1, 0.001):
        with pytest.raises(ValueError, match="`fraction`"):
            data.split_validation(x, y, fraction, seed=0)
    with pytest.raises(ValueError, match="`x` and `y` must have the same length"):
        data.split_validation(x, y[:5], 0.5, seed=0)


def test_take_subset():
    x, y = np.arange(100) * 10, np.arange(100)
    xs, ys = data.take_subset(x, y, 7, seed=3)
    np.testing.assert_array_equal(xs, ys * 10)
    assert len(set(ys.tolist())) == 7 and ys.tolist() != list(range(7))
    np.testing.assert_array_equal(data.take_subset(x, y, 7, seed=3)[1], ys)
    np.testing.assert_array_equal(data.take_subset(x, y, 10, seed=3)[1][:7], ys)  # a prefix
    with pytest.raises(ValueError, match=r"`n` must be an integer in \[1, 100\] \(N = len\(x\)\); got n=101"):
        data.take_subset(x, y, 101, seed=0)
    with pytest.raises(ValueError, match=r"`seed` must be an integer >= 0"):
        data.take_subset(x, y, 5, seed=-2)


# ---------------------------------------------------------------------------
# The real files
# ---------------------------------------------------------------------------


def test_real_cifar10_test(real_data_dir):
    x, y = data.load("cifar10", "test", real_data_dir)
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [1000] * 10)
    np.testing.assert_allclose(x.reshape(-1, 3).mean(0) / 255, CIFAR10_MEAN, atol=0.01)


def test_train_epochs_resumed_at_an_epoch_sees_the_same_batches():
    from keras_softkd.data import train_epochs

    x = np.random.RandomState(0).randint(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    y = np.arange(20) % 10

    def batches(first_epoch):
        stream = train_epochs(
            x, y, dataset="cifar10", batch_size=8, seed=3, first_epoch=first_epoch, epochs=3
        )
        return [(images.numpy(), labels.numpy()) for images, labels in stream]

    full, resumed = batches(0), batches(2)
    assert len(full) == 9 and len(resumed) == 3
    for (xa, ya), (xb, yb) in zip(full[-3:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Epochs differ from each other, and each is a permutation of the data.
    assert not np.array_equal(np.concatenate([b[1] for b in full[:3]]), np.concatenate([b[1] for b in full[3:6]]))
    assert sorted(np.concatenate([b[1] for b in full[:3]]).tolist()) == sorted(y.tolist())

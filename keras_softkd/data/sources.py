"""Reading a dataset split into NumPy arrays: local files first, then TFDS.

:func:`load` looks in ``data_dir`` for, in this order:

1. ``<dataset>_<split>.npz`` with arrays ``x`` and ``y`` (or ``data_dir`` is
   such a file);
2. the original CIFAR python pickles, ``cifar-10-batches-py/`` or
   ``cifar-100-python/``, as a folder or inside ``cifar-10-python.tar.gz`` /
   ``cifar-100-python.tar.gz``, read with a restricted unpickler;
3. the original CIFAR binary files, ``cifar-10-batches-bin/`` or
   ``cifar-100-binary/``, as a folder or inside ``cifar-10-binary.tar.gz`` /
   ``cifar-100-binary.tar.gz``;
4. an image-folder tree ``<split>/<class>/*.png`` (the CINIC-10 layout);

and otherwise asks TensorFlow Datasets (``cifar10`` and ``cifar100`` only),
which downloads into ``data_dir`` when the data is not prepared there.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import tarfile
import threading
import urllib.parse
import zipfile
import zlib
from typing import Callable

import numpy as np

from keras_softkd.data import info as _info
from keras_softkd.data import safe_pickle

#: Every split name :func:`load` accepts; each dataset has a subset (``DATASETS[name].splits``).
SPLITS = ("train", "valid", "test")
IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3

# dataset -> (folder, archive, files per split, label key or byte offset)
_PYTHON = {
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "labels",
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        {"train": ["train"], "test": ["test"]},
        "fine_labels",
    ),
}
_BINARY = {
    "cifar10": (
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
        {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
        0,  # record: <label> <3072 pixels>
    ),
    "cifar100": (
        "cifar-100-binary",
        "cifar-100-binary.tar.gz",
        {"train": ["train.bin"], "test": ["test.bin"]},
        1,  # record: <coarse label> <fine label> <3072 pixels>
    ),
}


def load(dataset: str, split: str, data_dir: str | os.PathLike | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of a dataset as NumPy arrays.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"cinic10"``.
        split: ``"train"`` or ``"test"``; ``"valid"`` too for CINIC-10.
        data_dir: a folder holding the data in one of the formats of this
            module's docstring, or a ``.npz`` file. Where it holds none of them
            (or is ``None``), CIFAR-10/100 come from TensorFlow Datasets, which
            prepares (downloading if needed) the data in ``data_dir`` (``None``:
            TFDS' default folder).

    Returns:
        ``(x, y)``: ``x`` uint8 of shape ``(N, 32, 32, 3)`` (RGB), ``y`` int32
        of shape ``(N,)`` with values in ``[0, num_classes)``. CIFAR-100 labels
        are the 100 fine labels.

    Raises:
        ValueError: an unknown ``dataset`` or ``split``, or a corrupt,
            truncated or malformed file (the message names the file).
        FileNotFoundError: nothing usable was found (the message lists what
            was looked for).

    Example:
        >>> import pathlib, tempfile, numpy as np
        >>> from keras_softkd import data
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> np.savez(folder / "cifar10_test.npz",
        ...          x=np.zeros((4, 32, 32, 3), np.uint8), y=np.array([0, 1, 2, 9]))
        >>> x, y = data.load("cifar10", "test", data_dir=folder)
        >>> x.shape, x.dtype, y.dtype
        ((4, 32, 32, 3), dtype('uint8'), dtype('int32'))
    """
    info = _info.get(dataset)
    if split not in info.splits:
        hint = " (use split_validation() for a held-out part of train)" if split == "valid" else ""
        raise ValueError(
            f"`split` must be one of {list(info.splits)} for dataset={dataset!r}; "
            f"got split={split!r}{hint}."
        )
    looked: list[str] = []
    if data_dir is not None:
        path = pathlib.Path(data_dir).expanduser()
        if path.is_file():
            if path.suffix != ".npz":
                raise ValueError(
                    f"`data_dir` must be a folder or a .npz file; got the file data_dir={str(path)!r}."
                )
            return _load_npz(path, info)
        if path.is_dir():
            finders: list[Callable] = [_find_npz, _find_python, _find_binary, _find_image_folder]
            for finder in finders:
                found = finder(path, info, split, looked)
                if found is not None:
                    return found
    where = f"data_dir={str(data_dir)!r}" if data_dir is not None else "data_dir=None"
    if info.tfds_name is None:
        raise FileNotFoundError(
            f"No {dataset} {split!r} files in {where} (looked for: {', '.join(looked) or 'nothing'}); "
            f"{dataset} has no TensorFlow Datasets builder, so download it yourself and pass its "
            f"folder (holding {split}/<class>/*.png) as `data_dir`."
        )
    return _load_tfds(info, split, data_dir, looked)


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def _find_npz(path, info, split, looked):
    candidate = path / f"{info.name}_{split}.npz"
    looked.append(str(candidate))
    return _load_npz(candidate, info) if candidate.is_file() else None


def _load_npz(path: pathlib.Path, info) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise ValueError(
                    f"{path}: a dataset .npz file must hold arrays 'x' and 'y'; it has "
                    f"{archive.files} (missing {missing})."
                )
            x, y = archive["x"], archive["y"]
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated .npz file ({_first_line(err)}).") from err
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: unreadable .npz file ({_first_line(err)}).") from err
    return _validated(x, y, info, str(path))


def _find_python(path, info, split, looked):
    if info.name not in _PYTHON:
        return None
    folder, archive, files, label_key = _PYTHON[info.name]
    blobs = _read_members(path, folder, archive, files[split], looked)
    if blobs is None:
        return None
    images, labels = [], []
    for name, blob in blobs:
        try:
            batch = safe_pickle.loads(blob, name=name)
        except safe_pickle.UnsafePickleError:
            raise
        except Exception as err:  # truncated or garbage pickles raise many types
            raise ValueError(
                f"{name}: corrupt or truncated CIFAR pickle ({type(err).__name__}: "
                f"{_first_line(err)})."
            ) from err
        if not isinstance(batch, dict):
            raise ValueError(f"{name}: a CIFAR pickle must hold a dict; got {type(batch).__name__}.")
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or label_key not in batch:
            raise ValueError(
                f"{name}: a CIFAR pickle must have keys 'data' and {label_key!r}; "
                f"it has {sorted(map(str, batch))}."
            )
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
            data.shape[1] != _PIXELS
        ):
            raise ValueError(
                f"{name}: 'data' must be a uint8 array of shape (N, {_PIXELS}); got "
                f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}."
            )
        batch_labels = np.asarray(batch[label_key])
        if batch_labels.shape != (len(data),):
            raise ValueError(
                f"{name}: {label_key!r} must have one label per image ({len(data)}); got shape "
                f"{batch_labels.shape}."
            )
        images.append(_chw_rows_to_nhwc(data))
        labels.append(batch_labels)
    return _validated(np.concatenate(images), np.concatenate(labels), info, blobs[0][0])


def _find_binary(path, info, split, looked):
    if info.name not in _BINARY:
        return None
    folder, archive, files, label_offset = _BINARY[info.name]
    blobs = _read_members(path, folder, archive, files[split], looked)
    if blobs is None:
        return None
    record = label_offset + 1 + _PIXELS
    images, labels = [], []
    for name, blob in blobs:
        if not blob or len(blob) % record:
            raise ValueError(
                f"{name}: truncated or corrupt CIFAR binary file: {len(blob)} bytes is not a "
                f"positive multiple of the {record}-byte record."
            )
        rows = np.frombuffer(blob, np.uint8).reshape(-1, record)
        labels.append(rows[:, label_offset])
        images.append(_chw_rows_to_nhwc(rows[:, label_offset + 1:]))
    return _validated(np.concatenate(images), np.concatenate(labels), info, blobs[0][0])


def _find_image_folder(path, info, split, looked):
    root = path / split
    looked.append(str(root / "<class>" / "*.png"))
    if not root.is_dir():
        return None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        return None
    if len(classes) != info.num_classes:
        raise ValueError(
            f"{root}: an image folder for {info.name} must have {info.num_classes} class "
            f"folders; found {len(classes)}: {classes[:12]}{' ...' if len(classes) > 12 else ''}."
        )
    decode = _png_decoder()
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"{root / name}: class folder {name!r} holds no .png images.")
        for file in files:
            images.append(decode(file))
        labels.extend([label] * len(files))
    return _validated(np.stack(images), np.asarray(labels), info, str(root))


def _png_decoder() -> Callable[[pathlib.Path], np.ndarray]:
    """Decodes one 32x32 PNG to RGB uint8 with PIL, or TensorFlow without PIL.

    Grayscale, palette and RGBA images are converted to RGB, as torchvision's
    ``ImageFolder`` does (CINIC-10 holds some grayscale images).
    """
    try:
        from PIL import Image
    except ImportError:
        Image = None

    def decode(file: pathlib.Path) -> np.ndarray:
        try:
            if Image is not None:
                with Image.open(file) as image:
                    image = image.convert("RGB") if image.mode != "RGB" else image
                    array = np.asarray(image, dtype=np.uint8)
            else:
                import tensorflow as tf

                array = tf.io.decode_png(tf.io.read_file(str(file)), channels=3).numpy()
        except Exception as err:
            raise ValueError(
                f"{file}: not a readable PNG image ({type(err).__name__}: {_first_line(err)})."
            ) from err
        if array.shape != IMAGE_SHAPE:
            raise ValueError(
                f"{file}: images must be 32x32 RGB, shape {IMAGE_SHAPE}; got shape {array.shape}."
            )
        return array

    return decode


def _load_tfds(info, split, data_dir, looked):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"No local {info.name} files found (looked for: {', '.join(looked) or 'nothing'}) and "
            "tensorflow-datasets is not installed: `pip install tensorflow-datasets`."
        ) from err
    _fail_fast_offline(info, split, data_dir)
    try:
        # Batches of 10000 concatenated, not ``batch_size=-1``: the latter
        # takes the size from the split's metadata, which ``tfds.testing.mock_data``
        # leaves unset (TensorFlow then aborts the process).
        batches = tfds.load(
            info.tfds_name,
            split=split,
            data_dir=None if data_dir is None else str(data_dir),
            as_supervised=True,
            batch_size=10_000,
        )
        pairs = list(tfds.as_numpy(batches))
        if not pairs:
            raise ValueError(f"the {split!r} split is empty")
        x = np.concatenate([images for images, _ in pairs])
        y = np.concatenate([labels for _, labels in pairs])
    except Exception as err:
        raise FileNotFoundError(
            f"No local {info.name} {split!r} files in data_dir="
            f"{data_dir if data_dir is None else str(data_dir)!r} (looked for: "
            f"{', '.join(looked) or 'nothing'}), and TensorFlow Datasets could not load or "
            f"download {info.tfds_name!r} ({type(err).__name__}: {_first_line(err)})."
        ) from err
    return _validated(x, y, info, f"tfds:{info.tfds_name}/{split}")


def _fail_fast_offline(info, split, data_dir) -> None:
    """Raises at once where TFDS would download but the download host is unreachable."""
    problem = download_blocked(info.tfds_name, data_dir)
    if problem is None:
        return
    where = "data_dir=None" if data_dir is None else f"data_dir={str(data_dir)!r}"
    raise FileNotFoundError(
        f"no local {info.name} {split!r} files in {where} and TensorFlow Datasets cannot download "
        f"{info.tfds_name!r} ({problem}); give data_dir a folder holding one of: "
        f"{accepted_files(info.name)} (docs/training.md, \"Data\")."
    )


def download_blocked(tfds_name: str, data_dir: str | os.PathLike | None,
                     host: str | None = None) -> str | None:
    """Why TensorFlow Datasets cannot download ``tfds_name`` now, in a few words; None if it may try.

    None where the data is already prepared in ``data_dir`` (TFDS' default
    folder for ``None``) or the download host answers on port 443 within 5 s.
    Call it before ``tfds.load``: offline, TFDS retries for minutes and leaves
    a temporary folder behind.

    Args:
        tfds_name: the TFDS builder, ``"cifar10"`` or ``"glue/rte"``.
        data_dir: the folder TFDS would prepare the data in.
        host: the host TFDS downloads from; ``None``: the builder's homepage's host.

    Example:
        >>> import tempfile
        >>> from keras_softkd.data import sources
        >>> problem = sources.download_blocked("cifar10", tempfile.mkdtemp(), host="host.invalid")
        >>> problem.startswith("host.invalid unreachable: ")
        True
    """
    import tensorflow_datasets as tfds

    absl_logger = logging.getLogger("absl")  # "Variant folder ... has no dataset_info.json"
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        builder = tfds.builder(tfds_name, data_dir=None if data_dir is None else str(data_dir))
        if builder.is_prepared():
            return None
        host = host or urllib.parse.urlparse(builder.info.homepage).hostname
    finally:
        absl_logger.setLevel(level)
    problem = _unreachable(host)
    return None if problem is None else f"{host} unreachable: {problem}"


def accepted_files(dataset: str) -> str:
    """The local file names :func:`load` accepts for ``dataset``, in one line.

    Example:
        >>> accepted_files("cifar100")
        'cifar100_train.npz + cifar100_test.npz (arrays x: uint8 N x 32 x 32 x 3, y), cifar-100-python.tar.gz or cifar-100-python/, cifar-100-binary.tar.gz or cifar-100-binary/'
    """
    info = _info.get(dataset)
    names = [
        " + ".join(f"{info.name}_{split}.npz" for split in info.splits)
        + " (arrays x: uint8 N x 32 x 32 x 3, y)"
    ]
    for table in (_PYTHON, _BINARY):
        if info.name in table:
            folder, archive, _, _ = table[info.name]
            names.append(f"{archive} or {folder}/")
    if info.tfds_name is None:
        names.append(" + ".join(f"{split}/<class>/*.png" for split in info.splits))
    return ", ".join(names)


def _unreachable(host: str | None, timeout: float = 5.0) -> str | None:
    """Why ``host`` cannot be reached on port 443 within ``timeout`` seconds; None if it can."""
    if not host:
        return None
    outcome: list[str | None] = []

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{type(err).__name__}: {_first_line(err)}")

    # A thread: name resolution itself takes no timeout and can hang on a broken resolver.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _read_members(path, folder, archive, names, looked):
    """``[(display name, bytes)]`` of ``folder/name`` from a folder or a .tar.gz; None if neither.

    ``path`` itself may be the extracted folder.
    """
    directories = [path / folder] + ([path] if path.name == folder else [])
    tar_path = path / archive
    looked.extend([str(path / folder) + "/", str(tar_path)])
    for directory in directories:
        if directory.is_dir():
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{directory}: the folder is missing {missing} (a complete copy has {names})."
                )
            return [(str(directory / n), (directory / n).read_bytes()) for n in names]
    if not tar_path.is_file():
        return None
    wanted = {f"{folder}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        # One sequential pass: reading members in archive order never rewinds the gzip stream.
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                key = member.name.removeprefix("./")
                if key in wanted and member.isfile():
                    found[wanted[key]] = tar.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(
            f"{tar_path}: corrupt or truncated .tar.gz archive ({type(err).__name__}: "
            f"{_first_line(err)})."
        ) from err
    missing = [f"{folder}/{name}" for name in names if name not in found]
    if missing:
        raise FileNotFoundError(f"{tar_path}: the archive is missing {missing}.")
    blobs = [(f"{tar_path}:{folder}/{name}", found[name]) for name in names]
    return blobs


def _chw_rows_to_nhwc(rows: np.ndarray) -> np.ndarray:
    """CIFAR rows of 3072 bytes (1024 R, 1024 G, 1024 B, row-major) -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _validated(x, y, info, source: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{source}: images must be uint8 of shape (N, 32, 32, 3); got {x.dtype} of shape "
            f"{x.shape}."
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{source}: labels must be integers of shape ({len(x)},), one per image; got "
            f"{y.dtype} of shape {y.shape}."
        )
    if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
        raise ValueError(
            f"{source}: labels must be in [0, {info.num_classes}) for dataset={info.name!r}; "
            f"got values from {y.min()} to {y.max()}."
        )
    return np.ascontiguousarray(x), y.astype(np.int32)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

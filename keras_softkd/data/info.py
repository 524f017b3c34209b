"""What the package knows about each dataset: classes, splits, channel statistics."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one 32x32 RGB classification dataset.

    Attributes:
        name: the name :func:`keras_softkd.data.load` takes (``"cifar10"``).
        num_classes: number of classes ``K``; labels are in ``[0, K)``.
        mean: per-channel (R, G, B) mean of the training images scaled to [0, 1].
        std: per-channel standard deviation of the training images scaled to [0, 1].
        splits: the splits the dataset has.
        tfds_name: the TensorFlow Datasets builder, or ``None`` where there is none.
    """

    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: tuple[str, ...]
    tfds_name: str | None


#: Metadata by dataset name (read-only).
#:
#: Example:
#:     >>> from keras_softkd.data import DATASETS
#:     >>> DATASETS["cifar100"].num_classes, DATASETS["cifar10"].mean
#:     (100, (0.4914, 0.4822, 0.4465))
DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        "cifar10": DatasetInfo(
            name="cifar10",
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            splits=("train", "test"),
            tfds_name="cifar10",
        ),
        "cifar100": DatasetInfo(
            name="cifar100",
            num_classes=100,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            splits=("train", "test"),
            tfds_name="cifar100",
        ),
        "cinic10": DatasetInfo(
            name="cinic10",
            num_classes=10,
            mean=(0.47889522, 0.47227842, 0.43047404),
            std=(0.24205776, 0.23828046, 0.25874835),
            splits=("train", "valid", "test"),
            tfds_name=None,
        ),
    }
)


def get(dataset: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``dataset``; ``ValueError`` naming the valid names."""
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise ValueError(
            f"`dataset` must be one of {sorted(DATASETS)}; got dataset={dataset!r}."
        ) from None


_NORMALIZATION: dict = {}


def normalization(dataset: str):
    """``(scale, shift)``, float32 arrays of the 3 channels: a uint8 image ``x`` normalised,
    ``(x / 255 - mean) / std``, is ``x * scale + shift`` (the NumPy pipeline's and the device
    augmentation's constants).

    Example:
        >>> from keras_softkd.data import info
        >>> scale, shift = info.normalization("cifar10")
        >>> scale.dtype.name, [round(float(v), 4) for v in shift]
        ('float32', [-1.9895, -1.9803, -1.7068])
    """
    if dataset not in _NORMALIZATION:
        import numpy as np

        meta = get(dataset)
        mean = np.asarray(meta.mean, np.float64)
        std = np.asarray(meta.std, np.float64)
        _NORMALIZATION[dataset] = (
            (1.0 / (255.0 * std)).astype(np.float32),
            (-mean / std).astype(np.float32),
        )
    return _NORMALIZATION[dataset]

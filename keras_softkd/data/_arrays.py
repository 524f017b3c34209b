"""Checks of the arrays and arguments both input pipelines take (no TensorFlow here)."""

from __future__ import annotations

import numpy as np

from keras_softkd._checks import positive_int  # noqa: F401  (re-exported for the pipelines)
from keras_softkd.data import info as _info

SIZE = 32


def checked_arrays(x, y, dataset):
    """``x`` uint8 (N, 32, 32, 3) and ``y`` int32 labels in [0, K), or a ValueError naming them."""
    info = _info.get(dataset)
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (SIZE, SIZE, 3) or not len(x):
        raise ValueError(
            f"`x` must be uint8 images of shape (N, 32, 32, 3) with N >= 1; got {x.dtype} of "
            f"shape {x.shape}."
        )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"`y` must be integer labels of shape ({len(x)},), one per image of `x`; got "
            f"{y.dtype} of shape {y.shape}."
        )
    if y.min() < 0 or y.max() >= info.num_classes:
        raise ValueError(
            f"`y` must be in [0, {info.num_classes}) for dataset={dataset!r}; got values from "
            f"{y.min()} to {y.max()}."
        )
    return x, y.astype(np.int32)


def seed_value(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
        0 <= seed < 2**63
    ):
        raise ValueError(f"`seed` must be an integer in [0, 2**63); got seed={seed!r}.")
    return int(seed)


def class_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The examples grouped by class: ``(order, starts, counts)``.

    ``order[starts[c] : starts[c] + counts[c]]`` are the indices of the
    examples of class ``c``, in increasing order.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data._arrays import class_members
        >>> order, starts, counts = class_members(np.array([1, 0, 1, 2]))
        >>> order.tolist(), starts.tolist(), counts.tolist()
        ([1, 0, 2, 3], [0, 1, 3], [1, 2, 1])
    """
    labels = np.asarray(labels).astype(np.int64)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    return order, np.cumsum(counts) - counts, counts

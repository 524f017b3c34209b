"""Seeded subsets of in-memory arrays: a held-out validation split, a quick subset."""

from __future__ import annotations

import numpy as np


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float, seed: int
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Holds out ``round(fraction * N)`` random examples as a validation split.

    The held-out examples are drawn by a seeded permutation (CIFAR-10 train is
    sorted by class, so the tail would be one class). Both parts keep the
    original order of ``x``.

    Args:
        x: images, first axis the examples.
        y: labels, same length as ``x``.
        fraction: share of examples to hold out, in (0, 1); both parts must be
            non-empty.
        seed: integer >= 0.

    Returns:
        ``((x_train, y_train), (x_valid, y_valid))``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import split_validation
        >>> (xt, yt), (xv, yv) = split_validation(np.arange(10), np.arange(10), 0.2, seed=0)
        >>> len(xt), len(xv), sorted(np.concatenate([xt, xv]).tolist()) == list(range(10))
        (8, 2, True)
    """
    x, y = _same_length(x, y)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not (
        0.0 < fraction < 1.0
    ):
        raise ValueError(f"`fraction` must be in (0, 1); got fraction={fraction!r}.")
    count = len(x)
    held_out = int(round(fraction * count))
    if not 0 < held_out < count:
        raise ValueError(
            f"`fraction`={fraction!r} of N={count} examples holds out {held_out}; both the "
            "training and the validation part must be non-empty."
        )
    order = _permutation(count, seed)
    valid = np.sort(order[:held_out])
    train = np.sort(order[held_out:])
    return (x[train], y[train]), (x[valid], y[valid])


def take_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` examples of a seeded shuffle (for quick runs).

    Args:
        x: images, first axis the examples.
        y: labels, same length as ``x``.
        n: number of examples, in ``[1, N]``.
        seed: integer >= 0.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import take_subset
        >>> xs, ys = take_subset(np.arange(100), np.arange(100), 5, seed=0)
        >>> len(xs), bool((xs == ys).all())
        (5, True)
    """
    x, y = _same_length(x, y)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(x):
        raise ValueError(f"`n` must be an integer in [1, {len(x)}] (N = len(x)); got n={n!r}.")
    chosen = _permutation(len(x), seed)[:n]
    return x[chosen], y[chosen]


def _permutation(count: int, seed) -> np.ndarray:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0; got seed={seed!r}.")
    return np.random.default_rng(int(seed)).permutation(count)


def _same_length(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same length; got x of shape {x.shape} and y of shape "
            f"{y.shape}."
        )
    return x, y

"""Test-set metrics from logits: top-k error, negative log-likelihood, calibration error.

Every function takes integer ``labels`` of shape ``(N,)`` (or ``(N, 1)``) and
``logits`` of shape ``(N, K)`` -- NumPy arrays or anything ``np.asarray``
accepts, in any float dtype -- and returns a Python ``float``, a **fraction**
(``0.0921``, not ``9.21``), computed in float64.

Conventions (the same in every function, so the numbers agree with each other
and with Keras' ``accuracy``):

* **Prediction and ties.** Classes are ranked by logit, ties broken toward the
  lower class index (a stable sort of ``-logits``). So the top-1 prediction is
  ``argmax(logits)`` exactly as ``keras.metrics.SparseCategoricalAccuracy``
  takes it, and ``top_k_error(k=1) == 1 - accuracy`` of
  :func:`expected_calibration_error`'s bins.
* **Probabilities** come from a stable ``log_softmax`` (``z - logsumexp(z)``),
  never ``log(softmax)``: saturated logits (``|z| ~ 1e4``) give finite values.
* **Errors.** ``ValueError`` naming the argument for: logits not 2-D or
  empty, non-finite logits, labels of the wrong shape or length, labels that
  are not integers or are outside ``[0, K)``, ``k`` outside ``[1, K]``,
  ``bins < 1``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from keras_softkd import _checks

__all__ = [
    "top_k_error",
    "nll",
    "expected_calibration_error",
    "evaluate_logits",
    "teacher_summary",
]

ArrayLike = Any


def top_k_error(labels: ArrayLike, logits: ArrayLike, k: int = 1) -> float:
    """Fraction of examples whose label is not among the ``k`` highest logits.

    ``error_k = (1/N) sum_i [rank_i >= k]``, with ``rank_i`` the number of
    classes ranked above the label: classes with a larger logit, plus classes
    with an equal logit and a lower index (ties go to the lower index, so
    ``k = 1`` is ``1 - accuracy`` with ``argmax`` predictions).

    Args:
        labels: integer labels, shape ``(N,)`` or ``(N, 1)``, values in ``[0, K)``.
        logits: shape ``(N, K)``.
        k: ``1 <= k <= K``.

    Example:
        >>> import numpy as np
        >>> logits = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
        >>> top_k_error(np.array([1, 2]), logits, k=1)
        1.0
        >>> top_k_error(np.array([1, 2]), logits, k=2)
        0.5
    """
    labels, logits = _prepare(labels, logits)
    num_classes = logits.shape[1]
    if (
        isinstance(k, bool)
        or not isinstance(k, (int, np.integer))
        or not 1 <= k <= num_classes
    ):
        raise ValueError(
            f"`k` must be an integer in [1, K] = [1, {num_classes}]; got k={k!r}."
        )
    return float(np.mean(_label_ranks(labels, logits) >= k))


def nll(labels: ArrayLike, logits: ArrayLike) -> float:
    """Mean negative log-likelihood of the labels, in nats.

    ``NLL = -(1/N) sum_i log_softmax(z_i)[y_i]``, with
    ``log_softmax(z) = z - max(z) - log(sum_k exp(z_k - max(z)))``.

    Args:
        labels: integer labels, shape ``(N,)`` or ``(N, 1)``, values in ``[0, K)``.
        logits: shape ``(N, K)``.

    Example:
        >>> import numpy as np
        >>> round(nll(np.array([0, 1]), np.zeros((2, 4))), 4)  # log(4)
        1.3863
        >>> nll(np.array([1]), np.array([[1e4, 0.0]]))  # saturated: finite
        10000.0
    """
    labels, logits = _prepare(labels, logits)
    log_probs = _log_softmax(logits)
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def expected_calibration_error(
    labels: ArrayLike, logits: ArrayLike, bins: int = 15
) -> float:
    """Expected calibration error (Guo et al. 2017) with equal-width bins.

    Confidence ``c_i = max_k softmax(z_i)_k``, prediction ``argmax_k z_i``
    (ties to the lower index), correct ``a_i = [prediction_i == y_i]``. With
    ``M = bins`` equal-width bins over ``[0, 1]``, edges ``e_b = b / M``
    (``np.linspace(0, 1, M + 1)``), bin ``B_b`` holds the examples with
    ``e_b < c_i <= e_(b+1)``: bins are open on the left and closed on the
    right, as in Guo et al.'s code, except that the first bin also takes
    ``c = 0`` (``B_0 = [0, 1/M]``). A confidence of exactly ``1.0`` (a
    saturated softmax) therefore falls in the last bin, and one exactly on an
    inner edge ``b/M`` falls in the lower bin. Then::

        ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|
            = (1/N) sum_b |sum_(i in B_b) (a_i - c_i)|

    with ``acc`` and ``conf`` the mean of ``a_i`` and ``c_i`` over the bin;
    empty bins contribute 0.

    Args:
        labels: integer labels, shape ``(N,)`` or ``(N, 1)``, values in ``[0, K)``.
        logits: shape ``(N, K)``.
        bins: number of bins ``M >= 1``; 15 as in Guo et al.

    Example:
        >>> import numpy as np
        >>> # Confidence 0.75 on class 0 for all four; 3 of 4 are right: calibrated.
        >>> logits = np.tile([np.log(3.0), 0.0], (4, 1))
        >>> round(expected_calibration_error(np.array([0, 0, 0, 1]), logits), 6)
        0.0
        >>> # Saturated and always wrong: confidence 1, accuracy 0.
        >>> expected_calibration_error(np.array([1, 1]), np.array([[1e4, 0.0]] * 2))
        1.0
    """
    labels, logits = _prepare(labels, logits)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"`bins` must be an integer >= 1; got bins={bins!r}.")
    confidence = np.exp(np.max(_log_softmax(logits), axis=1))
    correct = (np.argmax(logits, axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # side="left" on the inner edges: e_b < c <= e_(b+1); c <= e_1 is bin 0,
    # c > e_(M-1) (c = 1.0 included) is bin M-1.
    bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
    gap = np.bincount(bin_index, weights=correct - confidence, minlength=int(bins))
    return float(np.sum(np.abs(gap)) / len(labels))


def evaluate_logits(labels: ArrayLike, logits: ArrayLike) -> dict[str, Optional[float]]:
    """The test metrics of ``results.json`` from a test set's logits.

    Returns a dict with the keys

    * ``test_error``: :func:`top_k_error` with ``k = 1``;
    * ``test_top5_error``: :func:`top_k_error` with ``k = 5``, or ``None``
      when ``K < 5``: top-5 error is not defined with fewer than 5 classes
      (it would be a meaningless 0), and ``None`` is JSON ``null``, which
      :mod:`keras_softkd.report` shows as a missing cell;
    * ``test_nll``: :func:`nll`;
    * ``test_ece``: :func:`expected_calibration_error` with 15 bins.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> metrics = evaluate_logits(rng.integers(0, 10, 100), rng.normal(size=(100, 10)))
        >>> sorted(metrics)
        ['test_ece', 'test_error', 'test_nll', 'test_top5_error']
        >>> evaluate_logits(np.array([0]), np.array([[1.0, 0.0]]))["test_top5_error"] is None
        True
    """
    labels, logits = _prepare(labels, logits)
    return {
        "test_error": top_k_error(labels, logits, k=1),
        "test_top5_error": top_k_error(labels, logits, k=5) if logits.shape[1] >= 5 else None,
        "test_nll": nll(labels, logits),
        "test_ece": expected_calibration_error(labels, logits, bins=15),
    }


def teacher_summary(logits: ArrayLike, temperature: float = 1.0) -> dict[str, float]:
    """What a teacher's logits teach, in four numbers (no labels needed).

    A teacher that puts every image on one class with probability 1 teaches
    nonsense however exactly its loss is computed; these numbers show it:

    * ``max_abs_logit``: the largest ``|z|`` (inf when not finite);
    * ``finite``: 1.0 when every logit is finite, else 0.0;
    * ``classes_predicted``: how many classes are someone's ``argmax``;
    * ``mean_top_probability``: the mean over images of ``max softmax(z / t)``
      (1/K for a uniform teacher, 1.0 for a certain one); NaN when not finite.

    Example:
        >>> import numpy as np
        >>> teacher_summary(np.array([[1e8, 0.0, 0.0], [5e7, 0.0, 1.0]]), temperature=3.0)
        {'max_abs_logit': 100000000.0, 'finite': 1.0, 'classes_predicted': 1.0, 'mean_top_probability': 1.0}
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.size == 0:
        raise ValueError(f"`logits` must be a non-empty (N, K) array; got shape {logits.shape}.")
    _checks.positive("temperature", temperature)
    finite = bool(np.isfinite(logits).all())
    if finite:
        top = np.exp(np.max(_log_softmax(logits / temperature), axis=1))
        mean_top = float(np.mean(top))
    else:
        mean_top = math.nan
    return {
        "max_abs_logit": float(np.max(np.abs(logits))) if finite else math.inf,
        "finite": float(finite),
        "classes_predicted": float(len(np.unique(np.argmax(np.nan_to_num(logits), axis=1)))),
        "mean_top_probability": mean_top,
    }


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def _label_ranks(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Number of classes ranked above the label (ties to the lower index)."""
    label_logit = logits[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(logits.shape[1])[None, :] < labels[:, None]
    above = (logits > label_logit) | ((logits == label_logit) & lower_index)
    return np.sum(above, axis=1)


def _prepare(labels: ArrayLike, logits: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts to ``(int64 labels (N,), float64 logits (N, K))``."""
    logits = np.asarray(logits)
    if logits.dtype == bool or not (
        np.issubdtype(logits.dtype, np.number) or logits.dtype.kind == "V"
    ):
        # kind "V": ml_dtypes' bfloat16, which converts to float64 below.
        raise ValueError(f"`logits` must be numbers; got dtype {logits.dtype}.")
    logits = logits.astype(np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(
            f"`logits` must have shape (N, K) with N >= 1 and K >= 1; got shape {logits.shape}."
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError(
            f"`logits` must be finite; got {int(np.sum(~np.isfinite(logits)))} NaN or "
            "infinite values (a diverged model?)."
        )
    num_examples, num_classes = logits.shape

    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != num_examples:
        raise ValueError(
            f"`labels` must have shape (N,) or (N, 1) with N = {num_examples} like the "
            f"logits of shape {logits.shape}; got labels of shape {np.shape(labels)}."
        )
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"`labels` must be integers; got dtype {labels.dtype}.")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("`labels` must be integers; got non-integer values.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`labels` must be in [0, K) = [0, {num_classes}); got values from "
            f"{labels.min()} to {labels.max()}."
        )
    return labels.astype(np.int64), logits


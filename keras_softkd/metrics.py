"""Test-set metrics from logits: top-k error, negative log-likelihood, calibration error;
and the GLUE metrics (Matthews correlation, F1, accuracy) from predictions.

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

The GLUE metrics (:func:`matthews_correlation`, :func:`f1_score`) take integer
``labels`` and ``predictions`` of shape ``(N,)``; :func:`glue_scores` takes
logits and returns a task's metrics in **percent**, as the GLUE papers report them.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from keras_softkd import _checks
from keras_softkd.data import glue

__all__ = [
    "top_k_error",
    "nll",
    "expected_calibration_error",
    "evaluate_logits",
    "teacher_summary",
    "matthews_correlation",
    "f1_score",
    "glue_scores",
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


def matthews_correlation(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Matthews correlation coefficient, binary or multi-class, as scikit-learn defines it.

    With the confusion matrix ``C`` (``C[i, j]``: examples of label ``i``
    predicted ``j``), ``t_k`` the number of examples of label ``k``, ``p_k``
    the number predicted ``k``, ``c = trace(C)`` the number correct and ``s = N``
    (Gorodkin 2004; ``sklearn.metrics.matthews_corrcoef``)::

        MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

    which for two classes is ``(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``.
    Where the denominator is 0 (all labels, or all predictions, one class)
    it is 0, as in scikit-learn. A fraction in ``[-1, 1]``.

    Args:
        labels: integer labels, shape ``(N,)``, values ``>= 0``.
        predictions: integer predicted classes, shape ``(N,)``, values ``>= 0``.

    Example:
        >>> import numpy as np
        >>> round(matthews_correlation(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])), 6)
        0.57735
        >>> matthews_correlation(np.array([1, 1, 1]), np.array([1, 0, 1]))  # one label class
        0.0
    """
    labels, predictions = _prepare_predictions(labels, predictions)
    num_classes = int(max(labels.max(), predictions.max())) + 1
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1.0)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), float(len(labels))
    covariance = correct * total - predicted_counts @ true_counts
    predicted_variance = total * total - predicted_counts @ predicted_counts
    true_variance = total * total - true_counts @ true_counts
    if predicted_variance * true_variance == 0:
        return 0.0
    # One square root of the product, as scikit-learn: a perfect score is exactly 1.
    return float(covariance / np.sqrt(predicted_variance * true_variance))


def f1_score(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Binary F1 score of the positive class 1 (``sklearn.metrics.f1_score``'s default).

    With ``TP``, ``FP``, ``FN`` the true positives, false positives and false
    negatives of class 1, F1 is the harmonic mean of precision and recall::

        F1 = 2 TP / (2 TP + FP + FN)

    and 0 where the denominator is 0 (no positive labels and none predicted),
    as scikit-learn returns. A fraction in ``[0, 1]``.

    Args:
        labels: labels 0 or 1, shape ``(N,)``.
        predictions: predicted classes 0 or 1, shape ``(N,)``.

    Example:
        >>> import numpy as np
        >>> f1_score(np.array([0, 1, 1, 1]), np.array([1, 1, 1, 0]))  # TP 2, FP 1, FN 1
        0.6666666666666666
        >>> f1_score(np.array([1, 0]), np.array([0, 0]))  # no positives predicted
        0.0
    """
    labels, predictions = _prepare_predictions(labels, predictions)
    if max(labels.max(), predictions.max()) > 1:
        raise ValueError(
            "`labels` and `predictions` must be 0 or 1 for the binary F1 score; got values up "
            f"to {max(labels.max(), predictions.max())}."
        )
    true_positives = float(np.sum((labels == 1) & (predictions == 1)))
    wrong = float(np.sum(labels != predictions))  # FP + FN
    if true_positives + wrong == 0:
        return 0.0
    return 2 * true_positives / (2 * true_positives + wrong)


def glue_scores(task: str, labels: ArrayLike, logits: ArrayLike) -> dict[str, float]:
    """A GLUE task's metrics from logits, in percent, as the Pseudo-KD paper reports them.

    The prediction is ``argmax(logits)`` (ties to the lower index, as in
    :func:`top_k_error`). The keys are ``GLUE_TASKS[task].metrics``, the
    headline first: ``matthews_correlation`` (CoLA, :func:`matthews_correlation`);
    ``accuracy`` and ``f1`` (:func:`f1_score`) (MRPC, QQP); ``accuracy``
    (SST-2, MNLI, QNLI, RTE). Each value is ``100 x`` the fraction.

    Args:
        task: a name of :data:`keras_softkd.data.GLUE_TASKS` (``"cola"``, ...).
        labels: integer labels, shape ``(N,)`` or ``(N, 1)``, in TFDS' order.
        logits: shape ``(N, K)`` with ``K`` the task's number of classes.

    Example:
        >>> import numpy as np
        >>> logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
        >>> glue_scores("mrpc", np.array([0, 1, 1, 1]), logits)
        {'accuracy': 75.0, 'f1': 80.0}
        >>> round(glue_scores("cola", np.array([0, 1, 1, 1]), logits)["matthews_correlation"], 4)
        57.735
    """
    info = glue.get(task)
    labels, logits = _prepare(labels, logits)
    if logits.shape[1] != info.num_classes:
        raise ValueError(
            f"`logits` must have {info.num_classes} columns for task={task!r} "
            f"({list(info.label_names)}); got shape {logits.shape}."
        )
    predictions = np.argmax(logits, axis=1)
    return {name: 100.0 * _GLUE_METRICS[name](labels, predictions) for name in info.metrics}


def _accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(labels == predictions))


_GLUE_METRICS = {
    "matthews_correlation": matthews_correlation,
    "f1": f1_score,
    "accuracy": _accuracy,
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


def _prepare_predictions(labels: ArrayLike, predictions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts to two int64 arrays of shape ``(N,)``, ``N >= 1``, values ``>= 0``."""
    arrays = []
    for name, values in (("labels", labels), ("predictions", predictions)):
        values = np.asarray(values)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"`{name}` must have shape (N,) with N >= 1; got shape {values.shape}.")
        if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"`{name}` must be integers; got dtype {values.dtype}.")
        if values.min() < 0:
            raise ValueError(f"`{name}` must be >= 0; got {values.min()}.")
        arrays.append(values.astype(np.int64))
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"`labels` and `predictions` must have the same shape; got {arrays[0].shape} and "
            f"{arrays[1].shape}."
        )
    return arrays[0], arrays[1]

"""Argument checks and label handling shared by the losses and teachers.

Every error names the argument and its valid range, so that a bad value is
caught where it is given, not as a NaN hundreds of steps later.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

_LOW_PRECISION = ("float16", "bfloat16")


def in_closed_range(name: str, value: float, low: float, high: float) -> float:
    """Raises ``ValueError`` unless ``low <= value <= high``."""
    if not _is_real(value) or not low <= float(value) <= high:
        raise ValueError(f"`{name}` must be in [{low:g}, {high:g}]; got {name}={value!r}.")
    return float(value)


def positive(name: str, value: float) -> float:
    """Raises ``ValueError`` unless ``value > 0`` (and finite)."""
    if not _is_real(value) or not 0 < float(value) < math.inf:
        raise ValueError(f"`{name}` must be > 0; got {name}={value!r}.")
    return float(value)


def positive_int(name: str, value: int) -> int:
    """Raises ``ValueError`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {name}={value!r}.")
    return int(value)


def non_negative_int(name: str, value: int) -> int:
    """Raises ``ValueError`` unless ``value`` is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be an integer >= 0; got {name}={value!r}.")
    return int(value)


def boolean(name: str, value: bool) -> bool:
    """Raises ``ValueError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False; got {name}={value!r}.")
    return bool(value)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    ) and not math.isnan(float(value))


def as_float32(logits):
    """Logits as a float32 tensor: float16/bfloat16 are computed in float32.

    The cast is differentiable, so gradients flow back in the input dtype.
    """
    logits = ops.convert_to_tensor(logits)
    if logits.dtype != "float32":
        logits = ops.cast(logits, "float32")
    return logits


def one_hot_labels(labels, logits):
    """Returns ``(one_hot, valid)`` for integer or one-hot ``labels``.

    * integer labels: shape ``(batch,)`` or ``(batch, 1)``, values in ``[0, K)``;
    * one-hot (or any soft target) labels: shape ``(batch, K)``.

    ``valid`` is a ``(batch,)`` boolean tensor, false where an integer label is
    outside ``[0, K)``. Labels with concrete values (eager calls) are checked
    here and raise ``ValueError``; inside a compiled step a bad label cannot
    raise without a device-to-host round trip, so the losses turn it into a
    NaN loss instead of the silent zero that ``one_hot`` would give.
    """
    labels = ops.convert_to_tensor(labels)
    num_classes = logits.shape[-1]
    logits_rank = len(logits.shape)
    if num_classes is None:
        raise ValueError("The logits' last dimension (the number of classes K) must be known.")
    is_one_hot = len(labels.shape) == logits_rank and labels.shape[-1] == num_classes and (
        num_classes > 1
    )
    _check_batch(labels, logits)
    if is_one_hot:
        return ops.cast(labels, "float32"), None
    if len(labels.shape) == logits_rank and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    if len(labels.shape) != logits_rank - 1:
        raise ValueError(
            "Labels must be integers of shape (batch,) or (batch, 1), or one-hot of "
            f"shape (batch, K) = (batch, {num_classes}); got labels of shape "
            f"{tuple(labels.shape)} for logits of shape {tuple(logits.shape)}."
        )
    _check_label_values(labels, num_classes)
    labels = ops.cast(labels, "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    return ops.one_hot(labels, num_classes, dtype="float32"), valid


def _check_batch(labels, logits) -> None:
    batch_labels, batch_logits = labels.shape[0], logits.shape[0]
    if batch_labels is not None and batch_logits is not None and batch_labels != batch_logits:
        raise ValueError(
            f"Labels and logits disagree on the batch size: labels of shape "
            f"{tuple(labels.shape)}, logits of shape {tuple(logits.shape)}."
        )
    if len(labels.shape) == len(logits.shape) and labels.shape[-1] not in (1, logits.shape[-1]):
        raise ValueError(
            f"One-hot labels must have K={logits.shape[-1]} columns like the logits; "
            f"got labels of shape {tuple(labels.shape)} and logits of shape "
            f"{tuple(logits.shape)}."
        )


def _check_label_values(labels, num_classes: int) -> None:
    try:
        values = np.asarray(labels)
    except Exception:  # a symbolic tensor inside a compiled step
        return
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"Labels must be in [0, {num_classes}) for K={num_classes} classes; got values "
            f"from {values.min()} to {values.max()}."
        )


def mark_invalid(losses, valid):
    """NaN where ``valid`` is false (an out-of-range label in a compiled step)."""
    if valid is None:
        return losses
    return ops.where(valid, losses, math.nan)

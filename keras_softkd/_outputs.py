"""A model's output as logits, for the loss classes' ``from_logits``.

Every formula in :mod:`keras_softkd.losses` takes logits and uses them only
through ``log_softmax(z / t)``, which is unchanged when a constant is added to
a row. Log-probabilities are therefore logits of the same distribution:
``log_softmax(log p / t) = log softmax(z / t)`` for ``p = softmax(z)``. A model
that ends in a softmax is handled by turning its probabilities into
``log(clip(p, epsilon, 1))`` (``epsilon = keras.config.epsilon()``, 1e-7, the
clip of Keras's own crossentropy), after which the same formula applies.

Keras keeps the logits on a softmax's output (``keras.activations.softmax``
and the TensorFlow backend's ``ops.softmax`` set ``_keras_logits``; in a traced
TensorFlow graph the output is also a ``Softmax`` op whose input is the
logits). Keras's crossentropy on TensorFlow uses those logits instead of the
clipped probabilities, and warns when ``from_logits=True`` is given such an
output (``keras/src/backend/tensorflow/nn.py``, ``_get_logits``). The same
checks are made here, on every backend where the tensor can carry them:
TensorFlow (eager and traced) and PyTorch; JAX arrays take no attributes, so
on JAX the probabilities are clipped and no warning is possible.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from keras_softkd import _checks

#: Graph ops that pass a softmax's output on unchanged in value (a mixed-precision
#: model's float16 softmax reaches the loss through a ``Cast`` to float32).
_PASS_THROUGH_OPS = ("Cast", "Identity")


def softmax_logits(y_pred):
    """The logits of the softmax that produced ``y_pred``, or ``None``.

    ``y_pred._keras_logits`` where Keras set it, else, in a TensorFlow graph,
    the input of the ``Softmax`` op that produced ``y_pred`` (through casts).

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import _outputs
        >>> _outputs.softmax_logits(np.array([[0.5, 0.5]])) is None
        True
    """
    tensor = y_pred
    for _ in range(len(_PASS_THROUGH_OPS) + 1):
        logits = getattr(tensor, "_keras_logits", None)
        if logits is not None:
            return logits if tuple(logits.shape) == tuple(tensor.shape) else None
        op = _graph_op(tensor)
        if op is None:
            return None
        if op.type == "Softmax" and len(op.inputs) == 1:
            return op.inputs[0]
        if op.type not in _PASS_THROUGH_OPS:
            return None
        tensor = op.inputs[0]
    return None


def _graph_op(tensor):
    """The op of a traced TensorFlow tensor; ``None`` for eager tensors and other backends."""
    try:
        op = tensor.op  # an eager TensorFlow tensor raises AttributeError
    except Exception:  # noqa: BLE001 - any tensor without a graph op
        return None
    return op if hasattr(op, "type") and hasattr(op, "inputs") else None


def log_probabilities(probabilities):
    """``log(clip(p, epsilon, 1))`` in float32: logits of the distribution ``p``.

    An exact 0 becomes ``log(epsilon)`` (about -16.1 for Keras's 1e-7), so
    values and gradients stay finite; its gradient is 0, as in Keras's
    crossentropy on probabilities.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import _outputs
        >>> np.asarray(_outputs.log_probabilities(np.array([[1.0, 0.0]])), float).round(2).tolist()
        [[0.0, -16.12]]
    """
    probabilities = _checks.as_float32(probabilities)
    return ops.log(ops.clip(probabilities, keras.config.epsilon(), 1.0))


def probabilities_as_logits(probabilities):
    """Logits of the probabilities ``y_pred``: its softmax's own logits, or its log-probabilities.

    The logits Keras kept on a softmax's output (:func:`softmax_logits`) where
    there are some, exact as Keras's crossentropy on TensorFlow; else
    :func:`log_probabilities`.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import _outputs
        >>> z = _outputs.probabilities_as_logits(np.array([[0.5, 0.5]]))
        >>> np.asarray(z, float).round(4).tolist()
        [[-0.6931, -0.6931]]
    """
    logits = softmax_logits(probabilities)
    return log_probabilities(probabilities) if logits is None else logits


def warn_softmax_given_as_logits(loss_name: str) -> None:
    """Warns (``UserWarning``) that ``loss_name`` got a softmax's output as logits, and the fixes."""
    warnings.warn(
        f"{loss_name} received `from_logits=True` (the default), but `y_pred` was produced by a "
        "softmax activation and holds probabilities, not logits: the loss would treat them as "
        "logits and the model would barely learn. Pass "
        f"`{loss_name}(..., from_logits=False)`, or drop the softmax so that the model outputs "
        "logits.",
        UserWarning,
        stacklevel=3,
    )

"""A teacher's forward pass without gradients, in the student's precision or in bfloat16.

MrKD's memory copies and weight average and KD's fixed teacher can run in bfloat16 while
the student trains in float32 (``--teacher_precision=bfloat16``, ``keras_softkd.precision``
says when ``auto`` picks it): :class:`TeacherNetwork` runs a network's layers on given
weights, either the network itself (``same``: the teacher runs in the student's precision)
or a clone of its architecture under the ``mixed_bfloat16`` policy, through
``stateless_call`` with the teacher's float32 variables (the clone's layers cast them to
bfloat16 as they compute; the clone's own variables are never read). Its logits are cast to
float32 before any loss sees them. The clone is held outside Keras's tracking, so the
wrapper's weights, checkpoints and ``.keras`` files are those of ``--teacher_precision=same``.

Beta-LS's weight average is left out: it runs in training mode (batch
statistics) and its confidences *rank* the batch's examples, where bfloat16's
coarser values would tie and reorder them; it stays in the student's precision.

The weights cannot simply be cast to bfloat16 and passed to the network's own
``stateless_call``: Keras casts the values of a stateless call back to each
variable's dtype (float32), and the layers would then compute in float32.

Example:
    >>> import keras, numpy as np
    >>> network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> teacher = TeacherNetwork(network, "bfloat16")
    >>> logits = teacher.logits(network.trainable_variables, network.non_trainable_variables,
    ...                         np.ones((2, 4), "float32"))
    >>> keras.backend.standardize_dtype(logits.dtype)
    'float32'
"""

from __future__ import annotations

import keras
from keras import ops

from keras_softkd.precision import check_teacher_precision

_TEACHER_POLICY = {"bfloat16": "mixed_bfloat16"}


class TeacherNetwork:
    """Runs ``network``'s layers on given weights, in inference or training mode, at ``precision``.

    Not a Keras layer on purpose: the bfloat16 clone is not tracked by the model
    that holds this object (its variables are not the teacher's).

    Args:
        network: a built functional or ``Sequential`` model.
        precision: ``"same"`` (``network`` itself) or ``"bfloat16"`` (a clone of its
            architecture whose every layer has the ``mixed_bfloat16`` policy).
    """

    def __init__(self, network: keras.Model, precision: str = "same"):
        self.precision = check_teacher_precision(precision)
        self.network = network if precision == "same" else _clone(network, _TEACHER_POLICY[precision])

    def logits(self, trainable, non_trainable, inputs, training: bool = False):
        """The network with these weights (variables or values, in the order of ``network``'s
        ``trainable_variables`` and ``non_trainable_variables``) on ``inputs``: float32 logits;
        no state is written."""
        logits, _ = self.network.stateless_call(
            list(trainable), list(non_trainable), inputs, training=training
        )
        return ops.cast(logits, "float32")


def _clone(network: keras.Model, policy: str) -> keras.Model:
    """``network``'s architecture with every layer under ``policy`` (its variables unused)."""

    def with_policy(layer):
        config = layer.get_config()
        config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(network, clone_function=with_policy)
    except ValueError as error:  # a subclassed model cannot be cloned layer by layer
        raise ValueError(
            f"A bfloat16 teacher needs a functional or Sequential network; {network.name!r} "
            f"cannot be cloned layer by layer ({error}). Use teacher_precision='same' "
            "(train.py: --teacher_precision=same)."
        ) from None
    pairs = [
        (clone.trainable_variables, network.trainable_variables),
        (clone.non_trainable_variables, network.non_trainable_variables),
    ]
    for mine, theirs in pairs:
        if [tuple(v.shape) for v in mine] != [tuple(v.shape) for v in theirs]:
            raise ValueError(
                f"The bfloat16 clone of {network.name!r} does not hold the network's variables "
                "in the network's order; use teacher_precision='same'."
            )
    return clone

"""Distillation as a ``keras.Model``: a student trained towards teacher logits.

:class:`Distiller` is the shared machinery: it wraps a student model, runs the
teachers on every batch in inference mode, and computes the loss with
:func:`keras_softkd.losses.kd` (through :class:`keras_softkd.losses.KDLoss`, so
Keras reduces it and scales it per replica under ``tf.distribute``). Subclasses
only say where the teacher logits come from:

* :class:`KDModel` -- a fixed, pre-trained teacher (Hinton KD, W 4);
* :class:`keras_softkd.MrKDModel` -- memory copies of the student itself,
  refreshed every ``interval`` steps (W Algorithm 1).

Because the loss lives in ``compute_loss``, Keras's own ``train_step`` and
``test_step`` do the rest: ``fit``, ``evaluate``, callbacks, mixed precision
(loss scaling) and metrics work as for a plain model. ``evaluate`` reports the
same distillation loss as ``fit``; use metrics (accuracy, cross-entropy) for
the student alone.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from keras_softkd.losses import KDLoss


class Distiller(keras.Model):
    """Base class: a student trained with ``KDLoss`` against ``teacher_logits(x)``.

    The loss is ``(1-a) CE(p, q(1)) + a t^power (1/n) sum_i KL(qT_i(t) || q(t))``
    (W 4, 14), with each teacher corrected first when ``gamma`` is given (W 16).

    Args:
        model: the student, a ``keras.Model`` returning logits ``(batch, K)``.
        alpha: weight of the distillation term, in ``[0, 1]``.
        temperature: ``t > 0``.
        gamma: teacher correction in ``[0, 1]``, or ``None``.
        temperature_power: exponent of ``t`` (default: 2 without ``gamma``,
            1 with, as in the paper).
    """

    def __init__(
        self,
        model: keras.Model,
        alpha: float,
        temperature: float,
        gamma: Optional[float] = None,
        temperature_power: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model; got {type(model).__name__}.")
        self.model = model
        self.distillation_loss = KDLoss(
            alpha=alpha, temperature=temperature, gamma=gamma, temperature_power=temperature_power
        )

    @property
    def student(self) -> keras.Model:
        """The model being trained (save this one for deployment)."""
        return self.model

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def teacher_logits(self, inputs):
        """Logits of the teachers on ``inputs``: ``(batch, K)`` or ``(n, batch, K)``."""
        raise NotImplementedError

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        if loss is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own distillation loss; do not pass "
                "`loss` to compile() (pass metrics, e.g. 'sparse_categorical_accuracy')."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded model (Keras skips this for a custom ``compile``)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        targets = {"labels": y, "teacher_logits": ops.stop_gradient(self.teacher_logits(x))}
        loss = self.distillation_loss(targets, y_pred, sample_weight)
        for extra in self.losses:  # the student's regularisation losses, if any
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def get_config(self):
        loss = self.distillation_loss
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "alpha": loss.alpha,
            "temperature": loss.temperature,
            "gamma": loss.gamma,
            "temperature_power": loss.temperature_power,
        }


@keras.saving.register_keras_serializable(package="keras_softkd")
class KDModel(Distiller):
    """Knowledge distillation from a fixed, pre-trained teacher (Hinton, W 4).

    ``(1-a) CE(p, q(1)) + a t^2 KL(qT(t) || q(t))``, ``qT`` the teacher's
    tempered softmax in inference mode. The teacher is frozen and can have any
    architecture with the student's number of classes.

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import KDModel
        >>> make = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> kd_model = KDModel(make(), teacher=make(), alpha=0.9, temperature=4.0)
        >>> kd_model.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
        >>> history = kd_model.fit(np.zeros((8, 4)), np.zeros(8, "int32"), verbose=0)
    """

    def __init__(
        self,
        model: keras.Model,
        teacher: keras.Model,
        alpha: float = 0.9,
        temperature: float = 4.0,
        gamma: Optional[float] = None,
        temperature_power: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(model, alpha, temperature, gamma, temperature_power, **kwargs)
        if not isinstance(teacher, keras.Model):
            raise ValueError(f"`teacher` must be a keras.Model; got {type(teacher).__name__}.")
        student_classes, teacher_classes = model.output_shape[-1], teacher.output_shape[-1]
        if student_classes != teacher_classes:
            raise ValueError(
                f"The teacher predicts {teacher_classes} classes but the student {student_classes}."
            )
        teacher.trainable = False
        self.teacher = teacher

    def teacher_logits(self, inputs):
        return self.teacher(inputs, training=False)

    def get_config(self):
        return {**super().get_config(), "teacher": keras.saving.serialize_keras_object(self.teacher)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)

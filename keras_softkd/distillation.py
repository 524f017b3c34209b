"""Distillation as a ``keras.Model``: a student trained towards teacher logits.

:class:`Distiller` is the shared machinery: it wraps a student model, runs the
teachers on every batch in inference mode, and computes the loss with
:func:`keras_softkd.losses.kd` (through :class:`keras_softkd.losses.KDLoss`, so
Keras reduces it and scales it per replica under ``tf.distribute``). Subclasses
only say where the teacher logits come from:

* :class:`KDModel` -- a fixed, pre-trained teacher (Hinton KD, W 4);
* :class:`keras_softkd.MrKDModel` -- memory copies of the student itself,
  refreshed every ``interval`` steps (W Algorithm 1).
* :class:`keras_softkd.PSKDModel` -- the student's own predictions of the
  previous epoch, kept per example (PS-KD; it brings its own ``compute_loss``,
  cross-entropy to a moving target, and reuses the rest).

Because the loss lives in ``compute_loss``, Keras's own ``train_step`` and
``test_step`` do the rest: ``fit``, ``evaluate``, callbacks, mixed precision
(loss scaling) and metrics work as for a plain model.

A student that carries a ``preprocessor`` (a KerasHub ``TextClassifier``) takes
raw inputs, strings or pairs of strings, in ``fit``, ``evaluate`` and
``predict``: the wrapper maps the preprocessor over the input pipeline
(:class:`keras_softkd.preprocessing.RawInputs`). A ``KDModel`` teacher whose
preprocessor differs from the student's (another tokenizer) gets its own tokens:
the wrapper's inputs are then ``{"student": ..., "teacher": ...}``.

* **Training** (``fit``): the distillation loss, and the teacher diagnostics in
  the logs (so in ``history.csv``, TensorBoard and the progress line):
  ``teacher_accuracy`` (the teachers' top-1 accuracy on the training batches),
  ``teacher_top_probability`` (their mean top probability at the distillation
  temperature, before any teacher correction), and for MrKD
  ``teaching_copies`` (how many copies teach, averaged over the epoch's steps).
  They come from the teacher logits the step computes anyway: no extra
  forward pass. An epoch in which no teacher taught reports NaN for the first
  two.
* **Evaluation** (``evaluate``, the per-epoch validation): the student alone,
  at the student's cost: its cross-entropy is the loss (so ``val_loss`` is the
  NLL that methods are compared on) and no teacher runs.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from keras_softkd import _checks, losses
from keras_softkd.losses import KDLoss
from keras_softkd.teacher_network import TeacherNetwork
from keras_softkd.preprocessing import (
    RawInputs,
    has_preprocessor,
    preprocess,
    same_preprocessing,
)


class Distiller(RawInputs, keras.Model):
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
        # Evaluation: the student's cross-entropy (LSR with a = 0 is CE(p, q(1)); integer or
        # one-hot labels), reduced as Keras reduces any loss (sample weights, replicas).
        self.student_loss = losses.LSRLoss(alpha=0.0, name="cross_entropy")
        self.teacher_accuracy = MeanOrNaN(name="teacher_accuracy")
        self.teacher_top_probability = MeanOrNaN(name="teacher_top_probability")
        self._evaluating = False

    @property
    def student(self) -> keras.Model:
        """The model being trained (save this one for deployment).

        The wrapper compiles itself, not the student: the student's own ``evaluate`` or
        ``fit`` needs its own ``compile`` first, e.g. ``student.compile(loss=
        keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])``
        (``evaluate`` on the wrapper runs the student alone without it). Compiling the student
        here would add its optimizer to the wrapper's checkpoints.
        """
        return self.model

    @property
    def preprocessor(self):
        """The student's preprocessor (a KerasHub task's), or ``None``."""
        return getattr(self.model, "preprocessor", None)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """Raw inputs to the wrapper's inputs, in the input pipeline (see ``RawInputs``)."""
        return preprocess(self.model, x, y, sample_weight)

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def teacher_logits(self, inputs):
        """Logits of the teachers on ``inputs``: ``(batch, K)`` or ``(n, batch, K)``."""
        raise NotImplementedError

    def teaching(self):
        """How many teachers teach at this step (the first ``m``), or ``None`` for all."""
        return None

    def _teacher_metrics(self) -> list:
        return [self.teacher_accuracy, self.teacher_top_probability]

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
        """Training: the distillation loss (and the teacher diagnostics). Evaluation:
        the student's cross-entropy, without running any teacher."""
        if training:
            teacher = ops.stop_gradient(self.teacher_logits(x))
            teaching = self.teaching()
            self._update_teacher_metrics(y, teacher, teaching, sample_weight)
            targets = {"labels": y, "teacher_logits": teacher}
            if teaching is not None:
                targets["teaching"] = teaching
            loss = self.distillation_loss(targets, y_pred, sample_weight)
        else:
            loss = self.student_loss(y, y_pred, sample_weight)
        for extra in self.losses:  # the student's regularisation losses, if any
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def _update_teacher_metrics(self, labels, teacher_logits, teaching, sample_weight):
        """Top-1 accuracy and mean top probability at ``t`` of the teachers that teach."""
        logits = ops.cast(teacher_logits, "float32")
        if len(logits.shape) == 2:
            logits = logits[None]
        num_teachers = logits.shape[0]
        one_hot, _ = _checks.one_hot_labels(labels, logits[0])
        correct = ops.cast(
            ops.equal(ops.argmax(logits, axis=-1), ops.argmax(one_hot, axis=-1)[None]), "float32"
        )
        temperature = self.distillation_loss.temperature
        top = ops.exp(ops.max(ops.log_softmax(logits / temperature, axis=-1), axis=-1))
        weight = ops.ones_like(correct)
        if teaching is not None:
            used = ops.arange(num_teachers, dtype="float32") < ops.cast(teaching, "float32")
            weight = weight * ops.cast(used, "float32")[:, None]
        if sample_weight is not None:
            weight = weight * ops.cast(ops.reshape(sample_weight, (1, -1)), "float32")
        # Flat: every (teacher, example) pair counts once. Keras's Mean would first average a
        # 2-D input over its last axis, making a short batch (the last, or a replica's share)
        # count as much as a full one.
        weight = ops.reshape(weight, (-1,))
        self.teacher_accuracy.update_state(ops.reshape(correct, (-1,)), sample_weight=weight)
        self.teacher_top_probability.update_state(ops.reshape(top, (-1,)), sample_weight=weight)

    def test_step(self, *args):
        """Keras's own ``test_step``; the teacher diagnostics stay out of its logs."""
        self._evaluating = True
        try:
            return super().test_step(*args)
        finally:
            self._evaluating = False

    def get_metrics_result(self):
        logs = super().get_metrics_result()
        if self._evaluating:  # no teacher ran: leave them out of val_* and evaluate()
            for metric in self._teacher_metrics():
                logs.pop(metric.name, None)
        return logs

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

    @classmethod
    def from_config(cls, config):  # a subclass's config holds the student, serialised
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


class MeanOrNaN(keras.metrics.Mean):
    """``keras.metrics.Mean``, but NaN (not 0) when nothing was counted.

    An epoch in which no teacher taught has no teacher accuracy; 0 would read
    as a teacher that is always wrong.
    """

    def result(self):
        return ops.where(
            self.count > 0, self.total / ops.maximum(self.count, 1e-12), float("nan")
        )


@keras.saving.register_keras_serializable(package="keras_softkd")
class KDModel(Distiller):
    """Knowledge distillation from a fixed, pre-trained teacher (Hinton, W 4).

    ``(1-a) CE(p, q(1)) + a t^2 KL(qT(t) || q(t))``, ``qT`` the teacher's
    tempered softmax in inference mode. The teacher is frozen and can have any
    architecture with the student's number of classes.

    ``teacher_precision="bfloat16"`` runs the teacher's weights through a bfloat16
    clone of its layers (:class:`keras_softkd.teacher_network.TeacherNetwork`; float32
    logits); ``"same"`` (default) calls the teacher as it is.

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
        teacher_precision: str = "same",
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
        self.teacher_precision = teacher_precision
        self._teacher_network = TeacherNetwork(teacher, teacher_precision)
        # A teacher with preprocessing of its own gets its own tokens of the raw inputs: the
        # inputs are then {"student": ..., "teacher": ...}.
        self._teacher_tokens = (
            has_preprocessor(model)
            and has_preprocessor(teacher)
            and not same_preprocessing(model.preprocessor, teacher.preprocessor)
        )

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """Raw inputs to the wrapper's: the student's tokens, and the teacher's own tokens when
        it preprocesses otherwise, or the teacher's logits when ``x`` carries them
        (:func:`keras_softkd.preprocessing.with_teacher_logits`)."""
        precomputed = isinstance(x, dict) and "teacher_logits" in x
        if not (precomputed or self._teacher_tokens):
            return super().preprocess_samples(x, y, sample_weight)
        raw = x["raw"] if precomputed else x
        student, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
            preprocess(self.model, raw, y, sample_weight)
        )
        if precomputed:
            inputs = {"student": student, "teacher_logits": x["teacher_logits"]}
        else:
            teacher = keras.utils.unpack_x_y_sample_weight(preprocess(self.teacher, raw))[0]
            inputs = {"student": student, "teacher": teacher}
        return keras.utils.pack_x_y_sample_weight(inputs, y, sample_weight)

    def call(self, inputs, training=False):
        return super().call(_part(inputs, "student", inputs), training)

    def teacher_logits(self, inputs):
        if _part(inputs, "teacher_logits") is not None:
            return inputs["teacher_logits"]
        inputs = _part(inputs, "teacher", inputs)
        if self.teacher_precision == "same":
            return self.teacher(inputs, training=False)
        return self._teacher_network.logits(
            self.teacher.trainable_variables, self.teacher.non_trainable_variables, inputs
        )

    def get_config(self):
        return {
            **super().get_config(),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "teacher_precision": self.teacher_precision,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


def _part(inputs, key: str, default=None):
    """``inputs[key]`` of the wrapper's inputs ``{"student": ..., "teacher": ...}`` (a model's
    own inputs never use these keys), or ``default``."""
    return inputs[key] if isinstance(inputs, dict) and key in inputs else default

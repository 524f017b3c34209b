"""Class-wise self-knowledge distillation (CS-KD, Yun et al., CVPR 2020) as a ``keras.Model``.

Each training example (the *anchor*) comes with a *partner*: another training
image of the same class, drawn uniformly with replacement (possibly the anchor
itself), independently augmented. The student learns from its own prediction
on the partner::

    L = (1/B) sum_i CE(y_i, softmax(z_i))
        + lam * t^2 * (1/B) sum_i KL(softmax(z'_i / t) || softmax(z_i / t))

``z_i`` the anchor's logits, ``z'_i`` the partner's, held constant
(:func:`keras_softkd.losses.cs_kd`). Reference: alinlab/cs-kd @ b447f25 --
the sampler ``PairBatchSampler`` (datasets.py l.9-37), the loss ``KDLoss`` and
the step (train.py l.95-107, l.130-140); docs/REFERENCE_CODE.md section 2.

How it maps onto Keras:

* The pairs come from the input pipeline
  (``keras_softkd.data.training_input(..., inputs="pairs")``): batches
  ``({"images": anchors, "partners": partners}, labels)``, two ``(B, ...)``
  tensors, so ``tf.distribute`` and ``keras.distribution`` split anchors and
  their partners together.
* The step is :class:`keras_softkd.Distiller`'s (Keras's own ``train_step``):
  the forward pass ``self(x, training=True)`` runs the student on the anchors,
  with gradient; the loss then runs it on the partners, **in training mode**,
  under ``stop_gradient``. As in the reference (``net.train()`` with
  ``torch.no_grad()``, two separate forwards of B images each, anchors first),
  **BatchNorm normalises the partners with the partners' own batch statistics
  and updates its moving averages a second time in the same step**: after a
  step the moving statistics are those of two successive training-mode
  updates, anchors then partners. A concatenated 2B forward, or the partners
  in inference mode, would change the BatchNorm behaviour; neither is done.
* ``fit`` logs the partner predictions as the teacher diagnostics:
  ``teacher_accuracy`` (the partners' top-1 accuracy: same class as the
  anchor) and ``teacher_top_probability`` (their mean top probability at
  ``t``). They come from the partner logits the step computes anyway.
* ``evaluate`` and ``predict`` take plain images (or the same dict) and run
  the student alone; ``evaluate``'s loss is the student's cross-entropy.

Cost: two forward passes per step (B anchors with gradient, B partners
without), one backward pass.
"""

from __future__ import annotations

import keras

from keras_softkd.distillation import Distiller
from keras_softkd.losses import CSKDLoss

#: The keys of a training batch's images (``keras_softkd.data.training_input(inputs="pairs")``).
ANCHORS, PARTNERS = "images", "partners"


@keras.saving.register_keras_serializable(package="keras_softkd")
class CSKDModel(Distiller):
    """Wraps a classifier for class-wise self-knowledge distillation (CS-KD, Yun et al. 2020).

    Loss: ``CE(p, q(1)) + lam t^2 KL(softmax(z'/t) || q(t))`` per anchor,
    batch mean (:func:`keras_softkd.losses.cs_kd`), ``z'`` the student's own
    logits on a same-class partner, in training mode, without gradient (see
    the module docstring for BatchNorm). Training batches are
    ``({"images": anchors, "partners": partners}, labels)``; evaluation and
    prediction take plain images.

    Args:
        model: the student, a ``keras.Model`` returning logits ``(batch, K)``.
        temperature: ``t > 0`` (reference: 4).
        lam: ``lambda >= 0``, the weight of the KL term (reference: 1 on
            CIFAR, 3 on the fine-grained data sets).

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import CSKDModel
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> cskd = CSKDModel(student, temperature=4.0, lam=1.0)
        >>> cskd.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
        >>> x = {"images": np.ones((8, 4)), "partners": np.ones((8, 4))}
        >>> history = cskd.fit(x, np.zeros(8, "int32"), batch_size=4, verbose=0)
        >>> sorted(history.history)
        ['loss', 'sparse_categorical_accuracy', 'teacher_accuracy', 'teacher_top_probability']
        >>> cskd.predict(np.ones((2, 4)), verbose=0).shape  # the student alone
        (2, 3)
    """

    def __init__(self, model: keras.Model, temperature: float = 4.0, lam: float = 1.0, **kwargs):
        super().__init__(model, alpha=0.0, temperature=temperature, **kwargs)
        # The partner plays the teacher: Distiller hands its logits to the loss as teacher_logits.
        self.distillation_loss = CSKDLoss(temperature=temperature, lam=lam)
        # The wrapper has no weights of its own: built with the student, so a checkpoint
        # (experiment.EpochCheckpoint, load_weights) restores into it before any fit.
        self.built = model.built

    @property
    def temperature(self) -> float:
        return self.distillation_loss.temperature

    @property
    def lam(self) -> float:
        return self.distillation_loss.lam

    def call(self, inputs, training=False):
        """The student on the anchors (a training batch's dict) or on plain images."""
        return self.model(_anchors(inputs), training=training)

    def teacher_logits(self, inputs):
        """The student's logits on the partners, in training mode (BatchNorm: the partners'
        batch statistics, and a second moving-average update). The caller stops the gradient."""
        if not isinstance(inputs, dict) or PARTNERS not in inputs:
            raise ValueError(
                "CSKDModel trains on batches ({'images': anchors, 'partners': partners}, labels): "
                "use keras_softkd.data.training_input(..., inputs='pairs'); got "
                f"{sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__}."
            )
        if keras.backend.backend() == "torch":  # no autograd graph for a forward without gradient
            import torch

            with torch.no_grad():
                return self.model(inputs[PARTNERS], training=True)
        return self.model(inputs[PARTNERS], training=True)

    def get_config(self):
        return {
            **keras.Model.get_config(self),
            "model": keras.saving.serialize_keras_object(self.model),
            "temperature": self.temperature,
            "lam": self.lam,
        }


def _anchors(inputs):
    if isinstance(inputs, dict):
        if ANCHORS not in inputs:
            raise ValueError(
                f"A CS-KD batch's images are under {ANCHORS!r} (and the partners under "
                f"{PARTNERS!r}); got the keys {sorted(inputs)}."
            )
        return inputs[ANCHORS]
    return inputs

"""Progressive self-knowledge distillation (PS-KD, Kim et al., ICCV 2021) as a ``keras.Model``.

The student of the previous epoch teaches: every example's softmax prediction
is kept in an ``N x K`` table, and at (0-based) epoch ``e`` of ``E`` the target
of example ``i`` is ::

    alpha_e = alpha_T (e + 1) / E
    target  = (1 - alpha_e) y_i + alpha_e P_i      (y_i one-hot; epoch 0: target = y_i)
    loss    = mean over the batch of  -sum_k target_k log softmax(z_i)_k
    P_i    := softmax(z_i)                          (after the step, from this step's forward)

exactly as the reference code computes it (lgcnsai/PS-KD-Pytorch @ 9aa0828,
``main.py`` l.279, 323-324, 422-432, 467 and ``loss/pskd_loss.py`` l.18-19;
docs/REFERENCE_CODE.md section 1): temperature 1; ``P_i`` from the training-mode
forward pass on that epoch's augmented image, with the weights before the
step's update; nothing else is recomputed; at epoch 0 the table's rows are
overwritten by the one-hot labels before use, so the target is the label.

How it maps onto Keras:

* The table is a non-trainable variable of :class:`PSKDModel` (float32 by
  default, as the reference; ``table_dtype="float16"`` or ``"bfloat16"``
  halves it): ``N K`` numbers, 50000 x 100 x 4 B = 20 MB on CIFAR-100 (10 MB in
  16 bits), held on the device. It is part of the model's weights, so
  checkpoints (``experiment.EpochCheckpoint``, ``BackupAndRestore``) and
  ``.keras`` files carry it.
* Each training batch carries its examples' rows in the training set:
  ``(images, {"labels": y, "index": i})``, as
  ``keras_softkd.data.training_input(..., inputs="indices")`` yields it.
  Evaluation batches are plain ``(images, labels)``.
* The epoch is ``step // steps_per_epoch`` with ``step`` a counter variable of
  the model (checkpointed; exact with ``steps_per_execution > 1`` and after a
  resume). The model's own counter, not the optimizer's ``iterations``: under
  ``mixed_float16`` the loss-scale optimizer does not count a step it skips
  for an overflow, and the epoch must follow the batches.
* The loss, the read of the table and the write of the new rows all happen in
  ``compute_loss``, so Keras's own ``train_step`` does the rest on every
  backend: on JAX (stateless step) the writes land in the step's new state;
  under ``tf.distribute`` the replicas' rows and predictions are all-gathered
  and written once, in cross-replica context, to every replica's copy of the
  table; on PyTorch an in-place row copy.
* ``evaluate`` and the validation run the student alone with its
  cross-entropy as the loss (as :class:`~keras_softkd.distillation.Distiller`).
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from keras_softkd import _checks
from keras_softkd._replicas import run_once_across_replicas
from keras_softkd.distillation import Distiller
from keras_softkd.past_weights import step_counter

TABLE_DTYPES = ("float32", "float16", "bfloat16")


@keras.saving.register_keras_serializable(package="keras_softkd")
class PSKDModel(Distiller):
    """Wraps a classifier for progressive self-knowledge distillation (PS-KD).

    Loss at 0-based epoch ``e``: ``CE((1 - a_e) y + a_e P, softmax(z))`` with
    ``a_e = alpha (e + 1) / epochs`` and ``P`` the example's prediction stored
    at its previous visit (the previous epoch); ``a_0 = 0`` in effect (the
    reference overwrites the table with the labels in epoch 0), and a row not
    yet written (an example no epoch has visited so far) counts as the label.
    ``a_e`` stops at ``alpha`` if training runs past ``epochs``.

    ``fit`` needs batches ``(x, {"labels": y, "index": i})`` where ``i`` are
    the examples' rows in ``[0, num_examples)``, each example once per epoch
    (``keras_softkd.data.training_input(..., inputs="indices")``). ``fit`` logs
    ``teacher_accuracy`` and ``teacher_top_probability`` (top-1 accuracy and
    mean top probability of the stored rows used as targets; NaN in epoch 0,
    when none are) and ``alpha_t`` (``a_e`` averaged over the epoch's steps).
    ``evaluate`` and ``predict`` run the student alone.

    Source: lgcnsai/PS-KD-Pytorch @ 9aa0828, ``main.py`` l.279 (the table),
    l.323-324 (``alpha_t``), l.422-426 (target), l.431-432 and 467 (the write),
    ``loss/pskd_loss.py`` l.18-19 (the loss); docs/REFERENCE_CODE.md section 1.

    Args:
        model: the student, a built ``keras.Model`` returning logits ``(batch, K)``.
        num_examples: ``N``, the training set's size (the table's rows).
        alpha: ``alpha_T`` in ``[0, 1]``, the weight of the stored predictions
            at the last epoch (reference: 0.8 on CIFAR-100).
        epochs: ``E``, the run's number of epochs.
        steps_per_epoch: batches per epoch (``fit``'s ``steps_per_epoch``).
        table_dtype: ``"float32"`` (the reference's), ``"float16"`` or
            ``"bfloat16"`` (half the memory; the rows are rounded).

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import PSKDModel
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> pskd = PSKDModel(student, num_examples=32, alpha=0.8, epochs=2, steps_per_epoch=8)
        >>> pskd.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
        >>> x, y = np.ones((32, 4), "float32"), np.arange(32) % 3
        >>> history = pskd.fit(x, {"labels": y, "index": np.arange(32)}, batch_size=4,
        ...                    epochs=2, verbose=0)
        >>> int(pskd.step.numpy()), tuple(pskd.table.shape)
        (16, (32, 3))
        >>> student.save("/tmp/student.keras")  # the trained student alone
    """

    def __init__(
        self,
        model: keras.Model,
        num_examples: int,
        alpha: float = 0.8,
        epochs: Optional[int] = None,
        steps_per_epoch: Optional[int] = None,
        table_dtype: str = "float32",
        **kwargs,
    ):
        for key in ("temperature", "gamma", "temperature_power"):  # Distiller's, in a config
            kwargs.pop(key, None)
        super().__init__(model, alpha=alpha, temperature=1.0, **kwargs)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
        self.num_examples = _checks.positive_int("num_examples", num_examples)
        if epochs is None or steps_per_epoch is None:
            raise ValueError(
                "PSKDModel needs `epochs` (E of alpha_t = alpha (t / E)) and `steps_per_epoch` "
                "(the batches of one epoch, to tell the epoch from the step counter)."
            )
        self.epochs = _checks.positive_int("epochs", epochs)
        self.steps_per_epoch = _checks.positive_int("steps_per_epoch", steps_per_epoch)
        if table_dtype not in TABLE_DTYPES:
            raise ValueError(f"`table_dtype` must be one of {TABLE_DTYPES}; got {table_dtype!r}.")
        self.table_dtype = table_dtype
        if not model.built:
            raise ValueError(
                "PSKDModel needs a built `model` (the table has its K columns): give it an "
                "Input, or call it once on a batch, before wrapping it."
            )
        self.num_classes = int(model.output_shape[-1])
        self.loss_on_targets = keras.losses.CategoricalCrossentropy(from_logits=True, name="pskd")
        self.alpha_t = keras.metrics.Mean(name="alpha_t")
        self.table = self.add_weight(
            shape=(self.num_examples, self.num_classes),
            dtype=table_dtype,
            initializer="zeros",
            trainable=False,
            autocast=False,
            name="pskd_table",
            aggregation="only_first_replica",
        )
        self.step = step_counter(self, "pskd_step")
        self.built = True  # the student is built and the table exists

    # -- the reference's rule -------------------------------------------------

    def epoch(self):
        """The 0-based epoch of the coming step: ``step // steps_per_epoch``."""
        return ops.floor_divide(self.step, self.steps_per_epoch)

    def weight_of_predictions(self, epoch):
        """``a_e``: 0 at epoch 0 (the target is the label), else ``min(alpha (e+1) / E, alpha)``."""
        epoch = ops.cast(epoch, "float32")
        ramp = ops.minimum(self.alpha * (epoch + 1.0) / self.epochs, self.alpha)
        return ops.where(epoch > 0, ramp, 0.0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Training: CE to the progressive target, then this forward's softmax into the table.
        Evaluation: the student's cross-entropy."""
        if not training:
            return super().compute_loss(x, _labels(y), y_pred, sample_weight, training=False)
        if not isinstance(y, dict) or set(y) != {"labels", "index"}:
            raise ValueError(
                "PSKDModel trains on batches (x, {'labels': y, 'index': i}), i each example's row "
                "in the training set (keras_softkd.data.training_input(..., inputs='indices')); "
                f"got targets {type(y).__name__}{sorted(y) if isinstance(y, dict) else ''}."
            )
        index = ops.reshape(ops.cast(y["index"], "int32"), (-1,))
        logits = _checks.as_float32(y_pred)
        one_hot, _ = _checks.one_hot_labels(y["labels"], logits)
        epoch = self.epoch()
        weight = self.weight_of_predictions(epoch)
        stored = self._read_rows(index)
        # A row never written (an example left out of every epoch so far, e.g. by the cut of a
        # last batch over several JAX devices) counts as the label, as epoch 0's rows do.
        written = ops.sum(stored, axis=-1) > 0
        previous = ops.where(written[:, None], stored, one_hot)
        target = ops.stop_gradient((1.0 - weight) * one_hot + weight * previous)
        loss = self.loss_on_targets(target, y_pred, sample_weight)
        self._update_table_metrics(one_hot, previous, written & (epoch > 0), weight, sample_weight)
        self._write_rows(index, ops.stop_gradient(ops.softmax(logits, axis=-1)), stored)
        for extra in self.losses:  # the student's regularisation losses, if any
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, _labels(y), y_pred, sample_weight)

    def _update_table_metrics(self, one_hot, previous, used, weight, sample_weight):
        used = ops.cast(used, "float32")
        if sample_weight is not None:
            used = used * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        correct = ops.equal(ops.argmax(previous, axis=-1), ops.argmax(one_hot, axis=-1))
        self.teacher_accuracy.update_state(ops.cast(correct, "float32"), sample_weight=used)
        self.teacher_top_probability.update_state(ops.max(previous, axis=-1), sample_weight=used)
        self.alpha_t.update_state(weight)

    def _teacher_metrics(self) -> list:
        return [*super()._teacher_metrics(), self.alpha_t]

    # -- the table -------------------------------------------------------------

    def _read_rows(self, index):
        """``table[index]`` in float32. TensorFlow: a gather from the variable (``sparse_read``),
        not a read of the whole table, which would make the write copy it (20 MB a step)."""
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.cast(tf.gather(self.table.value, index), tf.float32)
        return ops.cast(ops.take(self.table, index, axis=0), "float32")

    def _write_rows(self, index, probabilities, stored):
        """``table[index] := probabilities`` for the whole batch (all replicas), and count the step."""
        backend = keras.backend.backend()
        probabilities = ops.cast(probabilities, self.table_dtype)
        if backend == "tensorflow":
            index, probabilities = _gather_replicas(index, probabilities)
            run_once_across_replicas(lambda: self._tf_write(index, probabilities))
        elif backend == "torch":
            import torch

            with torch.no_grad():
                self.table.value.index_copy_(0, index.long(), probabilities)
            self.step.assign(self.step + 1)
        else:  # JAX: inside the step's stateless scope, these become the new state
            # "+ 0 stored" orders the write after the read: without it XLA copies the whole
            # table to keep the read's values (60 ms a step for 200000 x 100 on a CPU).
            probabilities = probabilities + ops.cast(0 * stored, self.table_dtype)
            self.table.assign(ops.scatter_update(self.table.value, index[:, None], probabilities))
            self.step.assign(self.step + 1)

    def _tf_write(self, index, probabilities):
        import tensorflow as tf

        self.table.value.scatter_update(tf.IndexedSlices(probabilities, index))
        self.step.assign_add(1)

    # -- saving ----------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        for key in ("temperature", "gamma", "temperature_power"):
            config.pop(key, None)
        return {
            **config,
            "num_examples": self.num_examples,
            "alpha": self.alpha,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "table_dtype": self.table_dtype,
        }


def _labels(y):
    """The labels of a batch's targets (a training batch's ``{"labels", "index"}`` or plain labels)."""
    return y["labels"] if isinstance(y, dict) else y


def _gather_replicas(*tensors):
    """Under ``tf.distribute`` with several replicas: each tensor concatenated over the replicas
    (replica context), so that one write puts every replica's rows into every copy."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return tuple(context.all_gather(tensor, axis=0) for tensor in tensors)

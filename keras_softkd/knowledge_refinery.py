"""Knowledge Refinery (KR-LS; Ding et al., AAAI 2021, "Knowledge Refinery: Learning from
Decoupled Label") as a ``keras.Model``.

The label is *decoupled* into the hard label (one-hot) and a *residual label*:
a distribution over the ``K - 1`` classes other than the true one, read from a
``K x K`` *residual correlation matrix* ``S`` that is learned on the fly beside
the network. The paper's Algorithm 1, per mini-batch (``k`` each example's
label, ``beta`` the learning rate)::

    S <- 0                                   (l.1)
    z = f(x);  p = softmax(z)                (l.3-4)
    L_hard = CE(p, y)                        (l.5)
    p_res = softmax(z without entry k)       (l.6-7)
    q_res = softmax(S_k without entry k)     (l.8)
    L_upd = KL(q_res || p_res)               (l.9,  gradient to S only)
    L_res = KL(p_res || q_res)               (l.10, gradient to the network only)
    theta <- theta - beta grad_theta (L_hard + alpha L_res)       (l.11)
    S     <- S     - beta alpha grad_S L_upd                      (l.12)

There is no public code; the paper's text beyond Algorithm 1 was not
reachable here (docs/REFERENCE_CODE.md, "KR-LS"). Where Algorithm 1 is silent
this implementation decides (docs/METHODS.md, "KR-LS"):

* **Batch reduction.** Every loss is the batch mean (Keras's
  ``sum_over_batch_size``), ``L_upd`` too: the matrix gradient is
  ``(1/B) sum_i e_{k_i} (d L_upd,i / d S_{k_i})`` over the global batch
  (all replicas), closed form :func:`keras_softkd.losses.kr_ls_row_gradient`.
* **The matrix step.** A plain gradient step ``S -= beta alpha G`` (l.12 read
  literally): no momentum, no weight decay on ``S``; ``beta`` is the
  optimizer's learning rate of this step (its schedule at the model's own step
  counter, which also counts a step the ``mixed_float16`` loss-scale optimizer
  skips: the matrix step needs no gradient and is taken anyway; a constant
  rate as the optimizer holds it, on JAX as ``compile`` found it). The
  network's step is the optimizer's (momentum, weight decay), as for every
  method here.
* **Which predictions.** This step's training-mode forward, with the weights
  before the step; ``L_res`` reads ``S`` before its update, so the network and
  the matrix move simultaneously from the same forward (l.11 and l.12 use the
  same quantities).
* **Diagonal.** ``S_kk`` is never read (the residual label leaves the true
  class out) and its gradient is 0: it stays at 0.
* **No temperature** (Algorithm 1 has none) and ``S``'s rows are logits
  (``q_res = softmax(S_k)``), not normalised probabilities.
* ``alpha`` default 1 (the unweighted sum of Algorithm 1's two losses; the
  paper's CIFAR value was not found).

How it maps onto Keras:

* ``S`` is a non-trainable float32 variable ``(K, K)`` of :class:`KRLSModel`
  (``matrix``), so checkpoints and ``.keras`` files carry it, with a step
  counter ``step`` (for the learning-rate schedule). Under ``tf.distribute``
  every replica's ``(K, K)`` gradient sum and batch size are summed across
  replicas (``all_reduce``) and the update is written once, in cross-replica
  context, to every replica's copy; on JAX the update is part of the step's
  new state (``keras.distribution`` sums over the global batch itself); on
  PyTorch an in-place assign.
* Training batches are plain ``(images, labels)``.
* ``fit`` logs the teacher diagnostics of the residual label ``q_res``:
  ``teacher_top_probability`` (its mean top probability; ``1/(K-1)`` while
  ``S`` is 0) and ``teacher_accuracy`` (how often its top class is the
  student's own top non-label class, i.e. the runner-up the row predicts;
  the residual label has no true class to be accurate on).
* ``evaluate`` and ``predict`` run the student alone (its cross-entropy is
  the loss), as :class:`~keras_softkd.distillation.Distiller`.

Cost: one ``(B, K) x (K, K)`` product to read the rows and one ``(K, B) x
(B, K)`` for the gradient; ``K^2`` floats of state (40 kB on CIFAR-100).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_softkd import _checks, losses
from keras_softkd._replicas import run_once_across_replicas
from keras_softkd.distillation import Distiller
from keras_softkd.past_weights import step_counter


@keras.saving.register_keras_serializable(package="keras_softkd")
class KRLSModel(Distiller):
    """Wraps a classifier for Knowledge Refinery (KR-LS, Ding et al. 2021, Algorithm 1).

    Loss: ``CE(p, q(1)) + alpha KL(p_res || softmax(S_k)_res)`` per example,
    batch mean (:func:`keras_softkd.losses.kr_ls`); after each training step's
    forward, ``S -= lr * alpha * mean_i e_{k_i} grad_{S_k} KL(q_res || p_res)``
    (:func:`keras_softkd.losses.kr_ls_row_gradient`). See the module docstring
    for every choice Algorithm 1 leaves open.

    ``fit`` takes plain ``(x, labels)`` batches and logs
    ``teacher_accuracy`` and ``teacher_top_probability`` (of the residual
    label; module docstring). ``evaluate`` and ``predict`` run the student alone.

    Args:
        model: the student, a built ``keras.Model`` returning logits ``(batch, K)``, ``K >= 2``.
        alpha: the weight ``alpha >= 0`` of the residual loss, which also scales
            the matrix's learning rate (Algorithm 1 l.11-12).

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import KRLSModel
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> krls = KRLSModel(student, alpha=1.0)
        >>> krls.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
        >>> x, y = np.ones((8, 4), "float32"), np.arange(8) % 3
        >>> history = krls.fit(x, y, batch_size=4, epochs=1, verbose=0)
        >>> tuple(krls.matrix.shape), int(krls.step.numpy())
        ((3, 3), 2)
    """

    def __init__(self, model: keras.Model, alpha: float = 1.0, **kwargs):
        for key in ("temperature", "gamma", "temperature_power"):  # Distiller's, in a config
            kwargs.pop(key, None)
        super().__init__(model, alpha=0.0, temperature=1.0, **kwargs)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, float("inf"))
        if not model.built:
            raise ValueError(
                "KRLSModel needs a built `model` (the matrix is K x K): give it an Input, or "
                "call it once on a batch, before wrapping it."
            )
        self.num_classes = int(model.output_shape[-1])
        if self.num_classes < 2:
            raise ValueError(f"KR-LS needs K >= 2 classes; the model predicts {self.num_classes}.")
        self.residual_loss = losses.KRLSLoss(alpha=self.alpha)
        self.matrix = self.add_weight(
            shape=(self.num_classes, self.num_classes),
            dtype="float32",
            initializer="zeros",  # Algorithm 1 l.1
            trainable=False,
            autocast=False,
            name="krls_matrix",
            aggregation="only_first_replica",
        )
        self.step = step_counter(self, "krls_step")
        self.built = True

    # -- the step -----------------------------------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Training: ``L_hard + alpha L_res``, then the matrix step. Evaluation: the student's CE."""
        if not training:
            return super().compute_loss(x, y, y_pred, sample_weight, training=False)
        logits = _checks.as_float32(y_pred)
        one_hot, _ = _checks.one_hot_labels(y, logits)
        # Each example's row S_k, read before this step's update (float32, no gradient).
        rows = ops.stop_gradient(ops.matmul(one_hot, ops.convert_to_tensor(self.matrix)))
        loss = self.residual_loss({"labels": y, "teacher_logits": rows}, y_pred, sample_weight)
        self._update_residual_metrics(one_hot, logits, rows, sample_weight)
        gradient = losses.kr_ls_row_gradient(one_hot, ops.stop_gradient(logits), rows)
        if sample_weight is not None:
            gradient = gradient * ops.cast(ops.reshape(sample_weight, (-1, 1)), "float32")
        # (K, K): the row gradients summed into their labels' rows; and the batch size.
        total = ops.matmul(ops.transpose(one_hot), gradient)
        count = ops.cast(ops.shape(one_hot)[0], "float32")
        self._update_matrix(total, count)
        for extra in self.losses:  # the student's regularisation losses, if any
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def learning_rate(self):
        """``beta`` of Algorithm 1: the optimizer's learning rate at this step (a schedule is
        evaluated at the model's step counter: the optimizer's own counter is not part of a
        JAX step's state here, and would be read as a constant)."""
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        rate = optimizer._learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(rate(self.step), "float32")
        if callable(rate):
            return ops.cast(rate(), "float32")
        if keras.backend.backend() == "jax":
            # The optimizer's variables are outside the loss's stateless scope on JAX (and
            # their values are moved out of the variables during fit): the constant rate as
            # compile() found it (a callback that changes it mid-fit does not reach the matrix).
            return ops.convert_to_tensor(self._compiled_rate, "float32")
        return ops.cast(ops.convert_to_tensor(rate), "float32")

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        rate = inner._learning_rate
        schedule = isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)
        self._compiled_rate = None if schedule or callable(rate) else float(
            ops.convert_to_numpy(rate)
        )

    def _update_matrix(self, total, count):
        """``S -= lr alpha total / count``, with ``total`` and ``count`` summed over replicas."""
        rate = self.learning_rate() * self.alpha
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])

            def update():
                self.matrix.assign_sub(rate * total / count)
                self.step.assign_add(1)

            run_once_across_replicas(update)
        else:
            self.matrix.assign(self.matrix.value - rate * total / count)
            self.step.assign(self.step + 1)

    def _update_residual_metrics(self, one_hot, logits, rows, sample_weight):
        row = losses.residual_log_softmax(rows, one_hot)
        student = losses.residual_log_softmax(ops.stop_gradient(logits), one_hot)
        agree = ops.cast(ops.equal(ops.argmax(row, axis=-1), ops.argmax(student, axis=-1)), "float32")
        weight = None if sample_weight is None else ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        self.teacher_accuracy.update_state(agree, sample_weight=weight)
        self.teacher_top_probability.update_state(ops.exp(ops.max(row, axis=-1)), sample_weight=weight)

    # -- saving -------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        for key in ("temperature", "gamma", "temperature_power"):
            config.pop(key, None)
        return {**config, "alpha": self.alpha}

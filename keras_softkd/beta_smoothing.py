"""Beta smoothing (Beta-LS, Zhang & Sabuncu, NeurIPS 2020) as a ``keras.Model``.

Instance-specific label smoothing whose per-example prior comes from a
model of the student's own capacity: an exponential moving average of the
student's weights. At every training step, as the reference code computes it
(ZhiluZhang123/neurips_2020_distillation @ f913a07, ``train_smoothing.py``
l.71-72, 84-86, 97-98, 112-118, 143-146; ``loss.py`` l.7-33;
docs/REFERENCE_CODE.md, Beta-LS)::

    teacher = f(x; bar)  in training mode (BatchNorm on the batch's statistics), no gradient
    c_i     = softmax(teacher_i)[y_i]
    b       = B draws from Beta(beta, 1), sorted; example of rank r by c gets b_(r)
    y~_i    = b on y_i, (1 - b) / (K - 1) elsewhere
    loss    = mean_i (1-a) CE(p_i, q_i) - a sum_k y~_ik log(q_ik + 1e-8)
    theta  := SGD step;   g += 1;   r = min(1 - 1/(g+1), lambda);   bar := r bar + (1-r) theta

The average is :class:`keras_softkd.past_weights.Average` (every step, decay
``lambda``), the mechanism MrKD's copies and its weight-averaged teacher use:
updated on the device at the start of the next step, which is the same
sequence (the teacher of step ``t`` has seen ``theta_1 .. theta_(t-1)``).

Where this differs from the reference, and why:

* **The average starts at the student's initial weights**; the reference's
  starts at an independent random initialisation (``ema_model = ResNet(...)``,
  l.71), whose weight in the average is ``1/(g+1)`` (under 1% after 99
  steps). Beta-LS uses only the teacher's *ranking* of the batch, so this
  matters only in the first few dozen steps.
* **The average includes the BatchNorm moving statistics** (the reference
  averages ``parameters()`` only). They are not used: the teacher runs in
  training mode, as the reference's (``ema_model.train()``, l.98).
* **The draws** come from a counter-based generator seeded by ``(seed, t)``,
  on the device (the reference calls ``np.random.beta`` on the host every
  step): the same on every replica and after a resume. ``Beta(beta, 1)`` is
  drawn as ``u^(1/beta)``, ``u`` uniform (its inverse CDF).
* **Ties** in the teacher's confidence are ranked by position in the batch
  (``torch.sort`` on a GPU leaves their order unspecified).
* **Over replicas** (``tf.distribute``) the ranking is over the global batch
  (the confidences are all-gathered) with one set of draws for it, so two
  replicas compute what one device computes on the whole batch; the reference
  ran on one GPU.

``fit`` logs ``teacher_accuracy`` (the average's top-1 accuracy on the
training batches; the reference's ``correct1``), ``teacher_top_probability``
and ``label_weight`` (the mean ``b`` given to the true class).
``evaluate`` and the validation run the student alone.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_softkd import _checks, losses, past_weights, teachers
from keras_softkd.distillation import Distiller, MeanOrNaN
from keras_softkd.past_weights import step_counter


class _StepSeed(keras.random.SeedGenerator):
    """A seed given as a tensor (``(seed, t)``): ``keras.random`` draws from it without state."""

    def __init__(self, value):  # no state variable: nothing to track, checkpoint or sync
        self._value = value

    def next(self, ordered=True):
        return self._value


@keras.saving.register_keras_serializable(package="keras_softkd")
class BetaLSModel(Distiller):
    """Wraps a classifier for Beta smoothing (Beta-LS) from a weight-averaged copy of itself.

    Loss: ``(1-a) CE(p, q) - a sum_k y~_k log(q_k + 1e-8)``, with ``y~`` the
    label smoothed to ``b`` (:func:`keras_softkd.losses.beta_ls`), ``b`` the
    draw from ``Beta(beta, 1)`` matched to the example by the teacher's
    confidence in its label; the teacher an exponential moving average (decay
    ``lam``, Mean Teacher's warm-up) of the student's weights, run in training mode.

    Source: ZhiluZhang123/neurips_2020_distillation @ f913a07,
    ``train_smoothing.py`` l.112-118, 143-146 and ``loss.py`` l.7-33;
    defaults from its ``train_smoothing.py`` (l.20-22: ``--alpha 0.6 --beta 3
    --lamda 0.999``).

    Args:
        model: the student, a built ``keras.Model`` returning logits ``(batch, K)``.
        alpha: weight ``a`` in ``[0, 1]`` of the smoothed term.
        beta: ``> 0``, the ``Beta(beta, 1)`` prior of the label's weight (its
            mean ``beta / (beta + 1)``: 0.75 at 3).
        lam: the average's decay in ``[0, 1)``.
        seed: the draws' seed.

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import BetaLSModel
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> beta_ls = BetaLSModel(student, alpha=0.6, beta=3.0, lam=0.999)
        >>> beta_ls.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
        >>> history = beta_ls.fit(np.ones((32, 4)), np.arange(32) % 3, batch_size=4, verbose=0)
        >>> int(beta_ls.step.numpy())
        8
        >>> student.save("/tmp/student.keras")  # the trained student alone
    """

    def __init__(
        self,
        model: keras.Model,
        alpha: float = 0.6,
        beta: float = 3.0,
        lam: float = 0.999,
        seed: int = 0,
        **kwargs,
    ):
        for key in ("temperature", "gamma", "temperature_power"):  # Distiller's, in a config
            kwargs.pop(key, None)
        super().__init__(model, alpha=alpha, temperature=1.0, **kwargs)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
        self.beta = _checks.positive("beta", beta)
        self.lam = past_weights.check_decay(lam, "lam")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValueError(f"`seed` must be an integer in [0, 2**31); got seed={seed!r}.")
        self.seed = seed
        if not model.built:
            raise ValueError(
                "BetaLSModel needs a built `model` (its weights are averaged): give it an "
                "Input, or call it once on a batch, before wrapping it."
            )
        self.smoothing_loss = losses.BetaLSLoss(alpha=self.alpha)
        self.label_weight = MeanOrNaN(name="label_weight")
        self.average = past_weights.Memory(self, model, "average")
        self._updates = [past_weights.Average(self.average, self.lam, every=1)]
        self.step = step_counter(self, "beta_ls_step")
        self.built = True

    def train_step(self, *args):
        """Update the average (the student after the previous step) and count the step, then
        Keras's own step (:func:`keras_softkd.past_weights.start_step`)."""
        return super().train_step(*past_weights.start_step(self, self._updates, self.step, args))

    def teacher_logits(self, inputs):
        """The average's logits, ``(batch, K)`` float32, in training mode (the reference's)."""
        return self.average.logits(inputs, training=True)

    def draws(self, step, size):
        """``size`` draws from ``Beta(beta, 1)`` for step ``t = step`` (counted from 1), float32."""
        from keras.src.backend import random_seed_dtype  # the backend's seed dtype (not public)

        dtype = random_seed_dtype()
        seed = ops.stack([ops.cast(self.seed, dtype), ops.cast(step, dtype)])
        uniform = keras.random.uniform((size,), dtype="float32", seed=_StepSeed(seed))
        return uniform ** (1.0 / self.beta)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Training: Beta-LS's loss (and the teacher diagnostics). Evaluation: the student's CE."""
        if not training:
            return super().compute_loss(x, y, y_pred, sample_weight, training=False)
        teacher = ops.stop_gradient(self.teacher_logits(x))
        self._update_teacher_metrics(y, teacher, None, sample_weight)
        one_hot, _ = _checks.one_hot_labels(y, teacher)
        confidence = ops.sum(ops.softmax(teacher, axis=-1) * one_hot, axis=-1)
        every, offset = _over_replicas(confidence)
        size = ops.shape(confidence)[0]
        ranks = ops.slice(teachers.confidence_ranks(every), [offset], [size])
        draws = self.draws(self.step.value, ops.shape(every)[0])
        targets = {"labels": y, "teacher_logits": teacher, "draws": draws, "ranks": ranks}
        loss = self.smoothing_loss(targets, y_pred, sample_weight)
        on_label = ops.take(ops.sort(draws), ranks)
        self.label_weight.update_state(on_label, sample_weight=sample_weight)
        for extra in self.losses:  # the student's regularisation losses, if any
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def _teacher_metrics(self) -> list:
        return [*super()._teacher_metrics(), self.label_weight]

    def get_config(self):
        config = super().get_config()
        for key in ("temperature", "gamma", "temperature_power"):
            config.pop(key, None)
        return {**config, "alpha": self.alpha, "beta": self.beta, "lam": self.lam, "seed": self.seed}


def _over_replicas(values):
    """``(values of the global batch, this replica's offset in it)``: under ``tf.distribute`` with
    several replicas, all-gathered in replica order; elsewhere ``(values, 0)`` (on JAX a
    sharded batch is already global)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            sizes = context.all_gather(tf.shape(values)[:1], axis=0)
            before = tf.range(context.num_replicas_in_sync) < context.replica_id_in_sync_group
            offset = tf.reduce_sum(tf.where(before, sizes, 0))
            return context.all_gather(values, axis=0), offset
    return values, 0

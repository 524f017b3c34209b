"""Memory-replay knowledge distillation (MrKD, MrKD-TC): W Algorithm 1 as a ``keras.Model``.

The student learns from ``n`` copies of itself taken every ``kappa`` steps::

    for t = 1 .. T:
        if t % kappa == 0:
            theta_i := theta_(i-1)  for i = n .. 2
            theta_1 := theta
        loss = (1-a) CE(p, q(1)) + a t^2 (1/n) sum_i KL(qhat_i(t) || q(t))     (W 13, 14)
        theta := theta - lr * grad(loss)

**A copy teaches once it remembers something** (docs/METHODS.md, decision).
The copies start equal to the student's initial weights and run in inference
mode, where an untrained network's BatchNorm (moving mean 0, variance 1) does
not normalise: through a deep residual stack the activations grow, and the
initial weights predict one class for every image (ResNet-110: logits up to
1e8 on real CIFAR-10 images). Taken literally, Algorithm 1 distils that
one-class teacher until each copy's first refresh (the first ``kappa`` steps
for all ``n`` copies, ``2 kappa`` for ``n - 1`` ...). So the distillation term
averages over the ``m = min(n, floor(t / kappa))`` copies refreshed by step
``t`` (the newest, ``theta_1 .. theta_m``: copy ``i`` holds the student of the
``i``-th most recent refresh), and with ``m = 0`` the loss is plain
cross-entropy.
``m`` is a function of the saved step counter, hence exact under every
setting below, and a copy that does not teach is not run (a ``cond`` on the
device). ``initial_weights_teach=True`` restores the literal reading (every
copy teaches from step 1) for ablations.

**A weight-averaged teacher** (W's conclusion: "Weight averaging can merge
the current and the historical model to obtain a better teacher like Mean
Teacher"): with ``average_decay``, the student's weights and BatchNorm
statistics are also averaged (``bar := r bar + (1-r) theta``, ``r = min(1 -
1/(g+1), decay)`` after every ``average_interval`` steps;
:class:`keras_softkd.past_weights.Average`), and the average teaches beside the
``n`` copies (``copies=0``: alone), in inference mode, corrected like the
copies under MrKD-TC. It teaches from the step the first copy would (``t >=
kappa``; from step 1 with ``initial_weights_teach``), so ``m`` counts it first.

How the algorithm maps onto Keras: the copies and the average are memories
of :mod:`keras_softkd.past_weights` (non-trainable variables of
:class:`MrKDModel`, one per student variable, trainable weights **and**
BatchNorm moving statistics, checkpointed and saved with it), updated on the
device at the start of each step, keyed on the model's step counter ``t``
(also checkpointed): exact with ``steps_per_execution > 1``, under XLA, under
``tf.distribute`` (all replicas hold identical copies), on JAX (in the step's
state) and PyTorch. A copy's forward pass is ``model.stateless_call(copy
weights, x, training=False)``: the student's own layers, the copy's weights
and moving statistics, no gradients.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from keras_softkd import _checks, past_weights
from keras_softkd.distillation import Distiller
from keras_softkd.teacher_network import TeacherNetwork
from keras_softkd.past_weights import step_counter  # noqa: F401  (kept importable from here)

MRKD_DEFAULTS = {"alpha": 0.1, "temperature": 3.0, "copies": 3}


@keras.saving.register_keras_serializable(package="keras_softkd")
class MrKDModel(Distiller):
    """Wraps a classifier for memory-replay self-distillation (W Algorithm 1).

    Loss: ``(1-a) CE(p, q(1)) + a t^2 (1/m) sum_(i<=m) KL(qhat_i(t) || q(t))``
    (W 13, 14) over the ``m = min(n, floor(t / kappa))`` copies refreshed so
    far, plain ``CE(p, q(1))`` while ``m = 0``; with ``gamma`` MrKD-TC: each
    copy's distribution corrected to ``gamma`` on the true class (W 16) and the
    KL term scaled by ``t`` (W 17).

    ``fit`` logs the teacher diagnostics ``teacher_accuracy``,
    ``teacher_top_probability`` and ``teaching_copies`` per epoch (see
    :mod:`keras_softkd.distillation`); ``evaluate`` and the validation run the
    student alone and report its cross-entropy as the loss.

    Args:
        model: the student, a built ``keras.Model`` returning logits ``(batch, K)``.
        copies: ``n >= 1`` memory copies.
        interval: ``kappa >= 1``, steps between refreshes; required, there is
            no good default independent of the data set size. W's best is 25
            epochs of a 200-epoch run (``interval = 25 * steps_per_epoch``;
            train.py's ``--kappa`` defaults to ``epochs / 8`` epochs); a refresh
            every step is the worst setting of W Figure 3.
        alpha: weight of the KD term, in ``[0, 1]`` (paper: 0.25 on
            CIFAR-100, 0.1 on CIFAR-10).
        temperature: ``t > 0`` (paper: 3).
        gamma: teacher correction in ``[0, 1]`` for MrKD-TC, or ``None``.
        temperature_power: exponent of ``t`` (default: the paper's).
        initial_weights_teach: ``False`` (default): a copy teaches once it has
            been refreshed. ``True``: Algorithm 1 read literally, every copy
            teaches from step 1, the initial weights included (an ablation:
            see the one-class teachers in docs/METHODS.md).
        average_decay: ``None`` (default), or the decay in ``[0, 1)`` of a
            weight-averaged teacher beside the copies (``copies=0``: alone);
            Mean Teacher's 0.999 per step.
        average_interval: steps between the average's updates (1: every step;
            ``interval``: at the copies' pace).
        teacher_precision: ``"same"`` (default: the copies and the average run in the
            student's precision) or ``"bfloat16"`` (they run through a bfloat16 clone of the
            student's layers, :class:`keras_softkd.teacher_network.TeacherNetwork`; float32 logits).

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd import MrKDModel
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> mrkd = MrKDModel(student, copies=2, interval=3, alpha=0.1, temperature=3.0)
        >>> mrkd.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
        >>> history = mrkd.fit(np.ones((32, 4)), np.zeros(32, "int32"), batch_size=4, verbose=0)
        >>> int(mrkd.step.numpy())
        8
        >>> student.save("/tmp/student.keras")  # the trained student alone
    """

    def __init__(
        self,
        model: keras.Model,
        copies: int = 3,
        interval: Optional[int] = None,
        alpha: float = 0.1,
        temperature: float = 3.0,
        gamma: Optional[float] = None,
        temperature_power: Optional[float] = None,
        initial_weights_teach: bool = False,
        average_decay: Optional[float] = None,
        average_interval: int = 1,
        teacher_precision: str = "same",
        **kwargs,
    ):
        super().__init__(model, alpha, temperature, gamma, temperature_power, **kwargs)
        self.average_decay = past_weights.check_decay(average_decay, "average_decay")
        self.average_interval = _checks.positive_int("average_interval", average_interval)
        if self.average_decay is None:
            self.copies = _checks.positive_int("copies", copies)
        else:  # the average may teach alone
            self.copies = _checks.non_negative_int("copies", copies)
        if interval is None:
            raise ValueError(
                "MrKDModel needs `interval` (kappa, the steps between refreshes): W's best is "
                "25 epochs of a 200-epoch run, interval = 25 * steps_per_epoch; a refresh "
                "every step (interval=1) is the worst setting of W Figure 3."
            )
        self.interval = _checks.positive_int("interval", interval)
        if not isinstance(initial_weights_teach, bool):
            raise ValueError(
                f"`initial_weights_teach` must be True or False; got {initial_weights_teach!r}."
            )
        self.initial_weights_teach = initial_weights_teach
        self.teaching_copies = keras.metrics.Mean(name="teaching_copies")
        if not model.built:
            raise ValueError(
                "MrKDModel needs a built `model` (its weights are copied): give it an "
                "Input, or call it once on a batch, before wrapping it."
            )
        self._sources = past_weights.student_variables(model)
        self.teacher_precision = teacher_precision
        network = TeacherNetwork(model, teacher_precision)  # one for all memories
        self._copies = [
            past_weights.Memory(self, model, f"memory{index}", network)
            for index in range(1, self.copies + 1)
        ]
        self.memory = [copy.variables for copy in self._copies]  # theta_1 .. theta_n
        self._updates = [past_weights.Shift(self._copies, self.interval)] if self._copies else []
        self.average = None
        if self.average_decay is not None:
            self.average = past_weights.Memory(self, model, "average", network)
            self._updates.append(
                past_weights.Average(self.average, self.average_decay, self.average_interval)
            )
        self.step = step_counter(self, "mrkd_step")
        self.built = True  # the student is built and the memory exists

    # -- W Algorithm 1 -------------------------------------------------------

    def refresh_due(self):
        """Whether step ``t = step + 1`` refreshes the copies: ``t % kappa == 0``."""
        return ops.equal(ops.mod(self.step + 1, self.interval), 0)

    def _refresh(self):
        """The copies' refresh, unconditionally (benchmarks/mrkd_overhead.py times it)."""
        past_weights._write(self._updates[0], self.step.value)

    def train_step(self, *args):
        """Update the memories due at step ``t`` and count it (:func:`past_weights.start_step`),
        then Keras's own step (on JAX, on the state with the new values)."""
        return super().train_step(*past_weights.start_step(self, self._updates, self.step, args))

    def teaching(self):
        """``m``, how many teachers teach at step ``t`` (the counter), counted in
        :meth:`teacher_logits`' order: the average (if any) once ``t >= kappa``, then the
        copies refreshed so far, ``min(n, floor(t / kappa))``; all with ``initial_weights_teach``."""
        teachers = self.copies + (self.average is not None)
        if self.initial_weights_teach:
            return ops.convert_to_tensor(teachers, dtype=self.step.dtype)
        refreshes = ops.floor_divide(self.step, self.interval)
        teaching = ops.minimum(refreshes, self.copies)
        if self.average is not None:
            teaching = teaching + ops.cast(refreshes >= 1, teaching.dtype)
        return teaching

    def _teacher_metrics(self) -> list:
        return [*super()._teacher_metrics(), self.teaching_copies]

    def _update_teacher_metrics(self, labels, teacher_logits, teaching, sample_weight):
        super()._update_teacher_metrics(labels, teacher_logits, teaching, sample_weight)
        self.teaching_copies.update_state(ops.cast(teaching, "float32"))

    def teacher_logits(self, inputs):
        """What the memories teach on ``inputs``: ``(m_max, batch, K)`` float32 logits, inference
        mode: the average first (if any), then copies ``theta_1 .. theta_n``.

        A teacher that does not teach yet (see :meth:`teaching`) is not run: its
        logits are zeros, which the loss ignores. :meth:`copy_logits` runs them all.
        """
        teachers = ([self.average] if self.average is not None else []) + self._copies
        if self.initial_weights_teach:
            return ops.stack([teacher.logits(inputs) for teacher in teachers])
        teaching = self.teaching()
        batch = ops.shape(keras.tree.flatten(inputs)[0])[0]
        num_classes = self.model.output_shape[-1]
        outputs = []
        for index, teacher in enumerate(teachers):
            outputs.append(
                ops.cond(
                    teaching > index,
                    lambda teacher=teacher: teacher.logits(inputs),
                    lambda: ops.zeros((batch, num_classes), dtype="float32"),
                )
            )
        return ops.stack(outputs)

    def copy_logits(self, inputs):
        """Logits of all ``n`` copies, ``(n, batch, K)`` float32, inference mode, whether
        they teach or not (to watch them: a copy not yet refreshed holds the initial weights)."""
        return ops.stack([copy.logits(inputs) for copy in self._copies])

    def average_logits(self, inputs):
        """Logits of the weight average, ``(batch, K)`` float32, inference mode."""
        if self.average is None:
            raise ValueError("This MrKDModel has no weight average (give `average_decay`).")
        return self.average.logits(inputs)

    # -- saving ----------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "copies": self.copies,
            "interval": self.interval,
            "initial_weights_teach": self.initial_weights_teach,
            "average_decay": self.average_decay,
            "average_interval": self.average_interval,
            "teacher_precision": self.teacher_precision,
        }

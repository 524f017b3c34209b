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

How the algorithm maps onto Keras:

* The copies are non-trainable variables of :class:`MrKDModel`, one per
  student variable (trainable weights **and** BatchNorm moving statistics),
  created equal to the student's initial weights. They are part of the
  model's weights, so checkpoints, ``BackupAndRestore`` and ``.keras`` files
  carry them.
* ``t`` is a step counter variable of the model (also checkpointed). The
  refresh runs **inside** ``train_step``, before the forward pass, keyed on
  that counter: it is exact with ``steps_per_execution > 1``, under XLA and
  under ``tf.distribute``, and nobody can forget to add a callback. The copy
  is a device-side ``assign`` inside a ``cond``: no host round trip, and no
  work on the steps that do not refresh.
* A copy's forward pass is ``model.stateless_call(copy weights, x,
  training=False)``: the student's own layers run with the copy's weights, in
  inference mode (BatchNorm uses the copy's moving statistics), without
  gradients.
* Under ``tf.distribute`` the refresh and the counter run once, in
  cross-replica context, and write every replica's copy of the memory: all
  replicas hold identical copies.
* On JAX, whose ``train_step(state, data)`` is stateless, the same refresh is
  a function of the variables' values: the step returns the refreshed copies
  and counter in its new state (``_memory_refresh_jax.py``). On PyTorch the
  step is stateful, as on TensorFlow (``ops.cond`` is a Python ``if`` there);
  with ``jit_compile=True`` the refresh runs outside the ``torch.compile``
  graph.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from keras_softkd import _checks
from keras_softkd._replicas import run_once_across_replicas
from keras_softkd.distillation import Distiller

MRKD_DEFAULTS = {"alpha": 0.1, "temperature": 3.0, "copies": 3}


def _counter_dtype() -> str:
    """int64, or int32 on JAX without ``jax_enable_x64`` (which truncates int64 anyway)."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "int32"
    return "int64"


def step_counter(model: keras.Model, name: str):
    """A training-step counter of ``model``: a non-trainable integer variable starting at 0,
    saved with the weights (checkpoints resume it), one value for all replicas."""
    return model.add_weight(
        shape=(),
        dtype=_counter_dtype(),
        initializer="zeros",
        trainable=False,
        name=name,
        aggregation="only_first_replica",
    )


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
        **kwargs,
    ):
        super().__init__(model, alpha, temperature, gamma, temperature_power, **kwargs)
        self.copies = _checks.positive_int("copies", copies)
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
        self._sources = list(model.trainable_variables) + list(model.non_trainable_variables)
        self._num_trainable = len(model.trainable_variables)
        self.memory = [
            [self._copy_of(variable, index, position) for position, variable in enumerate(self._sources)]
            for index in range(1, self.copies + 1)
        ]
        self.step = step_counter(self, "mrkd_step")
        self.built = True  # the student is built and the memory exists

    def _copy_of(self, variable, index: int, position: int):
        copy = self.add_weight(
            shape=variable.shape,
            dtype=variable.dtype,
            initializer="zeros",
            trainable=False,
            name=f"memory{index}_{position}",
            aggregation="only_first_replica",
        )
        # theta_i starts at the student's initial weights. A copy of the value, not the value:
        # on JAX assign() would share the student's buffer, which the jitted step donates.
        copy.assign(ops.copy(variable))
        return copy

    # -- W Algorithm 1 -------------------------------------------------------

    def refresh_due(self):
        """Whether step ``t = step + 1`` refreshes the copies: ``t % kappa == 0``."""
        return ops.equal(ops.mod(self.step + 1, self.interval), 0)

    def _refresh(self):
        for newer, older in zip(reversed(self.memory[:-1]), reversed(self.memory[1:])):
            for source, target in zip(newer, older):  # theta_i := theta_(i-1), i = n .. 2
                target.assign(source)
        for source, target in zip(self._sources, self.memory[0]):  # theta_1 := theta
            target.assign(source)

    def _start_step(self):
        """Refresh the copies if step ``t`` is due, then count the step."""
        ops.cond(self.refresh_due(), self._refresh, lambda: None)
        self.step.assign_add(1)

    def train_step(self, *args):
        """Refresh the copies if step ``t`` is due and count it, then Keras's own step.

        TensorFlow and PyTorch: ``train_step(data)`` is stateful and the
        refresh assigns the variables. JAX: ``train_step(state, data)`` is
        stateless, and the refresh returns new values of the copies and the
        counter inside the state handed to the parent's step
        (``keras_softkd/_memory_refresh_jax.py``).
        """
        if keras.backend.backend() == "jax":
            from keras_softkd._memory_refresh_jax import refreshed_state

            state, data = args
            return super().train_step(refreshed_state(self, state), data)
        if keras.backend.backend() == "torch":
            # Outside any torch.compile graph (jit_compile=True): compiled, the shift of
            # the copies read theta_1 after it was overwritten, and ops.cond recompiled
            # the step on every call.
            import torch

            torch.compiler.disable(self._start_step)()
        else:
            run_once_across_replicas(self._start_step)
        return super().train_step(*args)

    def teaching(self):
        """``m``, how many copies teach at step ``t`` (the counter): ``min(n, floor(t / kappa))``,
        the copies refreshed so far; ``n`` with ``initial_weights_teach``."""
        if self.initial_weights_teach:
            return ops.convert_to_tensor(self.copies, dtype=self.step.dtype)
        return ops.minimum(ops.floor_divide(self.step, self.interval), self.copies)

    def _teacher_metrics(self) -> list:
        return [*super()._teacher_metrics(), self.teaching_copies]

    def _update_teacher_metrics(self, labels, teacher_logits, teaching, sample_weight):
        super()._update_teacher_metrics(labels, teacher_logits, teaching, sample_weight)
        self.teaching_copies.update_state(ops.cast(teaching, "float32"))

    def teacher_logits(self, inputs):
        """What the copies teach on ``inputs``: ``(n, batch, K)`` float32 logits, inference mode.

        A copy that does not teach yet (see :meth:`teaching`) is not run: its
        logits are zeros, which the loss ignores. :meth:`copy_logits` runs them all.
        """
        if self.initial_weights_teach:
            return self.copy_logits(inputs)
        teaching = self.teaching()
        batch = ops.shape(keras.tree.flatten(inputs)[0])[0]
        num_classes = self.model.output_shape[-1]
        outputs = []
        for index, weights in enumerate(self.memory):
            outputs.append(
                ops.cond(
                    teaching > index,
                    lambda weights=weights: self._copy_forward(weights, inputs),
                    lambda: ops.zeros((batch, num_classes), dtype="float32"),
                )
            )
        return ops.stack(outputs)

    def copy_logits(self, inputs):
        """Logits of all ``n`` copies, ``(n, batch, K)`` float32, inference mode, whether
        they teach or not (to watch them: a copy not yet refreshed holds the initial weights)."""
        return ops.stack([self._copy_forward(weights, inputs) for weights in self.memory])

    def _copy_forward(self, weights, inputs):
        logits, _ = self.model.stateless_call(
            weights[: self._num_trainable], weights[self._num_trainable :], inputs, training=False
        )
        return ops.cast(logits, "float32")

    # -- saving ----------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "copies": self.copies,
            "interval": self.interval,
            "initial_weights_teach": self.initial_weights_teach,
        }

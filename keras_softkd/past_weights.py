"""Teachers made of the student's past weights: one mechanism for MrKD's copies, a weight average, Beta-LS.

A **memory** (:class:`Memory`) is a set of non-trainable variables of the
wrapping model, one per variable of the student (its trainable weights **and**
its BatchNorm moving statistics), created equal to the student's initial
weights. It is part of the wrapper's weights, so checkpoints,
``BackupAndRestore`` and ``.keras`` files carry it. A memory teaches through
``model.stateless_call``: the student's own layers run with the memory's
weights, without gradients, in inference mode (BatchNorm normalises with the
memory's moving statistics) or, where a method's reference does so, in
training mode (BatchNorm normalises with the batch's statistics). With a
bfloat16 :class:`keras_softkd.teacher_network.TeacherNetwork` the same weights run
through a bfloat16 clone of the student's layers (``--teacher_precision``).

Memories change only through **updates** at the start of a training step
``t`` (1-based; ``step`` is the wrapper's counter of steps done, ``t = step +
1``), before the forward pass, so the step's teachers are the updated ones:

* :class:`Shift` (W Algorithm 1, MrKD's ``n`` copies): when ``t % kappa == 0``,
  ``theta_i := theta_(i-1)`` for ``i = n .. 2`` and ``theta_1 := theta``.
* :class:`Average` (Mean Teacher, Tarvainen & Valpola 2017, as the Beta-LS
  reference code computes it): after ``s = t - 1`` completed steps, when ``s
  >= 1`` and ``s % every == 0``, with ``g = s / every`` the number of updates
  so far::

      r = min(1 - 1 / (g + 1), decay)
      bar := r bar + (1 - r) theta            (floating-point variables; others copied)

  The warm-up ``1 - 1/(g+1)`` makes ``bar`` the plain mean of the initial
  weights and the ``g`` snapshots until ``r`` reaches ``decay``.

How the updates run (:func:`start_step`), keyed on the wrapper's step counter,
so they are exact with ``steps_per_execution > 1``, under XLA, after a resume
and under ``tf.distribute``, and nobody can forget a callback:

* **TensorFlow**: a device-side ``assign`` inside an ``ops.cond`` (no host
  round trip, no work on the steps that do not update); under
  ``tf.distribute`` the updates and the counter run once, in cross-replica
  context, and write every replica's copy: all replicas hold identical memories.
* **JAX** (``train_step(state, data)`` is stateless): the updates are functions
  of the variables' values, and :func:`start_step` returns the state with the
  new values (a ``jax.lax.cond`` on the device).
* **PyTorch**: as TensorFlow (``ops.cond`` is a Python ``if``), outside any
  ``torch.compile`` graph (``jit_compile=True``): compiled, the shift read
  ``theta_1`` after it was overwritten, and the ``cond`` recompiled the step on
  every call.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import ops

from keras_softkd import _checks
from keras_softkd._replicas import run_once_across_replicas
from keras_softkd.teacher_network import TeacherNetwork


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


def student_variables(student: keras.Model) -> list:
    """What a memory holds a value of: the student's trainable, then non-trainable variables."""
    return list(student.trainable_variables) + list(student.non_trainable_variables)


class Memory:
    """The student's weights at some past step: variables of ``owner``, one per student variable.

    Args:
        owner: the wrapping model (the variables are its weights).
        student: the built student.
        name: the variables are ``{name}_{position}``.
        network: the :class:`~keras_softkd.teacher_network.TeacherNetwork` the memory's weights run
            through (default: the student's own layers, in the student's precision); memories
            of one wrapper share one.

    Example:
        >>> import keras
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> owner = keras.Model()
        >>> memory = Memory(owner, student, "average")
        >>> [v.name for v in memory.variables]
        ['average_0', 'average_1']
    """

    def __init__(
        self, owner: keras.Model, student: keras.Model, name: str,
        network: Optional[TeacherNetwork] = None,
    ):
        self.student = student
        self.network = network if network is not None else TeacherNetwork(student)
        self.sources = student_variables(student)
        self.num_trainable = len(student.trainable_variables)
        self.variables = [self._copy_of(owner, v, f"{name}_{i}") for i, v in enumerate(self.sources)]

    @staticmethod
    def _copy_of(owner, variable, name):
        copy = owner.add_weight(
            shape=variable.shape,
            dtype=variable.dtype,
            initializer="zeros",
            trainable=False,
            name=name,
            aggregation="only_first_replica",
        )
        # The student's initial weights. A copy of the value, not the value: on JAX assign()
        # would share the student's buffer, which the jitted step donates.
        copy.assign(ops.copy(variable))
        return copy

    def logits(self, inputs, training: bool = False):
        """The student's layers with these weights on ``inputs``: float32 logits, no state written.

        ``training=True`` runs BatchNorm on the batch's statistics (its updated moving
        statistics are discarded)."""
        return self.network.logits(
            self.variables[: self.num_trainable],
            self.variables[self.num_trainable :],
            inputs,
            training=training,
        )


class Update:
    """A rule that writes ``targets`` at the start of the steps where it is ``due``.

    Subclasses give ``targets`` (the variables written, in a safe write order),
    ``due(step)`` and ``values(step, student, old)``: the new values of the
    targets from the student's values and the targets' old values, in
    ``keras.ops`` (the same function serves the stateful backends and JAX).
    """

    targets: list

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        # One bound method for the life of the rule: jax.lax.cond then reuses its traced branch.
        self.compute = self.values

    def due(self, step):
        raise NotImplementedError

    def values(self, step, student: list, old: list) -> list:
        raise NotImplementedError


class Shift(Update):
    """W Algorithm 1: at ``t % interval == 0``, ``theta_i := theta_(i-1)`` (``i = n..2``), ``theta_1 := theta``."""

    def __init__(self, memories: Sequence[Memory], interval: int):
        super().__init__(memories[0].sources)
        self.memories = list(memories)
        self.interval = interval
        # Newest last: theta_n is written first (from the old theta_(n-1)), theta_1 last.
        self.targets = [v for memory in reversed(self.memories) for v in memory.variables]

    def due(self, step):
        return ops.equal(ops.mod(step + 1, self.interval), 0)

    def values(self, step, student, old):
        size = len(self.sources)
        newest_last = [old[i : i + size] for i in range(0, len(old), size)]
        return [v for memory in newest_last[1:] for v in memory] + list(student)


class Average(Update):
    """A weight average: after ``s = t-1`` steps, ``s >= 1``, ``s % every == 0``:
    ``bar := r bar + (1-r) theta``, ``r = min(1 - 1/(g+1), decay)``, ``g = s / every``."""

    def __init__(self, memory: Memory, decay: float, every: int = 1):
        super().__init__(memory.sources)
        self.memory = memory
        self.decay = decay
        self.every = every
        self.targets = list(memory.variables)

    def due(self, step):
        return ops.logical_and(step >= 1, ops.equal(ops.mod(step, self.every), 0))

    def rate(self, step):
        """``r`` of the update at the start of step ``t = step + 1`` (float32)."""
        updates = ops.cast(ops.floor_divide(step, self.every), "float32")
        return ops.minimum(1.0 - 1.0 / (updates + 1.0), self.decay)

    def values(self, step, student, old):
        rate = self.rate(step)
        new = []
        for value, average in zip(student, old):
            if "float" in str(average.dtype):
                r = ops.cast(rate, average.dtype)
                new.append(r * average + (1 - r) * ops.cast(value, average.dtype))
            else:  # integer state (a seed, a counter): the student's
                new.append(value)
        return new


def start_step(model: keras.Model, updates: Sequence[Update], step_variable, args: tuple) -> tuple:
    """Run the ``updates`` due at step ``t = step + 1``, count the step; the ``train_step`` arguments.

    Called first in a wrapper's ``train_step(*args)``; returns the arguments for
    Keras's own step (on JAX, the state with the new values).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        state, data = args
        return _jax_state(model, updates, step_variable, state), data

    def update():
        step = step_variable.value
        for rule in updates:
            ops.cond(rule.due(step), lambda rule=rule: _write(rule, step), lambda: None)
        step_variable.assign_add(1)

    if backend == "torch":
        import torch

        torch.compiler.disable(update)()
    else:
        run_once_across_replicas(update)
    return args


def _write(rule: Update, step) -> None:
    new = rule.values(step, [v.value for v in rule.sources], [v.value for v in rule.targets])
    for target, value in zip(rule.targets, new):
        target.assign(value)


def _jax_state(model, updates, step_variable, state):
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    trainable_position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    non_trainable_position = {id(v): i for i, v in enumerate(model.non_trainable_variables)}

    def value_of(variable):  # the values before this step's update
        if id(variable) in trainable_position:
            return trainable[trainable_position[id(variable)]]
        return non_trainable[non_trainable_position[id(variable)]]

    non_trainable = list(non_trainable)
    step = value_of(step_variable)
    for rule in updates:
        old = [value_of(v) for v in rule.targets]
        student = [value_of(v) for v in rule.sources]
        new = jax.lax.cond(rule.due(step), rule.compute, _keep_old, step, student, old)
        for variable, value in zip(rule.targets, new):
            non_trainable[non_trainable_position[id(variable)]] = value
    non_trainable[non_trainable_position[id(step_variable)]] = step + 1
    return trainable, non_trainable, optimizer_variables, metrics_variables


def _keep_old(step, student, old):  # module level: the same branch on every step
    return old


def check_decay(decay: Optional[float], name: str = "decay") -> Optional[float]:
    """``decay`` in ``[0, 1)`` (or ``None``); ``ValueError`` naming ``name`` otherwise."""
    if decay is None:
        return None
    value = _checks.in_closed_range(name, decay, 0.0, 1.0)
    if value >= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1) (1 never moves the average); got {name}={decay!r}.")
    return value

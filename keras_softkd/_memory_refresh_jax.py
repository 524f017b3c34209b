"""MrKD's refresh on the JAX backend, where ``train_step`` is stateless.

Keras's JAX ``train_step(state, data)`` receives the values of every variable,
``state = (trainable, non_trainable, optimizer, metrics)``, and returns the new
state; assigning a variable inside it would leak a tracer. MrKD's memory
copies and its step counter are non-trainable variables of the
:class:`~keras_softkd.MrKDModel`, so the refresh of W Algorithm 1 becomes a
function of those values: :func:`refreshed_state` returns the state with the
copies shifted (``theta_i := theta_(i-1)``, ``theta_1 := theta``) where step
``t = step + 1`` is due (``t % kappa == 0``) and the counter advanced. The
parent's stateless step then runs on that state, so the copies it reads as
teachers are the refreshed ones, as in the stateful TensorFlow / PyTorch
path. The choice is a ``jax.lax.cond`` on the device: no host round trip,
exact under ``jit`` and with ``steps_per_execution > 1``.
"""

from __future__ import annotations

import jax


def refreshed_state(model, state):
    """``state`` with ``model``'s copies refreshed if step ``t`` is due, and ``t`` counted."""
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    trainable_position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    non_trainable_position = {id(v): i for i, v in enumerate(model.non_trainable_variables)}

    def value_of(variable):  # the student's weights before this step's update
        if id(variable) in trainable_position:
            return trainable[trainable_position[id(variable)]]
        return non_trainable[non_trainable_position[id(variable)]]

    memory_positions = [[non_trainable_position[id(v)] for v in copy] for copy in model.memory]
    step_position = non_trainable_position[id(model.step)]
    step = non_trainable[step_position]
    due = (step + 1) % model.interval == 0

    old = [[non_trainable[p] for p in copy] for copy in memory_positions]
    # theta_1 := theta; theta_i := theta_(i-1) for i = n .. 2
    new = [[value_of(v) for v in model._sources]] + old[:-1]
    memory = jax.lax.cond(due, _take_new, _keep_old, new, old)

    non_trainable = list(non_trainable)
    for positions, values in zip(memory_positions, memory):
        for position, value in zip(positions, values):
            non_trainable[position] = value
    non_trainable[step_position] = step + 1
    return trainable, non_trainable, optimizer_variables, metrics_variables


# Module-level branches with explicit operands (not closures over the values): the
# traced branches are then the same on every step, so JAX reuses them, and an
# un-jitted step (run_eagerly=True) does not compile a new conditional every step.
def _take_new(new, old):
    return new


def _keep_old(new, old):
    return old

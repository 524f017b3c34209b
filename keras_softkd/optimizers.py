"""SGD exactly as PyTorch's ``torch.optim.SGD`` applies it, so results compare with the literature.

The papers train with ``torch.optim.SGD(lr, momentum=0.9, weight_decay=5e-4)``::

    g   <- grad + weight_decay * w          (L2 added to the gradient, every parameter)
    buf <- momentum * buf + g               (buf = g at the first step)
    w   <- w - lr * buf

Keras's ``SGD`` differs twice: its ``weight_decay`` is decoupled (applied to
the weights, outside the momentum), and it folds the learning rate into the
momentum buffer, which is not the same update when the learning rate changes
(cosine or step schedules).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_softkd import _checks


@keras.saving.register_keras_serializable(package="keras_softkd")
class PyTorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD`` (dampening 0, no Nesterov) as a Keras optimizer.

    Args:
        learning_rate: a float or a ``keras.optimizers.schedules`` schedule.
        momentum: in ``[0, 1)``.
        l2: the coefficient PyTorch calls ``weight_decay``, added to the
            gradient as ``l2 * w`` for every parameter before the momentum.

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd.optimizers import PyTorchSGD
        >>> w = keras.Variable(np.array([1.0], "float32"))
        >>> opt = PyTorchSGD(learning_rate=0.1, momentum=0.9, l2=0.5)
        >>> opt.apply([np.array([1.0], "float32")], [w])  # g = 1 + 0.5 * 1, w = 1 - 0.1 * 1.5
        >>> round(float(w.numpy()[0]), 4)
        0.85
    """

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, l2: float = 0.0, name="pytorch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = _checks.in_closed_range("momentum", momentum, 0.0, 1.0)
        self.l2 = _checks.in_closed_range("l2", l2, 0.0, 1.0)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        if self.momentum:
            buffer = self.momentums[self._get_variable_index(variable)]
            # The buffer starts at zero, so buf = g at the first step, as in PyTorch.
            self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
            gradient = buffer
        self.assign_sub(variable, ops.multiply(learning_rate, gradient))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2": self.l2}


@keras.saving.register_keras_serializable(package="keras_softkd")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then linear decay to 0
    at ``total_steps``: Hugging Face's ``get_linear_schedule_with_warmup``, RoBERTa's GLUE
    fine-tuning recipe (warm-up over the first 6% of the steps).

    ``lr(step) = learning_rate * step / warmup_steps`` for ``step < warmup_steps``, else
    ``learning_rate * max(0, (total_steps - step) / (total_steps - warmup_steps))``.

    Example:
        >>> schedule = LinearWarmupDecay(1e-3, warmup_steps=2, total_steps=10)
        >>> [round(float(schedule(s)), 6) for s in (0, 1, 2, 6, 10)]
        [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"`warmup_steps` must be in [0, total_steps={total_steps}); got {warmup_steps}."
            )
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(max(self.warmup_steps, 1), "float32")
        decay = ops.cast(self.total_steps - self.warmup_steps, "float32")
        rising = step / warmup
        falling = ops.maximum(0.0, (self.total_steps - step) / decay)
        return self.learning_rate * ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}

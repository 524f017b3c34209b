"""The trainer a run fits: the method's trainer or loss (from the method table), the optimizer
and the learning-rate schedule, compiled.

Shared by the image and the text protocols (:mod:`keras_softkd.experiment.image`,
:mod:`keras_softkd.experiment.text`), and by the benchmarks, which build each method as
``train.py`` does.
"""

from __future__ import annotations

import keras

from keras_softkd import methods, models
from keras_softkd.config import ExperimentConfig
from keras_softkd.optimizers import LinearWarmupDecay, PyTorchSGD


def build_trainer(
    config: ExperimentConfig,
    num_classes: int,
    steps_per_epoch: int,
    replicas: int = 1,
    student: keras.Model | None = None,
    num_examples: int = 0,
) -> keras.Model:
    """The compiled model that ``fit`` trains for ``config.method`` (a resolved config).

    ``student``: the network to train; by default ``config.model`` from the
    registry (with synchronised BatchNorm over TensorFlow replicas).
    ``num_examples``: the training set's size (a per-example table's rows).
    """
    if student is None:
        # Synchronised BatchNorm for tf.distribute replicas; on JAX, keras.distribution already
        # computes the statistics over the global batch (and Keras refuses synchronized=True).
        synchronized = replicas > 1 and keras.backend.backend() == "tensorflow"
        student = models.build(config.model, num_classes, synchronized_batchnorm=synchronized)
    optimizer = make_optimizer(config, steps_per_epoch)
    accuracy = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    setup = methods.Setup(num_classes=num_classes, steps_per_epoch=steps_per_epoch,
                          num_examples=num_examples, epochs=config.epochs)
    trainer, compile_args = methods.get(config.method).build(config, student, setup)
    # Weighted: the zero-weight examples that pad an evaluation batch over several devices
    # do not count (training batches carry no weights).
    # metrics=None: a KerasHub classifier would add its own accuracy ("auto") beside ours.
    trainer.compile(optimizer=optimizer, metrics=None, weighted_metrics=accuracy, **compile_args)
    return trainer


def make_optimizer(config: ExperimentConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """``--optimizer`` with the schedule of :func:`learning_rate_schedule`.

    * ``sgd``: :class:`PyTorchSGD` (the CIFAR papers' ``torch.optim.SGD``, L2 weight decay
      added to the gradient).
    * ``adamw`` (P's GLUE runs, "AdamW with the default settings"): ``keras.optimizers.AdamW``
      with PyTorch's defaults, betas 0.9/0.999, eps 1e-8, decoupled weight decay
      ``weight_decay`` (0.01 by default) on every weight, scaled by the learning rate as
      ``torch.optim.AdamW`` does.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=config.weight_decay, beta_1=0.9, beta_2=0.999,
            epsilon=1e-8,
        )
    return PyTorchSGD(learning_rate=schedule, momentum=config.momentum, l2=config.weight_decay)


def learning_rate_schedule(config: ExperimentConfig, steps_per_epoch: int):
    """The papers' schedules, per step.

    * ``cosine`` (MrKD paper): from ``lr`` to 1e-4 over the run.
    * ``step`` (Pseudo-KD paper): ``lr`` divided by 5 at epochs 60, 120, 160
      of 200 -- at 30%, 60% and 80% of the run for other lengths.
    * ``linear`` (GLUE fine-tuning, RoBERTa's recipe; P is silent): from 0 up to ``lr``
      over the first ``warmup_fraction`` of the steps, then down to 0 at the end
      (:class:`LinearWarmupDecay`).
    """
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "linear":
        warmup = min(round(config.warmup_fraction * total), total - 1)
        return LinearWarmupDecay(config.lr, warmup, total)
    if config.lr_schedule == "cosine":
        floor = min(1e-4, config.lr)
        return keras.optimizers.schedules.CosineDecay(config.lr, total, alpha=floor / config.lr)
    # Keras keeps the old value while step <= boundary; PyTorch's MultiStepLR uses the
    # new one from the first step of the milestone epoch.
    boundaries = [round(f * config.epochs) * steps_per_epoch - 1 for f in (0.3, 0.6, 0.8)]
    values = [config.lr / 5**k for k in range(4)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)

"""One run: ``run(config)`` -> ``results.json``; the protocol is picked by the dataset.

* :mod:`~keras_softkd.experiment.lifecycle` -- what every run does around its training:
  start (refuse a finished run, keep a resumed run's precisions), checkpoints, callbacks,
  ``results.json``, finish. Output files: its docstring.
* :mod:`~keras_softkd.experiment.trainer` -- the compiled trainer of a method (method table,
  optimizer, schedule).
* :mod:`~keras_softkd.experiment.image` -- the papers' image protocol (CIFAR-10, CIFAR-100,
  CINIC-10).
* :mod:`~keras_softkd.experiment.text` -- the Pseudo-KD paper's GLUE protocol (section 4.2), the
  same steps on texts; imported for text runs only (it builds KerasHub models).

The two protocols share the lifecycle and the trainer, and neither imports the other.

The data's way through :func:`run`: ``config.resolved()`` (the method's defaults filled in, every
value checked, ``auto`` precisions resolved by :func:`keras_softkd.precision.resolve`), then the
protocol's ``run(config, asked)``.
"""

from __future__ import annotations

import keras

# data and models: the modules the protocols read (tests patch ``experiment.models.build``).
from keras_softkd import data, models  # noqa: F401
from keras_softkd.config import ExperimentConfig, is_text
from keras_softkd.errors import UsageError  # noqa: F401
from keras_softkd.experiment import image
from keras_softkd.experiment.image import load_data
from keras_softkd.experiment.lifecycle import (
    RESULTS,
    BestModel,
    EpochCheckpoint,
    Throughput,
    finish,
    run_callbacks,
    run_precision,
    run_results,
    start,
    versions,
)
from keras_softkd.experiment.trainer import build_trainer, learning_rate_schedule, make_optimizer
from keras_softkd.models.loading import load_teacher

__all__ = [
    "RESULTS",
    "BestModel",
    "EpochCheckpoint",
    "Throughput",
    "build_trainer",
    "finish",
    "learning_rate_schedule",
    "load_data",
    "load_teacher",
    "make_optimizer",
    "run",
    "run_callbacks",
    "run_precision",
    "run_results",
    "start",
    "versions",
]


def run(config: ExperimentConfig) -> dict:
    """Trains and evaluates one configuration; returns the results written to ``results.json``.

    Raises :class:`UsageError` (before any training) for bad values, missing
    or corrupt data, a finished run in ``output_dir`` (unless ``overwrite``),
    or an unusable teacher. A run started again with the same ``output_dir``
    resumes from its last epoch checkpoint, in the precisions it started with.

    The run sets Keras's global dtype policy to its precision while it runs and puts the
    caller's back when it returns or fails: a notebook's next model is not built in the
    run's precision.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        return _run(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config: ExperimentConfig) -> dict:
    asked = config
    config = config.resolved()
    if is_text(config.dataset):  # GLUE (P section 4.2): the same steps on texts
        from keras_softkd.experiment import text  # KerasHub: imported for text runs only

        return text.run(config, asked)
    return image.run(config, asked)

"""The input of ``fit`` and ``evaluate`` by backend: tf.data on TensorFlow, a NumPy ``PyDataset``
on JAX and PyTorch.

:func:`training_input` and :func:`evaluation_input` pick :mod:`keras_softkd.data.pipeline`
(imported only on TensorFlow) or :mod:`keras_softkd.data.py_dataset`; the two pipelines follow
one protocol and neither imports the other.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_softkd.data._arrays import positive_int as _positive_int
from keras_softkd.data.py_dataset import EvalPyDataset, TrainPairsPyDataset, TrainPyDataset

__all__ = ["TRAINING_INPUTS", "evaluation_input", "training_input"]

#: What a method's training batches carry besides the images (``methods.Method.inputs``).
TRAINING_INPUTS = ("labels", "indices", "pairs")


def training_input(
    x: np.ndarray,
    y: np.ndarray,
    *,
    dataset: str,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    augment: bool = True,
    backend: str | None = None,
    workers: int = 2,
    batch_multiple: int = 1,
    inputs: str = "labels",
):
    """Training batches of epochs ``first_epoch .. epochs - 1`` for ``fit``, by backend.

    TensorFlow: :func:`keras_softkd.data.train_epochs` (tf.data). JAX and
    PyTorch: :class:`TrainPyDataset` (NumPy, with ``workers`` prefetching
    threads), so no TensorFlow is needed. Both are epoch-keyed streams read
    with ``fit(data, epochs=epochs, initial_epoch=first_epoch,
    steps_per_epoch=steps_per_epoch)``. ``batch_multiple`` (the devices
    ``keras.distribution`` splits each batch over) applies to the PyDataset;
    tf.distribute splits an uneven batch itself, so tf.data keeps every example.

    ``inputs`` (one of :data:`TRAINING_INPUTS`, a method's ``inputs`` in the
    method table): ``"labels"``, batches ``(images, labels)``; ``"indices"``
    (PS-KD), batches ``(images, {"labels": labels, "index": i})`` with ``i``
    (int32) each example's row in ``x`` (a per-example table), same order and
    augmentation; ``"pairs"`` (CS-KD), batches ``({"images": images,
    "partners": partners}, labels)``: the images and labels of ``"labels"``,
    and per example a same-class partner, independently augmented,
    deterministic per ``(seed, epoch, batch)``
    (:func:`keras_softkd.data.pipeline.with_partners`,
    :class:`TrainPairsPyDataset`; the two draw different partners).

    Returns:
        ``(data, steps_per_epoch)``.
    """
    if inputs not in TRAINING_INPUTS:
        raise ValueError(
            f"`inputs` must be one of {list(TRAINING_INPUTS)}; got inputs={inputs!r}."
        )
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        from keras_softkd.data import pipeline

        stream = pipeline.train_epochs(
            x, y, dataset=dataset, batch_size=batch_size, seed=seed,
            first_epoch=first_epoch, epochs=epochs, augment=augment,
            with_indices=inputs == "indices",
        )
        steps_per_epoch = math.ceil(len(x) / _positive_int("batch_size", batch_size))
        if inputs == "pairs":
            stream = pipeline.with_partners(
                stream, x, y, dataset=dataset, seed=seed, first_epoch=first_epoch,
                steps_per_epoch=steps_per_epoch, augment=augment,
            )
        return stream, steps_per_epoch
    stream = (TrainPairsPyDataset if inputs == "pairs" else TrainPyDataset)(
        x, y, dataset=dataset, batch_size=batch_size, seed=seed, first_epoch=first_epoch,
        epochs=epochs, augment=augment, workers=workers, batch_multiple=batch_multiple,
        with_indices=inputs == "indices",
    )
    return stream, stream.steps_per_epoch


def evaluation_input(
    x: np.ndarray, y: np.ndarray, *, dataset: str, batch_size: int,
    backend: str | None = None, workers: int = 2, batch_multiple: int = 1,
):
    """Evaluation batches by backend: :func:`keras_softkd.data.eval_dataset` or :class:`EvalPyDataset`.

    ``batch_multiple`` as in :func:`training_input` (the PyDataset pads the
    last batch with zero-weight examples, which ``predict`` returns last).
    """
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        from keras_softkd.data import pipeline

        return pipeline.eval_dataset(x, y, dataset=dataset, batch_size=batch_size)
    return EvalPyDataset(
        x, y, dataset=dataset, batch_size=batch_size, workers=workers, batch_multiple=batch_multiple
    )

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
from keras_softkd.data.py_dataset import (
    AUGMENT_ON,
    EvalPyDataset,
    TrainPairsPyDataset,
    TrainPyDataset,
)

__all__ = ["TRAINING_INPUTS", "augment_where", "evaluation_input", "training_input"]

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
    augment_on: str = "auto",
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

    ``augment_on`` (the PyDataset's, :func:`augment_where`): ``"auto"``
    (default), ``"host"`` or ``"device"``.

    Returns:
        ``(data, steps_per_epoch)``.
    """
    if inputs not in TRAINING_INPUTS:
        raise ValueError(
            f"`inputs` must be one of {list(TRAINING_INPUTS)}; got inputs={inputs!r}."
        )
    backend = backend or keras.backend.backend()
    where = augment_where(augment_on, backend, batch_multiple)
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
        with_indices=inputs == "indices", augment_on=where,
    )
    return stream, stream.steps_per_epoch


def evaluation_input(
    x: np.ndarray, y: np.ndarray, *, dataset: str, batch_size: int,
    backend: str | None = None, workers: int = 2, batch_multiple: int = 1, augment_on: str = "auto",
):
    """Evaluation batches by backend: :func:`keras_softkd.data.eval_dataset` or :class:`EvalPyDataset`.

    ``batch_multiple`` and ``augment_on`` (here: where the normalisation runs) as in
    :func:`training_input` (the PyDataset pads the last batch with zero-weight examples,
    which ``predict`` returns last).
    """
    backend = backend or keras.backend.backend()
    where = augment_where(augment_on, backend, batch_multiple)
    if backend == "tensorflow":
        from keras_softkd.data import pipeline

        return pipeline.eval_dataset(x, y, dataset=dataset, batch_size=batch_size)
    return EvalPyDataset(
        x, y, dataset=dataset, batch_size=batch_size, workers=workers, batch_multiple=batch_multiple,
        augment_on=where,
    )


def augment_where(augment_on: str, backend: str, batch_multiple: int = 1) -> str:
    """Where the PyDataset crops, flips and normalises: ``"host"`` or ``"device"``.

    ``"auto"`` is ``"device"`` on JAX when JAX's default device is not the CPU
    (a GPU or TPU: the host then ships uint8 batches and the device does the
    per-pixel work, :mod:`keras_softkd.data.device_augment`) and each batch goes
    to one device (``batch_multiple == 1``); else ``"host"``, the NumPy pipeline.
    TensorFlow's tf.data pipeline augments in its own graph: ``"host"`` and
    ``"auto"`` only.

    Example:
        >>> augment_where("auto", "torch"), augment_where("device", "jax")
        ('host', 'device')
    """
    if augment_on not in ("auto", *AUGMENT_ON):
        raise ValueError(
            f"`augment_on` must be one of {['auto', *AUGMENT_ON]}; got augment_on={augment_on!r}."
        )
    if backend == "tensorflow":
        if augment_on == "device":
            raise ValueError(
                "augment_on='device' is for the PyDataset pipeline (JAX, PyTorch); on TensorFlow "
                "tf.data augments in its own graph: use 'auto' or 'host'."
            )
        return "host"
    if augment_on != "auto":
        return augment_on
    if backend != "jax" or batch_multiple != 1:
        return "host"
    import jax

    return "host" if jax.default_backend() == "cpu" else "device"

"""Datasets and the input pipelines (tf.data, and NumPy ``PyDataset`` without TensorFlow).

* :data:`DATASETS` -- classes and channel statistics of CIFAR-10, CIFAR-100, CINIC-10.
* :func:`load` -- one split as NumPy arrays, from local files (npz, CIFAR python
  or binary, image folders) or TensorFlow Datasets.
* :func:`train_dataset`, :func:`train_epochs`, :func:`eval_dataset` -- ``tf.data``
  pipelines with the papers' per-example pad-crop-flip augmentation and
  normalisation.
* :class:`TrainPyDataset`, :class:`EvalPyDataset` -- the same protocol as
  ``keras.utils.PyDataset`` in NumPy, for the JAX and PyTorch backends without
  TensorFlow; :func:`training_input` and :func:`evaluation_input` choose by backend.
* :func:`split_validation`, :func:`take_subset` -- seeded subsets.
* :mod:`~keras_softkd.data.glue` and :data:`GLUE_TASKS` -- the seven GLUE text
  tasks of the Pseudo-KD paper: ``glue.load("rte", "dev", data_dir)`` reads the
  official GLUE files or TensorFlow Datasets.

A package rather than one ``data.py``: reading files, the safe unpickler, the
augmentation pipelines and subsetting are separate jobs. Only the tf.data
pipeline needs TensorFlow, and it is imported when one of its names is first
used (``data.train_dataset``), never by ``import keras_softkd.data``.

Example:
    >>> import numpy as np
    >>> from keras_softkd import data
    >>> x = np.zeros((8, 32, 32, 3), np.uint8); y = np.arange(8) % 10
    >>> ds = data.train_dataset(x, y, dataset="cifar10", batch_size=4, seed=0)
    >>> images, labels = next(iter(ds))
    >>> tuple(images.shape), images.dtype.name, labels.dtype.name
    ((4, 32, 32, 3), 'float32', 'int32')
"""

import importlib

from keras_softkd.data import glue
from keras_softkd.data.glue import GLUE_TASKS, GlueTask
from keras_softkd.data.info import DATASETS, DatasetInfo
from keras_softkd.data.sources import SPLITS, load
from keras_softkd.data.splits import split_validation, take_subset

# name -> module, imported on first use (the pipelines import Keras or TensorFlow; the
# modules above import neither, so config checks a dataset's name without them).
_LAZY = {
    "TRAINING_INPUTS": "inputs",
    "evaluation_input": "inputs",
    "training_input": "inputs",
    "EvalPyDataset": "py_dataset",
    "TrainPairsPyDataset": "py_dataset",
    "TrainPyDataset": "py_dataset",
    "augment_batch": "pipeline",
    "epoch_batches": "pipeline",
    "eval_dataset": "pipeline",
    "normalize": "pipeline",
    "train_dataset": "pipeline",
    "train_epochs": "pipeline",
    "with_partners": "pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "EvalPyDataset",
    "GLUE_TASKS",
    "GlueTask",
    "SPLITS",
    "TRAINING_INPUTS",
    "TrainPairsPyDataset",
    "TrainPyDataset",
    "augment_batch",
    "epoch_batches",
    "eval_dataset",
    "evaluation_input",
    "glue",
    "load",
    "normalize",
    "split_validation",
    "take_subset",
    "train_dataset",
    "train_epochs",
    "training_input",
    "with_partners",
]

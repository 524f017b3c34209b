"""Datasets and the tf.data input pipeline.

* :data:`DATASETS` -- classes and channel statistics of CIFAR-10, CIFAR-100, CINIC-10.
* :func:`load` -- one split as NumPy arrays, from local files (npz, CIFAR python
  or binary, image folders) or TensorFlow Datasets.
* :func:`train_dataset`, :func:`eval_dataset` -- ``tf.data`` pipelines with the
  papers' per-example pad-crop-flip augmentation and normalisation.
* :func:`split_validation`, :func:`take_subset` -- seeded subsets.

A package rather than one ``data.py``: reading files, the safe unpickler, the
augmentation pipeline and subsetting are separate jobs (and only the pipeline
needs TensorFlow at import time).

Example:
    >>> import numpy as np
    >>> from keras_softkd import data
    >>> x = np.zeros((8, 32, 32, 3), np.uint8); y = np.arange(8) % 10
    >>> ds = data.train_dataset(x, y, dataset="cifar10", batch_size=4, seed=0)
    >>> images, labels = next(iter(ds))
    >>> tuple(images.shape), images.dtype.name, labels.dtype.name
    ((4, 32, 32, 3), 'float32', 'int32')
"""

from keras_softkd.data.info import DATASETS, DatasetInfo
from keras_softkd.data.pipeline import (
    augment_batch,
    eval_dataset,
    normalize,
    train_dataset,
    train_epochs,
)
from keras_softkd.data.sources import SPLITS, load
from keras_softkd.data.splits import split_validation, take_subset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "SPLITS",
    "augment_batch",
    "eval_dataset",
    "load",
    "normalize",
    "split_validation",
    "take_subset",
    "train_dataset",
    "train_epochs",
]

"""Helpers of the step-by-step tests (a trainer beside a NumPy transcription of its reference).

``shuffled_batches`` draws each epoch's permutation as the references' shuffled data loaders do,
``Stream`` hands exactly those batches to ``fit`` (one stream across epochs), ``tf_stream`` the same
as a ``tf.data`` pipeline (for ``tf.distribute``), ``log_softmax`` is the float64 reference's.
"""

import keras
import numpy as np


def log_softmax(z):
    """float64 log-softmax over the last axis, through a stable logsumexp."""
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def shuffled_batches(x, y, epochs, batch, seed=1, with_index=False):
    """Each epoch a new permutation of the examples, batches of ``batch`` and a shorter last one:
    ``(x, y)`` per step, or ``(x, {"labels": y, "index": i})`` with ``with_index``."""
    rng = np.random.RandomState(seed)
    batches = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch].astype("int32")
            targets = {"labels": y[idx], "index": idx} if with_index else y[idx]
            batches.append((x[idx], targets))
    return batches


class Stream(keras.utils.PyDataset):
    """Given batches, read by ``fit`` as one stream across epochs (as data.TrainPyDataset)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    @property
    def num_batches(self):
        return None

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        # With steps_per_execution > 1 Keras reads ahead past the last step: never trained on.
        return self.batches[min(index, len(self.batches) - 1)]


def tf_stream(batches):
    """The same batches as a ``tf.data.Dataset`` (one element per batch)."""
    import tensorflow as tf

    stream = None
    for batch in batches:
        one = tf.data.Dataset.from_tensors(batch)
        stream = one if stream is None else stream.concatenate(one)
    return stream

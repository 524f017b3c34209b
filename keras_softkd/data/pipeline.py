"""The tf.data input pipeline: shuffle, pad-crop-flip augmentation, normalisation.

The training augmentation of the papers (and of the PyTorch literature) is,
**per example**: pad 4 pixels of zeros on each side, take a random 32x32 crop
(offsets uniform in ``[0, 8]``), flip horizontally with probability 0.5, then
normalise by the dataset's per-channel mean and std.
(``keras.layers.RandomCrop`` draws one offset for a whole batch, so it is not
used.)

Design: the pipeline shuffles *indices* (not images), batches them, gathers a
uint8 batch from the in-memory array, and augments the whole batch at once with
per-example offsets drawn by one stateless random call: the crop and the flip
become a single gather with per-example row and column indices into the padded
batch. On the 2-core development machine this ran at about 49,000 images/s
against 12,500 for the per-example ``map`` before ``.batch()``, and cost
0.027 against 0.09 CPU-seconds per 1000 images
(``benchmarks/input_pipeline.py`` measures both). The CPU cost is what
matters there: the pipeline shares those cores with the model. Both designs are kept: the
per-example one is :func:`_train_dataset_per_example`, the reference the tests
and the benchmark compare against.

All randomness is stateless and derived from ``seed``, so a pipeline is
deterministic given ``seed`` (and TensorFlow's global seed, if one is set),
whatever the parallelism; each new pass (epoch) draws a new order and new
augmentations.
"""

from __future__ import annotations

import numpy as np

from keras_softkd._quiet import quiet_tensorflow
from keras_softkd.data import _arrays
from keras_softkd.data._arrays import class_members
from keras_softkd.data import info as _info
from keras_softkd.data._arrays import positive_int as _positive_int
from keras_softkd.data._arrays import seed_value as _seed_value

tf = quiet_tensorflow()

PAD = 4
SIZE = 32
_AUTOTUNE = tf.data.AUTOTUNE


def normalize(images, dataset: str) -> tf.Tensor:
    """``(images / 255 - mean) / std`` per channel, as float32.

    Args:
        images: uint8 (or float in [0, 255]) images, channels last.
        dataset: a key of :data:`keras_softkd.data.DATASETS` (whose mean/std to use).

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import normalize
        >>> out = normalize(np.full((1, 32, 32, 3), 255, np.uint8), "cifar10")
        >>> np.round(np.asarray(out)[0, 0, 0], 3)
        array([2.059, 2.126, 2.116], dtype=float32)
    """
    info = _info.get(dataset)
    mean = np.asarray(info.mean, np.float64)
    std = np.asarray(info.std, np.float64)
    scale = tf.constant(1.0 / (255.0 * std), tf.float32)
    offset = tf.constant(-mean / std, tf.float32)
    return tf.cast(images, tf.float32) * scale + offset


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    dataset: str,
    batch_size: int,
    seed: int,
    augment: bool = True,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """The training pipeline: seeded shuffle, per-example pad-crop-flip, normalisation.

    Args:
        x: uint8 images of shape ``(N, 32, 32, 3)`` (from :func:`load`).
        y: integer labels of shape ``(N,)`` in ``[0, num_classes)``.
        dataset: whose mean/std normalise the images (``"cifar10"``, ...).
        batch_size: examples per batch, >= 1.
        seed: integer >= 0; the order and the augmentation are a function of it.
            Each pass over the dataset (each epoch) reshuffles and draws new
            augmentations.
        augment: pad 4 zero pixels, random 32x32 crop and random horizontal
            flip, per example; ``False`` only shuffles and normalises.
        shuffle_buffer: ``None`` (default) shuffles all ``N`` indices: a full
            shuffle, needed for class-sorted files such as CIFAR-10 train. A
            smaller buffer shuffles only locally.
        drop_remainder: drop the last, smaller batch.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)``: float32
        ``(batch, 32, 32, 3)`` and int32 ``(batch,)``, prefetched.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import data
        >>> x = np.zeros((10, 32, 32, 3), np.uint8); y = np.arange(10) % 10
        >>> ds = data.train_dataset(x, y, dataset="cifar10", batch_size=4, seed=0)
        >>> [tuple(images.shape) for images, _ in ds]
        [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    """
    images, labels, indices = _shuffled_indices(
        x, y, dataset, batch_size, seed, shuffle_buffer
    )
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    seeds = _seed_stream(seed)

    def make_batch(index, batch_seed):
        batch = tf.gather(images, index)
        if augment:
            batch = augment_batch(batch, batch_seed)
        return normalize(batch, dataset), tf.gather(labels, index)

    batches = tf.data.Dataset.zip((indices, seeds)).map(
        make_batch, num_parallel_calls=_AUTOTUNE, deterministic=True
    )
    return batches.prefetch(_AUTOTUNE)


def train_epochs(
    x: np.ndarray,
    y: np.ndarray,
    *,
    dataset: str,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    augment: bool = True,
    with_indices: bool = False,
) -> tf.data.Dataset:
    """Epochs ``first_epoch .. epochs - 1`` of the training pipeline, one after another.

    Like :func:`train_dataset` (full shuffle, per-example pad-crop-flip,
    normalisation), but epoch ``e``'s order and augmentation are a pure
    function of ``(seed, e)``: a run resumed at epoch ``e`` sees exactly the
    batches an uninterrupted run sees. Use it with ``fit(...,
    steps_per_epoch=ceil(N / batch_size), initial_epoch=first_epoch)``.

    ``with_indices``: batches ``(images, {"labels": y, "index": i})``, ``i``
    (int32) each example's row in ``x`` (for a per-example table, PS-KD).

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import train_epochs
        >>> x = np.zeros((10, 32, 32, 3), np.uint8); y = np.arange(10)
        >>> ds = train_epochs(x, y, dataset="cifar10", batch_size=4, seed=0, first_epoch=1, epochs=3)
        >>> [int(labels.shape[0]) for _, labels in ds]
        [4, 4, 2, 4, 4, 2]
    """
    images, labels = _checked_arrays(x, y, dataset)
    _positive_int("batch_size", batch_size)
    _seed_value(seed)
    if not 0 <= first_epoch <= epochs:
        raise ValueError(f"`first_epoch` must be in [0, epochs={epochs}]; got {first_epoch}.")
    def make_batch(index, batch_seed):
        batch = tf.gather(images, index)
        if augment:
            batch = augment_batch(batch, batch_seed)
        return normalize(batch, dataset), _targets(tf.gather(labels, index), index, with_indices)

    indices = epoch_batches(len(x), batch_size, seed, first_epoch, epochs)
    return indices.map(make_batch, num_parallel_calls=_AUTOTUNE, deterministic=True).prefetch(
        _AUTOTUNE
    )


def epoch_batches(count: int, batch_size: int, seed: int, first_epoch: int, epochs: int
                  ) -> tf.data.Dataset:
    """The training order of epochs ``first_epoch .. epochs - 1``: ``(indices, batch_seed)`` per
    batch, epoch ``e``'s shuffle a pure function of ``(seed, e)`` (so a resumed run sees the
    batches an uninterrupted one sees), ``batch_seed`` a stateless seed for its augmentation.

    Example:
        >>> [len(i) for i, _ in epoch_batches(5, batch_size=2, seed=0, first_epoch=0, epochs=2)]
        [2, 2, 1, 2, 2, 1]
    """
    key = int(np.random.SeedSequence([seed, 2]).generate_state(1, np.uint32)[0])

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(key, tf.int64), epoch])
        order = tf.argsort(tf.random.stateless_uniform([count], epoch_seed))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return batches.enumerate().map(
            lambda step, index: (index, tf.stack([epoch * 1_000_003 + key, step]))
        )

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)


def with_partners(
    stream: tf.data.Dataset,
    x: np.ndarray,
    y: np.ndarray,
    *,
    dataset: str,
    seed: int,
    first_epoch: int,
    steps_per_epoch: int,
    augment: bool = True,
) -> tf.data.Dataset:
    """``stream`` (:func:`train_epochs`) with a same-class partner per example (CS-KD).

    Each batch ``(images, labels)`` becomes ``({"images": images, "partners":
    partners}, labels)``, the anchors untouched. ``partners[j]`` is an example
    of ``labels[j]``'s class drawn uniformly with replacement (maybe the anchor
    itself; alinlab/cs-kd ``PairBatchSampler``), with its own pad-crop-flip,
    normalised. The draws and the augmentation are stateless functions of
    ``(seed, epoch, batch)``, the batch's place in the stream (whose epochs
    start at ``first_epoch`` and have ``steps_per_epoch`` batches): a resumed
    run sees the partners of the uninterrupted one.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import pipeline
        >>> x = np.zeros((10, 32, 32, 3), np.uint8); y = np.arange(10) % 2
        >>> stream = pipeline.train_epochs(x, y, dataset="cifar10", batch_size=4, seed=0,
        ...                                first_epoch=0, epochs=1)
        >>> pairs = pipeline.with_partners(stream, x, y, dataset="cifar10", seed=0, first_epoch=0,
        ...                                steps_per_epoch=3)
        >>> [tuple(images["partners"].shape) for images, _ in pairs]
        [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    """

    images, labels = _checked_arrays(x, y, dataset)
    _positive_int("steps_per_epoch", steps_per_epoch)
    order, starts, counts = (tf.constant(a, tf.int64) for a in class_members(labels.numpy()))
    key = int(np.random.SeedSequence([_seed_value(seed), 5]).generate_state(1, np.uint32)[0])

    def add_partners(position, batch):
        anchors, batch_labels = batch
        epoch = first_epoch + position // steps_per_epoch
        pair_seed = tf.stack([epoch * 1_000_003 + key, position % steps_per_epoch])
        draw_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(pair_seed, 2))
        classes = tf.cast(batch_labels, tf.int64)
        # Uniform over the class's members: full-range int64 draws modulo the class size
        # (a bias below 1e-14 for 50,000 examples).
        draws = tf.random.stateless_uniform(tf.shape(classes), draw_seed, dtype=tf.int64,
                                            minval=None, maxval=None)
        chosen = tf.gather(order, tf.gather(starts, classes)
                           + tf.math.floormod(draws, tf.gather(counts, classes)))
        partners = tf.gather(images, chosen)
        if augment:
            partners = augment_batch(partners, augment_seed)
        return {"images": anchors, "partners": normalize(partners, dataset)}, batch_labels

    pairs = stream.enumerate().map(add_partners, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return pairs.prefetch(_AUTOTUNE)


def eval_dataset(x: np.ndarray, y: np.ndarray, *, dataset: str, batch_size: int
                 ) -> tf.data.Dataset:
    """The evaluation pipeline: batches in order, normalised, no augmentation.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import data
        >>> x = np.zeros((5, 32, 32, 3), np.uint8); y = np.zeros(5, np.int32)
        >>> images, labels = next(iter(data.eval_dataset(x, y, dataset="cifar10", batch_size=8)))
        >>> tuple(images.shape), labels.dtype.name
        ((5, 32, 32, 3), 'int32')
    """
    images, labels = _checked_arrays(x, y, dataset)
    _positive_int("batch_size", batch_size)
    indices = tf.data.Dataset.range(len(x)).batch(batch_size)
    batches = indices.map(
        lambda index: (normalize(tf.gather(images, index), dataset), tf.gather(labels, index)),
        num_parallel_calls=_AUTOTUNE,
        deterministic=True,
    )
    return batches.prefetch(_AUTOTUNE)


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Pad-4 random-crop and random flip, with independent draws per example.

    Each example gets its own row and column offsets, uniform in ``[0, 8]``,
    into the batch padded with 4 zero pixels per side, and is flipped
    left-right with probability 0.5. Crop and flip are one gather with
    per-example row/column indices (a flip reverses the column indices), so
    the cost is one copy of the batch.

    Args:
        images: ``(batch, 32, 32, channels)`` images of any dtype (uint8 here:
            padding happens before normalisation, as in the papers).
        seed: shape ``(2,)`` integer seed of the stateless random draws.

    Returns:
        The augmented images, same shape and dtype.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import augment_batch
        >>> out = augment_batch(np.ones((8, 32, 32, 3), np.uint8), seed=[1, 2])
        >>> out.shape, int(np.asarray(out).min()), int(np.asarray(out).max())
        (TensorShape([8, 32, 32, 3]), 0, 1)
    """
    images = tf.convert_to_tensor(images)
    seed = tf.convert_to_tensor(seed)
    count = tf.shape(images)[0]
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform(
        [count, 2], offset_seed, minval=0, maxval=2 * PAD + 1, dtype=tf.int32
    )
    flips = tf.random.stateless_uniform([count, 1], flip_seed, minval=0, maxval=2, dtype=tf.int32)
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    span = tf.range(SIZE, dtype=tf.int32)[tf.newaxis, :]
    rows = offsets[:, :1] + span
    columns = offsets[:, 1:] + tf.where(flips > 0, SIZE - 1 - span, span)
    cropped_rows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped_rows, columns, axis=2, batch_dims=1)


def _train_dataset_per_example(
    x: np.ndarray,
    y: np.ndarray,
    *,
    dataset: str,
    batch_size: int,
    seed: int,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """The same augmentation as :func:`train_dataset`, one example at a time.

    ``tf.pad``, ``tf.image.stateless_random_crop`` and
    ``tf.image.stateless_random_flip_left_right`` in a parallel ``map`` before
    ``.batch()``. Kept as the reference design for tests and the benchmark;
    it is slower and costs more CPU than the batched design.
    """
    images, labels, indices = _shuffled_indices(
        x, y, dataset, batch_size, seed, shuffle_buffer
    )

    def make_example(index, example_seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
        image = tf.pad(tf.gather(images, index), [[PAD, PAD], [PAD, PAD], [0, 0]])
        image = tf.image.stateless_random_crop(image, (SIZE, SIZE, 3), seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image, tf.gather(labels, index)

    examples = tf.data.Dataset.zip((indices, _seed_stream(seed))).map(
        make_example, num_parallel_calls=_AUTOTUNE, deterministic=True
    )
    batches = examples.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda image, label: (normalize(image, dataset), label),
        num_parallel_calls=_AUTOTUNE,
        deterministic=True,
    )
    return batches.prefetch(_AUTOTUNE)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _shuffled_indices(x, y, dataset, batch_size, seed, shuffle_buffer):
    images, labels = _checked_arrays(x, y, dataset)
    _positive_int("batch_size", batch_size)
    _seed_value(seed)
    count = len(x)
    if shuffle_buffer is None:
        shuffle_buffer = count
    _positive_int("shuffle_buffer", shuffle_buffer)
    indices = tf.data.Dataset.range(count).shuffle(
        min(shuffle_buffer, count), seed=seed, reshuffle_each_iteration=True
    )
    return images, labels, indices


def _targets(labels, index, with_indices: bool):
    """A batch's targets: the labels, or ``{"labels": labels, "index": int32 rows}``."""
    if not with_indices:
        return labels
    return {"labels": labels, "index": tf.cast(index, tf.int32)}


def _seed_stream(seed: int) -> tf.data.Dataset:
    """An endless stream of shape-(2,) int64 stateless seeds, new each epoch."""
    augment_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0] >> 1)
    return tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True).batch(2)


def _checked_arrays(x, y, dataset):
    x, y = _arrays.checked_arrays(x, y, dataset)
    return tf.constant(x), tf.constant(y)

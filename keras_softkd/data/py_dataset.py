"""The input pipeline without TensorFlow: ``keras.utils.PyDataset`` over in-memory arrays.

For the JAX and PyTorch backends, on machines with no TensorFlow. Same
protocol as the tf.data pipeline (:mod:`keras_softkd.data.pipeline`): a full
shuffle per epoch, **per example** pad 4 zero pixels, random 32x32 crop
(offsets uniform in ``[0, 8]``) and horizontal flip with probability 0.5, then
``(x / 255 - mean) / std`` per channel in float32. The crop and the flip are one
NumPy gather per batch with per-example row and column indices (a flip reverses
the column indices), as in :func:`keras_softkd.data.augment_batch`. The draws
are NumPy's (Philox), so they follow the same distribution as the tf.data
pipeline's but are not the same numbers.

Determinism: epoch ``e``'s order and batch ``b``'s augmentation are pure
functions of ``(seed, e)`` and ``(seed, e, b)``; nothing depends on which
worker computes a batch, or when. :class:`TrainPyDataset` is, like
:func:`keras_softkd.data.train_epochs`, **one stream of batches over epochs
``first_epoch .. epochs - 1``**, read with ``fit(..., steps_per_epoch=ds.steps_per_epoch,
initial_epoch=first_epoch)``: a run resumed at epoch ``e`` sees exactly the
batches an uninterrupted run sees.

Where: ``augment_on="host"`` (the default) does all of this in NumPy;
``augment_on="device"`` draws the same offsets and flips on the host and
leaves the crop, the flip and the normalisation of the uint8 batch to the
backend's device (:mod:`keras_softkd.data.device_augment`, compiled on JAX),
so the host gathers uint8 rows and ships a quarter of the bytes.
:func:`keras_softkd.data.training_input` chooses ``"device"`` on JAX when its
default device is not the CPU.

Parallelism: ``workers > 1`` prepares the next batches ahead in a pool of
threads (NumPy releases the GIL in the gather and the arithmetic) or, with
``use_multiprocessing=True``, of processes. The pool lives inside the dataset;
Keras itself reads the batches in order from the main thread. Handing
``workers`` to Keras's own enqueuer instead would not be exact: Keras 3.15
peeks at the first batches to build the model and its enqueuer then replays
the peeked batches into the first epoch (seen as ``[1, 2, 3, 0', 1', ...]``
with ``workers=2``), shifting every later batch by a few.

Example:
    >>> import numpy as np
    >>> from keras_softkd.data import TrainPyDataset
    >>> x = np.zeros((10, 32, 32, 3), np.uint8); y = np.arange(10)
    >>> ds = TrainPyDataset(x, y, dataset="cifar10", batch_size=4, seed=0, epochs=2)
    >>> ds.steps_per_epoch, len(ds), [len(ds[i][1]) for i in range(len(ds))]
    (3, 6, [4, 4, 2, 4, 4, 2])
"""

from __future__ import annotations

import math
import multiprocessing
import threading
from concurrent import futures

import keras
import numpy as np

from keras_softkd.data import info as _info
from keras_softkd.data._arrays import checked_arrays as _checked_arrays
from keras_softkd.data._arrays import class_members
from keras_softkd.data._arrays import positive_int as _positive_int
from keras_softkd.data._arrays import seed_value as _seed_value
from keras_softkd.data.device_augment import DeviceAugmenter

PAD = 4
SIZE = 32
#: Where a batch is augmented and normalised: in NumPy on the host, or by
#: :class:`~keras_softkd.data.device_augment.DeviceAugmenter` on the backend's device.
AUGMENT_ON = ("host", "device")

# Stream identifiers of the seed sequences (any fixed, distinct integers).
_ORDER, _AUGMENT = 11, 12


# ---------------------------------------------------------------------------
# NumPy kernels
# ---------------------------------------------------------------------------


def normalize(images: np.ndarray, dataset: str) -> np.ndarray:
    """``(images / 255 - mean) / std`` per channel, in float32 (as :func:`keras_softkd.data.normalize`).

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import py_dataset
        >>> out = py_dataset.normalize(np.full((1, 32, 32, 3), 255, np.uint8), "cifar10")
        >>> np.round(out[0, 0, 0], 3)
        array([2.059, 2.126, 2.116], dtype=float32)
    """
    scale, offset = _normalization(dataset)
    return images.astype(np.float32) * scale + offset


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pad-4 random crop and random horizontal flip, independent draws per example.

    Args:
        images: ``(batch, 32, 32, channels)`` images of any dtype (uint8 here:
            padding with zeros happens before normalisation, as in the papers).
        rng: where the offsets (uniform in ``[0, 8]``, rows and columns) and
            the flips (probability 0.5) are drawn from.

    Returns:
        The augmented images, same shape and dtype.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import py_dataset
        >>> out = py_dataset.augment_batch(np.ones((8, 32, 32, 3), np.uint8), np.random.default_rng(0))
        >>> out.shape, int(out.min()), int(out.max())
        ((8, 32, 32, 3), 0, 1)
    """
    offsets, flips = draw_augmentation(rng, len(images))
    return crop_and_flip(images, offsets, flips)


def draw_augmentation(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example crop offsets ``(count, 2)`` in ``[0, 8]`` and flips ``(count,)``."""
    offsets = rng.integers(0, 2 * PAD + 1, size=(count, 2))
    flips = rng.integers(0, 2, size=count).astype(bool)
    return offsets, flips


def crop_and_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Crop ``images`` padded with 4 zeros at ``offsets``, then flip where ``flips``: one gather."""
    count = len(images)
    padded = np.pad(images, [(0, 0), (PAD, PAD), (PAD, PAD), (0, 0)])
    span = np.arange(SIZE)
    rows = offsets[:, :1] + span  # (count, 32)
    columns = offsets[:, 1:] + np.where(flips[:, None], SIZE - 1 - span, span)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], columns[:, None, :]]


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order of the ``count`` examples in epoch ``epoch``: a function of ``(seed, epoch)`` only."""
    return _rng(seed, _ORDER, epoch).permutation(count)


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of batch ``batch``'s augmentation in epoch ``epoch``."""
    return _rng(seed, _AUGMENT, epoch, batch)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(list(key))))


# ---------------------------------------------------------------------------
# PyDatasets
# ---------------------------------------------------------------------------


class _PrefetchingPyDataset(keras.utils.PyDataset):
    """A finite sequence of batches ``self.make(i)``, computed ahead by an internal pool.

    Keras is given ``workers=1`` (it calls ``__getitem__`` in order, in its own
    thread); with ``workers > 1`` each call also submits the next
    ``max_queue_size`` batches to a thread or process pool and returns batch
    ``i`` from it. ``make`` must be a pure function of ``i``.
    """

    def __init__(
        self, x, y, dataset, batch_size, workers, use_multiprocessing, max_queue_size, batch_multiple,
        augment_on="host",
    ):
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.images, self.labels = _checked_arrays(x, y, dataset)
        self.dataset = dataset
        if augment_on not in AUGMENT_ON:
            raise ValueError(
                f"`augment_on` must be one of {list(AUGMENT_ON)}; got augment_on={augment_on!r}."
            )
        if augment_on == "device" and use_multiprocessing:
            raise ValueError(
                "augment_on='device' hands batches to the backend's device from threads; "
                "use_multiprocessing=True would do it from forked processes: choose one."
            )
        self.augment_on = augment_on
        self._device = DeviceAugmenter(dataset) if augment_on == "device" else None
        self.batch_size = _positive_int("batch_size", batch_size)
        self.batch_multiple = _positive_int("batch_multiple", batch_multiple)
        if self.batch_size % self.batch_multiple:
            raise ValueError(
                f"`batch_size` must be a multiple of `batch_multiple` (the devices each batch is "
                f"split over); got batch_size={self.batch_size}, batch_multiple={self.batch_multiple}."
            )
        self.prefetch_workers = _positive_int("workers", workers)
        self.prefetch_processes = bool(use_multiprocessing)
        self.prefetch_depth = _positive_int("max_queue_size", max_queue_size)
        self._pool = None
        self._pending: dict[int, futures.Future] = {}
        self._lock = threading.Lock()

    #: How many batches past ``len(self)`` ``__getitem__`` serves (:class:`TrainPyDataset`: 1).
    read_past_end = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def make(self, index: int):
        raise NotImplementedError

    def _finish(self, images: np.ndarray, rng: np.random.Generator | None):
        """uint8 images -> the float32 batch: padded, cropped and flipped with ``rng``'s draws (none
        without ``rng``), normalised; in NumPy, or on the backend's device (``augment_on``)."""
        if self._device is None:
            if rng is not None:
                images = augment_batch(images, rng)
            return normalize(images, self.dataset)
        if rng is None:
            return self._device.normalize(images)
        offsets, flips = draw_augmentation(rng, len(images))  # augment_batch's draws
        return self._device.augment(images, offsets, flips)

    def __getitem__(self, index: int):
        index = self._checked_index(index)
        if self.prefetch_workers == 1 and not self.prefetch_processes:
            return self.make(index)
        with self._lock:
            pool = self._get_pool()
            # Batches before `index` were consumed or skipped: drop them.
            for stale in [i for i in self._pending if i < index]:
                self._pending.pop(stale).cancel()
            stop = min(index + 1 + self.prefetch_depth, len(self) + self.read_past_end)
            for ahead in range(index, stop):
                if ahead not in self._pending:
                    if self.prefetch_processes:  # the worker's copy of the dataset makes it
                        self._pending[ahead] = pool.submit(_make_in_worker, ahead)
                    else:
                        self._pending[ahead] = pool.submit(self.make, ahead)
            future = self._pending.pop(index)
        return future.result()

    def close(self) -> None:
        """Stops the prefetching pool (it also stops with the process)."""
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def _get_pool(self):
        if self._pool is None:
            if self.prefetch_processes:
                # fork: the arrays reach the workers without pickling. (spawn would pickle
                # the whole dataset into each worker.)
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                self._pool = futures.ProcessPoolExecutor(
                    self.prefetch_workers,
                    mp_context=multiprocessing.get_context(method),
                    initializer=_set_worker_dataset,
                    initargs=(self,),
                )
            else:
                self._pool = futures.ThreadPoolExecutor(
                    self.prefetch_workers, thread_name_prefix="keras_softkd_data"
                )
        return self._pool

    def _checked_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Batch indices are integers; got {index!r}.")
        if not 0 <= index < len(self) + self.read_past_end:
            raise IndexError(self._index_error(int(index)))
        return int(index)

    def _index_error(self, index: int) -> str:
        return f"Batch index {index} is outside [0, {len(self)})."

    def __getstate__(self):  # the pool and the lock stay in the parent
        state = dict(self.__dict__)
        state.update(_pool=None, _pending={}, _lock=None, _device=None)  # no device there
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


_WORKER_DATASET = None


def _set_worker_dataset(dataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset


def _make_in_worker(index):
    """Batch ``index`` of the dataset a pool process received once, at its start."""
    return _WORKER_DATASET.make(index)


class TrainPyDataset(_PrefetchingPyDataset):
    """Training batches of epochs ``first_epoch .. epochs - 1``, one stream (like ``train_epochs``).

    Batch ``i`` of the stream is batch ``i % steps_per_epoch`` of epoch
    ``first_epoch + i // steps_per_epoch``: the examples at the epoch's order
    ``epoch_order(seed, epoch, N)``, each padded, cropped and flipped with its
    own draws from ``batch_rng(seed, epoch, batch)``, then normalised. The last
    batch of an epoch is smaller when ``batch_size`` does not divide ``N``.

    Several devices (``keras.distribution.DataParallel`` on JAX) need every
    batch to split evenly: with ``batch_multiple = d`` the last batch of each
    epoch is cut to a multiple of ``d`` (at most ``d - 1`` examples, the last
    of that epoch's order, so different ones every epoch, sit the epoch out;
    ``examples_per_epoch`` says how many remain).

    Use it with ``fit(ds, epochs=epochs, initial_epoch=first_epoch,
    steps_per_epoch=ds.steps_per_epoch)``. Keras is told the stream has no
    length (``num_batches`` is ``None``), so ``fit`` reads it across epochs
    without restarting it and ignores ``shuffle`` (the order is the dataset's
    own); ``len(ds)`` is the stream's number of batches.

    Args:
        x: uint8 images ``(N, 32, 32, 3)``.
        y: integer labels ``(N,)`` in ``[0, num_classes)``.
        dataset: whose mean/std normalise the images (``"cifar10"``, ...).
        batch_size: examples per batch.
        seed: integer in ``[0, 2**63)``.
        first_epoch: the stream's first epoch (a resumed run's epoch).
        epochs: one past the stream's last epoch (``fit``'s ``epochs``).
        augment: pad-crop-flip; ``False`` only shuffles and normalises.
        workers: threads (or processes) preparing batches ahead; 1: none,
            the batch is made when Keras asks for it.
        use_multiprocessing: processes instead of threads.
        max_queue_size: how many batches ahead the workers prepare.
        batch_multiple: every batch's size is a multiple of it (the number of
            devices each batch is split over); ``batch_size`` must be one.
        with_indices: batches ``(images, {"labels": y, "index": i})``, ``i``
            (int32) each example's row in ``x`` (for a per-example table, PS-KD).
        augment_on: ``"host"``, crop, flip and normalisation in NumPy (images
            are NumPy arrays); ``"device"``, the same draws applied to the uint8
            images by :class:`~keras_softkd.data.device_augment.DeviceAugmenter`
            on the backend's device (images are tensors of the backend; the
            pixels equal the host's, the values to float32 rounding).

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import TrainPyDataset
        >>> x = np.zeros((10, 32, 32, 3), np.uint8); y = np.arange(10)
        >>> ds = TrainPyDataset(x, y, dataset="cifar10", batch_size=4, seed=0, first_epoch=1, epochs=3)
        >>> images, labels = ds[0]
        >>> images.shape, images.dtype.name, labels.dtype.name
        ((4, 32, 32, 3), 'float32', 'int32')
        >>> four_devices = TrainPyDataset(x, y, dataset="cifar10", batch_size=4, seed=0, batch_multiple=4)
        >>> four_devices.examples_per_epoch, [len(four_devices[i][1]) for i in range(len(four_devices))]
        (8, [4, 4])
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        dataset: str,
        batch_size: int,
        seed: int,
        first_epoch: int = 0,
        epochs: int = 1,
        augment: bool = True,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        batch_multiple: int = 1,
        with_indices: bool = False,
        augment_on: str = "host",
    ):
        super().__init__(
            x, y, dataset, batch_size, workers, use_multiprocessing, max_queue_size, batch_multiple,
            augment_on,
        )
        self.with_indices = bool(with_indices)
        self.seed = _seed_value(seed)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"`epochs` must be an integer >= 1; got epochs={epochs!r}.")
        if isinstance(first_epoch, bool) or not isinstance(first_epoch, (int, np.integer)) or not (
            0 <= first_epoch < epochs
        ):
            raise ValueError(
                f"`first_epoch` must be an integer in [0, epochs={epochs}); got "
                f"first_epoch={first_epoch!r}."
            )
        self.first_epoch, self.epochs = int(first_epoch), int(epochs)
        self.augment = bool(augment)
        self._order_cache: tuple[int, np.ndarray] | None = None
        n = len(self.images)
        self.examples_per_epoch = n - (n % self.batch_size) % self.batch_multiple
        if self.examples_per_epoch == 0:
            raise ValueError(
                f"{n} training examples cannot fill one batch split over "
                f"batch_multiple={self.batch_multiple} devices: give at least {self.batch_multiple}."
            )

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch, ``ceil(examples_per_epoch / batch_size)``: ``fit``'s ``steps_per_epoch``."""
        return math.ceil(self.examples_per_epoch / self.batch_size)

    #: Keras's JAX trainer on an accelerator reads one batch ahead of the step it runs (Keras
    #: 3.15, ``_one_batch_ahead_iterator``): after the stream's last batch it asks for batch
    #: ``len(self)`` and drops it. That one (the first of epoch ``epochs``) is served.
    read_past_end = 1

    @property
    def num_batches(self):
        return None  # one stream over epochs: fit must not restart or shuffle it

    def __len__(self) -> int:
        return (self.epochs - self.first_epoch) * self.steps_per_epoch

    def position(self, index: int) -> tuple[int, int]:
        """``(epoch, batch)`` of stream index ``index``."""
        epoch, batch = divmod(int(index), self.steps_per_epoch)
        return self.first_epoch + epoch, batch

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        """The example indices of ``batch`` in ``epoch``."""
        cached = self._order_cache
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_order(self.seed, epoch, len(self.images)))
            self._order_cache = cached  # one tuple, replaced atomically across threads
        stop = min((batch + 1) * self.batch_size, self.examples_per_epoch)
        return cached[1][batch * self.batch_size : stop]

    def make(self, index: int):
        epoch, batch = self.position(index)
        chosen = self.indices(epoch, batch)
        rng = batch_rng(self.seed, epoch, batch) if self.augment else None
        return self._finish(self.images[chosen], rng), self._targets(chosen)

    def _targets(self, chosen: np.ndarray):
        """The labels of ``chosen``, or ``{"labels": ..., "index": chosen}`` (int32) ``with_indices``."""
        if not self.with_indices:
            return self.labels[chosen]
        return {"labels": self.labels[chosen], "index": chosen.astype(np.int32)}

    def _index_error(self, index: int) -> str:
        return (
            f"Batch index {index} is past the stream of epochs {self.first_epoch} .. "
            f"{self.epochs - 1} ({len(self)} batches): call fit(..., epochs={self.epochs}, "
            f"initial_epoch={self.first_epoch}, steps_per_epoch={self.steps_per_epoch})."
        )


# ---------------------------------------------------------------------------
# CS-KD: a same-class partner per example
# ---------------------------------------------------------------------------

_PARTNERS = 21  # stream identifier of the partner draws and their augmentation


def draw_partners(anchor_labels: np.ndarray, members, rng: np.random.Generator) -> np.ndarray:
    """For each anchor, the index of a training example of its class: uniform, with
    replacement, possibly the anchor itself (alinlab/cs-kd ``PairBatchSampler``).

    ``members`` is :func:`class_members` of the training labels.
    """
    order, starts, counts = members
    anchor_labels = np.asarray(anchor_labels).astype(np.int64)
    return order[starts[anchor_labels] + rng.integers(0, counts[anchor_labels])]


def partner_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of batch ``batch``'s partners (draws, then augmentation) in ``epoch``."""
    return _rng(seed, _PARTNERS, epoch, batch)


class TrainPairsPyDataset(TrainPyDataset):
    """:class:`TrainPyDataset` with a same-class partner per example (CS-KD).

    Batch ``i`` is ``({"images": anchors, "partners": partners}, labels)``:
    ``anchors`` and ``labels`` exactly :class:`TrainPyDataset`'s batch ``i``
    (same order, augmentation and ``batch_multiple`` cut); ``partners[j]`` an
    example of ``labels[j]``'s class, drawn uniformly with replacement (maybe
    the anchor itself), padded, cropped and flipped with its own draws, then
    normalised. Draws and augmentation come from ``partner_rng(seed, epoch,
    batch)``: a resumed run sees the partners of the uninterrupted one.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data.py_dataset import TrainPairsPyDataset
        >>> x = np.zeros((10, 32, 32, 3), np.uint8); y = np.arange(10) % 2
        >>> images, labels = TrainPairsPyDataset(x, y, dataset="cifar10", batch_size=4, seed=0)[0]
        >>> sorted(images), images["partners"].shape
        (['images', 'partners'], (4, 32, 32, 3))
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, **kwargs):
        super().__init__(x, y, **kwargs)
        self.members = class_members(self.labels)

    def make(self, index: int):
        anchors, labels = super().make(index)
        rng = partner_rng(self.seed, *self.position(index))
        partners = self.images[draw_partners(labels, self.members, rng)]
        return {"images": anchors, "partners": self._finish(partners, rng if self.augment else None)}, labels


class EvalPyDataset(_PrefetchingPyDataset):
    """Evaluation batches: in order, normalised, no augmentation.

    With ``batch_multiple = d`` (several devices, each batch split evenly over
    them) and a last batch that ``d`` does not divide, that batch is padded to
    a multiple of ``d`` with copies of its first example, and every batch is
    ``(images, labels, weights)`` with weight 0 on the ``padding`` examples:
    ``evaluate``'s metrics leave them out, and ``predict`` returns them as its
    last ``padding`` rows (keep ``[:len(x)]``).

    Example:
        >>> import numpy as np
        >>> from keras_softkd.data import EvalPyDataset
        >>> x = np.zeros((5, 32, 32, 3), np.uint8); y = np.zeros(5, np.int32)
        >>> ds = EvalPyDataset(x, y, dataset="cifar10", batch_size=4)
        >>> len(ds), ds[1][0].shape
        (2, (1, 32, 32, 3))
        >>> padded = EvalPyDataset(x, y, dataset="cifar10", batch_size=4, batch_multiple=2)
        >>> padded.padding, padded[1][0].shape, padded[1][2].tolist()
        (1, (2, 32, 32, 3), [1.0, 0.0])
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        dataset: str,
        batch_size: int,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        batch_multiple: int = 1,
        augment_on: str = "host",
    ):
        super().__init__(
            x, y, dataset, batch_size, workers, use_multiprocessing, max_queue_size, batch_multiple,
            augment_on,
        )
        last_batch = len(self.images) - (len(self) - 1) * self.batch_size
        self.padding = -last_batch % self.batch_multiple

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def make(self, index: int):
        chosen = np.arange(index * self.batch_size, min((index + 1) * self.batch_size, len(self.images)))
        if not self.padding:
            return self._finish(self.images[chosen], None), self.labels[chosen]
        weights = np.ones(len(chosen), np.float32)
        if index == len(self) - 1:
            chosen = np.concatenate([chosen, np.full(self.padding, chosen[0])])
            weights = np.concatenate([weights, np.zeros(self.padding, np.float32)])
        return self._finish(self.images[chosen], None), self.labels[chosen], weights


# ---------------------------------------------------------------------------
# Helpers (the same checks and messages as the tf.data pipeline's)
# ---------------------------------------------------------------------------


def _normalization(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    return _info.normalization(dataset)

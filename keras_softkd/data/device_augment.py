"""Pad-crop-flip and normalisation of uint8 batches on the backend's device: the host ships uint8.

The NumPy pipeline (:mod:`keras_softkd.data.py_dataset`) draws each example's crop offsets and
flip on the host (``draw_augmentation``, the same draws either way) and, with
``augment_on="device"``, hands the uint8 images and those draws to :class:`DeviceAugmenter`,
which computes in ``keras.ops`` what ``crop_and_flip`` and ``normalize`` compute in NumPy:

* pad 4 zero pixels, crop 32 x 32 at ``(row, column)`` offsets in ``[0, 8]``, reverse the
  columns where flipped: one gather of rows, one of columns, from integer indices, so the
  pixels equal the host's exactly;
* ``x * (1 / (255 std)) + (-mean / std)`` per channel in float32, the host's formula with the
  same float32 constants (equal to float32 rounding: XLA may fuse the multiply and the add).

On JAX the function is compiled (``jax.jit``) once per batch shape and runs on the default
device, so a GPU receives a quarter of the bytes and the host does no per-pixel work. Other
backends run the same ops eagerly. Where this pays is a question for the accelerator:
``data.training_input``'s ``augment_on="auto"`` uses it on JAX when its default device is not
the CPU (on a CPU the host's NumPy path is used, unchanged).

Example:
    >>> import numpy as np
    >>> from keras_softkd.data.device_augment import DeviceAugmenter
    >>> images = np.full((2, 32, 32, 3), 255, np.uint8)
    >>> out = DeviceAugmenter("cifar10").augment(images, np.array([[0, 0], [4, 4]]), np.array([False, True]))
    >>> out = np.asarray(out)
    >>> out.shape, round(float(out[0, 0, 0, 0]), 3), round(float(out[1, 0, 0, 0]), 3)
    ((2, 32, 32, 3), -1.989, 2.059)
"""

from __future__ import annotations

import keras
import numpy as np

from keras_softkd.data import info as _info

PAD = 4
SIZE = 32


def crop_flip_normalize(images, offsets, flips, scale, shift):
    """uint8 ``(n, 32, 32, c)`` images -> float32: padded, cropped at ``offsets`` ``(n, 2)``,
    flipped where ``flips`` ``(n,)``, then ``x * scale + shift`` per channel (``keras.ops``)."""
    ops = keras.ops
    count, channels = ops.shape(images)[0], ops.shape(images)[-1]
    padded = ops.pad(images, [(0, 0), (PAD, PAD), (PAD, PAD), (0, 0)])
    span = ops.arange(SIZE, dtype="int32")
    offsets = ops.cast(offsets, "int32")
    rows = offsets[:, :1] + span[None, :]
    columns = offsets[:, 1:] + ops.where(ops.cast(flips, "bool")[:, None], SIZE - 1 - span, span)
    width = SIZE + 2 * PAD
    picked = ops.take_along_axis(
        padded, ops.broadcast_to(rows[:, :, None, None], (count, SIZE, width, channels)), axis=1)
    picked = ops.take_along_axis(
        picked, ops.broadcast_to(columns[:, None, :, None], (count, SIZE, SIZE, channels)), axis=2)
    return normalize(picked, scale, shift)


def normalize(images, scale, shift):
    """``images * scale + shift`` in float32 (``keras.ops``)."""
    return keras.ops.cast(images, "float32") * scale + shift


class DeviceAugmenter:
    """:func:`crop_flip_normalize` and :func:`normalize` for one dataset's statistics, compiled on JAX.

    Args:
        dataset: whose channel mean and std normalise (``"cifar10"``, ...).
    """

    def __init__(self, dataset: str):
        scale, shift = _info.normalization(dataset)  # the host pipeline's float32 constants
        augment = lambda images, offsets, flips: crop_flip_normalize(  # noqa: E731
            images, offsets, flips, scale, shift)
        plain = lambda images: normalize(images, scale, shift)  # noqa: E731
        if keras.backend.backend() == "jax":
            import jax

            augment, plain = jax.jit(augment), jax.jit(plain)
        self._augment, self._normalize = augment, plain

    def augment(self, images: np.ndarray, offsets: np.ndarray, flips: np.ndarray):
        """Cropped, flipped, normalised float32 images, a tensor of the backend."""
        return self._augment(images, np.asarray(offsets, np.int32), np.asarray(flips, bool))

    def normalize(self, images: np.ndarray):
        """Normalised float32 images, a tensor of the backend."""
        return self._normalize(images)

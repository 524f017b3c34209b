"""NumPy references for the pad-crop-flip augmentation and normalisation, shared by the
tf.data pipeline tests (test_data.py) and the PyDataset tests (test_py_dataset.py)."""

from __future__ import annotations

import numpy as np

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


def coordinate_images(count: int) -> np.ndarray:
    """Pixel (r, c) holds (r + 1, c + 1, 200): every position is recognisable, padding is 0."""
    grid = np.zeros((32, 32, 3), np.uint8)
    grid[..., 0] = np.arange(1, 33)[:, None]
    grid[..., 1] = np.arange(1, 33)[None, :]
    grid[..., 2] = 200
    return np.repeat(grid[None], count, axis=0)


def reference_crop_flip(images, rows, columns, flips):
    """Per example: pad 4 zeros, crop at (rows, columns) in [0, 8], flip where flips."""
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    out = np.stack([padded[i, r:r + 32, c:c + 32] for i, (r, c) in enumerate(zip(rows, columns))])
    out[flips] = out[flips, :, ::-1]
    return out


def recover_parameters(out):
    """Offsets and flips from augmented coordinate images (centre pixels are never padding)."""
    centre_row = out[:, 16, 16, 0].astype(int)  # = 16 + row offset - 4 + 1
    centre_column = out[:, 16, 16, 1].astype(int)
    flips = out[:, 16, 17, 1].astype(int) < centre_column  # columns run backwards
    columns = np.where(flips, centre_column - 12, centre_column - 13)
    return centre_row - 13, columns, flips


def denormalize(images: np.ndarray) -> np.ndarray:
    """Normalised CIFAR-10 images back to 0..255 pixel values (float64)."""
    return (np.asarray(images, np.float64) * CIFAR10_STD + CIFAR10_MEAN) * 255.0

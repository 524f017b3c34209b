"""Throughput of the training input pipeline alone (no model), per design.

Reads the real CIFAR-10 training file, builds each pipeline design, runs one
untimed warm-up epoch, then times ``--repeats`` epochs and reports the median
images/s and the CPU time the process spent per 1000 images (on a machine
where the model trains on the same cores, the CPU cost is what the model
loses). Designs:

* ``batched`` -- ``keras_softkd.data.train_dataset``: shuffle indices, batch,
  gather, one vectorised per-example crop+flip gather per batch (the default).
* ``per_example`` -- pad + ``stateless_random_crop`` + ``stateless_random_flip``
  in a parallel ``map`` before ``.batch()``.
* ``no_augment`` -- shuffle and normalise only (the floor).
* ``pydataset`` -- ``keras_softkd.data.TrainPyDataset`` (the JAX and PyTorch pipeline), its
  batches made one after another in this thread: shuffle, gather, pad-crop-flip and normalise in
  NumPy.
* ``pydataset_device_share`` -- the same with ``augment_on="device"``, the device's part left
  out: what the host does when the accelerator crops, flips and normalises (the uint8 rows and
  the draws).

Usage:
    python benchmarks/input_pipeline.py --data_dir=/path/to/data --repeats=5 \
        --output=out/input_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_softkd  # noqa: E402,F401  (first: TensorFlow's start-up lines stay off the terminal)
import tensorflow as tf  # noqa: E402

from keras_softkd import data  # noqa: E402
from keras_softkd.data import pipeline  # noqa: E402

DESIGNS = {
    "batched": lambda x, y, args: data.train_dataset(
        x, y, dataset="cifar10", batch_size=args.batch_size, seed=0
    ),
    "per_example": lambda x, y, args: pipeline._train_dataset_per_example(
        x, y, dataset="cifar10", batch_size=args.batch_size, seed=0
    ),
    "no_augment": lambda x, y, args: data.train_dataset(
        x, y, dataset="cifar10", batch_size=args.batch_size, seed=0, augment=False
    ),
    "pydataset": lambda x, y, args: _batches(data.TrainPyDataset(
        x, y, dataset="cifar10", batch_size=args.batch_size, seed=0)),
    "pydataset_device_share": lambda x, y, args: _batches(_without_device(data.TrainPyDataset(
        x, y, dataset="cifar10", batch_size=args.batch_size, seed=0, augment_on="device"))),
}


class _Batches:
    """One epoch of a PyDataset's batches, made in order when iterated (again each time)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return (self.dataset[i] for i in range(self.dataset.steps_per_epoch))


def _batches(dataset) -> _Batches:
    return _Batches(dataset)


class _NoDevice:
    """Stands in for the device's crop, flip and normalisation: hands the uint8 batch back."""

    def augment(self, images, offsets, flips):
        return images

    def normalize(self, images):
        return images


def _without_device(dataset):
    dataset._device = _NoDevice()
    return dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_SOFTKD_DATA_DIR"),
                        help="folder with cifar10_train.npz (default: $KERAS_SOFTKD_DATA_DIR)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per design")
    parser.add_argument("--images", type=int, default=None,
                        help="use only the first N training images (default: all 50000)")
    parser.add_argument("--designs", default=",".join(DESIGNS),
                        help=f"comma-separated subset of {list(DESIGNS)}")
    parser.add_argument("--output", default="out/input_pipeline.json", help="JSON results file")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data_dir is required (or set KERAS_SOFTKD_DATA_DIR)")
    unknown = set(args.designs.split(",")) - set(DESIGNS)
    if unknown:
        parser.error(f"--designs must be from {list(DESIGNS)}; got unknown {sorted(unknown)}")
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("--repeats and --batch_size must be >= 1")
    return args


def time_epoch(dataset) -> tuple[int, float, float]:
    """(images, wall seconds, process CPU seconds) of one full pass."""
    count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for images, _ in dataset:
        count += int(images.shape[0])
    return count, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y = data.load("cifar10", "train", data_dir=args.data_dir)
    if args.images:
        x, y = x[: args.images], y[: args.images]
    results = {}
    for name in args.designs.split(","):
        dataset = DESIGNS[name](x, y, args)
        time_epoch(dataset)  # warm-up: tracing, thread pools, autotuning
        runs = [time_epoch(dataset) for _ in range(args.repeats)]
        rates = [count / wall for count, wall, _ in runs]
        cpu_per_1k = [1000 * cpu / count for count, _, cpu in runs]
        results[name] = {
            "images_per_s_median": statistics.median(rates),
            "images_per_s_all": rates,
            "cpu_s_per_1k_images_median": statistics.median(cpu_per_1k),
            "images_per_epoch": runs[0][0],
        }
    report = {
        "benchmark": "input_pipeline",
        "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
        "dataset": "cifar10 train",
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "tensorflow": tf.__version__,
        "results": results,
    }
    print(f"{'design':<24} {'images/s (median)':>18} {'min':>9} {'max':>9} "
          f"{'CPU s / 1k images':>18}")
    for name, row in results.items():
        print(f"{name:<24} {row['images_per_s_median']:>18,.0f} {min(row['images_per_s_all']):>9,.0f} "
              f"{max(row['images_per_s_all']):>9,.0f} {row['cpu_s_per_1k_images_median']:>18.3f}")
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""What MrKD's memory copies teach at the start of training, on real CIFAR-10 images.

For each network: a fresh ``MrKDModel(models.build(name, 10), copies=3, ...)``
and 256 real test images (normalised as the pipeline does).

* **initial weights** (what the copies hold before their first refresh, and
  what they teach under ``initial_weights_teach=True``): the copies' logits in
  inference mode, summarised by :func:`keras_softkd.metrics.teacher_summary`
  at t = 3 (max |logit|, classes predicted, mean top probability), beside the
  same network's max |logit| in training mode.
* **``--steps`` of MrKD-3 training**, both ways, from the same initial weights
  and the same real training batches (lr 0.1, momentum 0.9, batch 128, kappa =
  ``--steps``, so the first refresh is the last step): the student's classes
  predicted on the test images and its test accuracy, and the teacher
  diagnostics of the run (``teacher_top_probability``, ``teaching_copies``);
  with the fix also what copy 1 (refreshed at the last step) then predicts.

    python benchmarks/initial_teachers.py --data_dir=../shared/data \
        --models=resnet20,resnet56,resnet110 --steps=24

Writes a Markdown table to stdout and ``--json`` (default
``benchmarks/results/initial_teachers.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_softkd  # noqa: E402,F401  (first: TensorFlow's start-up lines stay off the terminal)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_softkd import MrKDModel, data, metrics, models  # noqa: E402
from keras_softkd._io import write_json_atomic  # noqa: E402
from keras_softkd.data.py_dataset import normalize  # noqa: E402  (NumPy, as the pipeline)
from keras_softkd.optimizers import PyTorchSGD  # noqa: E402

TEMPERATURE = 3.0


def real_images(data_dir: str, test_images: int = 256, train_images: int = 128 * 24, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: shuffled real CIFAR-10, normalised."""
    x_train, y_train = data.load("cifar10", "train", data_dir)
    x_test, y_test = data.load("cifar10", "test", data_dir)
    rng = np.random.default_rng(seed)
    train = rng.permutation(len(x_train))[:train_images]  # the train split is sorted by class
    test = rng.permutation(len(x_test))[:test_images]
    return (normalize(x_train[train], "cifar10"), y_train[train],
            normalize(x_test[test], "cifar10"), y_test[test])


def fresh_mrkd(name: str, interval: int, seed: int = 0, **kwargs) -> MrKDModel:
    keras.utils.set_random_seed(seed)
    return MrKDModel(models.build(name, 10), copies=3, interval=interval, alpha=0.1,
                     temperature=TEMPERATURE, **kwargs)


def initial_weights(name: str, x_test: np.ndarray, seed: int = 0) -> dict:
    """The copies' logits at initialisation (inference mode) and the network's in training mode."""
    mrkd = fresh_mrkd(name, interval=1, seed=seed, initial_weights_teach=True)
    copy_logits = keras.ops.convert_to_numpy(mrkd.teacher_logits(x_test))[0]
    training = keras.ops.convert_to_numpy(mrkd.student(x_test, training=True))
    return {
        **metrics.teacher_summary(copy_logits, TEMPERATURE),
        "training_mode_max_abs_logit": float(np.max(np.abs(training))),
    }


def short_run(name: str, x_train, y_train, x_test, y_test, steps: int, literal: bool,
              seed: int = 0) -> dict:
    """``steps`` MrKD-3 steps at kappa = ``steps``; the student and copy 1 afterwards."""
    mrkd = fresh_mrkd(name, interval=steps, seed=seed, initial_weights_teach=literal)
    mrkd.compile(optimizer=PyTorchSGD(0.1, momentum=0.9, l2=5e-4))
    start = time.perf_counter()
    history = mrkd.fit(x_train[: 128 * steps], y_train[: 128 * steps], batch_size=128,
                       epochs=1, shuffle=False, verbose=0).history
    seconds = time.perf_counter() - start
    if keras.backend.backend() == "jax":
        mrkd.jax_state_sync()
    student = keras.ops.convert_to_numpy(mrkd.student.predict(x_test, verbose=0))
    copy_1 = keras.ops.convert_to_numpy(mrkd.teacher_logits(x_test))[0]
    return {
        "student_classes_predicted": metrics.teacher_summary(student)["classes_predicted"],
        "student_test_accuracy": float(np.mean(np.argmax(student, 1) == y_test)),
        "teacher_top_probability": history["teacher_top_probability"][0],
        "teacher_accuracy": history["teacher_accuracy"][0],
        "teaching_copies": history["teaching_copies"][0],
        "copy_1_after": metrics.teacher_summary(copy_1, TEMPERATURE),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="folder with cifar10_{train,test}.npz")
    parser.add_argument("--models", default="resnet20,resnet56,resnet110,resnet164,preresnet110,"
                        "preresnet164,wrn16_8,resnext29_8x64d")
    parser.add_argument("--steps", type=int, default=24, help="training steps (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/initial_teachers.json")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = real_images(args.data_dir, train_images=128 * max(args.steps, 1),
                                                   seed=args.seed)
    rows = {}
    for name in args.models.split(","):
        row = {"initial": initial_weights(name, x_test, args.seed)}
        if args.steps:
            for literal in (True, False):
                key = "literal" if literal else "fixed"
                row[key] = short_run(name, x_train, y_train, x_test, y_test, args.steps, literal,
                                     args.seed)
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", file=sys.stderr, flush=True)

    print(f"| network | initial copies: max abs logit | classes predicted | mean top probability "
          f"at t = {TEMPERATURE:g} | training mode: max abs logit |", end="")
    if args.steps:
        print(f" after {args.steps} steps, literal: student's classes / test acc. / teacher top p "
              f"| fixed: student's classes / test acc. | fixed: copy 1 after its first refresh: "
              f"max abs logit / classes / top p |")
        print("| --- " * 8 + "|")
    else:
        print("\n" + "| --- " * 5 + "|")
    for name, row in rows.items():
        first = row["initial"]
        line = (f"| {name} | {first['max_abs_logit']:.3g} | {first['classes_predicted']:.0f} | "
                f"{first['mean_top_probability']:.3f} | {first['training_mode_max_abs_logit']:.3g} |")
        if args.steps:
            lit, fix = row["literal"], row["fixed"]
            copy = fix["copy_1_after"]
            line += (f" {lit['student_classes_predicted']:.0f} / {100 * lit['student_test_accuracy']:.1f}%"
                     f" / {lit['teacher_top_probability']:.3f} |"
                     f" {fix['student_classes_predicted']:.0f} / {100 * fix['student_test_accuracy']:.1f}% |"
                     f" {copy['max_abs_logit']:.3g} / {copy['classes_predicted']:.0f} / "
                     f"{copy['mean_top_probability']:.3f} |")
        print(line)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, {"steps": args.steps, "seed": args.seed, "temperature": TEMPERATURE,
                            "test_images": len(x_test), "backend": keras.backend.backend(),
                            "networks": rows})
    print(f"Wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

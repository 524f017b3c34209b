"""MrKD's cost: training-step time of MrKD-n as a ratio to plain cross-entropy, and refresh cost.

Usage (results in benchmarks/README.md):

    python benchmarks/mrkd_overhead.py --model=resnet20 --batch_size=128 --repeats=3 \
        --output=benchmarks/results/mrkd_overhead.json

Method: the same network, data and optimizer for every variant; each variant is
trained for ``--steps`` steps per repeat and the variants are interleaved
(CE, MrKD-1, MrKD-3, CE, ...) so that a noisy machine slows all of them alike.
A step's time is read between consecutive ``on_train_batch_end`` calls
(``steps_per_execution=1``), after ``--warmup`` steps; the figure per variant is
the median over all repeats, and the ratio is to CE's median of the same run.

The refresh is timed on its own: the compiled refresh (shift n copies, copy
the student) is run many times and its median is reported for the first and
the last calls, to show it does not grow with the number of steps. The copies
never refresh during the step timings (interval larger than the run): the
steady state of MrKD is the forward passes, a refresh every kappa steps adds
the refresh time once per kappa steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_softkd import MrKDModel, models  # noqa: E402
from keras_softkd._io import write_json_atomic  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def synthetic(batch_size: int, num_classes: int, batches: int = 8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * batches, 32, 32, 3)).astype("float32")
    y = rng.integers(0, num_classes, batch_size * batches).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().repeat()


def build_variant(name: str, model_name: str, num_classes: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    student = models.build(model_name, num_classes)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if name == "ce":
        student.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return student
    copies = int(name.split("-")[1])
    model = MrKDModel(student, copies=copies, interval=10**9, alpha=0.1, temperature=3.0)
    model.compile(optimizer=optimizer)
    return model


def time_steps(model: keras.Model, data, steps: int, warmup: int) -> list[float]:
    timer = StepTimer()
    model.fit(data, steps_per_epoch=steps + warmup, epochs=1, verbose=0, callbacks=[timer])
    return list(np.diff(timer.times[warmup - 1 :]))


def refresh_cost(model_name: str, num_classes: int, copies: int, calls: int) -> dict:
    keras.utils.set_random_seed(0)
    mrkd = MrKDModel(models.build(model_name, num_classes), copies=copies, interval=1)
    refresh = tf.function(mrkd._refresh)
    refresh()  # trace
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        refresh()
        # Read one value back so the timing includes the device work.
        float(mrkd.memory[0][0][(0,) * len(mrkd.memory[0][0].shape)].numpy())
        times.append(time.perf_counter() - start)
    window = max(1, calls // 10)
    return {
        "model": model_name,
        "parameters": int(mrkd.student.count_params()),
        "copies": copies,
        "median_ms_first": 1e3 * float(np.median(times[:window])),
        "median_ms_last": 1e3 * float(np.median(times[-window:])),
        "median_ms": 1e3 * float(np.median(times)),
        "calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="ce,mrkd-1,mrkd-3")
    parser.add_argument("--refresh_models", default="resnet20,wrn28_10")
    parser.add_argument("--refresh_calls", type=int, default=50)
    parser.add_argument("--output", default="benchmarks/results/mrkd_overhead.json")
    args = parser.parse_args()

    data = synthetic(args.batch_size, args.num_classes)
    variants = args.variants.split(",")
    built = {name: build_variant(name, args.model, args.num_classes) for name in variants}
    step_times = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name in variants:
            step_times[name] += time_steps(built[name], data, args.steps, args.warmup)
            print(f"repeat {repeat + 1}/{args.repeats} {name}: "
                  f"{1e3 * np.median(step_times[name]):.1f} ms/step so far", flush=True)

    base = float(np.median(step_times[variants[0]]))
    rows = []
    for name in variants:
        median = float(np.median(step_times[name]))
        rows.append({
            "variant": name,
            "median_ms_per_step": 1e3 * median,
            "images_per_second": args.batch_size / median,
            "ratio_to_ce": median / base,
            "steps_timed": len(step_times[name]),
        })
    refresh = [
        refresh_cost(name, args.num_classes, 3, args.refresh_calls)
        for name in args.refresh_models.split(",") if name
    ]
    result = {
        "benchmark": "mrkd_overhead",
        "model": args.model,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "steps": rows,
        "refresh": refresh,
    }
    print(f"\n{args.model}, batch {args.batch_size}, median of {args.repeats} x {args.steps} steps")
    print(f"{'variant':<10}{'ms/step':>10}{'images/s':>10}{'x CE':>8}")
    for row in rows:
        print(f"{row['variant']:<10}{row['median_ms_per_step']:>10.1f}"
              f"{row['images_per_second']:>10.0f}{row['ratio_to_ce']:>8.2f}")
    print(f"\n{'refresh, 3 copies':<22}{'params':>12}{'first ms':>10}{'last ms':>10}")
    for row in refresh:
        print(f"{row['model']:<22}{row['parameters']:>12,}"
              f"{row['median_ms_first']:>10.2f}{row['median_ms_last']:>10.2f}")
    write_json_atomic(args.output, result)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

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

The copies never refresh during the step timings (interval larger than the
run) and every copy teaches (``initial_weights_teach=True``: by default a copy
runs only once refreshed): the steady state of MrKD is the forward passes, and
a refresh every kappa steps adds its cost once per kappa steps. The refresh is timed two ways,
for ``--refresh_models`` (ResNet-20 and WRN-28-10, 36.5M parameters):

* alone: the compiled refresh (shift n copies, copy the student) run many
  times; the median of the first and of the last calls shows it does not grow
  with the number of refreshes;
* in training: MrKD-3 steps refreshing before every step (kappa = 1) minus
  steps never refreshing, at a small batch (``--refresh_batch_size``). This is
  the figure to trust: TensorFlow may share a buffer between a variable and
  the copy assigned from it until one is written, so part of a refresh can be
  paid in the optimizer's next update, which only this comparison counts.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_softkd  # noqa: E402,F401  (first: TensorFlow's start-up lines stay off the terminal)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _timing import interleave, summarize, synthetic, time_steps  # noqa: E402
from keras_softkd import MrKDModel, methods, models  # noqa: E402
from keras_softkd._io import write_json_atomic  # noqa: E402


def variant_copies(name: str) -> int:
    """0 for ``ce``, n for ``mrkd<n>`` (method table column names; ``mrkd-<n>`` too)."""
    method, fixed = methods.parse_name(name)
    if method == "ce":
        return 0
    if method != "mrkd" or "copies" not in fixed:
        raise ValueError(f"{name!r} is not a variant; use ce or mrkd<N> (mrkd1, mrkd3).")
    return fixed["copies"]


def build_variant(name: str, model_name: str, num_classes: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    student = models.build(model_name, num_classes)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    copies = variant_copies(name)
    if not copies:
        student.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return student
    model = MrKDModel(student, copies=copies, interval=10**9, alpha=0.1, temperature=3.0,
                      initial_weights_teach=True)
    model.compile(optimizer=optimizer)
    return model


def refresh_cost(model_name: str, num_classes: int, copies: int, calls: int) -> dict:
    """The refresh alone: ``calls`` compiled refreshes back to back, median of the first and last tenth."""
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


def refresh_in_training(model_name: str, num_classes: int, copies: int, batch_size: int,
                        steps: int, warmup: int, repeats: int) -> dict:
    """The refresh's full cost in training: MrKD-n steps with kappa = 1 minus kappa = infinity.

    TensorFlow's ``assign`` of one variable's value to another can share the
    buffer until one of them is written, so a refresh timed alone can look
    cheaper than it is: the copy may then be paid by the optimizer's next
    update of the student. Refreshing before every step and comparing with
    never refreshing counts it wherever it lands. The batch is small so that
    the refresh is not lost in the noise of the forward passes.
    """
    data = synthetic(batch_size, num_classes)
    variants = {}
    for interval in (10**9, 1):
        keras.utils.set_random_seed(0)
        model = MrKDModel(models.build(model_name, num_classes), copies=copies, interval=interval,
                          initial_weights_teach=True)  # the copies run in both variants
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        variants["never" if interval > 1 else "every step"] = model
    runners = {name: (lambda m=m: time_steps(m, data, steps, warmup)) for name, m in variants.items()}
    times = interleave(runners, repeats, log=None)
    every = [t for block in times["every step"] for t in block]
    never = [t for block in times["never"] for t in block]
    half = len(times["every step"][0]) // 2
    early = [t for block in times["every step"] for t in block[:half]]
    late = [t for block in times["every step"] for t in block[half:]]
    return {
        "model": model_name,
        "parameters": int(variants["never"].student.count_params()),
        "copies": copies,
        "batch_size": batch_size,
        "median_ms_step_never": 1e3 * float(np.median(never)),
        "median_ms_step_every_step": 1e3 * float(np.median(every)),
        "refresh_ms": 1e3 * float(np.median(every) - np.median(never)),
        "median_ms_step_every_step_first_half": 1e3 * float(np.median(early)),
        "median_ms_step_every_step_second_half": 1e3 * float(np.median(late)),
        "steps_timed": len(every),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="ce,mrkd1,mrkd3",
                        help="ce and mrkd<N> (method table column names; mrkd-<N> accepted)")
    parser.add_argument("--refresh_models", default="resnet20,wrn28_10")
    parser.add_argument("--refresh_calls", type=int, default=50)
    parser.add_argument("--refresh_batch_size", type=int, default=8,
                        help="batch of the kappa=1 vs kappa=infinity training comparison")
    parser.add_argument("--refresh_steps", type=int, default=10)
    parser.add_argument("--output", default="benchmarks/results/mrkd_overhead.json")
    args = parser.parse_args()

    variants = args.variants.split(",")
    for name in variants:
        try:
            variant_copies(name)
        except ValueError as error:
            parser.error(f"--variants: {error}")
    data = synthetic(args.batch_size, args.num_classes)
    built = {name: build_variant(name, args.model, args.num_classes) for name in variants}
    runners = {
        name: (lambda name=name: time_steps(built[name], data, args.steps, args.warmup))
        for name in variants
    }
    step_times = interleave(runners, args.repeats, log=lambda line: print(line, flush=True))
    rows = summarize(step_times, args.batch_size, baseline=variants[0], ratio_key="ratio_to_ce")
    for row in rows:  # this benchmark's JSON keeps its original keys
        del row["ratio_to_ce_per_repeat"]
    refresh = [
        refresh_cost(name, args.num_classes, 3, args.refresh_calls)
        for name in args.refresh_models.split(",") if name
    ]
    in_training = [
        refresh_in_training(name, args.num_classes, 3, args.refresh_batch_size,
                            args.refresh_steps, args.warmup, args.repeats)
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
        "refresh_in_training": in_training,
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
    print(f"\n{'refresh in training, 3 copies':<30}{'batch':>6}{'never ms':>10}{'every ms':>10}"
          f"{'refresh ms':>11}{'1st half':>10}{'2nd half':>10}")
    for row in in_training:
        print(f"{row['model']:<30}{row['batch_size']:>6}{row['median_ms_step_never']:>10.1f}"
              f"{row['median_ms_step_every_step']:>10.1f}{row['refresh_ms']:>11.1f}"
              f"{row['median_ms_step_every_step_first_half']:>10.1f}"
              f"{row['median_ms_step_every_step_second_half']:>10.1f}")
    write_json_atomic(args.output, result)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

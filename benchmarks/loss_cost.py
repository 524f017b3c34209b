"""The regularisers' own cost: each method's loss and its gradient on a batch of logits, against CE's.

Usage (results in benchmarks/README.md):

    python benchmarks/loss_cost.py --batch_size=128 --classes=10,100 \\
        --step_ms_from=benchmarks/results/method_throughput_resnet20.json

LSR, LsrKD, LsrKD-TC and Pseudo-KD train the same network as cross-entropy
and differ from it only in the loss: a function of the ``(batch, K)`` logits
and the labels, and its gradient with respect to the logits. So their extra
cost per training step is exactly the difference between their loss's cost
and CE's, which this script measures directly: a compiled function computing
the loss and ``d loss / d logits`` is called ``--calls`` times per repeat, the
figure is the median over ``--repeats`` of the mean time per call. The
difference to CE is then put next to a training step (``--step_ms``, or CE's
median step read from a ``method_throughput.py`` JSON): a figure that the
whole-step benchmark cannot resolve on a noisy 2-core machine (its repeats
move by +-10%), but that bounds what the loss can cost.

MrKD's loss is measured too (``KDLoss`` with n teachers' logits given); its
copies' forward passes are the real cost of MrKD (``mrkd_overhead.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_softkd  # noqa: E402,F401  (first: TensorFlow's start-up lines stay off the terminal)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _timing  # noqa: E402
from keras_softkd import losses  # noqa: E402
from keras_softkd._io import write_json_atomic  # noqa: E402


def loss_functions(copies: int) -> dict:
    """name -> (loss object, needs teacher logits)."""
    return {
        "ce": (keras.losses.SparseCategoricalCrossentropy(from_logits=True), False),
        "lsr": (losses.LSRLoss(alpha=0.1), False),
        "lsrkd": (losses.LsrKDLoss(alpha=0.1, temperature=3.0), False),
        "lsrkd_tc": (losses.LsrKDLoss(alpha=0.1, temperature=3.0, gamma=0.25), False),
        "pseudo_kd": (losses.PseudoKDLoss(alpha=0.2, beta=2.5), False),
        f"mrkd-{copies} loss": (losses.KDLoss(alpha=0.1, temperature=3.0), True),
    }


def time_loss(loss, with_teachers: bool, batch: int, classes: int, copies: int,
              calls: int, repeats: int) -> float:
    """Median over repeats of the mean seconds per call of loss + gradient w.r.t. the logits."""
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(batch, classes)).astype("float32"))
    labels = tf.constant(rng.integers(0, classes, batch).astype("int32"))
    teachers = tf.constant(rng.normal(size=(copies, batch, classes)).astype("float32"))

    @tf.function
    def step(logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            target = {"labels": labels, "teacher_logits": teachers} if with_teachers else labels
            value = loss(target, logits)
        return value, tape.gradient(value, logits)

    @tf.function
    def many():  # calls in one graph run: the per-call Python and dispatch overhead is out
        total = tf.constant(0.0)
        for _ in tf.range(calls):
            value, grad = step(logits + total * 0.0)
            total += value + tf.reduce_sum(grad) * 0.0
        return total

    float(many())  # trace
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(many())
        means.append((time.perf_counter() - start) / calls)
    return float(np.median(means))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--classes", default="10,100")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--step_ms", type=float, default=None,
                        help="a CE training step in ms, to express the differences against")
    parser.add_argument("--step_ms_from", default=None,
                        help="read CE's median step from this method_throughput.py JSON")
    parser.add_argument("--output", default="benchmarks/results/loss_cost.json")
    args = parser.parse_args()
    step_ms, step_source = args.step_ms, "--step_ms"
    if step_ms is None and args.step_ms_from:
        rows = json.load(open(args.step_ms_from))["rows"]
        ce = [row for row in rows if row["method"] == "ce"][0]
        step_ms, step_source = ce["median_ms_per_step"], f"{args.step_ms_from} ({ce['model']} ce)"

    rows = []
    for classes in [int(k) for k in args.classes.split(",")]:
        timed = {
            name: time_loss(loss, teachers, args.batch_size, classes, args.copies,
                            args.calls, args.repeats)
            for name, (loss, teachers) in loss_functions(args.copies).items()
        }
        for name, seconds in timed.items():
            extra_ms = 1e3 * (seconds - timed["ce"])
            rows.append({
                "classes": classes,
                "loss": name,
                "us_per_call": 1e6 * seconds,
                "extra_us_vs_ce": 1e3 * extra_ms,
                "extra_fraction_of_step": extra_ms / step_ms if step_ms else None,
            })
    header = ["K", "loss", "us / call", "extra us vs CE", "extra / CE step"]
    table = [
        [row["classes"], row["loss"], f"{row['us_per_call']:.1f}", f"{row['extra_us_vs_ce']:+.1f}",
         f"{100 * row['extra_fraction_of_step']:+.3f}%" if step_ms else "-"]
        for row in rows
    ]
    print(_timing.text_table(header, table))
    print()
    print(_timing.markdown_table(header, table))
    write_json_atomic(args.output, {
        "benchmark": "loss_cost",
        "machine": _timing.machine(),
        "batch_size": args.batch_size,
        "copies": args.copies,
        "calls_per_repeat": args.calls,
        "repeats": args.repeats,
        "ce_step_ms": step_ms,
        "ce_step_source": step_source if step_ms else None,
        "rows": rows,
    })
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

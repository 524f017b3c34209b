"""Training step time in float32 and mixed_bfloat16, and with bfloat16 teachers, in one run.

Usage (results in benchmarks/README.md):

    python benchmarks/precision.py --models=resnet20,resnet56 --steps=15 --repeats=3 \\
        --output=benchmarks/results/precision.json --markdown

Rows, per network, each built as ``train.py`` builds it
(``keras_softkd.experiment.build_trainer``: the papers' hyper-parameters,
``PyTorchSGD``, the cosine schedule, an accuracy metric) under the Keras dtype
policy of its ``--precision``:

* every method of ``--methods`` (default ``ce,mrkd1,mrkd3``) under every
  precision of ``--precisions`` (default ``float32,mixed_bfloat16``);
* for the methods with gradient-free teachers (MrKD's copies, KD's teacher:
  ``methods.get(name).teachers``), the same under float32 with the teachers in
  bfloat16 (``--teacher_precision=bfloat16``, row ``mrkd3 float32 +bf16
  teachers``); ``--no_teacher_rows`` leaves them out.

As in ``method_throughput.py``, MrKD's copies all teach in the timed steps
(``initial_weights_teach=True``: the steady state after the first ``n``
refreshes) and the refresh interval is the papers' 25 of 200 epochs, so no
refresh falls inside them.

Ratios: ``x CE f32`` is the step time over float32 CE's median in the same run
(the figure the issue's speed-ups are stated in); ``x CE`` over the median of
CE in the row's own student precision (what the method costs on top of its
network at that precision). Target (the issue's): MrKD-3's step <= 1.5x CE's
(``x CE``); "met" is yes/no only when every repeat agrees (``_timing.verdict``).

Timing (``benchmarks/_timing.py``): the rows are interleaved over
``--repeats`` repeats of ``--steps`` steps after ``--warmup`` steps, synthetic
CIFAR-sized batches held in memory; median step times, per-repeat ratios and
the process CPU time per step (the steadier figure on a loaded machine).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_softkd  # noqa: E402,F401  (first: TensorFlow's start-up lines stay off the terminal)
import keras  # noqa: E402

import _timing  # noqa: E402
from keras_softkd import data, experiment, methods, models  # noqa: E402
from keras_softkd._io import write_json_atomic  # noqa: E402
from keras_softkd.config import ExperimentConfig  # noqa: E402
from keras_softkd.precision import PRECISIONS  # noqa: E402

EPOCHS = 200  # the papers' schedule: sets kappa (25 epochs) and the cosine length
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "cinic10": 90_000}
TARGETS = {"mrkd3": 1.5}  # largest step-time ratio to CE at the same precision (the issue's)
BASELINE = "ce"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56",
                        help="comma-separated registry names (default: resnet20,resnet56)")
    parser.add_argument("--methods", default="ce,mrkd1,mrkd3",
                        help="comma-separated method table column names; ce is always timed "
                             "(the baseline)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help=f"comma-separated, of {', '.join(PRECISIONS)}; float32 is always "
                             "timed (the baseline)")
    parser.add_argument("--no_teacher_rows", action="store_true",
                        help="leave out the float32 rows with bfloat16 teachers")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(TRAIN_IMAGES))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/precision.json")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown (for benchmarks/README.md)")
    args = parser.parse_args(argv)
    args.model_list = [name for name in args.models.split(",") if name]
    unknown = set(args.model_list) - set(models.names())
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {models.names()}")
    method_list = [name for name in args.methods.split(",") if name]
    for name in method_list:
        try:
            methods.parse_name(name)
        except ValueError as error:
            parser.error(f"--methods: {error}")
    args.method_list = [BASELINE] + [m for m in method_list if methods.canonical(m) != BASELINE]
    precisions = [name for name in args.precisions.split(",") if name]
    for name in precisions:
        if name not in PRECISIONS:
            parser.error(f"--precisions: {name!r} is not one of {', '.join(PRECISIONS)}")
    args.precision_list = ["float32"] + [p for p in precisions if p != "float32"]
    if min(args.steps, args.warmup, args.repeats, args.batch_size) < 1:
        parser.error("--steps, --warmup, --repeats and --batch_size must be >= 1")
    return args


def variants(args) -> list[tuple[str, str, str]]:
    """``(method, precision, teacher_precision)`` of every row, baseline (CE float32) first."""
    rows = [(method, precision, "same") for precision in args.precision_list
            for method in args.method_list]
    if not args.no_teacher_rows:
        rows += [(method, "float32", "bfloat16") for method in args.method_list
                 if methods.get(methods.parse_name(method)[0]).teachers]
    return rows


def row_name(method: str, precision: str, teacher_precision: str) -> str:
    return f"{method} {precision}" + (" +bf16 teachers" if teacher_precision == "bfloat16" else "")


def build(method: str, precision: str, teacher_precision: str, model_name: str, args,
          teacher_dir: str) -> tuple[keras.Model, dict]:
    """The compiled trainer ``train.py --precision --teacher_precision`` would build."""
    name, fixed = methods.parse_name(method)
    entry = methods.get(name)
    fields = {"method": name, "dataset": args.dataset, "model": model_name, "epochs": EPOCHS,
              "batch_size": args.batch_size, "precision": precision,
              "teacher_precision": teacher_precision, **fixed}
    if "initial_weights_teach" in entry.parameters:
        fields["initial_weights_teach"] = True  # every copy runs: the steady state
    num_classes = data.DATASETS[args.dataset].num_classes
    # The policy in force when the layers are built is theirs for good (experiment.run sets it
    # the same way); set back to float32 afterwards, so each row keeps its own.
    keras.mixed_precision.set_global_policy(precision)
    try:
        if "teacher" in entry.parameters:
            keras.utils.set_random_seed(1)
            teacher = os.path.join(teacher_dir, f"{model_name}_{precision}_teacher.keras")
            if not os.path.exists(teacher):
                models.build(model_name, num_classes).save(teacher)
            fields["teacher"] = teacher
        config = ExperimentConfig(**fields).resolved()
        keras.utils.set_random_seed(0)
        steps_per_epoch = math.ceil(TRAIN_IMAGES[args.dataset] / args.batch_size)
        trainer = experiment.build_trainer(config, num_classes, steps_per_epoch,
                                           num_examples=TRAIN_IMAGES[args.dataset])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    used = {key: getattr(config, key) for key in entry.parameters if key != "teacher"}
    return trainer, used


def run_model(model_name: str, args, teacher_dir: str) -> list[dict]:
    num_classes = data.DATASETS[args.dataset].num_classes
    made = {}

    def batches(inputs):
        if inputs not in made:
            made[inputs] = _timing.synthetic(args.batch_size, num_classes, inputs=inputs)
        return made[inputs]

    rows_of = variants(args)
    names = [row_name(*row) for row in rows_of]
    built, hyper, inputs = {}, {}, {}
    for name, (method, precision, teacher_precision) in zip(names, rows_of):
        built[name], hyper[name] = build(method, precision, teacher_precision, model_name, args,
                                         teacher_dir)
        inputs[name] = methods.get(methods.parse_name(method)[0]).inputs
    cpu = {name: [] for name in names}
    runners = {
        name: (lambda name=name: _timing.time_steps(
            built[name], batches(inputs[name]), args.steps, args.warmup, cpu_times=cpu[name]))
        for name in names
    }
    print(f"\n{model_name}: {', '.join(names)}", flush=True)
    times = _timing.interleave(runners, args.repeats,
                               log=lambda line: print(f"  {model_name} {line}", flush=True))
    baseline = row_name(BASELINE, "float32", "same")
    to_float32 = {row["variant"]: row for row in _timing.summarize(
        times, args.batch_size, baseline=baseline, ratio_key="ratio_to_ce_float32", cpu_times=cpu)}
    to_same = {}
    for precision in args.precision_list:
        summary = _timing.summarize(times, args.batch_size,
                                    baseline=row_name(BASELINE, precision, "same"),
                                    ratio_key="ratio_to_ce", cpu_times=cpu)
        for row in summary:
            to_same[(row["variant"], precision)] = row
    rows = []
    for name, (method, precision, teacher_precision) in zip(names, rows_of):
        same = to_same[(name, precision)]
        target = TARGETS.get(methods.canonical(method))
        row = dict(to_float32[name])
        row.update({
            "model": model_name,
            "method": method,
            "precision": precision,
            "teacher_precision": teacher_precision,
            "hyperparameters": hyper[name],
            "ratio_to_ce": same["ratio_to_ce"],
            "ratio_to_ce_per_repeat": same["ratio_to_ce_per_repeat"],
            "cpu_ratio_to_ce": same["cpu_ratio_to_ce"],
            "target_ratio": target,
            "meets_target": _timing.verdict(same["ratio_to_ce"], same["ratio_to_ce_per_repeat"],
                                            target),
            "step_times_ms": [[round(1e3 * t, 2) for t in block] for block in times[name]],
            "cpu_times_ms": [round(1e3 * t, 2) for t in cpu[name]],
        })
        rows.append(row)
    del built
    keras.backend.clear_session()
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "method", "precision", "teachers", "ms/step", "images/s", "x CE f32",
              "x CE f32 per repeat", "x CE", "CPU x CE", "target", "met"]
    body = []
    for row in rows:
        per_repeat = row["ratio_to_ce_float32_per_repeat"]
        target = row["target_ratio"]
        body.append([
            row["model"], row["method"], row["precision"],
            "bfloat16" if row["teacher_precision"] == "bfloat16" else "same",
            f"{row['median_ms_per_step']:.1f}", f"{row['images_per_second']:.0f}",
            f"{row['ratio_to_ce_float32']:.3f}", f"{min(per_repeat):.3f}-{max(per_repeat):.3f}",
            f"{row['ratio_to_ce']:.3f}", f"{row['cpu_ratio_to_ce']:.3f}",
            "-" if target is None else f"<= {target:.2f}", row["meets_target"] or "-",
        ])
    return header, body


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = _timing.machine()
    rows = []
    with tempfile.TemporaryDirectory() as teacher_dir:
        for model_name in args.model_list:
            rows += run_model(model_name, args, teacher_dir)
    machine["load_average_end"] = _timing.load_average()
    result = {
        "benchmark": "precision",
        "command": " ".join(["python"] + sys.argv),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "data": "synthetic, in memory",
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "steps_per_repeat": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "rows": rows,
    }
    header, body = table(rows)
    print(f"\nbatch {args.batch_size}, synthetic, median of {args.repeats} x {args.steps} steps; "
          f"load average {machine['load_average_start']} -> {machine['load_average_end']}")
    print(_timing.text_table(header, body))
    if args.markdown:
        print("\n" + _timing.markdown_table(header, body))
    write_json_atomic(args.output, result)
    print(f"\nwrote {args.output}")
    return result


if __name__ == "__main__":
    main()

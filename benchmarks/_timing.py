"""Timing helpers shared by the training-speed benchmarks.

The benchmarks compare variants (methods, frameworks) on the same network and
data in one process. A 2-core machine shared with other work is noisy, so:

* variants are **interleaved**: repeat 1 runs every variant, then repeat 2
  runs every variant, ...: a slow spell slows all of them alike;
* a step's time is the wall time between the ends of consecutive steps
  (``on_train_batch_end`` for Keras ``fit``, ``steps_per_execution=1``), after
  a few warm-up steps (tracing, thread pools, allocator);
* the figure per variant is the **median** step time over all repeats, and
  ratios are to the baseline's median of the same run. The per-repeat ratios
  (each repeat's median over the baseline's median in the same repeat) are
  kept too: their spread shows how much the load moved the figure;
* optionally the **process CPU time** per step is recorded as well (all of
  the process's threads). Other jobs inflate a step's wall time by making it
  wait for a core, much less its CPU time, so on a loaded machine the CPU-time
  ratio is the steadier estimate of how much more work a variant does (it
  counts the threads' busy-waiting too, and is no substitute for wall time on
  a quiet machine).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np

# Step-time functions return the seconds of each timed step.
StepTimes = Callable[[], list]


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or ``None`` where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> dict:
    """What the figures depend on: processor, cores, devices, load, library versions.

    Imports no backend other than Keras's own: versions are read from the
    installed packages' metadata, so this runs where TensorFlow is missing.
    """
    import importlib.metadata

    import keras

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "processor": _processor_name(),
        "cpu_flags": cpu_flags(),
        "isa_environment": {name: os.environ.get(name, "(unset)") for name in ISA_VARIABLES},
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras_backend": keras.backend.backend(),
        "devices": _devices(),
        "tensorflow": version("tensorflow"),
        "jax": version("jax"),
        "torch": version("torch"),
        "keras": keras.__version__,
        "load_average_start": load_average(),
    }


def _devices() -> list[str]:
    """The backend's devices (``keras.distribution.list_devices`` where the backend has it)."""
    import keras

    try:
        return [str(device) for device in keras.distribution.list_devices()]
    except Exception:  # PyTorch: Keras has no device list
        import torch

        return ["cuda:0"] if torch.cuda.is_available() else ["cpu"]


#: The processor features that decide which kernels TensorFlow, oneDNN and PyTorch run.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
#: Settings that change those kernels: TensorFlow's oneDNN switch, oneDNN's and PyTorch's ISA caps.
ISA_VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def cpu_flags() -> list[str]:
    """Which of :data:`ISA_FLAGS` the processor has (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic_arrays(batch_size: int, num_classes: int, batches: int = 8, seed: int = 0):
    """``batches`` batches of CIFAR-sized float32 images (NHWC) and int32 labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size * batches, 32, 32, 3)).astype("float32")
    y = rng.integers(0, num_classes, batch_size * batches).astype("int32")
    return x, y


def synthetic(batch_size: int, num_classes: int, batches: int = 8, inputs: str = "labels"):
    """Endless training batches cycling over :func:`synthetic_arrays` held in memory.

    ``inputs`` (a method's ``inputs`` in the method table) shapes them as
    ``keras_softkd.data.training_input`` does: ``"labels"`` ``(x, y)``;
    ``"indices"`` ``(x, {"labels": y, "index": i})``; ``"pairs"``
    ``({"images": x, "partners": x'}, y)`` with other images as partners (the
    cost does not depend on their class).

    TensorFlow backend: a cached, repeated ``tf.data`` dataset. JAX and
    PyTorch: a ``keras.utils.PyDataset`` over the same arrays (no TensorFlow).
    """
    import keras

    x, y = synthetic_arrays(batch_size, num_classes, batches)
    features, targets = x, y
    if inputs == "indices":
        targets = {"labels": y, "index": np.arange(len(y), dtype="int32")}
    elif inputs == "pairs":
        features = {"images": x, "partners": np.roll(x, batch_size // 2 + 1, axis=0)}
    elif inputs != "labels":
        raise ValueError(f"`inputs` must be labels, indices or pairs; got {inputs!r}.")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((features, targets))
        return data.batch(batch_size).cache().repeat()

    def take(value, part):
        return {k: v[part] for k, v in value.items()} if isinstance(value, dict) else value[part]

    class Batches(keras.utils.PyDataset):
        @property
        def num_batches(self):
            return None  # endless: read with steps_per_epoch, never restarted

        def __len__(self):
            return batches

        def __getitem__(self, index):
            index %= batches
            part = slice(index * batch_size, (index + 1) * batch_size)
            return take(features, part), take(targets, part)

    return Batches()


def step_timer():
    """A Keras callback recording ``time.perf_counter()`` (``.times``) and
    ``time.process_time()`` (``.cpu_times``) at each ``on_train_batch_end``."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []
            self.cpu_times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

    return StepTimer()


def time_steps(model, data, steps: int, warmup: int, cpu_times: list | None = None) -> list[float]:
    """Seconds of each of ``steps`` training steps of ``model.fit`` after ``warmup`` steps.

    ``warmup`` must be >= 1: the first step's time is measured from the end of
    the last warm-up step. If ``cpu_times`` is a list, the process CPU seconds
    of the same steps are appended to it.
    """
    if warmup < 1:
        raise ValueError(f"`warmup` must be >= 1; got {warmup}.")
    timer = step_timer()
    model.fit(data, steps_per_epoch=steps + warmup, epochs=1, verbose=0, callbacks=[timer])
    if cpu_times is not None:
        cpu_times.extend(np.diff(timer.cpu_times[warmup - 1 :]).tolist())
    return list(np.diff(timer.times[warmup - 1 :]))


def time_loop(step: Callable[[], object], steps: int, warmup: int,
              sync: Callable[[object], object] = lambda result: None,
              cpu_times: list | None = None) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step()`` after ``warmup`` calls.

    ``sync(result)`` is called after each step (e.g. read the loss back) so
    that asynchronous work is inside the step's time. If ``cpu_times`` is a
    list, the process CPU seconds of the same steps are appended to it.
    """
    for _ in range(warmup):
        sync(step())
    times = []
    last, last_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        sync(step())
        now, now_cpu = time.perf_counter(), time.process_time()
        times.append(now - last)
        if cpu_times is not None:
            cpu_times.append(now_cpu - last_cpu)
        last, last_cpu = now, now_cpu
    return times


def interleave(runners: dict[str, StepTimes], repeats: int, log=print) -> dict[str, list[list[float]]]:
    """Runs every runner once per repeat, in order, ``repeats`` times.

    Returns ``{name: [step times of repeat 1, of repeat 2, ...]}``.
    """
    times = {name: [] for name in runners}
    for repeat in range(repeats):
        for name, run in runners.items():
            times[name].append(list(run()))
            pooled = [t for block in times[name] for t in block]
            if log:
                log(f"repeat {repeat + 1}/{repeats} {name}: "
                    f"{1e3 * np.median(pooled):.1f} ms/step so far")
    return times


def summarize(times: dict[str, list[list[float]]], batch_size: int, baseline: str,
              ratio_key: str = "ratio", cpu_times: dict[str, list[float]] | None = None) -> list[dict]:
    """One row per variant: median ms/step, images/s, ratio to ``baseline``.

    ``ratio_key`` names the ratio column (``ratio_to_ce``, ...). The row also
    carries ``{ratio_key}_per_repeat``: each repeat's median over the
    baseline's median in the same repeat. With ``cpu_times`` (``{name: CPU
    seconds of every timed step}``) it adds ``median_cpu_ms_per_step`` and
    ``cpu_{ratio_key}``.
    """
    base_blocks = times[baseline]
    base = float(np.median(_pooled(base_blocks)))
    rows = []
    for name, blocks in times.items():
        median = float(np.median(_pooled(blocks)))
        per_repeat = [
            float(np.median(block) / np.median(base_block))
            for block, base_block in zip(blocks, base_blocks)
        ]
        row = {
            "variant": name,
            "median_ms_per_step": 1e3 * median,
            "images_per_second": batch_size / median,
            ratio_key: median / base,
            f"{ratio_key}_per_repeat": per_repeat,
            "steps_timed": len(_pooled(blocks)),
        }
        if cpu_times is not None:
            cpu = float(np.median(cpu_times[name]))
            row["median_cpu_ms_per_step"] = 1e3 * cpu
            row[f"cpu_{ratio_key}"] = cpu / float(np.median(cpu_times[baseline]))
        rows.append(row)
    return rows


def verdict(ratio: float, per_repeat: Sequence[float], target: float | None) -> str | None:
    """``"yes"``/``"no"`` for ``ratio <= target``, ``"unclear"`` when the repeats disagree.

    The repeats disagree when some per-repeat ratio is on each side of the
    target: the load moved the figure by more than the margin being tested.
    """
    if target is None:
        return None
    if min(per_repeat) <= target < max(per_repeat):
        return "unclear"
    return "yes" if ratio <= target else "no"


def _pooled(blocks: Sequence[Sequence[float]]) -> list[float]:
    return [t for block in blocks for t in block]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned."""
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width plain-text table for the terminal."""
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts))
    return "\n".join(lines)

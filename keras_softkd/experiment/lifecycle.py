"""What every run does around its training, whatever it trains on: start, resume, checkpoints,
callbacks, ``results.json``, finish.

The image protocol (:mod:`keras_softkd.experiment.image`) and the GLUE text protocol
(:mod:`keras_softkd.experiment.text`) both go through these steps:

1. :func:`start`: refuses a finished run in ``output_dir`` (unless ``overwrite``), makes the
   strategy, keeps the precisions a resumed run started with (:func:`run_precision`), seeds,
   sets the global precision policy.
2. :class:`EpochCheckpoint` in ``<output_dir>/checkpoint``: the epoch the run resumes from,
   and the weights it restores.
3. :func:`run_callbacks`: throughput, the history CSV, TensorBoard, ``--keep_best``, the
   checkpoint last.
4. :func:`run_results`: the ``results.json`` record; :func:`finish` writes ``model.keras``, then
   ``results.json`` (which marks the run finished), atomically.

The saved models (``model.keras``, ``model_best.keras``) are what the protocol's ``export``
makes of the student (:mod:`keras_softkd.models.portable`): Keras's own layers in float32,
taking the data as stored (uint8 images, raw strings), loadable without this package.

Output directory::

    results.json        method, hyper-parameters (the precisions resolved), precision_requested
                        and precision_reason, test_error/top5/nll/ece, speed, environment
                        (TensorFlow's oneDNN switch and who set it), versions
    history.csv         one row per epoch (Keras CSVLogger)
    model.keras         the trained student, exported: raw inputs -> float32 logits, Keras only
    model_best.keras    with --keep_best: the student at its best held-out accuracy, exported
    best.json           its epoch and val_accuracy
    checkpoint/         weights + optimizer + MrKD memory or PS-KD table, the epoch reached and
                        the precisions the run started with (state.json)
    tensorboard/        TensorBoard logs
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import time
from typing import Callable

import keras
import numpy as np

from keras_softkd import __version__, distribute
from keras_softkd._io import write_atomic, write_json_atomic, write_text_atomic
from keras_softkd._onednn import onednn_record
from keras_softkd.config import ExperimentConfig
from keras_softkd.errors import UsageError
from keras_softkd.precision import AUTO

RESULTS = "results.json"

#: The student -> the model a run saves (``keras_softkd.models.portable.for_images``...).
Export = Callable[[keras.Model], keras.Model]


def start(config: ExperimentConfig, asked: ExperimentConfig | None = None):
    """``(config, precision, output folder, strategy)``: refuses a finished run, keeps the
    precisions of a run it resumes (:func:`run_precision`; ``asked``: the config as given,
    before ``resolved()``), seeds, sets the precision."""
    output = pathlib.Path(config.output_dir)
    _refuse_finished_run(output, config.overwrite)
    strategy = _strategy(config)
    files = pathlib.Path(distribute.output_dir(str(output), strategy, create=False))
    started = EpochCheckpoint.started_with(files / "checkpoint")
    config, precision = run_precision(asked or config, config, started)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    return config, precision, output, strategy


#: What ``auto`` stands for in a checkpoint written before ``auto`` (it records no precision).
_BEFORE_AUTO = {"precision": "float32", "teacher_precision": "same"}
_KEPT = "; kept on resuming"  # said once, however often a run is resumed


def run_precision(asked: ExperimentConfig, config: ExperimentConfig,
                  started: dict | None) -> tuple[ExperimentConfig, dict]:
    """``(config, precision)``: the config whose precisions the run uses, and their record.

    ``precision``: ``{"precision", "teacher_precision"}`` (the values used), ``requested``
    (``asked``'s values: ``auto`` or explicit) and ``reason`` (one line); the checkpoint's
    ``state.json`` keeps it, ``results.json`` writes ``precision_requested`` and
    ``precision_reason`` (the values themselves are in ``hyperparameters``).

    ``started``: the record of the checkpoint the run resumes (``{}``: a checkpoint from
    before ``auto``, ``None``: a new run). A resumed run keeps the precisions it started
    with, whatever this machine's hardware: a flag asked as ``auto`` takes the recorded
    value (another machine may resolve ``auto`` otherwise; a run does not change precision
    midway), and an explicit value other than the recorded one is refused (one line). A
    checkpoint from before ``auto`` was trained at that time's defaults where ``auto`` is
    asked now (float32, ``same``); its explicit values are not checked.
    """
    names = ("precision", "teacher_precision")
    requested = {name: getattr(asked, name) for name in names}
    reason = asked.precision_choice()[2]
    kept = {}
    for name in names:
        was = (started or {}).get(name)
        if started is not None and requested[name] == AUTO:
            was = was or _BEFORE_AUTO[name]
            if was != getattr(config, name):
                kept[name] = was
        elif was is not None and was != getattr(config, name):
            raise UsageError(
                f"--output_dir={config.output_dir!r} holds a run started with --{name}={was}: "
                f"resume it with --{name}={was} (or auto), or choose another --output_dir."
            )
    if started is not None:
        here, reason = reason, started.get(
            "reason", "resumed from a checkpoint that records no precision (written before auto)"
        )
        if kept:  # checked again: the recorded values must suit this config too
            config = dataclasses.replace(config, **kept).resolved()
            reason = reason.split(_KEPT)[0] + f"{_KEPT}, where auto resolves otherwise ({here})"
    values = {name: getattr(config, name) for name in names}
    return config, {**values, "requested": requested, "reason": reason}


def run_callbacks(config: ExperimentConfig, files: pathlib.Path, checkpoint: "EpochCheckpoint",
                  first_epoch: int, examples: int, export: Export | None = None):
    """``(speed, best, callbacks)``: throughput, CSVLogger, TensorBoard, ``--keep_best`` (which
    saves ``export(student)``), and the checkpoint last (an epoch's history row is written
    before its checkpoint)."""
    speed = Throughput(images_per_epoch=examples)
    best = BestModel(files, export) if config.keep_best else None
    callbacks = [
        speed,
        keras.callbacks.CSVLogger(str(files / "history.csv"), append=first_epoch > 0),
        *_tensorboard(files / "tensorboard"),
        *([best] if best else []),
        checkpoint,
    ]
    _drop_history_after(files / "history.csv", first_epoch)
    return speed, best, callbacks


def run_results(config: ExperimentConfig, output: pathlib.Path, strategy, trainer: keras.Model,
                scores: dict, diverged: bool, speed: "Throughput", started: float,
                checkpoint: "EpochCheckpoint", examples: int, best: "BestModel | None",
                precision: dict | None = None) -> dict:
    """The ``results.json`` of a run (``images_per_second``: examples per second on text);
    ``precision``: :func:`run_precision`'s record (what was asked, and why these values)."""
    teacher = getattr(trainer, "teacher", None)  # KDModel's
    return {
        "method": config.method,
        "dataset": config.dataset,
        "model": config.model,
        "seed": config.seed,
        "epochs": config.epochs,
        "hyperparameters": config.hyperparameters(),
        **({"precision_requested": precision["requested"], "precision_reason": precision["reason"]}
           if precision else {}),
        **scores,
        "diverged": diverged,
        "images_per_second": speed.images_per_second(),
        "wall_seconds": time.perf_counter() - started + checkpoint.previous_wall_seconds(),
        "train_examples_used": int(examples),
        "replicas": strategy.num_replicas_in_sync,
        **(best.summary() if best else {}),
        # The teacher's network names the KD column (P's "KD-29" is KD from ResNeXt-29).
        **({"teacher_model": teacher.name} if isinstance(teacher, keras.Model) else {}),
        "output_dir": str(output),
        "completed": True,
        "environment": environment(),
        "versions": versions(),
    }


def finish(files: pathlib.Path, model: keras.Model, results: dict) -> None:
    """Writes ``model`` (the exported student) as ``model.keras``, then ``results.json`` (which
    marks the run finished), atomically."""
    write_atomic(files / "model.keras", lambda tmp: model.save(tmp))
    write_json_atomic(files / RESULTS, results)


def checkpoint_epoch(output_dir) -> int:
    """The epochs the checkpoint in ``output_dir`` holds (0: none yet): where a run started
    again with that ``--output_dir`` resumes, what an interrupted ``train.py`` reports.

    Example:
        >>> checkpoint_epoch("/nowhere")
        0
    """
    state = pathlib.Path(output_dir) / "checkpoint" / "state.json"
    if not state.exists():
        return 0
    return int(json.loads(state.read_text())["epoch"])


def environment() -> dict:
    """The settings that change which CPU kernels ran, TensorFlow's oneDNN switch first with
    where it came from (``"1 (set by keras_softkd: ...)"``, ``"0 (the user's)"``)."""
    return {
        "TF_ENABLE_ONEDNN_OPTS": onednn_record(),
        **{name: os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")
           if name in os.environ},
    }


def versions() -> dict:
    """Versions of what the results depend on (the backends installed, without importing them)."""
    found = {}
    for name in ("tensorflow", "jax", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {
        "keras_softkd": __version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        **found,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _tensorboard(folder: pathlib.Path) -> list:
    """Keras's TensorBoard callback, which writes through TensorFlow: none where TF is missing."""
    try:
        missing = importlib.util.find_spec("tensorflow") is None
    except ValueError:  # blocked in sys.modules
        missing = True
    if missing:
        print("TensorFlow is not installed: no TensorBoard logs.", flush=True)
        return []
    return [keras.callbacks.TensorBoard(str(folder))]


def _strategy(config: ExperimentConfig):
    try:
        return distribute.make_strategy(config.strategy)
    except ValueError as error:
        raise UsageError(f"--strategy={config.strategy}: {error}") from None


def _drop_history_after(path: pathlib.Path, epoch: int) -> None:
    """Keeps the history rows of the epochs the checkpoint holds (a kill can fall in between)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",")[0]) < epoch]
    write_text_atomic(path, "\n".join(kept) + "\n" if epoch > 0 else "")


def _refuse_finished_run(output: pathlib.Path, overwrite: bool) -> None:
    results = output / RESULTS
    if not results.exists():
        return
    if not overwrite:
        raise UsageError(
            f"--output_dir={str(output)!r} holds a finished run ({RESULTS}); choose another "
            "--output_dir or pass --overwrite."
        )
    results.unlink()
    for stale in ("checkpoint", "history.csv", "best.json", "model_best.keras"):
        path = output / stale
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights (model, optimizer, MrKD memory) and the epoch reached, atomically.

    ``BackupAndRestore`` writes its files in place, so a run killed while it
    saves loses its backup; here each file is written to a temporary name and
    renamed, and the state file (written last) names the epoch the weights
    belong to.
    """

    def __init__(self, directory: pathlib.Path, precision: dict | None = None):
        super().__init__()
        self.directory = pathlib.Path(directory)
        self.weights = self.directory / "weights.weights.h5"
        self.state = self.directory / "state.json"
        self.precision = precision  # run_precision's record, kept for a resumed run
        self._wall_before = 0.0
        self._started = time.perf_counter()

    @staticmethod
    def started_with(directory: pathlib.Path) -> dict | None:
        """The precision record of the checkpoint in ``directory`` (``{}`` for one written
        before ``auto``), ``None`` without a checkpoint."""
        state = pathlib.Path(directory) / "state.json"
        if not state.exists():
            return None
        return json.loads(state.read_text()).get("precision", {})

    def epoch_reached(self) -> int:
        """The number of epochs the checkpoint holds (0 without one): where training resumes."""
        if not self.state.exists():
            return 0
        return int(json.loads(self.state.read_text())["epoch"])

    def restore(self, model: keras.Model) -> int:
        """Loads the last checkpoint into ``model``; returns the epoch to start from."""
        if not self.state.exists():
            return 0
        state = json.loads(self.state.read_text())
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.weights)
        self._wall_before = float(state.get("wall_seconds", 0.0))
        print(f"Resuming from {self.weights} at epoch {state['epoch']}.", flush=True)
        return int(state["epoch"])

    def previous_wall_seconds(self) -> float:
        return self._wall_before

    def on_epoch_end(self, epoch, logs=None):
        write_atomic(self.weights, lambda tmp: self.model.save_weights(tmp))
        wall = self._wall_before + time.perf_counter() - self._started
        precision = {"precision": self.precision} if self.precision else {}
        write_json_atomic(self.state, {"epoch": epoch + 1, "wall_seconds": wall, **precision})


class BestModel(keras.callbacks.Callback):
    """Keeps the student of the epoch with the best held-out ``val_accuracy`` (P: teachers
    "picked based on their best accuracy").

    ``model_best.keras`` (``export(student)``, as ``model.keras``; the student itself
    without ``export``) is written atomically when an epoch beats the best so
    far, then ``best.json`` (its epoch and accuracy), which a resumed run
    reads. train.py allows it only with ``--validation_fraction > 0``: the
    choice is made on the held-out split, never on the test set.
    """

    def __init__(self, directory: pathlib.Path, export: Export | None = None):
        super().__init__()
        self.export = export
        self.path = pathlib.Path(directory) / "model_best.keras"
        self.record = pathlib.Path(directory) / "best.json"
        self.best = json.loads(self.record.read_text()) if self.record.exists() else None

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get("val_accuracy")
        if accuracy is None or not np.isfinite(accuracy):
            return
        if self.best is not None and accuracy <= self.best["val_accuracy"]:
            return
        student = getattr(self.model, "student", self.model)
        model = self.export(student) if self.export is not None else student
        write_atomic(self.path, lambda tmp: model.save(tmp))
        self.best = {"epoch": epoch + 1, "val_accuracy": float(accuracy)}
        write_json_atomic(self.record, self.best)

    def summary(self) -> dict:
        """``best_epoch`` (1-based) and ``best_val_accuracy`` for ``results.json``."""
        if self.best is None:
            return {"best_epoch": None, "best_val_accuracy": None}
        return {"best_epoch": self.best["epoch"], "best_val_accuracy": self.best["val_accuracy"]}


class Throughput(keras.callbacks.Callback):
    """Training images per second, per epoch, without the evaluation time."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.rates = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._start is not None:
            self.rates.append(self.images_per_epoch / (time.perf_counter() - self._start))
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()

    def images_per_second(self) -> float | None:
        """Median over epochs, leaving out the first (tracing) epoch when there are more."""
        rates = self.rates[1:] if len(self.rates) > 1 else self.rates
        return float(np.median(rates)) if rates else None

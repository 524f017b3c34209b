"""One run of the papers' protocol: config -> data, model, method, optimizer -> fit -> results.

The data's way through :func:`run`:

1. ``config.resolved()``: the method's defaults filled in, every value checked, ``auto``
   precisions resolved (:func:`keras_softkd.precision.resolve`); :func:`start` keeps the
   precisions a resumed run started with (:func:`run_precision`).
2. :func:`load_data`: train/test arrays (TFDS or local files), optional subset
   and held-out validation split.
3. :func:`build_trainer`: the network from the registry, wrapped or given a
   loss as the method's entry in ``keras_softkd.methods`` builds it (a loss
   for ce/lsr/lsrkd/pseudo_kd, :class:`MrKDModel` for mrkd, :class:`KDModel`
   for kd, :class:`CSKDModel` for cs_kd, :class:`PSKDModel` for pskd), compiled with
   :class:`PyTorchSGD` and the schedule.
4. ``fit`` on :func:`keras_softkd.data.training_input` (tf.data on TensorFlow,
   a NumPy ``PyDataset`` on JAX and PyTorch) from the last checkpoint's epoch,
   evaluating on the test (or validation) set after each epoch.
5. The final student on the test set -> ``results.json`` (last epoch, as the
   papers report), ``model.keras``; files written atomically.

A GLUE task (``--dataset=rte``...) takes the same steps on texts in
:mod:`keras_softkd.text_experiment`, with :func:`start`, :func:`run_callbacks`,
:func:`build_trainer`, :func:`run_results` and :func:`finish` from here.

Output directory::

    results.json        method, hyper-parameters (the precisions resolved), precision_requested
                        and precision_reason, test_error/top5/nll/ece, speed, versions
    history.csv         one row per epoch (Keras CSVLogger)
    model.keras         the trained student
    model_best.keras    with --keep_best: the student at its best held-out accuracy
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

import keras
import numpy as np

from keras_softkd import __version__, data, distribute, methods, metrics, models
from keras_softkd._io import write_atomic, write_json_atomic, write_text_atomic
from keras_softkd.config import ExperimentConfig, UsageError, is_text
from keras_softkd.optimizers import LinearWarmupDecay, PyTorchSGD
from keras_softkd.precision import AUTO

RESULTS = "results.json"


def run(config: ExperimentConfig) -> dict:
    """Trains and evaluates one configuration; returns the results written to ``results.json``.

    Raises :class:`UsageError` (before any training) for bad values, missing
    or corrupt data, a finished run in ``output_dir`` (unless ``overwrite``),
    or an unusable teacher. A run started again with the same ``output_dir``
    resumes from its last epoch checkpoint, in the precisions it started with.

    The run sets Keras's global dtype policy to its precision while it runs and puts the
    caller's back when it returns or fails: a notebook's next model is not built in the
    run's precision.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        return _run(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config: ExperimentConfig) -> dict:
    asked = config
    config = config.resolved()
    if is_text(config.dataset):  # GLUE (P section 4.2): the same steps on texts
        from keras_softkd import text_experiment  # KerasHub: imported for text runs only

        return text_experiment.run(config, asked)
    config, precision, output, strategy = start(config, asked)
    (x_train, y_train), (x_eval, y_eval), (x_test, y_test) = load_data(config)
    # Created once the data is there: a run that cannot start leaves nothing behind.
    # Only the chief writes the run's files; each other worker keeps its own stable
    # folder (same after a restart, so its checkpoints resume too).
    files = pathlib.Path(distribute.output_dir(str(output), strategy))
    num_classes = data.DATASETS[config.dataset].num_classes
    checkpoint = EpochCheckpoint(files / "checkpoint", precision)
    first_epoch = checkpoint.epoch_reached()
    # tf.data on TensorFlow, a NumPy PyDataset on JAX and PyTorch (no TensorFlow needed).
    split = _devices_splitting_each_batch(config, strategy)
    train, steps_per_epoch = data.training_input(
        x_train, y_train, dataset=config.dataset, batch_size=config.batch_size, seed=config.seed,
        first_epoch=first_epoch, epochs=config.epochs, batch_multiple=split,
        inputs=methods.get(config.method).inputs,
    )
    eval_batch = -(-256 // split) * split  # 256, or the next multiple of the devices
    evaluation = data.evaluation_input(
        x_eval, y_eval, dataset=config.dataset, batch_size=eval_batch, batch_multiple=split
    )
    test = data.evaluation_input(
        x_test, y_test, dataset=config.dataset, batch_size=eval_batch, batch_multiple=split
    )
    speed, best, callbacks = run_callbacks(config, files, checkpoint, first_epoch, len(x_train))
    started = time.perf_counter()
    # Inside the scope: tf.distribute and keras.distribution (JAX) place the variables
    # on the devices, and keras.distribution splits the batches of fit and predict.
    with strategy.scope():
        trainer = build_trainer(config, num_classes, steps_per_epoch, strategy.num_replicas_in_sync,
                                num_examples=len(x_train))
        distribute.prepare_model(trainer, strategy)
        checkpoint.restore(trainer)
        if first_epoch < config.epochs:
            trainer.fit(
                train, epochs=config.epochs, initial_epoch=first_epoch,
                steps_per_epoch=steps_per_epoch, validation_data=evaluation,
                callbacks=callbacks, verbose=2, shuffle=False,
            )
        student = getattr(trainer, "student", trainer)  # MrKDModel, KDModel wrap it
        # [:N]: with several devices the last batch may carry zero-weight padding.
        logits = keras.ops.convert_to_numpy(student.predict(test, verbose=0))[: len(y_test)]
    diverged = not np.isfinite(logits).all()  # recorded, so a sweep does not rerun it forever
    scores = (
        dict.fromkeys(("test_error", "test_top5_error", "test_nll", "test_ece"))
        if diverged
        else metrics.evaluate_logits(y_test, logits)
    )
    results = run_results(config, output, strategy, trainer, scores, diverged, speed, started,
                          checkpoint, len(x_train), best, precision)
    finish(files, student, results)
    return results


# --------------------------------------------------------------------------
# The steps the image and the text runs share (keras_softkd.text_experiment)
# --------------------------------------------------------------------------


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
                  first_epoch: int, examples: int):
    """``(speed, best, callbacks)``: throughput, CSVLogger, TensorBoard, ``--keep_best``, and
    the checkpoint last (an epoch's history row is written before its checkpoint)."""
    speed = Throughput(images_per_epoch=examples)
    best = BestModel(files) if config.keep_best else None
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
        "versions": versions(),
    }


def finish(files: pathlib.Path, student: keras.Model, results: dict) -> None:
    """Writes ``model.keras``, then ``results.json`` (which marks the run finished), atomically."""
    write_atomic(files / "model.keras", lambda tmp: student.save(tmp))
    write_json_atomic(files / RESULTS, results)


# --------------------------------------------------------------------------
# The boxes run() calls
# --------------------------------------------------------------------------


def load_data(config: ExperimentConfig):
    """``(train, eval, test)`` arrays; ``eval`` is the held-out split or the test set."""
    if config.data_dir is not None and not os.path.exists(config.data_dir):
        raise UsageError(
            f"--data_dir={config.data_dir!r} does not exist (give a folder of local files, a "
            "TFDS data_dir, or leave it unset to let TFDS download to its default place)."
        )
    try:
        x_train, y_train = data.load(config.dataset, "train", config.data_dir)
        x_test, y_test = data.load(config.dataset, "test", config.data_dir)
    except (ValueError, OSError) as error:
        raise UsageError(f"--data_dir: {error}") from None
    if config.train_examples is not None:
        if config.train_examples > len(x_train):
            raise UsageError(
                f"--train_examples must be in [1, {len(x_train)}] for {config.dataset}; "
                f"got {config.train_examples}."
            )
        x_train, y_train = data.take_subset(x_train, y_train, config.train_examples, config.seed)
    if config.validation_fraction > 0:
        (x_train, y_train), (x_eval, y_eval) = data.split_validation(
            x_train, y_train, config.validation_fraction, config.seed
        )
    else:
        x_eval, y_eval = x_test, y_test
    return (x_train, y_train), (x_eval, y_eval), (x_test, y_test)


def build_trainer(
    config: ExperimentConfig,
    num_classes: int,
    steps_per_epoch: int,
    replicas: int = 1,
    student: keras.Model | None = None,
    num_examples: int = 0,
) -> keras.Model:
    """The compiled model that ``fit`` trains for ``config.method`` (a resolved config).

    ``student``: the network to train; by default ``config.model`` from the
    registry (with synchronised BatchNorm over TensorFlow replicas).
    ``num_examples``: the training set's size (a per-example table's rows).
    """
    if student is None:
        # Synchronised BatchNorm for tf.distribute replicas; on JAX, keras.distribution already
        # computes the statistics over the global batch (and Keras refuses synchronized=True).
        synchronized = replicas > 1 and keras.backend.backend() == "tensorflow"
        student = models.build(config.model, num_classes, synchronized_batchnorm=synchronized)
    optimizer = make_optimizer(config, steps_per_epoch)
    accuracy = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    setup = methods.Setup(num_classes=num_classes, steps_per_epoch=steps_per_epoch,
                          num_examples=num_examples, epochs=config.epochs)
    trainer, compile_args = methods.get(config.method).build(config, student, setup)
    # Weighted: the zero-weight examples that pad an evaluation batch over several devices
    # do not count (training batches carry no weights).
    # metrics=None: a KerasHub classifier would add its own accuracy ("auto") beside ours.
    trainer.compile(optimizer=optimizer, metrics=None, weighted_metrics=accuracy, **compile_args)
    return trainer


def make_optimizer(config: ExperimentConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """``--optimizer`` with the schedule of :func:`learning_rate_schedule`.

    * ``sgd``: :class:`PyTorchSGD` (the CIFAR papers' ``torch.optim.SGD``, L2 weight decay
      added to the gradient).
    * ``adamw`` (P's GLUE runs, "AdamW with the default settings"): ``keras.optimizers.AdamW``
      with PyTorch's defaults, betas 0.9/0.999, eps 1e-8, decoupled weight decay
      ``weight_decay`` (0.01 by default) on every weight, scaled by the learning rate as
      ``torch.optim.AdamW`` does.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=config.weight_decay, beta_1=0.9, beta_2=0.999,
            epsilon=1e-8,
        )
    return PyTorchSGD(learning_rate=schedule, momentum=config.momentum, l2=config.weight_decay)


def learning_rate_schedule(config: ExperimentConfig, steps_per_epoch: int):
    """The papers' schedules, per step.

    * ``cosine`` (MrKD paper): from ``lr`` to 1e-4 over the run.
    * ``step`` (Pseudo-KD paper): ``lr`` divided by 5 at epochs 60, 120, 160
      of 200 -- at 30%, 60% and 80% of the run for other lengths.
    * ``linear`` (GLUE fine-tuning, RoBERTa's recipe; P is silent): from 0 up to ``lr``
      over the first ``warmup_fraction`` of the steps, then down to 0 at the end
      (:class:`LinearWarmupDecay`).
    """
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "linear":
        warmup = min(round(config.warmup_fraction * total), total - 1)
        return LinearWarmupDecay(config.lr, warmup, total)
    if config.lr_schedule == "cosine":
        floor = min(1e-4, config.lr)
        return keras.optimizers.schedules.CosineDecay(config.lr, total, alpha=floor / config.lr)
    # Keras keeps the old value while step <= boundary; PyTorch's MultiStepLR uses the
    # new one from the first step of the milestone epoch.
    boundaries = [round(f * config.epochs) * steps_per_epoch - 1 for f in (0.3, 0.6, 0.8)]
    values = [config.lr / 5**k for k in range(4)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def load_teacher(path: str, num_classes: int, sequence_length: int | None = None) -> keras.Model:
    """A trained ``.keras`` classifier with ``num_classes`` outputs, or :class:`UsageError`.

    On text (``sequence_length`` given): also a KerasHub preset directory of a fine-tuned
    classifier (``classifier.save_to_preset``), its head kept; a ``.keras`` KerasHub
    classifier keeps its own preprocessor.
    """
    try:
        if sequence_length is not None:
            from keras_softkd.models import text  # reloaded KerasHub tasks keep their loss

            if os.path.isdir(path):
                return _checked_teacher(
                    path, text.build_text_classifier(path, num_classes, sequence_length), num_classes
                )
        teacher = keras.models.load_model(path, compile=False)
    except Exception as error:  # any unreadable file is a usage error here
        raise UsageError(f"--teacher={path!r} is not a loadable .keras model: {error}") from None
    return _checked_teacher(path, teacher, num_classes)


def _checked_teacher(path: str, teacher, num_classes: int) -> keras.Model:
    if not isinstance(teacher, keras.Model) or teacher.output_shape[-1] != num_classes:
        shape = getattr(teacher, "output_shape", None)
        raise UsageError(
            f"--teacher={path!r} must predict {num_classes} classes; its output shape is {shape}."
        )
    return teacher


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


def _devices_splitting_each_batch(config: ExperimentConfig, strategy) -> int:
    """How many devices must get an equal share of every batch: those of ``keras.distribution``
    (JAX), which shards a batch evenly; 1 on TensorFlow, whose tf.distribute splits uneven ones."""
    if keras.backend.backend() == "tensorflow":
        return 1
    devices = strategy.num_replicas_in_sync
    if config.batch_size % devices:
        raise UsageError(
            f"--batch_size={config.batch_size} must be a multiple of the number of devices "
            f"({devices}, --strategy={config.strategy}): keras.distribution gives every device "
            f"an equal share of each batch."
        )
    return devices


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

    ``model_best.keras`` is written atomically when an epoch beats the best so
    far, then ``best.json`` (its epoch and accuracy), which a resumed run
    reads. train.py allows it only with ``--validation_fraction > 0``: the
    choice is made on the held-out split, never on the test set.
    """

    def __init__(self, directory: pathlib.Path):
        super().__init__()
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
        write_atomic(self.path, lambda tmp: student.save(tmp))
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

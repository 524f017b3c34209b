"""One run of the papers' image protocol: config -> data, model, method, optimizer -> fit -> results.

:func:`keras_softkd.experiment.run` hands a resolved config whose ``dataset`` is an image
dataset (CIFAR-10, CIFAR-100, CINIC-10) here. The data's way through :func:`run`:

1. :func:`keras_softkd.experiment.lifecycle.start`: a finished run refused, the precisions of
   a resumed run kept, seeds and the precision policy set.
2. :func:`load_data`: train/test arrays (TFDS or local files), optional subset
   and held-out validation split.
3. :func:`keras_softkd.experiment.trainer.build_trainer`: the network from the registry,
   wrapped or given a loss as the method's entry in ``keras_softkd.methods`` builds it (a loss
   for ce/lsr/lsrkd/pseudo_kd, ``MrKDModel`` for mrkd, ``KDModel`` for kd, ``CSKDModel`` for
   cs_kd, ``PSKDModel`` for pskd), compiled with ``PyTorchSGD`` and the schedule.
4. ``fit`` on :func:`keras_softkd.data.training_input` (tf.data on TensorFlow,
   a NumPy ``PyDataset`` on JAX and PyTorch) from the last checkpoint's epoch,
   evaluating on the test (or validation) set after each epoch.
5. The final student, exported (:func:`keras_softkd.models.portable.for_images`: Keras's
   own layers in float32, the normalisation inside, taking uint8 images), on the test set
   -> ``results.json`` (last epoch, as the papers report), and saved as ``model.keras``:
   the file's predictions on the stored test images are the figures of ``results.json``.
   Files written atomically (:mod:`keras_softkd.experiment.lifecycle`).
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

import keras
import numpy as np

from keras_softkd import data, distribute, methods, metrics
from keras_softkd.config import ExperimentConfig
from keras_softkd.errors import UsageError
from keras_softkd.experiment.lifecycle import (
    EpochCheckpoint,
    finish,
    run_callbacks,
    run_results,
    start,
)
from keras_softkd.experiment.trainer import build_trainer
from keras_softkd.models import portable


def run(config: ExperimentConfig, asked: ExperimentConfig | None = None) -> dict:
    """Trains and evaluates one resolved configuration on an image dataset; returns
    ``results.json`` (``asked``: the config as given, whose precisions ``results.json``
    records as requested)."""
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
    export = functools.partial(portable.for_images, dataset=config.dataset)
    speed, best, callbacks = run_callbacks(config, files, checkpoint, first_epoch, len(x_train),
                                           export)
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
        saved = export(student)  # what model.keras holds: the test figures are its own
        network = portable.without_normalization(saved)  # its layers, on the pipeline's images
        # [:N]: with several devices the last batch may carry zero-weight padding.
        logits = keras.ops.convert_to_numpy(network.predict(test, verbose=0))[: len(y_test)]
    diverged = not np.isfinite(logits).all()  # recorded, so a sweep does not rerun it forever
    scores = (
        dict.fromkeys(("test_error", "test_top5_error", "test_nll", "test_ece"))
        if diverged
        else metrics.evaluate_logits(y_test, logits)
    )
    results = run_results(config, output, strategy, trainer, scores, diverged, speed, started,
                          checkpoint, len(x_train), best, precision)
    finish(files, saved, results)
    return results


def load_data(config: ExperimentConfig):
    """``(train, eval, test)`` arrays; ``eval`` is the held-out split or the test set (its first
    ``--eval_examples`` of a seeded shuffle where that is set)."""
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
    if config.eval_examples is not None and config.eval_examples < len(x_eval):
        # The per-epoch evaluation on a seeded subset; the final one stays on the whole test set.
        x_eval, y_eval = data.take_subset(x_eval, y_eval, config.eval_examples, config.seed)
    return (x_train, y_train), (x_eval, y_eval), (x_test, y_test)


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

"""One run on a GLUE task (P section 4.2): the image protocol's steps, on texts.

:func:`keras_softkd.experiment.run` hands a resolved config whose ``dataset`` is a GLUE task
here. The steps are the image protocol's (:mod:`keras_softkd.experiment.image`), and the
start, checkpoint, callbacks and results writing are the shared lifecycle's
(:mod:`keras_softkd.experiment.lifecycle`: ``start``, ``EpochCheckpoint``, ``run_callbacks``,
``run_results``, ``finish``):

1. :func:`load_texts`: the task's train split and its dev split(s) with
   :func:`keras_softkd.data.glue.load` (official files in ``--data_dir``, or
   TFDS); ``--train_examples`` and ``--validation_fraction`` pick examples by
   the same seeded permutations as on images. The dev splits play the test
   set's part (GLUE's test labels are not public; P reports dev scores).
2. The student: :func:`keras_softkd.models.text.build_text_classifier`
   (``texts=`` the training texts for a scratch model); the trainer as the
   method table builds it (:func:`keras_softkd.experiment.trainer.build_trainer`: a loss for
   ce, lsr, pseudo_kd; ``KDModel`` for kd), compiled with ``--optimizer`` (AdamW) and
   the schedule.
3. :func:`tokenize`: every split is tokenized once, before training, by the
   trainer's own ``preprocess_samples`` (``KDModel``'s, or the classifier's);
   KD's fixed teacher runs once over the training set
   (:func:`keras_softkd.preprocessing.with_teacher_logits`), its logits stored
   beside the tokens. :func:`training_batches` then gathers the batches of
   each epoch from the tokens in an order that is a pure function of ``(seed,
   epoch)`` (``data.epoch_batches``, the image pipeline's): a resumed run sees
   the batches an uninterrupted one sees.
4. ``fit`` from the checkpoint's epoch, validating on the held-out split or
   the (first) dev split after each epoch.
5. ``results.json``: ``test_error``, ``test_nll``, ``test_ece`` (the image
   side's keys, so report and grid read a text run too), computed by the student as
   ``model.keras`` saves it (:func:`keras_softkd.models.portable.for_text`: float32,
   KerasHub's classes only, taking raw strings), on the first dev split
   (MNLI: matched), and ``glue``: per dev split the task's metrics
   (:func:`keras_softkd.metrics.glue_scores`, percent) beside ``nll``, ``ece``
   and ``error``; ``glue_metric`` and ``glue_score`` the headline (the task's
   first metric on the first dev split; P's Table 3 column).

Example (a tiny run on local GLUE files; the test suite runs it)::

    python train.py --dataset=rte --model=bert_tiny_scratch --method=pseudo_kd \\
        --data_dir=/data/glue --epochs=1 --batch_size=16 --lr=1e-4 --output_dir=runs/rte
"""

from __future__ import annotations

import os
import pathlib
import time

import keras
import numpy as np

from keras_softkd import data, distribute, metrics
from keras_softkd.config import ExperimentConfig
from keras_softkd.data import glue
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
from keras_softkd.preprocessing import with_teacher_logits

#: Examples per tokenization and evaluation batch.
EVAL_BATCH = 256


def run(config: ExperimentConfig, asked: ExperimentConfig | None = None) -> dict:
    """Trains and evaluates one resolved configuration on a GLUE task; returns ``results.json``
    (``asked``: the config as given, whose precisions ``results.json`` records as requested).

    Raises :class:`UsageError` for missing or bad data, a model KerasHub cannot
    build (offline: an uncached preset), or an unusable teacher.
    """
    config, precision, output, strategy = start(config, asked)
    (train_texts, y_train), held_out, dev = load_texts(config)
    task = glue.get(config.dataset)
    with strategy.scope():  # before any file is written: a model it cannot build leaves none
        student = build_student(config, task.num_classes, train_texts)
    files = pathlib.Path(distribute.output_dir(str(output), strategy))
    checkpoint = EpochCheckpoint(files / "checkpoint", precision)
    first_epoch = checkpoint.epoch_reached()
    steps_per_epoch = -(-len(y_train) // config.batch_size)
    speed, best, callbacks = run_callbacks(
        config, files, checkpoint, first_epoch, len(y_train), portable.for_text
    )
    started = time.perf_counter()
    with strategy.scope():
        trainer = build_trainer(
            config, task.num_classes, steps_per_epoch, strategy.num_replicas_in_sync,
            student=student, num_examples=len(y_train),
        )
        teacher = getattr(trainer, "teacher", None)  # KDModel's: its logits, once
        train_inputs = tokenize(trainer, train_texts, y_train, teacher=teacher)
        # Each dev split tokenized once: the per-epoch evaluation (without a held-out split)
        # and the final predictions use the same arrays.
        dev_inputs = {split: tokenize(student, *split_data) for split, split_data in dev.items()}
        evaluation = _batched(
            dev_inputs[task.dev_splits[0]] if held_out is None else tokenize(student, *held_out)
        )
        distribute.prepare_model(trainer, strategy)
        checkpoint.restore(trainer)
        if first_epoch < config.epochs:
            train = training_batches(*train_inputs, config.batch_size, config.seed, first_epoch,
                                     config.epochs)
            # Keras's own fit: the batches are the model's inputs already (a bare KerasHub
            # classifier's fit would run its preprocessor on them again).
            keras.Model.fit(
                trainer, train, epochs=config.epochs, initial_epoch=first_epoch,
                steps_per_epoch=steps_per_epoch, validation_data=evaluation,
                callbacks=callbacks, verbose=2, shuffle=False,
            )
        saved = portable.for_text(student)  # what model.keras holds: the scores are its own
        logits = {split: _predict(saved, inputs) for split, inputs in dev_inputs.items()}
    scores, diverged = dev_scores(config.dataset, dev, logits)
    results = run_results(
        config, output, strategy, trainer, scores, diverged, speed, started, checkpoint,
        len(y_train), best, precision,
    )
    if teacher is not None:
        results["teacher_logits"] = "computed once over the training set before training"
    finish(files, saved, results)
    return results


def load_texts(config: ExperimentConfig):
    """``(train, held_out, dev)``: ``(texts, labels)`` of the training examples, of the
    held-out split (``--validation_fraction``; ``None`` without one: the first dev split is
    evaluated each epoch) and ``{split: (texts, labels)}`` of the task's dev splits;
    ``texts`` a tuple of arrays (one, or two for pairs)."""
    if config.data_dir is not None and not os.path.exists(config.data_dir):
        raise UsageError(
            f"--data_dir={config.data_dir!r} does not exist (give a folder holding the official "
            "GLUE files, <Task>/train.tsv..., or a TFDS data_dir)."
        )
    task = glue.get(config.dataset)
    try:
        texts, labels = glue.load(config.dataset, "train", config.data_dir)
        dev = {split: glue.load(config.dataset, split, config.data_dir) for split in task.dev_splits}
    except (ValueError, OSError, ImportError) as error:
        raise UsageError(f"--data_dir: {error}") from None
    # The image side's seeded subsets, applied to row numbers.
    rows = np.arange(len(labels))
    if config.train_examples is not None:
        if config.train_examples > len(rows):
            raise UsageError(
                f"--train_examples must be in [1, {len(rows)}] for {config.dataset}; "
                f"got {config.train_examples}."
            )
        rows, _ = data.take_subset(rows, labels[rows], config.train_examples, config.seed)
    held_out = None
    if config.validation_fraction > 0:
        (rows, _), (held_rows, _) = data.split_validation(
            rows, labels[rows], config.validation_fraction, config.seed
        )
        held_out = _rows(texts, held_rows), labels[held_rows]
    return (_rows(texts, rows), labels[rows]), held_out, dev


def build_student(config: ExperimentConfig, num_classes: int, texts) -> keras.Model:
    """``build_text_classifier(--model)``; a model KerasHub cannot build is a :class:`UsageError`."""
    from keras_softkd.models.text import SCRATCH, build_text_classifier

    try:
        return build_text_classifier(
            config.model, num_classes, config.sequence_length,
            texts=texts if config.model in SCRATCH else None,
        )
    except ConnectionError as error:
        raise UsageError(str(error)) from None
    except ImportError as error:  # KerasHub missing: the name may be fine, the install is not
        raise UsageError(f"--model={config.model} (--dataset={config.dataset}): {error}") from None
    except Exception as error:  # KerasHub's errors for an unknown preset or a bad directory
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if message.endswith(":"):  # KerasHub's "... A preset must be one of:" and a list
            message = message.rsplit(". ", 1)[0]
        raise UsageError(
            f"--model={config.model!r} is not a text model KerasHub can build ({message}); give "
            "distil_roberta_base_en, bert_tiny_scratch, a KerasHub preset or a local preset "
            "directory."
        ) from None


def tokenize(model: keras.Model, texts, labels: np.ndarray, teacher: keras.Model | None = None):
    """``(inputs, labels)``: the model inputs of every example as NumPy arrays, made once by
    ``model.preprocess_samples``; with ``teacher``, its logits computed once beside them
    (:func:`keras_softkd.preprocessing.with_teacher_logits`: ``{"student": tokens,
    "teacher_logits": ...}``, what ``KDModel`` takes).

    The preprocessor runs eagerly, batch after batch: once per run, tracing it into a
    ``tf.data`` map (as :func:`keras_softkd.preprocessing.text_input` does, for a pipeline
    that tokenizes every epoch) costs more than it saves (10 s for a RoBERTa tokenizer on
    a CPU; eagerly, 256 examples take about 30 ms).

    Example:
        ``inputs, labels = tokenize(trainer, (sentences,), labels)``, then
        :func:`training_batches` of them.
    """
    import tensorflow as tf

    raw = texts[0] if len(texts) == 1 else tuple(texts)
    examples = tf.data.Dataset.from_tensor_slices((raw, labels))
    if teacher is not None:
        examples = with_teacher_logits(examples, teacher, batch_size=EVAL_BATCH)
    parts = [
        keras.utils.unpack_x_y_sample_weight(model.preprocess_samples(x, y))[:2]
        for x, y in examples.batch(EVAL_BATCH)
    ]
    inputs = tf.nest.map_structure(lambda *arrays: np.concatenate(arrays), *[x for x, _ in parts])
    return inputs, np.concatenate([y for _, y in parts])


def training_batches(inputs, labels: np.ndarray, batch_size: int, seed: int, first_epoch: int,
                     epochs: int):
    """Batches of epochs ``first_epoch .. epochs - 1`` gathered from tokenized ``inputs``, in
    the image pipeline's seeded order (:func:`keras_softkd.data.epoch_batches`)."""
    import tensorflow as tf

    tensors = tf.nest.map_structure(tf.constant, inputs)
    targets = tf.constant(labels)

    def gather(index, _batch_seed):
        return tf.nest.map_structure(lambda t: tf.gather(t, index), tensors), tf.gather(targets, index)

    order = data.epoch_batches(len(labels), batch_size, seed, first_epoch, epochs)
    return order.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def dev_scores(task: str, dev: dict, logits: dict) -> tuple[dict, bool]:
    """``(scores, diverged)``: the image side's ``test_*`` keys on the first dev split, and
    ``glue`` (per dev split: the task's metrics in percent, ``nll``, ``ece``, ``error``),
    ``glue_metric`` and ``glue_score`` (the headline)."""
    info = glue.get(task)
    diverged = not all(np.isfinite(values).all() for values in logits.values())
    first = info.dev_splits[0]
    if diverged:
        keys = ("test_error", "test_top5_error", "test_nll", "test_ece")
        return {**dict.fromkeys(keys), "glue": None, "glue_metric": info.metrics[0],
                "glue_score": None}, True
    per_split, basic = {}, {}
    for split, (_, labels) in dev.items():
        basic[split] = metrics.evaluate_logits(labels, logits[split])
        per_split[split] = {
            **metrics.glue_scores(task, labels, logits[split]),
            "nll": basic[split]["test_nll"], "ece": basic[split]["test_ece"],
            "error": basic[split]["test_error"],
        }
    return {
        **basic[first],
        "glue": per_split,
        "glue_metric": info.metrics[0],
        "glue_score": per_split[first][info.metrics[0]],
    }, False


def _predict(student: keras.Model, tokenized) -> np.ndarray:
    """float64 logits of ``student`` on :func:`tokenize`'s ``(inputs, labels)``."""
    logits = keras.Model.predict(student, _batched(tokenized), verbose=0)
    return keras.ops.convert_to_numpy(logits).astype("float64")


def _batched(arrays):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(arrays).batch(EVAL_BATCH).prefetch(tf.data.AUTOTUNE)


def _rows(texts: tuple, rows: np.ndarray) -> tuple:
    return tuple(part[rows] for part in texts)

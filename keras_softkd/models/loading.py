"""Trained networks from files: :func:`load_teacher`, KD's fixed teacher (``--teacher``).

A ``.keras`` classifier (``keras.models.load_model``) or, on text, a KerasHub
preset directory of a fine-tuned classifier; either way checked to predict the
run's number of classes, or a :class:`~keras_softkd.errors.UsageError` of one line.

What a run saves (``model.keras``, ``model_best.keras``) takes raw images and normalises them
itself (:func:`keras_softkd.models.portable.for_images`); a teacher gets the pipeline's
normalised images, so its normalisation is taken off (and, for a teacher of another
dataset, the run's normalisation turned into its own). A saved trainer (``MrKDModel``,
``KDModel``..., as ``keras.callbacks.ModelCheckpoint`` writes one that watches it) teaches
through its student, and says so in one line.
"""

from __future__ import annotations

import os

import keras

from keras_softkd.errors import UsageError
from keras_softkd.models import portable

__all__ = ["load_teacher"]


def load_teacher(path: str, num_classes: int, sequence_length: int | None = None,
                 dataset: str | None = None) -> keras.Model:
    """A trained ``.keras`` classifier with ``num_classes`` outputs, or :class:`UsageError`.

    On images: the network on ``dataset``'s normalised images (``None``: on the ones its
    own normalisation makes, :func:`keras_softkd.models.portable.without_normalization`).
    On text (``sequence_length`` given): also a KerasHub preset directory of a fine-tuned
    classifier (``classifier.save_to_preset``), its head kept; a ``.keras`` KerasHub
    classifier keeps its own preprocessor. A saved trainer gives its student.
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
    student = getattr(teacher, "student", None)
    if isinstance(student, keras.Model) and student is not teacher:
        print(f"--teacher={path}: a saved {type(teacher).__name__}; its student teaches.",
              flush=True)
        teacher = student
    if sequence_length is None and isinstance(teacher, keras.Model):
        teacher = portable.without_normalization(teacher, dataset)
    return _checked_teacher(path, teacher, num_classes)


def _checked_teacher(path: str, teacher, num_classes: int) -> keras.Model:
    shape = getattr(teacher, "output_shape", None) if isinstance(teacher, keras.Model) else None
    if shape is None or shape[-1] != num_classes:
        raise UsageError(
            f"--teacher={path!r} must predict {num_classes} classes; its output shape is {shape}."
        )
    return teacher

"""Trained networks from files: :func:`load_teacher`, KD's fixed teacher (``--teacher``).

A ``.keras`` classifier (``keras.models.load_model``) or, on text, a KerasHub
preset directory of a fine-tuned classifier; either way checked to predict the
run's number of classes, or a :class:`~keras_softkd.errors.UsageError` of one line.
"""

from __future__ import annotations

import os

import keras

from keras_softkd.errors import UsageError

__all__ = ["load_teacher"]


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

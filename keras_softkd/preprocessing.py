"""Raw inputs (text) for wrappers of models that carry a preprocessor (KerasHub tasks).

A KerasHub ``TextClassifier`` takes token ids, not strings; its own ``fit``,
``evaluate`` and ``predict`` map its ``preprocessor`` over a ``tf.data``
pipeline first. Our wrappers (:class:`keras_softkd.Distiller` and its
subclasses: ``KDModel``, ``MrKDModel``) do the same through
:class:`RawInputs`: when the student has a ``preprocessor``, raw inputs (an
array of strings, a tuple of two arrays for sentence pairs, or a
``tf.data.Dataset`` of ``(texts, labels)``) are batched and mapped through the
wrapper's ``preprocess_samples`` in the input pipeline, never in the compiled
step. A student without a ``preprocessor`` (the CIFAR networks) is untouched.

:func:`text_input` is the same mapping for an input pipeline written by hand
(the experiment's): it takes a batched dataset of ``(texts, labels)`` and a
wrapper or a KerasHub task, and returns the dataset of model inputs.

``KDModel``'s fixed teacher runs in the training step on its own tokens (or the
student's, when :func:`same_preprocessing`), which works for any dataset; or,
with :func:`with_teacher_logits`, once over the training set before training
(text has no augmentation, so its logits never change): faster whenever the
teacher's forward pass is not negligible beside the student's training step.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from keras_softkd.preprocessing import text_input
    >>> class Upper:  # anything with ``preprocess_samples``, e.g. a KerasHub task
    ...     def preprocess_samples(self, x, y=None, sample_weight=None):
    ...         return tf.strings.upper(x), y
    >>> batches = tf.data.Dataset.from_tensor_slices((["a", "b"], [0, 1])).batch(2)
    >>> [x.numpy().tolist() for x, _ in text_input(batches, Upper())]
    [[b'A', b'B']]
"""

from __future__ import annotations

import keras
import numpy as np

# TensorFlow (tf.data, tf.string) is imported where raw inputs are handled, never at import:
# the wrappers import this module, and on JAX and PyTorch they run without TensorFlow.


def has_preprocessor(model) -> bool:
    """Whether ``model`` carries a preprocessor (a KerasHub task with one set)."""
    return getattr(model, "preprocessor", None) is not None


def preprocess(model, x, y=None, sample_weight=None):
    """``model``'s preprocessor on a batch: ``(inputs, y, sample_weight)`` packed as Keras packs
    them; ``x`` unchanged when ``model`` has none. Pure: safe to map over ``tf.data``."""
    if not has_preprocessor(model):
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
    return model.preprocess_samples(x, y, sample_weight)


def same_preprocessing(first, second) -> bool:
    """Whether two KerasHub preprocessors make the same model inputs of any raw input: the same
    classes, settings (``sequence_length``...), vocabulary and merges. DistilRoBERTa and
    RoBERTa-large, say: a teacher with the student's preprocessing needs no tokens of its own."""

    def settings(layer) -> dict:
        config = dict(layer.get_config())
        for key in ("name", "tokenizer", "trainable"):
            config.pop(key, None)
        return config

    tokenizers = first.tokenizer, second.tokenizer
    return (
        type(first) is type(second)
        and type(tokenizers[0]) is type(tokenizers[1])
        and settings(first) == settings(second)
        and settings(tokenizers[0]) == settings(tokenizers[1])
        and tokenizers[0].get_vocabulary() == tokenizers[1].get_vocabulary()
        and getattr(tokenizers[0], "merges", None) == getattr(tokenizers[1], "merges", None)
    )


def text_input(dataset: "tf.data.Dataset", model) -> "tf.data.Dataset":
    """Maps ``model.preprocess_samples`` over a batched ``dataset`` of ``(raw inputs, labels[,
    sample weights])``, in parallel, prefetched: the inputs ``model.fit`` (or ``evaluate``,
    ``predict``) takes.

    Args:
        dataset: batched; raw inputs are a string tensor, or a tuple of two for pairs.
        model: a wrapper (``KDModel``, ``MrKDModel``, ...) around a KerasHub classifier, or
            the classifier itself.

    Our wrappers' ``fit``, ``evaluate`` and ``predict`` take raw or mapped data alike;
    a bare KerasHub classifier's own ones always apply its preprocessor, so give it raw
    batches, not this function's output.

    Example:
        ``train = text_input(texts_and_labels.shuffle(n).batch(32), trainer)``, then
        ``trainer.fit(train, validation_data=text_input(validation, trainer))``.
    """
    import tensorflow as tf

    mapped = dataset.map(model.preprocess_samples, num_parallel_calls=tf.data.AUTOTUNE)
    return mapped.prefetch(tf.data.AUTOTUNE)


def has_strings(data) -> bool:
    """Whether ``data`` (arrays, nested, or a ``tf.data.Dataset``) holds strings: raw inputs
    that still need the preprocessor (already preprocessed data holds token ids)."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return any(spec.dtype == tf.string for spec in tf.nest.flatten(data.element_spec))
    return any(_is_text(leaf) for leaf in tf.nest.flatten(data))


def _is_text(leaf) -> bool:
    import tensorflow as tf

    if isinstance(leaf, (str, bytes)):
        return True
    if tf.is_tensor(leaf):
        return leaf.dtype == tf.string
    if isinstance(leaf, np.ndarray) and leaf.size:
        return leaf.dtype.kind in "US" or isinstance(leaf.flat[0], (str, bytes))
    return False


def with_teacher_logits(
    dataset: "tf.data.Dataset", teacher: keras.Model, batch_size: int = 64
) -> "tf.data.Dataset":
    """The fixed teacher's logits, computed once, beside each example of ``dataset``.

    For ``KDModel`` on text, where there is no augmentation: the teacher then runs once
    over the training set instead of once per step of every epoch (a RoBERTa-large
    forward pass costs more than a DistilRoBERTa training step).

    Args:
        dataset: unbatched ``(raw inputs, labels)``, in a fixed order (shuffle the result,
            not this).
        teacher: the ``KDModel``'s teacher (its ``predict`` applies its own preprocessor).
        batch_size: the teacher's batch size.

    Returns:
        Unbatched ``({"raw": raw inputs, "teacher_logits": logits}, labels)``: shuffle and
        batch it, then ``KDModel.fit`` it (or :func:`text_input` it).

    Example:
        >>> import keras, numpy as np, tensorflow as tf
        >>> teacher = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
        >>> examples = tf.data.Dataset.from_tensor_slices((np.ones((4, 2)), np.zeros(4, "int32")))
        >>> x, y = next(iter(with_teacher_logits(examples, teacher)))
        >>> sorted(x), tuple(x["teacher_logits"].shape)
        (['raw', 'teacher_logits'], (3,))
    """
    import tensorflow as tf

    raw = dataset.map(lambda x, *rest: x).batch(batch_size)
    logits = tf.data.Dataset.from_tensor_slices(teacher.predict(raw, verbose=0))
    return tf.data.Dataset.zip(dataset, logits).map(
        lambda example, teacher_logits: (
            {"raw": example[0], "teacher_logits": teacher_logits}, *example[1:]
        )
    )


def _batched(x, y, sample_weight, batch_size, shuffle: bool) -> "tf.data.Dataset":
    """A batched dataset of the arrays (or a dataset given as ``x``, as it is)."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None or batch_size is not None:
            raise ValueError(
                "When `x` is a tf.data.Dataset, do not pass `y`, `sample_weight` or `batch_size`."
            )
        return x
    arrays = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
    data = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        data = data.shuffle(data.cardinality(), reshuffle_each_iteration=True)
    return data.batch(batch_size or 32)


class RawInputs:
    """Mixin of a ``keras.Model`` wrapper: ``fit``, ``evaluate`` and ``predict`` preprocess raw
    inputs (data holding strings) with ``self.preprocess_samples`` when ``self.preprocessor``
    is set (as KerasHub's ``PipelineModel`` does); otherwise (no preprocessor, or data that
    :func:`text_input` already preprocessed) they are Keras's own.

    Arrays are batched by ``batch_size`` (default 32) and, for ``fit`` with
    ``shuffle=True`` (Keras's default), shuffled every epoch; a ``tf.data.Dataset``
    is mapped as it is (shuffle and batch it first). Pass the arguments after
    ``batch_size`` by keyword, as Keras's examples do.
    """

    def _raw(self, data) -> bool:
        return has_preprocessor(self) and has_strings(data)

    def fit(
        self, x=None, y=None, batch_size=None, *, sample_weight=None, validation_data=None,
        **kwargs,
    ):
        if self._raw(validation_data):
            import tensorflow as tf

            if not isinstance(validation_data, tf.data.Dataset):
                unpacked = keras.utils.unpack_x_y_sample_weight(validation_data)
                validation_data = _batched(*unpacked, batch_size, shuffle=False)
            validation_data = text_input(validation_data, self)
        if not self._raw(x):
            return super().fit(
                x, y, batch_size, sample_weight=sample_weight, validation_data=validation_data,
                **kwargs,
            )
        if kwargs.get("validation_split"):
            raise ValueError("With raw inputs, pass `validation_data`, not `validation_split`.")
        shuffle = kwargs.pop("shuffle", True)
        x = text_input(_batched(x, y, sample_weight, batch_size, shuffle), self)
        return super().fit(x, validation_data=validation_data, shuffle=False, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, *, sample_weight=None, **kwargs):
        if not self._raw(x) or kwargs.get("_use_cached_eval_dataset", False):
            return super().evaluate(x, y, batch_size, sample_weight=sample_weight, **kwargs)
        x = text_input(_batched(x, y, sample_weight, batch_size, shuffle=False), self)
        return super().evaluate(x, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        if not self._raw(x):
            return super().predict(x, batch_size, **kwargs)
        x = text_input(_batched(x, None, None, batch_size, shuffle=False), self)
        return super().predict(x, **kwargs)

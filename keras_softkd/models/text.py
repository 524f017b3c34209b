"""Text classifiers (GLUE, P section 4.2): KerasHub ``TextClassifier`` models by name.

``build_text_classifier(name, num_classes, sequence_length)`` returns a KerasHub
``TextClassifier`` with its preprocessor (tokenizer and packer) set to
``sequence_length``. ``name`` is one of:

* a KerasHub preset (``"roberta_large_en"``, ``"bert_base_en_uncased"``, a
  ``kaggle://`` or ``hf://`` handle) or an alias of :data:`ALIASES`
  (``"distil_roberta_base_en"``, P's student, is Hugging Face's
  ``distilbert/distilroberta-base``, which KerasHub converts on loading);
* a local preset directory, as ``classifier.save_to_preset(directory)`` writes
  (a fine-tuned teacher keeps its classification head when ``num_classes``
  matches);
* ``"bert_tiny_scratch"`` (:data:`SCRATCH`): a small BERT trained from scratch,
  its WordPiece vocabulary computed from the training ``texts`` (the CPU demo).

Presets are downloaded once by KerasHub (kagglehub or huggingface_hub) into
their caches. Offline, a preset that is not cached fails at once with one line
(KerasHub's own download would retry for minutes on some networks).

KerasHub is an optional dependency (``pip install keras-softkd[text]``):
``import keras_softkd`` does not import it, and without it this module imports
and its functions raise one line naming the extra. Importing this module gives
KerasHub classifiers the ``compile_from_config`` that Keras expects of a model
with a custom ``compile`` (:func:`keep_compile_on_load`): without it,
``keras.models.load_model`` returns a KerasHub classifier compiled with
KerasHub's default loss, not the one it was saved with (``PseudoKDLoss``...).
So import ``keras_softkd.models.text`` before loading such a model.

Example:
    >>> from keras_softkd.models.text import build_text_classifier
    >>> texts = ["a good movie", "a bad movie", "great acting", "a dull plot"]
    >>> classifier = build_text_classifier(
    ...     "bert_tiny_scratch", 2, sequence_length=16, texts=texts, vocabulary_size=50)
    >>> classifier.predict(["a good plot"], verbose=0).shape
    (1, 2)
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import keras
import numpy as np

# P's students and teachers under the names the paper uses, where KerasHub has no such preset.
ALIASES = {"distil_roberta_base_en": "hf://distilbert/distilroberta-base"}

# Small BERTs trained from scratch: backbone sizes.
SCRATCH = {
    "bert_tiny_scratch": dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
}

_BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def keras_hub():
    """The ``keras_hub`` module, with :func:`keep_compile_on_load` applied; one line if missing."""
    try:
        import keras_hub as module
    except ImportError:
        raise ImportError(
            "Text classifiers need KerasHub: pip install 'keras-softkd[text]' (keras-hub)."
        ) from None
    keep_compile_on_load(module)
    return module


def keep_compile_on_load(module=None) -> None:
    """Gives KerasHub's ``TextClassifier`` a ``compile_from_config``, so that
    ``keras.models.load_model`` compiles a reloaded classifier with its saved loss.

    KerasHub's ``TextClassifier`` overrides ``compile`` (defaults ``"auto"``) but not
    ``compile_from_config``; Keras's ``Trainer.compile_from_config`` then skips
    compiling (a warning), and the reloaded model keeps the loss its constructor
    compiled it with (``SparseCategoricalCrossentropy``) and an unbuilt optimizer
    (its saved state is dropped). This method compiles with the saved
    configuration, as Keras does for a model without a custom ``compile``. It steps
    aside once KerasHub defines its own. Idempotent; importing this module applies it.

    Example:
        >>> keep_compile_on_load()
    """
    module = module or keras_hub()
    classifier = module.models.TextClassifier
    if classifier.compile_from_config is keras.Model.compile_from_config:
        classifier.compile_from_config = _compile_from_config


def _compile_from_config(self, config):
    self.compile(**keras.saving.deserialize_keras_object(config))
    if self.built:
        self.optimizer.build(self.trainable_variables)


def build_text_classifier(
    name: str,
    num_classes: int,
    sequence_length: int = 128,
    texts: Optional[Any] = None,
    load_weights: bool = True,
    **kwargs,
) -> keras.Model:
    """A KerasHub ``TextClassifier`` by preset, alias, local preset directory or scratch name.

    Args:
        name: a KerasHub preset or handle, a key of :data:`ALIASES`, a local preset
            directory, or a key of :data:`SCRATCH`.
        num_classes: logits of the classifier, an integer >= 2 (a saved head with
            another number of classes is replaced by a new one).
        sequence_length: tokens per example (pairs: both sentences together) after
            the preprocessor's truncation and padding.
        texts: for :data:`SCRATCH` names only: the training texts its vocabulary is
            computed from (an array of strings, or a tuple of two for pairs).
        load_weights: ``False`` builds the preset's architecture randomly initialised.
        **kwargs: for :data:`SCRATCH` names, :func:`scratch_bert`'s options
            (``vocabulary_size``, ``dropout``, backbone sizes).

    Returns:
        A ``keras_hub.models.TextClassifier`` returning logits, compiled with KerasHub's
        defaults (compile it again with the loss you want).

    Raises:
        ConnectionError: at once, when the preset is neither local nor cached and its
            download host is unreachable.
        ValueError: for a scratch name without ``texts``, ``num_classes < 2``.
    """
    integer = isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool)
    if not integer or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2; got num_classes={num_classes!r}.")
    if name in SCRATCH:
        if texts is None:
            raise ValueError(f"{name!r} computes its vocabulary from the training `texts`: pass them.")
        return scratch_bert(texts, num_classes, sequence_length, **{**SCRATCH[name], **kwargs})
    if kwargs:
        raise ValueError(f"Options {sorted(kwargs)} apply to {', '.join(SCRATCH)} only.")
    hub = keras_hub()
    preset = ALIASES.get(name, name)
    if not os.path.isdir(preset):
        _check_downloadable(hub, name, preset)
    options = {"load_weights": load_weights}
    if _saved_num_classes(preset) != num_classes:  # a new head
        options["num_classes"] = int(num_classes)
    classifier = hub.models.TextClassifier.from_preset(preset, **options)
    classifier.preprocessor.sequence_length = sequence_length
    return classifier


def scratch_bert(
    texts: Any,
    num_classes: int,
    sequence_length: int = 128,
    vocabulary_size: int = 8000,
    num_layers: int = 2,
    num_heads: int = 2,
    hidden_dim: int = 128,
    intermediate_dim: int = 512,
    dropout: float = 0.1,
) -> keras.Model:
    """A randomly initialised ``BertTextClassifier`` whose lowercase WordPiece vocabulary
    (at most ``vocabulary_size`` entries) is computed from ``texts``.

    ``texts`` is an array or list of strings, or a tuple of two for sentence pairs.

    Example:
        >>> model = scratch_bert(["a good movie", "a bad one"], 2, 8, vocabulary_size=30)
        >>> model.preprocessor.tokenizer.vocabulary_size() <= 30
        True
    """
    import tensorflow as tf

    hub = keras_hub()
    parts = texts if isinstance(texts, tuple) else (texts,)  # pairs: both sentences
    sentences = np.concatenate([np.asarray(part, dtype=object).reshape(-1) for part in parts])
    # A dataset: a list of strings would be read as a list of file names.
    vocabulary = hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(sentences.astype(str)).batch(1024),
        vocabulary_size,
        lowercase=True,
        reserved_tokens=_BERT_SPECIAL_TOKENS,
    )
    tokenizer = hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    backbone = hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=dropout,
        max_sequence_length=sequence_length,
    )
    return hub.models.BertTextClassifier(
        backbone, int(num_classes), preprocessor=preprocessor, dropout=dropout
    )


def _saved_num_classes(preset: str) -> Optional[int]:
    """The ``num_classes`` of a local preset directory's saved task, or ``None``."""
    try:
        with open(os.path.join(preset, "task.json")) as file:
            return json.load(file)["config"].get("num_classes")
    except (OSError, KeyError, ValueError):
        return None


def _check_downloadable(hub, name: str, preset: str) -> None:
    """Raises ``ConnectionError`` at once when ``preset`` must be downloaded and cannot be."""
    from keras_softkd.data.sources import _unreachable

    handle = hub.models.TextClassifier.presets.get(preset, {}).get("kaggle_handle", preset)
    host, cached = _download_host(handle)
    if host is None or cached:
        return
    problem = _unreachable(host)
    if problem is not None:
        raise ConnectionError(
            f"--model={name}: the KerasHub preset {handle!r} is not cached and {host} is "
            f"unreachable ({problem}); run once with internet access, or give --model a local "
            "preset directory (classifier.save_to_preset(directory) on a machine that has it)."
        )


def _download_host(handle: str) -> tuple[Optional[str], bool]:
    """The host a handle downloads from and whether its ``config.json`` is already cached;
    ``(None, False)`` for handles KerasHub resolves otherwise (it reports their errors)."""
    if handle.startswith("kaggle://"):
        from kagglehub.cache import Cache
        from kagglehub.handle import parse_model_handle

        model = parse_model_handle(handle[len("kaggle://") :])
        cached = Cache().load_from_cache(model, "config.json")
        return "api.kaggle.com", cached is not None
    if handle.startswith("hf://"):
        import huggingface_hub
        from huggingface_hub import constants

        repo = handle[len("hf://") :]
        cached = huggingface_hub.try_to_load_from_cache(repo, "config.json")
        return constants.ENDPOINT.split("://")[-1].split("/")[0], isinstance(cached, str)
    return None, False


try:  # importing this module is enough for keras.models.load_model to keep a classifier's loss
    keep_compile_on_load()
except ImportError:  # no KerasHub: the functions above say what to install
    pass

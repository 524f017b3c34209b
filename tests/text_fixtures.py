"""Tiny randomly initialised KerasHub text classifiers of the real classes, for the text tests.

No preset is downloaded: each tokenizer gets a vocabulary of the toy task's words
(:data:`WORDS`), each backbone a few layers of width 16 to 32. ``save_preset``
writes one with ``save_to_preset`` so ``build_text_classifier(<dir>)`` can load it.

Example:
    >>> student = roberta_classifier("student")
    >>> student.predict(["a good movie", "a bad film"], verbose=0).shape
    (2, 2)
"""

from __future__ import annotations

import numpy as np

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
OTHER = ["a", "the", "movie", "film", "was", "is", "plot", "acting"]
WORDS = POSITIVE + NEGATIVE + OTHER

# (layers, hidden size): the student and a bigger teacher.
SIZES = {"student": (1, 16), "teacher": (2, 32)}


def toy_texts(count: int, seed: int = 0, pairs: bool = False):
    """``count`` short reviews and labels (1: a positive word), separable by one word.

    With ``pairs=True``, ``((first, second), labels)``: the label is the second sentence's.
    """
    rng = np.random.default_rng(seed)

    def sentences(labels):
        words = [
            f"{rng.choice(OTHER)} {rng.choice(OTHER)} {rng.choice(POSITIVE if label else NEGATIVE)}"
            for label in labels
        ]
        return np.array(words)

    labels = rng.integers(0, 2, count).astype("int32")
    if pairs:
        return (sentences(rng.integers(0, 2, count)), sentences(labels)), labels
    return sentences(labels), labels


def _byte_pair_vocabulary(words):
    """A RoBERTa vocabulary and merges that spell every word (with and without its leading
    space ``Ġ``) from its characters, merging left to right."""
    vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    merges = []
    for word in words:
        for spelled in (word, "Ġ" + word):
            for token in list(spelled) + [spelled[:end] for end in range(2, len(spelled) + 1)]:
                vocabulary.setdefault(token, len(vocabulary))
            for end in range(1, len(spelled)):
                merge = f"{spelled[:end]} {spelled[end]}"
                if merge not in merges:
                    merges.append(merge)
    return vocabulary, merges


def roberta_classifier(size: str = "student", num_classes: int = 2, sequence_length: int = 16):
    """A ``RobertaTextClassifier`` of ``SIZES[size]``, randomly initialised, tiny BPE vocabulary."""
    import keras_hub

    layers, hidden = SIZES[size]
    vocabulary, merges = _byte_pair_vocabulary(WORDS)
    tokenizer = keras_hub.models.RobertaTokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.RobertaTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=layers,
        num_heads=2,
        hidden_dim=hidden,
        intermediate_dim=2 * hidden,
        dropout=0.0,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.RobertaTextClassifier(
        backbone, num_classes, preprocessor=preprocessor, dropout=0.0, name=f"roberta_{size}"
    )


def bert_classifier(size: str = "teacher", num_classes: int = 2, sequence_length: int = 16):
    """A ``BertTextClassifier`` of ``SIZES[size]``, randomly initialised, WordPiece vocabulary."""
    import keras_hub

    layers, hidden = SIZES[size]
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=layers,
        num_heads=2,
        hidden_dim=hidden,
        intermediate_dim=2 * hidden,
        dropout=0.0,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes, preprocessor=preprocessor, dropout=0.0, name=f"bert_{size}"
    )


def save_preset(classifier, directory) -> str:
    """``classifier.save_to_preset(directory)``; the directory, as a string."""
    classifier.save_to_preset(str(directory))
    return str(directory)

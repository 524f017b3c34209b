"""KerasHub text classifiers with our losses and wrappers, on raw strings (TensorFlow backend).

Every model is a tiny randomly initialised KerasHub classifier of the real
classes (tests/text_fixtures.py): no preset is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("keras_hub")

from keras_softkd import KDModel, MrKDModel, losses  # noqa: E402
from keras_softkd.data import sources  # noqa: E402
from keras_softkd.models import text  # noqa: E402
from keras_softkd.preprocessing import text_input, with_teacher_logits  # noqa: E402
from text_fixtures import (  # noqa: E402
    bert_classifier,
    roberta_classifier,
    save_preset,
    toy_texts,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="KerasHub text tests run on TensorFlow"
)

LOSSES = {
    "ce": lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "lsr": lambda: losses.LSRLoss(alpha=0.1),
    "pseudo_kd": lambda: losses.PseudoKDLoss(alpha=0.3, beta=2.0),
}


@pytest.mark.slow
def test_our_losses_train_a_keras_hub_classifier_on_raw_strings():
    x, y = toy_texts(64)
    for name, make_loss in LOSSES.items():
        keras.utils.set_random_seed(0)
        classifier = text.build_text_classifier(
            "bert_tiny_scratch", 2, sequence_length=8, texts=x, hidden_dim=16,
            intermediate_dim=32, num_layers=1, dropout=0.0,
        )
        classifier.compile(optimizer=keras.optimizers.Adam(1e-2), loss=make_loss())
        history = classifier.fit(x, y, batch_size=16, epochs=5, verbose=0).history["loss"]
        assert history[-1] < history[0] - 0.05, (name, history)


@pytest.mark.slow
def test_a_reloaded_classifier_keeps_our_loss_and_its_optimizer_state(tmp_path):
    x, y = toy_texts(32)
    classifier = roberta_classifier("student")
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.PseudoKDLoss(0.3, 2.0))
    classifier.fit(x, y, batch_size=16, epochs=1, verbose=0)
    classifier.save(tmp_path / "classifier.keras")

    reloaded = keras.models.load_model(tmp_path / "classifier.keras")

    assert isinstance(reloaded.loss, losses.PseudoKDLoss)
    assert reloaded.loss.get_config() == classifier.loss.get_config()
    assert int(reloaded.optimizer.iterations) == int(classifier.optimizer.iterations) == 2
    tokens = classifier.preprocessor(tf.constant(x))
    before = classifier.compute_loss(y=y, y_pred=classifier(tokens))
    after = reloaded.compute_loss(y=y, y_pred=reloaded(tokens))
    np.testing.assert_allclose(float(after), float(before), rtol=1e-6)


@pytest.mark.slow
def test_kd_from_a_bigger_teacher_with_its_own_tokenizer():
    x, y = toy_texts(32)
    teacher = bert_classifier("teacher")
    student = roberta_classifier("student")
    trainer = KDModel(student, teacher, alpha=0.5, temperature=2.0)
    inputs = trainer.preprocess_samples(tf.constant(x))
    assert set(inputs) == {"student", "teacher"}
    # The teacher's logits are the teacher's own, on its own tokens.
    np.testing.assert_allclose(
        trainer.teacher_logits(inputs), teacher.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )

    teacher_weights = [w.numpy() for w in teacher.weights]
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["sparse_categorical_accuracy"])
    train = text_input(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32).batch(8), trainer)
    history = trainer.fit(train, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and 0 <= history["teacher_accuracy"][0] <= 1
    for before, after in zip(teacher_weights, teacher.weights):
        np.testing.assert_array_equal(after.numpy(), before)
    assert trainer.predict(x[:5], verbose=0).shape == (5, 2)


def test_a_teacher_that_preprocesses_as_the_student_shares_its_tokens():
    x = tf.constant(toy_texts(8)[0])
    teacher = roberta_classifier("teacher")
    trainer = KDModel(roberta_classifier("student"), teacher)
    inputs = trainer.preprocess_samples(x)
    assert set(inputs) == {"token_ids", "padding_mask"}
    np.testing.assert_allclose(
        trainer.teacher_logits(inputs), teacher(teacher.preprocessor(x)), rtol=1e-6
    )
    shorter = KDModel(roberta_classifier("student", sequence_length=8), teacher)
    assert set(shorter.preprocess_samples(x)) == {"student", "teacher"}


@pytest.mark.slow
def test_kd_on_teacher_logits_computed_once_is_kd_on_the_teacher_in_the_step():
    x, y = toy_texts(16)
    teacher = bert_classifier("teacher")
    trainer = KDModel(bert_classifier("student"), teacher, alpha=0.5, temperature=2.0)
    examples = tf.data.Dataset.from_tensor_slices((x, y))
    precomputed = with_teacher_logits(examples, teacher, batch_size=8).batch(16)

    once, labels = next(iter(text_input(precomputed, trainer)))
    in_step, _ = next(iter(text_input(examples.batch(16), trainer)))

    assert set(once) == {"student", "teacher_logits"}
    np.testing.assert_allclose(
        trainer.teacher_logits(once), trainer.teacher_logits(in_step), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(trainer(once), trainer(in_step))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = trainer.fit(precomputed, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["teacher_accuracy"][0] >= 0


class _Weights(keras.callbacks.Callback):
    """The student's weights after every training step."""

    def __init__(self, student):
        super().__init__()
        self.student = student
        self.after_step = []

    def on_train_batch_end(self, batch, logs=None):
        self.after_step.append([v.numpy() for v in self.student.trainable_variables])


@pytest.mark.slow
def test_mrkd_on_sentence_pairs_refreshes_its_copies_every_interval():
    (first, second), y = toy_texts(32, pairs=True)
    student = bert_classifier("student")  # WordPiece: its tf.data graph builds faster than BPE's
    trainer = MrKDModel(student, copies=2, interval=2, alpha=0.5, temperature=2.0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    weights = _Weights(student)

    history = trainer.fit(
        (first, second), y, batch_size=8, epochs=1, callbacks=[weights], verbose=0,
        validation_data=((first, second), y),
    ).history

    # Steps t = 1..4, refreshes at the start of t = 2 and t = 4: theta_1 = after step 3,
    # theta_2 = after step 1.
    assert int(trainer.step) == 4
    for copy, step in zip(trainer.memory, (3, 1)):
        for value, expected in zip(copy, weights.after_step[step - 1]):
            np.testing.assert_array_equal(value.numpy(), expected)
    logs = trainer.evaluate((first, second), y, batch_size=16, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(history["val_loss"][0], rel=1e-5)
    assert "teacher_accuracy" not in logs
    assert trainer.predict((first[:3], second[:3]), verbose=0).shape == (3, 2)


@pytest.mark.slow
def test_build_text_classifier_loads_a_local_preset(tmp_path):
    teacher = bert_classifier("teacher")
    directory = save_preset(teacher, tmp_path / "teacher")
    x, _ = toy_texts(4)

    same_head = text.build_text_classifier(directory, 2, sequence_length=8)
    new_head = text.build_text_classifier(directory, 3, sequence_length=8)

    assert same_head.preprocessor.sequence_length == 8
    # The saved head is kept (the toy sentences fit in 8 tokens: same logits).
    np.testing.assert_allclose(
        same_head.predict(x, verbose=0), teacher.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert new_head.predict(x, verbose=0).shape == (4, 3)


def test_a_preset_that_cannot_be_downloaded_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(sources, "_unreachable", lambda host, timeout=5.0: "simulated: offline")
    start = time.monotonic()
    with pytest.raises(ConnectionError) as error:
        text.build_text_classifier("roberta_large_en", 2)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message
    assert "--model=roberta_large_en" in message and "save_to_preset" in message


@pytest.mark.slow
def test_without_keras_hub_the_package_imports_and_text_says_what_to_install():
    script = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "import keras_softkd, keras_softkd.models.text as text, keras_softkd.preprocessing\n"
        "try:\n    text.build_text_classifier('roberta_large_en', 2)\n"
        "except ImportError as error:\n    print('ERROR:', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = "ERROR: Text classifiers need KerasHub: pip install 'keras-softkd[text]'"
    assert expected in result.stdout


def test_the_preprocessing_examples_run():
    import doctest

    from keras_softkd import preprocessing

    assert doctest.testmod(preprocessing).failed == 0

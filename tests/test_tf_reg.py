"""TF-reg on a real network and real CIFAR-10 images (its formula: tests/test_losses.py).

The hand-made teacher is a constant, so what is checked is what it teaches and what
training with it does: 1024 real training images, the small conv net of test_cskd.py,
4 epochs from the same initial weights and batches, TF-reg with the CIFAR-10 defaults
(a 0.1, t 20, m = K = 10) against plain cross-entropy.
"""

import keras
import numpy as np
import pytest

from keras_softkd import data, losses, teachers

from test_cskd import small_network


@pytest.mark.slow
def test_real_cifar10_tf_reg_teacher_is_near_uniform_and_training_softens_the_student(real_data_dir):
    x, y = data.load("cifar10", "train", str(real_data_dir))
    x, y = data.take_subset(x, y, 1024, 0)
    clean = np.asarray(data.normalize(x, "cifar10"))

    # The teacher (the reference code's softmax(p^d / t)): finite, true class first, within
    # 0.005 of uniform.
    teacher = np.exp(np.asarray(teachers.hand_made(np.eye(10)[y], 0.99, 20.0)))
    assert np.all(np.isfinite(teacher)) and np.allclose(teacher.sum(-1), 1.0, atol=1e-6)
    assert np.array_equal(teacher.argmax(-1), y) and np.abs(teacher - 0.1).max() < 0.005

    top = {}
    for name, loss in [("ce", keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                       ("tf_reg", losses.TFRegLoss(alpha=0.1, temperature=20.0, multiplier=10.0))]:
        stream, steps = data.training_input(x, y, dataset="cifar10", batch_size=64, seed=0,
                                            first_epoch=0, epochs=4)
        student = small_network()
        student.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=loss,
                        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        history = student.fit(stream, epochs=4, steps_per_epoch=steps, shuffle=False,
                              verbose=0).history
        assert np.all(np.isfinite(history["loss"])), history["loss"]
        assert history["accuracy"][-1] > history["accuracy"][0] + 0.05, history["accuracy"]
        logits = np.asarray(student.predict(clean, batch_size=256, verbose=0), np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        assert len(np.unique(probabilities.argmax(-1))) >= 4
        top[name] = probabilities.max(-1).mean()
    print(f"mean top probability on the training images: CE {top['ce']:.3f}, TF-reg {top['tf_reg']:.3f}")
    # Label smoothing in effect (docs/METHODS.md, TF-reg): less confident than cross-entropy.
    assert top["tf_reg"] < top["ce"], top

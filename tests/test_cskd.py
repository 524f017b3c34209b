"""CS-KD (Yun et al., CVPR 2020): the pair sampler, the training step, BatchNorm, replicas, resume.

The reference is alinlab/cs-kd @ b447f25 as docs/REFERENCE_CODE.md section 2
transcribes it: per anchor a same-class partner drawn uniformly with
replacement (maybe itself), independently augmented; loss ``CE(anchors) +
lam t^2 KL(partner_t || anchor_t)``, the partner forward in training mode
without gradient, after the anchors' (so BatchNorm updates its moving
statistics twice per step).

Runs on every Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``); the
tf.data pipeline and ``tf.distribute`` tests skip elsewhere with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

import keras
from conftest import TWO_HOST_DEVICES, write_tiny_cifar
from keras_softkd import CSKDModel, data, experiment
from keras_softkd.config import ExperimentConfig
from keras_softkd.data import py_dataset

BACKEND = keras.backend.backend()
PIPELINES = ["tf.data", "numpy"]


def to_numpy(x):
    return np.array(ops.convert_to_numpy(x))


def pipeline_backend(pipeline: str) -> str:
    if pipeline == "tf.data":
        if BACKEND != "tensorflow":
            pytest.skip("the tf.data pipeline is the TensorFlow backend's")
        return "tensorflow"
    return "jax"  # any backend but TensorFlow's: the NumPy TrainPyDataset


def batches(pipeline, x, y, *, inputs="pairs", batch_size=8, seed=0, first_epoch=0, epochs=1,
            augment=True, batch_multiple=1):
    """Every batch of the stream as NumPy arrays: ``(anchors, partners or None, labels)``."""
    stream, steps = data.training_input(
        x, y, dataset="cifar10", batch_size=batch_size, seed=seed, first_epoch=first_epoch,
        epochs=epochs, augment=augment, backend=pipeline_backend(pipeline), workers=1,
        batch_multiple=batch_multiple, inputs=inputs,
    )
    if pipeline == "numpy":
        out = [stream[index] for index in range(len(stream))]
    else:
        out = list(stream.as_numpy_iterator())
    assert len(out) == steps * (epochs - first_epoch)
    result = []
    for images, labels in out:
        if inputs == "pairs":
            result.append((np.asarray(images["images"]), np.asarray(images["partners"]),
                           np.asarray(labels)))
        else:
            result.append((np.asarray(images), None, np.asarray(labels)))
    return result


# Uneven classes: class 0 has one example (its partner is always itself), class 3 has 30.
SIZES = (1, 9, 20, 30)
LABELS = np.repeat(np.arange(len(SIZES)), SIZES)[np.random.default_rng(3).permutation(sum(SIZES))]


def constant_images(labels):
    """Image ``i`` is ``i`` everywhere: any pixel a crop keeps names the example."""
    return np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None, None],
                           (len(labels), 32, 32, 3)).copy()


def example_of(images):
    """The example index each normalised constant image shows (its centre pixel, which
    every pad-4 crop keeps)."""
    scale, offset = py_dataset._normalization("cifar10")
    return np.rint((images[:, 16, 16, 0] - offset[0]) / scale[0]).astype(int)


# --------------------------------------------------------------------------
# (a) The pair sampler
# --------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_partners_are_same_class_training_images_and_anchors_are_the_labels_batches(pipeline):
    """augment=False: every partner is exactly an image of the training set with the anchor's
    class; anchors and labels are the "labels" input's batches, cut alike over 2 devices."""
    rng = np.random.default_rng(0)
    n = len(LABELS) + 1  # odd: with batch_multiple=2 the NumPy pipeline cuts the last batch
    y = np.append(LABELS, 2)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    normalised = py_dataset.normalize(x, "cifar10").reshape(n, -1)
    multiple = 2 if pipeline == "numpy" else 1
    for augment in (False, True):
        kwargs = dict(batch_size=8, seed=5, epochs=2, augment=augment, batch_multiple=multiple)
        pairs = batches(pipeline, x, y, **kwargs)
        plain = batches(pipeline, x, y, inputs="labels", **kwargs)
        assert len(pairs) == len(plain)
        for (anchors, partners, labels), (images, _, plain_labels) in zip(pairs, plain):
            np.testing.assert_array_equal(anchors, images)
            np.testing.assert_array_equal(labels, plain_labels)
            assert partners.shape == anchors.shape and partners.dtype == np.float32
            if not augment:
                distance = np.abs(partners.reshape(len(partners), 1, -1) - normalised[None]).max(-1)
                assert np.all(distance.min(axis=1) == 0), "a partner is not a training image"
                np.testing.assert_array_equal(y[distance.argmin(axis=1)], labels)
    if pipeline == "numpy":  # 61 examples, batches of 8 over 2 devices: the last batch cut to 4
        assert [len(b[2]) for b in pairs][:8] == [8] * 7 + [4]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_partners_are_uniform_over_the_class_and_independently_augmented(pipeline):
    """Many draws: each class's members are partners equally often (chi-square), the
    one-member class's partner is its anchor itself, with its own augmentation."""
    x = constant_images(LABELS)
    counts = np.zeros(len(LABELS))
    same_image = differs = 0
    for anchors, partners, labels in batches(pipeline, x, LABELS, batch_size=20, seed=1, epochs=40):
        anchor_ids, partner_ids = example_of(anchors), example_of(partners)
        np.testing.assert_array_equal(LABELS[anchor_ids], labels)
        np.testing.assert_array_equal(LABELS[partner_ids], labels)
        np.add.at(counts, partner_ids, 1)
        alone = labels == 0
        np.testing.assert_array_equal(partner_ids[alone], anchor_ids[alone])
        same = np.all(anchors[alone] == partners[alone], axis=(1, 2, 3))
        same_image += int(same.sum())
        differs += int((~same).sum())
    assert differs > 30 * same_image, (differs, same_image)  # 40 anchors; same crop+flip: 1/162
    for c, size in enumerate(SIZES):
        if size == 1:
            continue
        observed = counts[LABELS == c]
        expected = observed.sum() / size
        chi2 = float(((observed - expected) ** 2 / expected).sum())
        dof = size - 1
        assert chi2 < dof + 6 * np.sqrt(2 * dof), (c, chi2, observed)  # p ~ 1e-5 or less


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_partners_are_a_function_of_seed_epoch_and_batch(pipeline):
    """Built twice: the same; resumed at epoch 2: the uninterrupted run's epochs 2 and 3;
    another seed: other partners."""
    x = constant_images(LABELS)
    full = batches(pipeline, x, LABELS, seed=4, epochs=4)
    again = batches(pipeline, x, LABELS, seed=4, epochs=4)
    resumed = batches(pipeline, x, LABELS, seed=4, first_epoch=2, epochs=4)
    other = batches(pipeline, x, LABELS, seed=5, epochs=4)
    steps = len(full) // 4
    assert len(resumed) == 2 * steps
    for a, b in zip(full, again):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    for a, b in zip(full[2 * steps:], resumed):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(full, other))


def test_class_members_and_draws():
    members = py_dataset.class_members(np.array([2, 0, 2, 1, 2]))
    assert [m.tolist() for m in members] == [[1, 3, 0, 2, 4], [0, 1, 2], [1, 1, 3]]
    chosen = py_dataset.draw_partners(np.array([0, 1, 2, 2]), members, np.random.default_rng(0))
    assert chosen[:2].tolist() == [1, 3] and set(chosen[2:]) <= {0, 2, 4}
    with pytest.raises(ValueError, match="`inputs` must be one of"):
        data.training_input(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2), dataset="cifar10",
                            batch_size=2, seed=0, first_epoch=0, epochs=1, inputs="pair")


# --------------------------------------------------------------------------
# (b, c) The training step against a float64 NumPy transcription
# --------------------------------------------------------------------------

K, DIM, B = 4, 5, 6


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ref_loss_and_grad(z, z_partner, labels, t, lam):
    """REFERENCE_CODE.md 2.3, batch mean, and its gradient with respect to the anchor logits."""
    p = np.eye(z.shape[1])[labels]
    log_q1, log_a, log_p = np_log_softmax(z), np_log_softmax(z / t), np_log_softmax(z_partner / t)
    kl = (np.exp(log_p) * (log_p - log_a)).sum(-1)
    loss = np.mean(-(p * log_q1).sum(-1) + lam * t**2 * kl)
    grad = (np.exp(log_q1) - p + lam * t * (np.exp(log_a) - np.exp(log_p))) / len(z)
    return loss, grad


def step_data(steps, seed=0):
    rng = np.random.default_rng(seed)
    return [({"images": rng.normal(size=(B, DIM)) * 2 + 1, "partners": rng.normal(size=(B, DIM))},
             rng.integers(0, K, B)) for _ in range(steps)]


def train_on(trainer, batches_):
    losses = []
    for x, y in batches_:
        x = {key: value.astype("float32") for key, value in x.items()}
        losses.append(float(trainer.train_on_batch(x, y, return_dict=True)["loss"]))
    return losses


@pytest.mark.parametrize("lam, t", [(1.0, 4.0), (3.0, 2.0), (0.0, 4.0)])
def test_training_step_is_the_reference_step(lam, t):
    """Dense student, plain SGD, three steps: losses and weights equal the float64 transcription
    (the partner's logits come from the current weights, without gradient)."""
    keras.utils.set_random_seed(2)
    student = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(K)])
    w, b = (to_numpy(v).astype(np.float64) for v in student.weights)
    trainer = CSKDModel(student, temperature=t, lam=lam)
    lr = 0.3
    trainer.compile(optimizer=keras.optimizers.SGD(lr))
    steps = step_data(3)
    losses = train_on(trainer, steps)
    for (x, y), loss in zip(steps, losses):
        xa, xp = (x[key].astype(np.float32).astype(np.float64) for key in ("images", "partners"))
        ref, grad = ref_loss_and_grad(xa @ w + b, xp @ w + b, y, t, lam)
        assert loss == pytest.approx(ref, rel=1e-5)
        w, b = w - lr * xa.T @ grad, b - lr * grad.sum(0)
    np.testing.assert_allclose(to_numpy(student.weights[0]), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(student.weights[1]), b, rtol=1e-5, atol=1e-6)


def bn_student(synchronized=False):
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((DIM,)),
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, synchronized=synchronized),
        keras.layers.Dense(K),
    ])


def test_batchnorm_normalises_each_half_with_its_own_statistics_and_updates_twice():
    """One step: the moving statistics are two successive training-mode updates (anchors,
    then partners), and the loss is the reference's with each half normalised by its own
    batch statistics (Keras's BatchNormalization: biased variance, momentum 0.9)."""
    student = bn_student()
    w, b = (to_numpy(v).astype(np.float64) for v in student.layers[1].weights)
    trainer = CSKDModel(student, temperature=4.0, lam=1.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))  # no update: the logits stay comparable
    [(x, y)] = step_data(1, seed=3)
    [loss] = train_on(trainer, [(x, y)])
    xa, xp = (x[key].astype(np.float32).astype(np.float64) for key in ("images", "partners"))
    mean, var = np.zeros(DIM), np.ones(DIM)
    for half in (xa, xp):
        mean, var = 0.9 * mean + 0.1 * half.mean(0), 0.9 * var + 0.1 * half.var(0)
    bn = student.layers[0]
    np.testing.assert_allclose(to_numpy(bn.moving_mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(bn.moving_variance), var, rtol=1e-5, atol=1e-6)

    def logits(half):
        return (half - half.mean(0)) / np.sqrt(half.var(0) + 1e-3) @ w + b

    assert loss == pytest.approx(ref_loss_and_grad(logits(xa), logits(xp), y, 4.0, 1.0)[0], rel=1e-5)


def test_evaluation_and_prediction_run_the_student_alone_on_plain_images():
    student = bn_student()
    trainer = CSKDModel(student)
    trainer.compile(optimizer="sgd", metrics=["sparse_categorical_accuracy"])
    train_on(trainer, step_data(2))
    x = np.random.default_rng(1).normal(size=(8, DIM)).astype("float32")
    y = np.arange(8) % K
    np.testing.assert_allclose(to_numpy(trainer.predict(x, verbose=0)),
                               to_numpy(student(x, training=False)), rtol=1e-6, atol=1e-6)
    logs = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "sparse_categorical_accuracy"}
    z = to_numpy(student(x, training=False)).astype(np.float64)
    assert logs["loss"] == pytest.approx(-np_log_softmax(z)[np.arange(8), y].mean(), rel=1e-5)
    assert trainer.student is student
    with pytest.raises(ValueError, match="inputs='pairs'"):
        trainer.fit(x, y, verbose=0)


def test_partner_diagnostics_and_saving(tmp_path):
    """fit logs the partners' accuracy and top probability; the wrapper saves and loads."""
    trainer = CSKDModel(bn_student(), temperature=2.0, lam=3.0)
    trainer.compile(optimizer="sgd")
    [(x, y)] = step_data(1, seed=4)
    x = {k: v.astype("float32") for k, v in x.items()}
    history = trainer.fit(x, y, batch_size=B, verbose=0).history
    assert 0 <= history["teacher_accuracy"][0] <= 1
    assert 1 / K <= history["teacher_top_probability"][0] <= 1
    trainer.save(tmp_path / "cskd.keras")
    loaded = keras.models.load_model(tmp_path / "cskd.keras")
    assert isinstance(loaded, CSKDModel) and (loaded.temperature, loaded.lam) == (2.0, 3.0)
    np.testing.assert_allclose(to_numpy(loaded.predict(x["images"], verbose=0)),
                               to_numpy(trainer.predict(x["images"], verbose=0)), rtol=1e-6)
    with pytest.raises(ValueError, match="`lam` must be in"):
        CSKDModel(bn_student(), lam=-1.0)


def test_mixed_precision_fit():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        student = bn_student()
        trainer = CSKDModel(student)
        trainer.compile(optimizer="sgd")
        assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
        losses = train_on(trainer, step_data(2))
        assert np.all(np.isfinite(losses))
        assert all(np.isfinite(to_numpy(w)).all() for w in student.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------
# (d) steps_per_execution, two replicas
# --------------------------------------------------------------------------


def fit_weights(student, steps, **compile_kwargs):
    trainer = CSKDModel(student, temperature=3.0, lam=1.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.9), **compile_kwargs)
    x = {k: np.concatenate([s[0][k] for s in steps]).astype("float32") for k in ("images", "partners")}
    y = np.concatenate([s[1] for s in steps])
    history = trainer.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0).history
    return [to_numpy(v) for v in student.weights], history["loss"]


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch backend: steps_per_execution must be 1")
def test_steps_per_execution_equals_one_step_at_a_time():
    one, loss_one = fit_weights(bn_student(), step_data(4))
    three, loss_three = fit_weights(bn_student(), step_data(4), steps_per_execution=3)
    np.testing.assert_allclose(loss_three, loss_one, rtol=1e-5)
    for a, b in zip(one, three):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute needs the TensorFlow backend")
def test_two_replicas_equal_one_device():
    """MirroredStrategy over the two logical CPUs (synchronised BatchNorm): each replica gets
    half the anchors and their partners; weights, moving statistics and loss as on one device."""
    import tensorflow as tf

    from conftest import two_replicas

    strategy = two_replicas()
    assert strategy.num_replicas_in_sync == 2
    steps = step_data(4)
    one, loss_one = fit_weights(bn_student(synchronized=True), steps)
    with strategy.scope():
        student = bn_student(synchronized=True)
        two, loss_two = fit_weights(student, steps)
    assert tf.distribute.get_strategy() is not strategy
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# (e) Resume through experiment.run
# --------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


def tiny_network(name, num_classes, synchronized_batchnorm=False):
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, strides=4, use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(synchronized=synchronized_batchnorm)(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h))


@pytest.mark.slow
def test_resume_through_experiment_run_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """--method=cs_kd, 3 epochs; interrupted after epoch 1's checkpoint and run again: the
    resumed run (same partners, restored weights) ends where the uninterrupted one ends."""
    monkeypatch.setattr(experiment.models, "build", tiny_network)
    data_dir = write_tiny_cifar(tmp_path / "data", train=40, test=16)

    def config(name):
        return ExperimentConfig(method="cs_kd", epochs=3, batch_size=16, seed=1, lam=2.0,
                                data_dir=str(data_dir), output_dir=str(tmp_path / name))

    full = experiment.run(config("full"))
    original = experiment.EpochCheckpoint.on_epoch_end

    def interrupt_after_epoch_1(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise _Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(experiment.EpochCheckpoint, "on_epoch_end", interrupt_after_epoch_1)
        with pytest.raises(_Interrupted):
            experiment.run(config("resumed"))
    resumed = experiment.run(config("resumed"))
    assert "Resuming from" in capsys.readouterr().out
    assert full["hyperparameters"]["lam"] == 2.0 and resumed["completed"]
    for key in ("test_error", "test_nll", "test_ece"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6)
    a = keras.models.load_model(tmp_path / "full" / "model.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-6)


# --------------------------------------------------------------------------
# (f) Real CIFAR-10 images
# --------------------------------------------------------------------------


def small_network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    h = inputs
    for filters in (16, 32, 64):
        h = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def same_class_kl(logits, labels, rng, pairs_per_class=300):
    """Mean KL(softmax(z_j) || softmax(z_i)) over random same-class pairs (i, j)."""
    kls = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        i, j = rng.choice(members, pairs_per_class), rng.choice(members, pairs_per_class)
        log_i, log_j = np_log_softmax(logits[i]), np_log_softmax(logits[j])
        kls.append((np.exp(log_j) * (log_j - log_i)).sum(-1).mean())
    return float(np.mean(kls))


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="the real-data check runs once, in the TensorFlow suite")
def test_real_cifar10_partners_are_sane_and_pull_same_class_predictions_together(real_data_dir):
    """1024 real CIFAR-10 training images, a 3-layer conv net, 5 epochs from the same initial
    weights and the same batches, CS-KD (lam = 1) against lam = 0 (plain cross-entropy): the
    partner predictions are finite and spread over the classes, training accuracy improves,
    and CS-KD's predictions of same-class images are closer (mean KL over same-class pairs,
    0.22 against 0.66 when this was written)."""
    x, y = data.load("cifar10", "train", str(real_data_dir))
    x, y = data.take_subset(x, y, 1024, 0)
    clean = to_numpy(data.normalize(x, "cifar10"))
    runs = {}
    for lam in (0.0, 1.0):
        stream, steps = data.training_input(x, y, dataset="cifar10", batch_size=64, seed=0,
                                            first_epoch=0, epochs=5, inputs="pairs")
        trainer = CSKDModel(small_network(), temperature=4.0, lam=lam)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        history = trainer.fit(stream, epochs=5, steps_per_epoch=steps, shuffle=False,
                              verbose=0).history
        logits = to_numpy(trainer.predict(clean, batch_size=256, verbose=0)).astype(np.float64)
        runs[lam] = history, same_class_kl(logits, y, np.random.default_rng(1))
        (images, _), = stream.take(1).as_numpy_iterator()
        partner_logits = to_numpy(trainer.student(images["partners"], training=False))
        assert np.all(np.isfinite(partner_logits))
        assert len(np.unique(partner_logits.argmax(-1))) >= 4, partner_logits.argmax(-1)
        for name in ("teacher_accuracy", "teacher_top_probability", "loss"):
            assert np.all(np.isfinite(history[name])), (name, history[name])
        assert history["accuracy"][-1] > history["accuracy"][0] + 0.05, history["accuracy"]
        assert history["teacher_accuracy"][-1] > 0.15, history["teacher_accuracy"]
    (_, kl_ce), (_, kl_cskd) = runs[0.0], runs[1.0]
    print(f"same-class KL: CS-KD {kl_cskd:.3f}, CE {kl_ce:.3f}")
    assert kl_cskd < 0.7 * kl_ce, (kl_cskd, kl_ce)


_JAX_TWO_DEVICES = """
import json, sys
sys.modules["tensorflow"] = None  # the JAX path must not need TensorFlow
import keras, numpy as np
from keras_softkd import CSKDModel
from keras_softkd.data import TrainPairsPyDataset
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (44, 32, 32, 3), dtype=np.uint8)
y = np.arange(44) % 3
def run(distribution):
    keras.utils.set_random_seed(0)
    with distribution.scope() if distribution else __import__("contextlib").nullcontext():
        inputs = keras.Input((32, 32, 3))
        h = keras.layers.Conv2D(4, 3, strides=4, use_bias=False)(inputs)
        h = keras.layers.BatchNormalization(momentum=0.5)(h)
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
        student = keras.Model(inputs, keras.layers.Dense(3)(h))
        trainer = CSKDModel(student, temperature=3.0, lam=2.0)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        stream = TrainPairsPyDataset(x, y, dataset="cifar10", batch_size=8, seed=3, epochs=2,
                                     batch_multiple=2)
        history = trainer.fit(stream, epochs=2, steps_per_epoch=stream.steps_per_epoch, verbose=0)
    return {"loss": history.history["loss"],
            "weights": [np.asarray(w).tolist() for w in student.get_weights()]}
devices = keras.distribution.list_devices()
assert len(devices) == 2, devices
print("RESULTS=" + json.dumps({"one": run(None),
                                "two": run(keras.distribution.DataParallel(devices=devices))}))
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="run from the default (TensorFlow) suite, which starts the JAX process")
def test_jax_data_parallel_over_two_devices_equals_one_device(tmp_path):
    """keras.distribution.DataParallel over two JAX CPU devices splits anchors and partners
    together (the last batch of 44 cut to a multiple of 2): weights and BatchNorm statistics
    as on one device."""
    import importlib.util
    import json
    import os
    import pathlib
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[backends]')")
    script = tmp_path / "two_devices.py"
    script.write_text(_JAX_TWO_DEVICES)
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": TWO_HOST_DEVICES}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                            cwd=pathlib.Path(__file__).resolve().parents[1], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULTS=")][0]
    runs = json.loads(line[len("RESULTS="):])
    np.testing.assert_allclose(runs["two"]["loss"], runs["one"]["loss"], rtol=1e-5)
    for a, b in zip(runs["one"]["weights"], runs["two"]["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)


def test_docstring_examples():
    import doctest

    from keras_softkd import class_wise

    modules = [class_wise]
    if BACKEND == "tensorflow":
        from keras_softkd.data import pipeline

        modules.append(pipeline)
    for module in modules:
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_config_lam():
    from keras_softkd.config import UsageError

    resolved = ExperimentConfig(method="cs_kd").resolved()
    assert (resolved.temperature, resolved.lam) == (4.0, 1.0)  # the reference code's CIFAR defaults
    assert ExperimentConfig(method="cs_kd", lam=0.0).resolved().lam == 0.0  # plain CE, allowed
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(UsageError, match=r"--lam must be in \[0, inf\)"):
            ExperimentConfig(method="cs_kd", lam=bad).resolved()
    with pytest.raises(UsageError, match="--lam does not apply to --method=ce"):
        ExperimentConfig(method="ce", lam=1.0).resolved()

"""KRLSModel (KR-LS, Knowledge Refinery, Ding et al. AAAI 2021) against a float64 NumPy
transcription of the paper's Algorithm 1, in every setting Keras runs steps; the loss battery;
resume; two replicas; real CIFAR-10.

The reference is Algorithm 1 (docs/REFERENCE_CODE.md, "KR-LS") with the choices it leaves open
as docs/METHODS.md ("KR-LS") states them, run step by step beside the model on a Dense layer
with plain SGD: losses, the K x K matrix and the weights must agree at every step.

Runs on every Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``, tests/test_backends.py).
Tests of a backend-specific mechanism (``tf.distribute``, the tf.data pipeline, XLA,
``steps_per_execution`` which PyTorch refuses) skip elsewhere with the reason.
"""

import contextlib
import math

import keras
import numpy as np
import pytest

from conftest import TWO_HOST_DEVICES, sync, tensorflow_only, to_numpy
from stepwise import Stream, log_softmax, shuffled_batches, tf_stream
import test_losses
from keras_softkd import KRLSModel, data, losses
from keras_softkd.losses import KRLSLoss

BACKEND = keras.backend.backend()
N, D, K = 10, 5, 4
BATCH = 4
STEPS = math.ceil(N / BATCH)  # 3 steps per epoch: 4, 4, 2
EPOCHS = 3
ALPHA = 0.7
LR = 0.5


# -- the reference (Algorithm 1, float64) ---------------------------------------------------


def residual(values, label):
    """Algorithm 1 l.6-8: log softmax over the K - 1 entries other than ``label`` (a 1-d row),
    returned with the label's entry removed."""
    return log_softmax(np.delete(np.asarray(values, np.float64), label))


def kl(log_a, log_b):
    return float(np.sum(np.exp(log_a) * (log_a - log_b)))


def reference_losses(labels, logits, rows, alpha):
    """Per example ``(L_hard + alpha L_res, L_upd)`` (Algorithm 1 l.5, 9, 10)."""
    total, update = [], []
    for k, z, s in zip(labels, np.asarray(logits, np.float64), np.asarray(rows, np.float64)):
        hard = -log_softmax(z)[k]
        p, q = residual(z, k), residual(s, k)
        total.append(hard + alpha * kl(p, q))
        update.append(kl(q, p))
    return np.array(total), np.array(update)


def reference_gradients(labels, logits, rows, alpha):
    """``d (L_hard + alpha L_res) / dz`` and ``d L_upd / dS_k`` per example, written out."""
    dz, ds = np.zeros(np.shape(logits)), np.zeros(np.shape(rows))
    for i, (k, z, s) in enumerate(zip(labels, np.asarray(logits, np.float64), np.asarray(rows, np.float64))):
        p, q = residual(z, k), residual(s, k)
        others = np.delete(np.arange(len(z)), k)
        dz[i] = np.exp(log_softmax(z))
        dz[i, k] -= 1.0
        dz[i, others] += alpha * np.exp(p) * (p - q - kl(p, q))
        ds[i, others] = np.exp(q) * (q - p - kl(q, p))
    return dz, ds


class ReferenceKR:
    """Algorithm 1 with the Dense layer's forward, backward and SGD step filled in."""

    def __init__(self, num_classes, alpha, kernel, bias, lr):
        self.S = np.zeros((num_classes, num_classes))  # l.1
        self.K, self.alpha, self.lr = num_classes, alpha, lr
        self.kernel, self.bias = kernel.astype(np.float64), bias.astype(np.float64)

    def step(self, x, labels, weights=None):
        x = x.astype(np.float64)
        weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
        logits = x @ self.kernel + self.bias  # training-mode forward, pre-update weights
        rows = self.S[labels]  # read before l.12's update
        total, _ = reference_losses(labels, logits, rows, self.alpha)
        dz, ds = reference_gradients(labels, logits, rows, self.alpha)
        self.diagnostics(labels, logits, rows)
        total = total * weights  # Keras: sum of the weighted losses over the batch size
        dz, ds = dz * weights[:, None] / len(x), ds * weights[:, None] / len(x)  # batch means
        self.kernel -= self.lr * x.T @ dz  # l.11
        self.bias -= self.lr * dz.sum(0)
        for k, g in zip(labels, ds):  # l.12: S <- S - beta alpha grad_S L_upd
            self.S[k] -= self.lr * self.alpha * g
        return total.mean()

    def diagnostics(self, labels, logits, rows):
        """The logged teacher diagnostics of a step, per example: does the residual label's top
        class equal the student's top non-label class; the residual label's top probability."""
        self.agree, self.top = [], []
        for k, z, s in zip(labels, logits, rows):
            q, p = residual(s, k), residual(z, k)
            self.agree.append(float(q.argmax() == p.argmax()))
            self.top.append(float(np.exp(q.max())))


# -- the loss battery -----------------------------------------------------------------------


def value_and_grad(fn, logits, dtype="float32"):
    """tests/test_losses.py's: ``fn(z)`` per example and ``d sum fn / dz`` (float64 arrays)."""
    value, grad, _ = test_losses.value_and_grad(fn, logits, dtype)
    return value, grad


def round_to(x, dtype):
    return to_numpy(keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(x, np.float32)), dtype)).astype(np.float64)


def cases():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 10, 16)
    return {
        "random": (labels, rng.randn(16, 10) * 3, rng.randn(16, 10) * 2),
        # Saturated: logits of 1e4, a label far below the rest, rows of the matrix far apart.
        "saturated": (labels, rng.randn(16, 10) * 1e4, rng.randn(16, 10) * 1e3),
        "tied": (labels, np.zeros((16, 10)), np.zeros((16, 10))),
    }


@pytest.mark.parametrize("case", ["random", "saturated", "tied"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_loss_values_and_gradients_equal_the_reference(case, dtype):
    labels, logits, rows = cases()[case]
    if dtype != "float32" and case == "saturated":
        logits = logits / 1e4 * 60  # the largest that float16 holds comfortably
    rows = np.asarray(rows, np.float32)
    seen = round_to(logits, dtype)  # the logits as the loss sees them
    expected, expected_update = reference_losses(labels, seen, rows, ALPHA)
    expected_dz, expected_ds = reference_gradients(labels, seen, rows, ALPHA)
    value, grad = value_and_grad(lambda z: losses.kr_ls(labels, z, rows, ALPHA), logits, dtype)
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    tolerance = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    scale = 1.0 + np.abs(seen).max() + np.abs(rows).max()
    np.testing.assert_allclose(value, expected, rtol=tolerance, atol=max(tolerance, 1e-7 * scale))
    np.testing.assert_allclose(grad, expected_dz, rtol=tolerance,
                               atol=max(tolerance * (10 if dtype == "bfloat16" else 1), 1e-7 * scale))
    update = to_numpy(losses.kr_ls_update(labels, keras.ops.cast(seen, dtype), rows)).astype(np.float64)
    np.testing.assert_allclose(update, expected_update, rtol=1e-5, atol=max(1e-5, 1e-7 * scale))
    # The matrix's gradient: closed form against the written-out reference, and against the
    # backend's own autodiff of L_upd with respect to the rows.
    # log q - log p - KL(q || p) is a difference of log-probabilities as large as the logits:
    # float32 rounds it to about 1e-7 of their size (0.5e-3 for saturated logits of 1e4).
    scale = 1.0 + np.abs(seen).max() + np.abs(rows).max()
    closed = to_numpy(losses.kr_ls_row_gradient(labels, keras.ops.cast(seen, dtype), rows))
    assert np.isfinite(closed).all()
    np.testing.assert_allclose(closed, expected_ds, rtol=1e-5, atol=max(1e-6, 1e-7 * scale))
    _, autodiff = value_and_grad(lambda s: losses.kr_ls_update(labels, seen.astype(np.float32), s), rows)
    np.testing.assert_allclose(autodiff, expected_ds, rtol=1e-4, atol=max(1e-6, 1e-7 * scale))


def test_reference_gradients_are_the_derivatives():
    """The written-out gradients of the reference against central differences in float64."""
    labels, logits, rows = cases()["random"]
    labels, logits, rows = labels[:3], logits[:3], rows[:3]
    dz, ds = reference_gradients(labels, logits, rows, ALPHA)
    eps = 1e-6
    for i in range(3):
        for j in range(10):
            for array, expected, which in ((logits, dz, 0), (rows, ds, 1)):
                up, down = array.copy(), array.copy()
                up[i, j] += eps
                down[i, j] -= eps
                args_up = (up, rows) if array is logits else (logits, up)
                args_down = (down, rows) if array is logits else (logits, down)
                f_up = reference_losses(labels, *args_up, ALPHA)[which][i]
                f_down = reference_losses(labels, *args_down, ALPHA)[which][i]
                assert (f_up - f_down) / (2 * eps) == pytest.approx(expected[i, j], abs=1e-6)
    assert np.all(ds[np.arange(3), labels] == 0)  # the diagonal never moves


def test_loss_class_and_its_checks():
    labels, logits, rows = cases()["random"]
    expected, _ = reference_losses(labels, logits, rows, ALPHA)
    value = KRLSLoss(alpha=ALPHA)({"labels": labels, "teacher_logits": rows}, logits)
    assert float(value) == pytest.approx(expected.mean(), rel=1e-5)
    one_hot = np.eye(10)[labels]
    np.testing.assert_allclose(to_numpy(losses.kr_ls(one_hot, logits, rows, ALPHA)), expected, rtol=1e-5)
    # alpha = 0 is cross-entropy; a matrix row equal to the student's logits adds nothing.
    ce = -log_softmax(logits)[np.arange(16), labels]
    np.testing.assert_allclose(to_numpy(losses.kr_ls(labels, logits, rows, 0.0)), ce, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(losses.kr_ls(labels, logits, logits + 3.0, 1.0)), ce, rtol=1e-5)
    restored = KRLSLoss.from_config(KRLSLoss(alpha=0.3).get_config())
    assert restored.alpha == 0.3
    with pytest.raises(ValueError, match="teacher_logits"):
        KRLSLoss()(labels, logits)
    with pytest.raises(ValueError, match="alpha"):
        KRLSLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="rows"):
        losses.kr_ls(labels, logits, rows[:, :5], 1.0)


# -- the model, step by step ----------------------------------------------------------------


def make_data(n=N, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, D).astype("float32") * 2, rng.randint(0, K, n)


def make_batches(x, y, epochs=EPOCHS, batch=BATCH, seed=1):
    return shuffled_batches(x, y, epochs, batch, seed)


def make_student(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])


def make_krls(strategy=None, optimizer=None, **compile_kwargs):
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        krls = KRLSModel(make_student(), alpha=ALPHA)
        krls.compile(optimizer=optimizer or keras.optimizers.SGD(LR), **compile_kwargs)
    return krls


class Recorder(keras.callbacks.Callback):
    def __init__(self, krls):
        super().__init__()
        self.krls = krls
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        sync(self.krls)
        kernel, bias = self.krls.student.layers[-1].weights
        self.rows.append({
            "step": int(to_numpy(self.krls.step)), "matrix": to_numpy(self.krls.matrix),
            "kernel": to_numpy(kernel), "bias": to_numpy(bias), "loss": float(logs["loss"]),
        })


def reference_run(initial, batches, steps=STEPS, lr=LR):
    kernel, bias = initial
    reference = ReferenceKR(K, ALPHA, kernel, bias, lr)
    states, total, count = [], 0.0, 0
    for t, (x, labels) in enumerate(batches):
        if t % steps == 0:
            total, count, agree, top = 0.0, 0, [], []
        loss = reference.step(x, labels)
        total, count = total + loss * len(x), count + len(x)
        agree, top = agree + reference.agree, top + reference.top
        states.append({"step": t + 1, "matrix": reference.S.copy(), "kernel": reference.kernel.copy(),
                       "bias": reference.bias.copy(), "loss": total / count,
                       "teacher_accuracy": np.mean(agree), "teacher_top_probability": np.mean(top)})
    return states


def train(batches, epochs=EPOCHS, steps=STEPS, **kwargs):
    krls = make_krls(**kwargs)
    initial = [to_numpy(w) for w in krls.student.layers[-1].weights]
    recorder = Recorder(krls)
    history = krls.fit(Stream(batches), epochs=epochs, steps_per_epoch=steps, shuffle=False,
                       verbose=0, callbacks=[recorder])
    return krls, initial, recorder, history


def assert_matches_reference(recorder, states):
    assert recorder.rows, "no batch was recorded"
    for row in recorder.rows:
        expected = states[row["step"] - 1]
        where = f"after step {row['step']}"
        np.testing.assert_allclose(row["matrix"], expected["matrix"], rtol=1e-5, atol=1e-6, err_msg=where)
        np.testing.assert_allclose(row["kernel"], expected["kernel"], rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(row["bias"], expected["bias"], rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(row["loss"], expected["loss"], rtol=1e-5, err_msg=where)


def test_step_by_step_equals_the_reference():
    x, y = make_data()
    batches = make_batches(x, y)
    krls, initial, recorder, history = train(batches)
    states = reference_run(initial, batches)
    assert [row["step"] for row in recorder.rows] == list(range(1, EPOCHS * STEPS + 1))
    assert_matches_reference(recorder, states)
    matrix = states[-1]["matrix"]
    assert np.all(np.diag(matrix) == 0) and np.abs(matrix).max() > 1e-2  # it moved, off the diagonal
    for name in ("teacher_accuracy", "teacher_top_probability"):  # each epoch's mean
        expected = [states[(e + 1) * STEPS - 1][name] for e in range(EPOCHS)]
        np.testing.assert_allclose(history.history[name], expected, rtol=1e-5, err_msg=name)
    # The residual label's top probability: 1/(K-1) while S = 0 (step 1), above it later.
    assert all(1 / (K - 1) - 1e-6 <= v <= 1 for v in history.history["teacher_top_probability"])
    assert history.history["teacher_top_probability"][-1] > 1 / (K - 1) + 1e-3
    assert all(0 <= v <= 1 for v in history.history["teacher_accuracy"])


def test_sample_weights_weight_each_example_in_both_steps():
    """A sample weight scales its example's loss (Keras: the weighted sum over the batch size)
    and its share of the matrix's gradient; weight 0 leaves an example out of both."""
    x, y = make_data()
    weights = np.random.RandomState(5).choice([0.0, 0.5, 2.0], N).astype("float32")
    krls = make_krls()
    kernel, bias = [to_numpy(w) for w in krls.student.layers[-1].weights]
    krls.fit(x, y, sample_weight=weights, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    sync(krls)
    reference = ReferenceKR(K, ALPHA, kernel, bias, LR)
    for _ in range(2):
        for start in range(0, N, BATCH):
            part = slice(start, start + BATCH)
            reference.step(x[part], y[part], weights[part])
    np.testing.assert_allclose(to_numpy(krls.matrix), reference.S, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(krls.student.layers[-1].weights[0]), reference.kernel,
                               rtol=1e-5, atol=1e-5)


def test_a_learning_rate_schedule_drives_the_matrix():
    """beta of Algorithm 1 l.12 is the optimizer's rate at the step, also from a schedule."""
    x, y = make_data()
    batches = make_batches(x, y)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([STEPS], [LR, LR / 5])
    krls, initial, recorder, _ = train(batches, optimizer=keras.optimizers.SGD(schedule))
    kernel, bias = initial
    reference = ReferenceKR(K, ALPHA, kernel, bias, LR)
    for t, (xb, yb) in enumerate(batches):
        reference.lr = LR if t <= STEPS else LR / 5  # PiecewiseConstantDecay: step <= boundary
        reference.step(xb, yb)
    np.testing.assert_allclose(recorder.rows[-1]["matrix"], reference.S, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recorder.rows[-1]["kernel"], reference.kernel, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch backend: steps_per_execution must be 1")
@pytest.mark.parametrize("per_execution,batch,recorded", [
    (3, 4, [3, 6, 9]),
    (2, 3, [2, 4, 6, 8, 10, 12]),
])
def test_steps_per_execution(per_execution, batch, recorded):
    x, y = make_data()
    batches = make_batches(x, y, batch=batch)
    steps = math.ceil(N / batch)
    krls, initial, recorder, _ = train(batches, steps=steps, steps_per_execution=per_execution)
    assert [row["step"] for row in recorder.rows] == recorded
    assert_matches_reference(recorder, reference_run(initial, batches, steps=steps))


def test_run_eagerly():
    x, y = make_data()
    batches = make_batches(x, y, epochs=1)
    krls, initial, recorder, _ = train(batches, epochs=1, run_eagerly=True)
    assert_matches_reference(recorder, reference_run(initial, batches))


@tensorflow_only("jit_compile=True")
def test_xla():
    x, y = make_data()
    batches = make_batches(x, y)
    krls, initial, recorder, _ = train(batches, jit_compile=True)
    assert_matches_reference(recorder, reference_run(initial, batches))


def test_evaluate_and_predict_use_the_student_alone():
    x, y = make_data()
    krls, _, _, _ = train(make_batches(x, y, epochs=1), epochs=1)
    sync(krls)
    matrix, step = to_numpy(krls.matrix), int(to_numpy(krls.step))
    logs = krls.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    logits = to_numpy(krls.predict(x, verbose=0))
    np.testing.assert_allclose(logits, to_numpy(krls.student(x)), rtol=1e-6, atol=1e-6)
    expected = -log_softmax(logits.astype(np.float64))[np.arange(N), y].mean()
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert "teacher_accuracy" not in logs and "teacher_top_probability" not in logs
    sync(krls)
    np.testing.assert_array_equal(to_numpy(krls.matrix), matrix)  # evaluation writes nothing
    assert int(to_numpy(krls.step)) == step


def test_mixed_precision_fit():
    x, y = make_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        krls, _, _, history = train(make_batches(x, y, epochs=2), epochs=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    sync(krls)
    matrix = to_numpy(krls.matrix)
    assert matrix.dtype == np.float32 and np.isfinite(matrix).all() and np.abs(matrix).max() > 0
    assert int(to_numpy(krls.step)) == 2 * STEPS
    assert np.isfinite(history.history["loss"]).all()


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="alpha"):
        KRLSModel(make_student(), alpha=-0.1)
    with pytest.raises(ValueError, match="built"):
        KRLSModel(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.raises(ValueError, match="K >= 2"):
        KRLSModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="loss"):
        KRLSModel(make_student()).compile(optimizer="sgd", loss="mse")


# -- saving and resuming --------------------------------------------------------------------


def test_save_load_weights_and_continue_equals_uninterrupted(tmp_path):
    x, y = make_data()
    batches = make_batches(x, y)
    full, _, _, _ = train(batches)
    first = make_krls()
    first.fit(Stream(batches[: 2 * STEPS]), epochs=2, steps_per_epoch=STEPS, shuffle=False, verbose=0)
    first.save_weights(tmp_path / "two.weights.h5")
    second = make_krls()
    second.optimizer.build(second.trainable_variables)
    second.load_weights(tmp_path / "two.weights.h5")
    assert int(to_numpy(second.step)) == 2 * STEPS
    assert np.abs(to_numpy(second.matrix)).max() > 0
    second.fit(Stream(batches[2 * STEPS :]), epochs=3, initial_epoch=2, steps_per_epoch=STEPS,
               shuffle=False, verbose=0)
    for model in (full, second):
        sync(model)
    np.testing.assert_allclose(to_numpy(second.matrix), to_numpy(full.matrix), rtol=1e-6, atol=1e-7)
    for a, b in zip(second.student.get_weights(), full.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_keras_file_round_trip(tmp_path):
    x, y = make_data()
    krls, _, _, _ = train(make_batches(x, y, epochs=1), epochs=1)
    sync(krls)
    krls.save(tmp_path / "krls.keras")
    loaded = keras.models.load_model(tmp_path / "krls.keras")
    assert isinstance(loaded, KRLSModel) and loaded.alpha == ALPHA
    np.testing.assert_array_equal(to_numpy(loaded.matrix), to_numpy(krls.matrix))
    assert int(to_numpy(loaded.step)) == STEPS
    # It trains on from there as the original does.
    batches = make_batches(x, y, epochs=1, seed=7)
    for model in (krls, loaded):
        model.fit(Stream(batches), epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0)
        sync(model)
    np.testing.assert_allclose(to_numpy(loaded.matrix), to_numpy(krls.matrix), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@tensorflow_only("experiment.run with the tf.data pipeline")
def test_experiment_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    """experiment.run (train.py's body) with --method=kr_ls, killed right after epoch 2's
    checkpoint and run again: it resumes (matrix, counter, optimizer) to the uninterrupted result."""
    from conftest import killed_and_resumed_equals_uninterrupted

    history = killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, "kr_ls")
    assert len(history) == 4
    assert "teacher_top_probability" in history[0]


# -- two replicas ---------------------------------------------------------------------------


@tensorflow_only("tf.distribute.MirroredStrategy")
def test_two_replicas_equal_one_device():
    """Batches 4, 4, 2 split 2 + 2 and 1 + 1: every replica's predictions reach the matrix, and
    every replica holds the same matrix, the reference's."""
    from conftest import two_replicas

    x, y = make_data()
    batches = make_batches(x, y)
    one, initial, _, _ = train(batches)
    two = make_krls(two_replicas())
    two.fit(tf_stream(batches), epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0)
    states = reference_run(initial, batches)
    for copy in two.matrix.value.values:  # each replica's copy
        np.testing.assert_allclose(copy.numpy(), states[-1]["matrix"], rtol=1e-5, atol=1e-6)
    assert [int(c.numpy()) for c in two.step.value.values] == [EPOCHS * STEPS] * 2
    for a, b in zip(two.student.get_weights(), one.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@tensorflow_only("tf.distribute.MirroredStrategy")
def test_two_replicas_with_a_batch_they_split_unevenly():
    """11 examples, batches 4, 4, 3 (the last split 2 + 1): the matrix step is the global batch's
    mean (sum and count all-reduced), as on one device. (The network's step under an uneven split
    is Keras's mean of per-replica means, so only the weights before the last step agree.)"""
    from conftest import two_replicas

    x, y = make_data(n=11)
    batches = make_batches(x, y, epochs=1)
    one = make_krls()
    initial = [to_numpy(w) for w in one.student.layers[-1].weights]
    one.fit(tf_stream(batches), epochs=1, steps_per_epoch=STEPS, verbose=0)
    two = make_krls(two_replicas())
    two.fit(tf_stream(batches), epochs=1, steps_per_epoch=STEPS, verbose=0)
    expected = reference_run(initial, batches)[-1]["matrix"]
    np.testing.assert_allclose(one.matrix.numpy(), expected, rtol=1e-5, atol=1e-6)
    for copy in two.matrix.value.values:
        np.testing.assert_allclose(copy.numpy(), expected, rtol=1e-5, atol=1e-6)


_JAX_TWO_DEVICES = """
import sys
sys.path.insert(0, "tests")
import keras
devices = keras.distribution.list_devices("cpu")
assert len(devices) == 2, devices
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
import test_krls as t
x, y = t.make_data()
batches = t.make_batches(x, y)  # 4, 4, 2: each device gets half of every batch
krls, initial, recorder, history = t.train(batches)
t.assert_matches_reference(recorder, t.reference_run(initial, batches))
print("STEPS", [row["step"] for row in recorder.rows])
"""


@pytest.mark.slow
@tensorflow_only("run from the default (TensorFlow) suite, which starts the JAX process itself")
def test_jax_data_parallel_over_two_devices_equals_the_reference():
    """keras.distribution.DataParallel over two CPU devices (JAX): the matrix step sums both
    devices' halves of each batch; step by step as the reference."""
    import importlib.util
    import os
    import pathlib
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[backends]')")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": TWO_HOST_DEVICES}
    result = subprocess.run([sys.executable, "-c", _JAX_TWO_DEVICES], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"STEPS {list(range(1, EPOCHS * STEPS + 1))}" in result.stdout


# -- real CIFAR-10 --------------------------------------------------------------------------


@pytest.mark.slow
@tensorflow_only("one backend is enough for the behaviour on real data")
def test_on_real_cifar10(real_data_dir):
    """A small CNN, 2,000 real CIFAR-10 images, 4 epochs of KR-LS: the matrix's rows are finite,
    differ from one another and from uniform, put the most weight on semantically close classes
    (a cat's row on dog, an automobile's on truck), and training improves."""
    from test_cskd import small_network

    x, y = data.load("cifar10", "train", str(real_data_dir))
    x, y = data.take_subset(x, y, 2000, seed=0)
    x_test, y_test = data.load("cifar10", "test", str(real_data_dir))
    x_test, y_test = data.take_subset(x_test, y_test, 1000, seed=0)
    epochs, batch = 4, 50
    train_input, steps = data.training_input(x, y, dataset="cifar10", batch_size=batch, seed=0,
                                             first_epoch=0, epochs=epochs)
    krls = KRLSModel(small_network(), alpha=1.0)
    # The matrix's rate is beta alpha = 0.05 a step on a batch mean; about 1/10 of the batch has
    # a given class, so a row moves slowly: 160 steps leave it small but ordered.
    krls.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                 metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    evaluation = data.evaluation_input(x_test, y_test, dataset="cifar10", batch_size=250)
    history = krls.fit(train_input, epochs=epochs, steps_per_epoch=steps,
                       validation_data=evaluation, verbose=0).history
    matrix = krls.matrix.numpy().astype(np.float64)
    assert np.isfinite(matrix).all() and np.all(np.diag(matrix) == 0)
    residual_labels = np.array([np.exp(residual(matrix[k], k)) for k in range(10)])  # (10, 9)
    assert residual_labels.std(axis=1).min() > 1e-4  # no row is uniform
    assert np.abs(matrix - matrix.mean(axis=0)).max() > 1e-3  # the rows differ
    assert residual_labels.max() < 0.5  # spread over the classes, not one
    top = {k: int(np.delete(np.arange(10), k)[residual_labels[k].argmax()]) for k in range(10)}
    assert top[3] == 5 or top[5] == 3, top  # cat <-> dog
    assert top[1] == 9 or top[9] == 1, top  # automobile <-> truck
    assert top[0] == 8 or top[8] == 0, top  # airplane <-> ship
    # Class relations are mutual: S and its transpose agree off the diagonal (the diagonal,
    # which the residual label leaves out, stays 0: there is no diagonal to dominate).
    off = ~np.eye(10, dtype=bool)
    assert np.corrcoef(matrix[off], matrix.T[off])[0, 1] > 0.5
    assert len(set(top.values())) >= 4, top
    assert history["val_accuracy"][-1] > history["val_accuracy"][0] + 0.03, history["val_accuracy"]
    assert history["accuracy"][-1] > history["accuracy"][0] + 0.05, history["accuracy"]
    assert np.all(np.isfinite(history["loss"]))
    # The residual label sharpened from uniform (1/9) as the matrix learned.
    assert history["teacher_top_probability"][-1] > history["teacher_top_probability"][0] > 1 / 9 - 1e-6


def test_docstring_examples():
    import doctest

    from keras_softkd import knowledge_refinery

    result = doctest.testmod(knowledge_refinery)
    assert result.attempted > 0 and result.failed == 0
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for function in (losses.residual_log_softmax, losses.kr_ls, losses.kr_ls_update,
                     losses.kr_ls_row_gradient, KRLSLoss):
        for test in finder.find(function, function.__name__, globs={}):
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0

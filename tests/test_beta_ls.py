"""BetaLSModel (Beta-LS) against a float64 transcription of its reference code's training loop.

The reference is ZhiluZhang123/neurips_2020_distillation @ f913a07, ``train_smoothing.py``
l.97-146 (the loop: the average's forward, the loss, the SGD step, the average's update
``alpha_now = min(1 - 1/(global_step + 1), lamda)``) and ``loss.py`` l.7-33, run step by step
beside the model on a Dense layer with plain SGD (no BatchNorm: training and inference mode
agree); losses, weights and the average must agree at every step. The average starts at the
student's initial weights (the package's documented choice; the code's starts at a second
random initialisation). The ``Beta(beta, 1)`` draws are the model's own (``BetaLSModel.draws``,
seeded by the step), fed to the reference as its ``np.random.beta``.

Runs on every Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``, tests/test_backends.py);
tests of a backend-specific mechanism skip elsewhere with the reason.
"""

import contextlib

import keras
import numpy as np
import pytest

from conftest import sync, tensorflow_only, to_numpy
from stepwise import log_softmax
from keras_softkd import BetaLSModel, losses, past_weights

BACKEND = keras.backend.backend()
N, D, K = 12, 5, 4
BATCH = 4
STEPS = N // BATCH
EPOCHS = 3
ALPHA, BETA = 0.6, 3.0
LR = 0.5


# -- the reference (float64) -------------------------------------------------------------------


class ReferenceBetaLS:
    """train_smoothing.py's loop for a Dense student (and its average) with SGD, no momentum."""

    def __init__(self, kernel, bias, lam, alpha=ALPHA, lr=LR):
        self.kernel, self.bias = kernel.astype(np.float64), bias.astype(np.float64)
        self.average = [self.kernel.copy(), self.bias.copy()]  # the package's start (see above)
        self.lam, self.alpha, self.lr = lam, alpha, lr
        self.global_step = 0

    def step(self, x, labels, draws):
        x = x.astype(np.float64)
        outputs = x @ self.kernel + self.bias
        outputs_orig = x @ self.average[0] + self.average[1]  # with torch.no_grad(): ema_model(x)
        n = len(x)
        onehot = np.eye(K)[labels]
        # loss.py: sort by the teacher's softmax on the label (float32 on the GPU), pair with the
        # sorted draws, smooth, NLL with + 1e-8.
        confidence = np.sum(np.exp(log_softmax(outputs_orig.astype(np.float32))) * onehot, axis=1)
        indices = np.argsort(confidence, kind="stable")
        random_beta = np.sort(draws.astype(np.float64))
        uniform = (1 - random_beta) / (K - 1)
        beta_label = onehot[indices] * (random_beta - uniform)[:, None] + uniform[:, None]
        softmaxes = np.exp(log_softmax(outputs))
        beta_loss = np.sum(-beta_label * np.log(softmaxes[indices] + 1e-8)) / n
        ce = -np.mean(np.sum(onehot * log_softmax(outputs), axis=1))
        loss = (1 - self.alpha) * ce + self.alpha * beta_loss
        # loss.backward(): d loss / d outputs, row by row (the sorted rows put back)
        smoothed = np.empty_like(beta_label)
        smoothed[indices] = beta_label
        w = smoothed * softmaxes / (softmaxes + 1e-8)
        grad = ((1 - self.alpha) * (softmaxes - onehot)
                + self.alpha * (softmaxes * w.sum(1, keepdims=True) - w)) / n
        self.kernel -= self.lr * x.T @ grad  # optimizer.step()
        self.bias -= self.lr * grad.sum(0)
        self.global_step += 1  # l.143-146
        alpha_now = min(1 - 1 / (self.global_step + 1), self.lam)
        self.average = [alpha_now * a + (1 - alpha_now) * p
                        for a, p in zip(self.average, (self.kernel, self.bias))]
        return loss


# -- the setting ------------------------------------------------------------------------------


def make_data(seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(N, D).astype("float32") * 2, rng.randint(0, K, N)


def make_student(seed=3, batchnorm=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((D,)), keras.layers.Dense(6 if batchnorm else K)]
    if batchnorm:
        layers += [keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Dense(K)]
    return keras.Sequential(layers)


def make_model(lam=0.999, strategy=None, **compile_kwargs):
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = BetaLSModel(make_student(), alpha=ALPHA, beta=BETA, lam=lam, seed=5)
        model.compile(optimizer=keras.optimizers.SGD(LR), **compile_kwargs)
    return model


class Recorder(keras.callbacks.Callback):
    def __init__(self, model):
        super().__init__()
        self.model_ = model
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        sync(self.model_)
        self.rows.append({
            "step": int(to_numpy(self.model_.step)),
            "student": [to_numpy(w) for w in self.model_.student.weights],
            "average": [to_numpy(v) for v in self.model_.average.variables],
            "loss": float(logs["loss"]),
        })


def train(lam=0.999, epochs=EPOCHS, **compile_kwargs):
    x, y = make_data()
    model = make_model(lam, **compile_kwargs)
    initial = [to_numpy(w) for w in model.student.weights]
    recorder = Recorder(model)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[recorder])
    return model, initial, recorder


def reference_states(model, initial, lam, epochs=EPOCHS, draws_fn=None):
    """The reference after every step, with the model's draws of each step t (1-based)."""
    draws_fn = draws_fn or model.draws
    x, y = make_data()
    reference = ReferenceBetaLS(initial[0], initial[1], lam)
    states, total = [], 0.0
    for t in range(1, epochs * STEPS + 1):
        i = (t - 1) % STEPS
        if i == 0:
            total = 0.0
        draws = to_numpy(draws_fn(t, BATCH)).astype(np.float64)
        # The package updates the average at the start of the next step (the same sequence of
        # teachers): after step t it holds the reference's average of step t's forward.
        teacher_of_step_t = [a.copy() for a in reference.average]
        loss = reference.step(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH], draws)
        total += loss
        states.append({"student": [reference.kernel.copy(), reference.bias.copy()],
                       "average": teacher_of_step_t, "loss": total / (i + 1)})
    return states


def assert_matches(rows, states):
    assert rows, "no step recorded"
    for row in rows:
        expected = states[row["step"] - 1]
        where = f"after step {row['step']}"
        for got, want in zip(row["student"], expected["student"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=where)
        for got, want in zip(row["average"], expected["average"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(row["loss"], expected["loss"], rtol=1e-5, err_msg=where)


# -- (a) the reference, step by step -----------------------------------------------------------


def test_reference_average_is_the_mean_of_the_weights_while_warming_up():
    """With lamda = 0.999 the average after k <= 998 updates is (theta_0 + ... + theta_k)/(k+1)."""
    rng = np.random.RandomState(1)
    x, y = make_data()
    reference = ReferenceBetaLS(rng.randn(D, K), rng.randn(K), lam=0.999)
    seen = [reference.kernel.copy()]
    for t in range(6):
        reference.step(x[:BATCH], y[:BATCH], rng.beta(BETA, 1, BATCH))
        seen.append(reference.kernel.copy())
        np.testing.assert_allclose(reference.average[0], np.mean(seen, axis=0), rtol=1e-12)


@pytest.mark.parametrize("lam", [0.999, 0.6])
def test_step_by_step_equals_the_reference(lam):
    """Every step: the student, the average (Mean Teacher's warm-up, then lamda = 0.6 from the
    second update on) and Keras's logged loss (the epoch's running mean)."""
    model, initial, recorder = train(lam)
    assert [row["step"] for row in recorder.rows] == list(range(1, EPOCHS * STEPS + 1))
    assert_matches(recorder.rows, reference_states(model, initial, lam))


def test_the_average_after_k_steps_is_the_closed_form():
    """Straight from the recorded student weights: at the start of step t the average holds
    mean(theta_0 .. theta_(t-1)) (lamda = 0.999 is not reached in 9 steps); the recorder sees
    the end of step t, before the update with theta_t."""
    model, initial, recorder = train(0.999)
    students = [initial] + [row["student"] for row in recorder.rows]
    for t, row in enumerate(recorder.rows, start=1):
        for position, got in enumerate(row["average"]):
            expected = np.mean([weights[position] for weights in students[:t]], axis=0)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")


@pytest.mark.parametrize("per_execution", [3, 9])
def test_steps_per_execution(per_execution):
    if BACKEND == "torch":
        pytest.skip("PyTorch backend: steps_per_execution must be 1")
    model, initial, recorder = train(0.999, steps_per_execution=per_execution)
    states = reference_states(model, initial, 0.999)
    assert recorder.rows[-1]["step"] == EPOCHS * STEPS
    assert_matches(recorder.rows[-1:], states)


def test_xla():
    if BACKEND == "torch":
        pytest.skip("PyTorch backend: jit_compile=True is torch.compile (not exercised here)")
    model, initial, recorder = train(0.999, jit_compile=True)
    draws_fn = None
    if BACKEND == "tensorflow":  # XLA's stateless generator is not the CPU kernel's: same seed,
        import tensorflow as tf  # other numbers (tf.random.stateless_uniform, alg auto_select)

        draws_fn = tf.function(lambda t, n: model.draws(t, n), jit_compile=True)
    assert_matches(recorder.rows, reference_states(model, initial, 0.999, draws_fn=draws_fn))


def test_run_eagerly():
    model, initial, recorder = train(0.999, epochs=1, run_eagerly=True)
    assert_matches(recorder.rows, reference_states(model, initial, 0.999, epochs=1))


# -- (b) what the model does besides the loss ---------------------------------------------------


def test_draws_are_beta_3_1_and_fixed_by_seed_and_step():
    model = make_model()
    draws = to_numpy(model.draws(7, 20000))
    assert np.all((draws >= 0) & (draws <= 1))
    # Beta(3, 1): mean 3/4, variance 3 / (16 * 5) = 0.0375; CDF x^3.
    assert abs(draws.mean() - 0.75) < 0.01 and abs(draws.var() - 0.0375) < 0.003
    assert abs(np.mean(draws < 0.5) - 0.125) < 0.01
    np.testing.assert_array_equal(draws, to_numpy(model.draws(7, 20000)))
    assert not np.allclose(draws[:10], to_numpy(model.draws(8, 20000))[:10])


def test_teacher_runs_in_training_mode_and_the_student_alone_evaluates():
    """With BatchNorm: the teacher normalises with the batch's statistics (the reference's
    ema_model.train()), and writes nothing; evaluate() is the student's cross-entropy."""
    student = make_student(batchnorm=True)
    model = BetaLSModel(student, alpha=ALPHA, beta=BETA)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = make_data()
    x = x * 3 + 2  # far from BatchNorm's initial moving statistics
    memory = model.average
    before = [to_numpy(v) for v in memory.variables]
    taught = to_numpy(model.teacher_logits(x))
    training, _ = student.stateless_call(memory.variables[:memory.num_trainable],
                                         memory.variables[memory.num_trainable:], x, training=True)
    inference = to_numpy(memory.logits(x, training=False))
    np.testing.assert_allclose(taught, to_numpy(training), rtol=1e-5, atol=1e-5)
    assert not np.allclose(taught, inference, atol=1e-2)
    for a, b in zip(before, [to_numpy(v) for v in memory.variables]):
        np.testing.assert_array_equal(a, b)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert {"teacher_accuracy", "teacher_top_probability", "label_weight"} <= set(history.history)
    evaluated = model.evaluate(x, y, batch_size=N, verbose=0, return_dict=True)
    assert set(evaluated) == {"loss"}
    cross_entropy = to_numpy(losses.ce(y, student.predict(x, verbose=0))).mean()
    np.testing.assert_allclose(evaluated["loss"], cross_entropy, rtol=1e-5)


def test_the_least_confident_example_gets_the_smallest_label_weight():
    """Through the model: the batch's examples ranked by the average's confidence in their
    label get the sorted draws in that order (the label weight the step logs)."""
    model = make_model()
    x, y = make_data()
    teacher = to_numpy(model.teacher_logits(x[:BATCH]))
    confidence = np.exp(log_softmax(teacher))[np.arange(BATCH), y[:BATCH]]
    draws = np.sort(to_numpy(model.draws(1, BATCH)))
    history = model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["label_weight"][0], draws.mean(), rtol=1e-5)
    expected = np.empty(BATCH)
    expected[np.argsort(confidence, kind="stable")] = draws
    smoothed = to_numpy(losses.teachers.beta_smoothing(
        np.eye(K)[y[:BATCH]], losses.teachers.confidence_ranks(confidence), draws))
    np.testing.assert_allclose(smoothed[np.arange(BATCH), y[:BATCH]], expected, rtol=1e-6)


def test_arguments_are_checked():
    student = make_student()
    for kwargs, message in [({"alpha": 1.5}, "alpha"), ({"beta": 0.0}, "beta"),
                            ({"lam": 1.0}, "lam"), ({"seed": -1}, "seed")]:
        with pytest.raises(ValueError, match=message):
            BetaLSModel(student, **kwargs)
    with pytest.raises(ValueError, match="loss"):
        BetaLSModel(student).compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="decay"):
        past_weights.check_decay(-0.1)


# -- (c) saving and resuming -------------------------------------------------------------------


def test_save_load_weights_and_continue_equals_uninterrupted(tmp_path):
    """2 epochs, save_weights (the average and the step counter with them), a new model loads them
    and trains epoch 3: the same average and student as 3 epochs in one go (same draws)."""
    x, y = make_data()
    full, _, _ = train(0.999)
    first = make_model()
    first.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    first.save_weights(tmp_path / "two.weights.h5")
    second = make_model()
    second.optimizer.build(second.trainable_variables)
    second.load_weights(tmp_path / "two.weights.h5")
    assert int(to_numpy(second.step)) == 2 * STEPS
    second.fit(x, y, batch_size=BATCH, epochs=3, initial_epoch=2, shuffle=False, verbose=0)
    for model in (full, second):
        sync(model)
    for a, b in zip(second.weights, full.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7, err_msg=a.name)


def test_keras_file_round_trip(tmp_path):
    model, _, _ = train(0.6, epochs=1)
    sync(model)
    model.save(tmp_path / "beta_ls.keras")
    loaded = keras.models.load_model(tmp_path / "beta_ls.keras")
    assert isinstance(loaded, BetaLSModel)
    assert (loaded.alpha, loaded.beta, loaded.lam, loaded.seed) == (ALPHA, BETA, 0.6, 5)
    for a, b in zip(loaded.average.variables, model.average.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert int(to_numpy(loaded.step)) == STEPS


@pytest.mark.slow
@tensorflow_only("experiment.run with the tf.data pipeline")
def test_experiment_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    """experiment.run (train.py's body) with --method=beta_ls, killed right after epoch 2's
    checkpoint and run again: it resumes (average, counter, optimizer) to the uninterrupted result."""
    from conftest import killed_and_resumed_equals_uninterrupted

    history = killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, "beta_ls")
    assert len(history) == 4
    assert "label_weight" in history[0]


# -- (d) two replicas ----------------------------------------------------------------------------


@tensorflow_only("tf.distribute.MirroredStrategy")
@pytest.mark.parametrize("examples", [N, N - 1])
def test_two_replicas_equal_one_device(examples):
    """Each batch split over two replicas (2 + 2; and a last batch of 3 split 2 + 1): the ranking
    is over the whole batch with one set of draws, so every example gets the label weight one
    device gives it, and the student and the average equal one device's. (With the 2 + 1 split
    the student's last step is not compared: Keras averages each replica's mean loss, which is
    not the batch's mean, for any loss.)"""
    import tensorflow as tf

    from conftest import two_replicas

    x, y = make_data()
    batches = tf.data.Dataset.from_tensor_slices((x[:examples], y[:examples])).batch(BATCH)
    epochs = 2 if examples == N else 1
    one = make_model()
    logs_one = one.fit(batches, epochs=epochs, verbose=0).history
    two = make_model(strategy=two_replicas())
    logs_two = two.fit(batches, epochs=epochs, verbose=0).history
    for key in ("label_weight", "teacher_accuracy", "teacher_top_probability"):
        np.testing.assert_allclose(logs_two[key], logs_one[key], rtol=1e-6, err_msg=key)
    if examples == N:
        for a, b in zip(two.student.get_weights(), one.student.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for variable, expected in zip(two.average.variables, one.average.variables):
        for copy in variable.value.values:  # each replica's copy of the average
            np.testing.assert_allclose(copy.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert [int(c.numpy()) for c in two.step.value.values] == [int(one.step.numpy())] * 2


# -- (e) on a real network and real images ---------------------------------------------------------


@pytest.mark.slow
def test_on_real_cifar10(real_data_dir):
    """The small conv net of test_cskd.py on 1024 real CIFAR-10 training images, 4 epochs of
    Beta-LS as train.py builds it: the average teaches something (finite, spread-out predictions,
    not one class, better than chance by the end), the label weights follow Beta(3, 1)'s mean,
    the examples the average finds hard get the smaller weights, and training improves."""
    from keras_softkd import data, experiment
    from keras_softkd.config import ExperimentConfig
    from test_cskd import small_network

    x, y = data.load("cifar10", "train", str(real_data_dir))
    x, y = data.take_subset(x, y, 1024, 0)
    clean = np.asarray(data.normalize(x, "cifar10"))
    stream, steps = data.training_input(x, y, dataset="cifar10", batch_size=64, seed=0,
                                        first_epoch=0, epochs=4)
    config = ExperimentConfig(method="beta_ls", epochs=4).resolved()
    trainer = experiment.build_trainer(config, 10, steps_per_epoch=steps, student=small_network(),
                                       num_examples=len(y))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = trainer.fit(stream, epochs=4, steps_per_epoch=steps, shuffle=False, verbose=0).history
    assert all(np.isfinite(history[key]).all() for key in ("loss", "teacher_accuracy", "label_weight"))
    assert history["accuracy"][-1] > history["accuracy"][0] + 0.05, history["accuracy"]
    assert history["teacher_accuracy"][-1] > 0.2, history["teacher_accuracy"]  # chance: 0.1
    assert abs(np.mean(history["label_weight"]) - 0.75) < 0.02  # Beta(3, 1)'s mean

    teacher = to_numpy(trainer.teacher_logits(clean[:256])).astype(np.float64)
    probabilities = np.exp(log_softmax(teacher))
    assert np.all(np.isfinite(teacher))
    assert len(np.unique(probabilities.argmax(axis=1))) >= 4, "the average predicts few classes"
    assert probabilities.max(axis=1).std() > 0.02, "the same confidence for every image"
    # Within a batch, the weight on the label rises with the average's confidence in it.
    confidence = probabilities[np.arange(256), y[:256]]
    ranks = to_numpy(losses.teachers.confidence_ranks(confidence))
    draws = np.sort(to_numpy(trainer.draws(1, 256)))
    weight = draws[ranks.astype(int)]
    assert np.corrcoef(weight, confidence)[0, 1] > 0.5

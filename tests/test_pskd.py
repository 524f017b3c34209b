"""PSKDModel (PS-KD) against a float64 transcription of the reference code, in every setting Keras
runs steps; the index-carrying input pipelines; resume; two replicas; real CIFAR-10.

The reference is docs/REFERENCE_CODE.md 1.2 (lgcnsai/PS-KD-Pytorch @ 9aa0828, main.py l.279,
323-324, 422-432, 467; loss/pskd_loss.py l.18-19) run step by step beside the model on a Dense
layer with plain SGD: losses, table and weights must agree at every step.

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
from keras_softkd import PSKDModel, data

BACKEND = keras.backend.backend()
N, D, K = 10, 5, 3
BATCH = 4
STEPS = math.ceil(N / BATCH)  # 3 steps per epoch: 4, 4, 2
EPOCHS = 3
ALPHA_T = 0.8
LR = 0.5


# -- the reference (docs/REFERENCE_CODE.md 1.2, float64) ---------------------------------------


class ReferencePSKD:
    """The transcription of 1.2, with the Dense layer's forward, backward and SGD step filled in."""

    def __init__(self, n_examples, num_classes, alpha_T, epochs, kernel, bias, lr):
        self.table = np.zeros((n_examples, num_classes), np.float32)  # main.py l.279
        self.K, self.alpha_T, self.E = num_classes, alpha_T, epochs
        self.kernel, self.bias, self.lr = kernel.astype(np.float64), bias.astype(np.float64), lr

    def alpha(self, epoch):  # 0-based epoch, main.py l.323
        return max(0.0, self.alpha_T * (epoch + 1) / self.E)

    def step(self, x, labels, idx, epoch):
        x = x.astype(np.float64)
        logits = x @ self.kernel + self.bias  # training-mode forward, pre-update weights
        onehot = np.eye(self.K, dtype=np.float32)[labels]
        if epoch == 0:
            self.table[idx] = onehot  # l.422-423
        a = self.alpha(epoch)
        target = (1 - a) * onehot + a * self.table[idx].astype(np.float64)  # l.426
        lp = log_softmax(logits)
        loss = (-target * lp).mean(0).sum()  # pskd_loss.py l.19
        # backward + optimizer.step(): d loss / d z = (softmax(z) sum(target) - target) / B
        grad = (np.exp(lp) * target.sum(1, keepdims=True) - target) / len(x)
        self.kernel -= self.lr * x.T @ grad
        self.bias -= self.lr * grad.sum(0)
        self.table[idx] = np.exp(lp).astype(np.float32)  # l.432 + l.467, T = 1, pre-step logits
        return loss


# -- the setting ------------------------------------------------------------------------------


def make_data(n=N, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, D).astype("float32") * 2, rng.randint(0, K, n)


def make_batches(x, y, epochs=EPOCHS, batch=BATCH, seed=1):
    return shuffled_batches(x, y, epochs, batch, seed, with_index=True)


def make_student(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])


def make_pskd(strategy=None, n=N, steps=STEPS, table_dtype="float32", **compile_kwargs):
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        pskd = PSKDModel(make_student(), num_examples=n, alpha=ALPHA_T, epochs=EPOCHS,
                         steps_per_epoch=steps, table_dtype=table_dtype)
        pskd.compile(optimizer=keras.optimizers.SGD(LR), **compile_kwargs)
    return pskd


class Recorder(keras.callbacks.Callback):
    """Step counter, table, weights and the logged loss at the end of each callback batch."""

    def __init__(self, pskd):
        super().__init__()
        self.pskd = pskd
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        sync(self.pskd)
        kernel, bias = self.pskd.student.layers[-1].weights
        self.rows.append({
            "step": int(to_numpy(self.pskd.step)), "table": to_numpy(self.pskd.table),
            "kernel": to_numpy(kernel), "bias": to_numpy(bias), "loss": float(logs["loss"]),
        })


def reference_run(pskd_initial, batches, steps=STEPS, table=None):
    """The reference's state after every step: table, weights, and Keras's logged loss (the
    running batch-size-weighted mean of the epoch's losses)."""
    kernel, bias = pskd_initial
    reference = ReferencePSKD(N, K, ALPHA_T, EPOCHS, kernel, bias, LR)
    if table is not None:
        reference.table[:] = table
    states, total, count = [], 0.0, 0
    for t, (x, targets) in enumerate(batches):
        epoch = t // steps
        if t % steps == 0:
            total, count = 0.0, 0
        loss = reference.step(x, targets["labels"], targets["index"], epoch)
        total, count = total + loss * len(x), count + len(x)
        states.append({"step": t + 1, "table": reference.table.copy(), "kernel": reference.kernel.copy(),
                       "bias": reference.bias.copy(), "loss": total / count, "step_loss": loss})
    return states


def train(batches, epochs=EPOCHS, steps=STEPS, **kwargs):
    pskd = make_pskd(steps=steps, **kwargs)
    initial = [to_numpy(w) for w in pskd.student.layers[-1].weights]
    recorder = Recorder(pskd)
    history = pskd.fit(Stream(batches), epochs=epochs, steps_per_epoch=steps, shuffle=False,
                       verbose=0, callbacks=[recorder])
    return pskd, initial, recorder, history


def assert_matches_reference(recorder, states):
    assert recorder.rows, "no batch was recorded"
    for row in recorder.rows:
        expected = states[row["step"] - 1]
        where = f"after step {row['step']}"
        np.testing.assert_allclose(row["table"], expected["table"], rtol=1e-5, atol=1e-6, err_msg=where)
        np.testing.assert_allclose(row["kernel"], expected["kernel"], rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(row["bias"], expected["bias"], rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(row["loss"], expected["loss"], rtol=1e-5, err_msg=where)


# -- (a) the reference, step by step ----------------------------------------------------------


def test_reference_itself():
    """The transcription's rules: alpha_T (e+1)/E, epoch 0's target is the label (its loss is
    CE), and each row holds the softmax of the example's last visit."""
    x, y = make_data()
    batches = make_batches(x, y)
    reference = ReferencePSKD(N, K, ALPHA_T, EPOCHS, np.zeros((D, K)), np.zeros(K), LR)
    assert [reference.alpha(e) for e in range(3)] == pytest.approx([0.8 / 3, 1.6 / 3, 0.8])
    first = reference.step(batches[0][0], batches[0][1]["labels"], batches[0][1]["index"], 0)
    assert first == pytest.approx(math.log(K))  # zero weights: uniform q, CE = log K
    np.testing.assert_allclose(reference.table[batches[0][1]["index"]], 1 / K, rtol=1e-6)
    assert reference.table.sum() == pytest.approx(BATCH)


def test_step_by_step_equals_the_reference():
    x, y = make_data()
    batches = make_batches(x, y)
    pskd, initial, recorder, history = train(batches)
    states = reference_run(initial, batches)
    assert [row["step"] for row in recorder.rows] == list(range(1, EPOCHS * STEPS + 1))
    assert_matches_reference(recorder, states)
    # The stored rows used as targets: none in epoch 0 (NaN), all later.
    assert math.isnan(history.history["teacher_accuracy"][0])
    assert all(0 <= a <= 1 for a in history.history["teacher_accuracy"][1:])
    assert history.history["alpha_t"] == pytest.approx([0.0, 1.6 / 3, 0.8], rel=1e-6)


def test_an_example_left_out_of_epoch_0_is_taught_its_label():
    """keras.distribution's cut of a last batch can leave an example out of an epoch: if that is
    epoch 0, its row is still unwritten in epoch 1 and counts as its label (the reference's
    table with every row the one-hot label before epoch 0, which sees every example)."""
    x, y = make_data()
    batches = make_batches(x, y)
    images, targets = batches[STEPS - 1]  # epoch 0's last batch, 2 examples: drop one
    left_out = targets["index"][0]
    batches[STEPS - 1] = (images[1:], {key: value[1:] for key, value in targets.items()})
    pskd, initial, recorder, history = train(batches)
    assert recorder.rows[STEPS - 1]["table"][left_out].sum() == 0  # unwritten after epoch 0
    labels = np.eye(K, dtype=np.float32)[y]
    for row in recorder.rows:  # unwritten rows read as the labels
        row["table"] = np.where(row["table"].sum(axis=1, keepdims=True) > 0, row["table"], labels)
    assert_matches_reference(recorder, reference_run(initial, batches, table=labels))


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch backend: steps_per_execution must be 1")
@pytest.mark.parametrize("per_execution,batch,recorded", [
    (3, 4, [3, 6, 9]),  # batches 4, 4, 2: one execution per epoch
    (2, 3, [2, 4, 6, 8, 10, 12]),  # batches 3, 3, 3, 1: epochs end inside no execution
])
def test_steps_per_execution(per_execution, batch, recorded):
    """(On a stream, Keras runs whole executions: steps_per_execution must divide
    steps_per_epoch, for any model.)"""
    x, y = make_data()
    batches = make_batches(x, y, batch=batch)
    steps = math.ceil(N / batch)
    pskd, initial, recorder, _ = train(batches, steps=steps, steps_per_execution=per_execution)
    assert [row["step"] for row in recorder.rows] == recorded
    assert_matches_reference(recorder, reference_run(initial, batches, steps=steps))


def test_run_eagerly():
    x, y = make_data()
    batches = make_batches(x, y)
    pskd, initial, recorder, _ = train(batches, run_eagerly=True)
    assert_matches_reference(recorder, reference_run(initial, batches))


@tensorflow_only("jit_compile=True")
def test_xla():
    x, y = make_data()
    batches = make_batches(x, y)
    pskd, initial, recorder, _ = train(batches, jit_compile=True)
    assert_matches_reference(recorder, reference_run(initial, batches))


def test_evaluate_and_predict_use_the_student_alone():
    x, y = make_data()
    pskd, _, _, _ = train(make_batches(x, y, epochs=1), epochs=1)
    sync(pskd)
    table, step = to_numpy(pskd.table), int(to_numpy(pskd.step))
    logs = pskd.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    logits = to_numpy(pskd.predict(x, verbose=0))
    np.testing.assert_allclose(logits, to_numpy(pskd.student(x)), rtol=1e-6, atol=1e-6)
    expected = -log_softmax(logits.astype(np.float64))[np.arange(N), y].mean()
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert "teacher_accuracy" not in logs and "alpha_t" not in logs
    sync(pskd)
    np.testing.assert_array_equal(to_numpy(pskd.table), table)  # evaluation writes nothing
    assert int(to_numpy(pskd.step)) == step


def test_mixed_precision_fit():
    """mixed_float16 (train.py --precision=mixed_float16): float16 logits, a float32 table of
    probability rows, a finite loss."""
    x, y = make_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        pskd, _, _, history = train(make_batches(x, y, epochs=2), epochs=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    sync(pskd)
    table = to_numpy(pskd.table)
    assert table.dtype == np.float32 and int(to_numpy(pskd.step)) == 2 * STEPS
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-3)
    assert np.isfinite(history.history["loss"]).all()


def test_training_batches_must_carry_the_index():
    pskd = make_pskd()
    x, y = make_data()
    with pytest.raises(ValueError, match="index"):
        pskd.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def test_arguments_are_checked():
    student = make_student()
    with pytest.raises(ValueError, match="epochs"):
        PSKDModel(student, num_examples=N)
    with pytest.raises(ValueError, match="alpha"):
        PSKDModel(student, num_examples=N, alpha=1.5, epochs=3, steps_per_epoch=3)
    with pytest.raises(ValueError, match="table_dtype"):
        PSKDModel(student, num_examples=N, epochs=3, steps_per_epoch=3, table_dtype="int8")


# -- (b) saving and resuming ------------------------------------------------------------------


def test_save_load_weights_and_continue_equals_uninterrupted(tmp_path):
    """2 epochs, save_weights (the table and the step counter with them), a new model loads them
    and trains epoch 3: the same table and student as 3 epochs in one go."""
    x, y = make_data()
    batches = make_batches(x, y)
    full, _, _, _ = train(batches)
    first = make_pskd()
    first.fit(Stream(batches[: 2 * STEPS]), epochs=2, steps_per_epoch=STEPS, shuffle=False, verbose=0)
    first.save_weights(tmp_path / "two.weights.h5")
    second = make_pskd()
    second.optimizer.build(second.trainable_variables)
    second.load_weights(tmp_path / "two.weights.h5")
    assert int(to_numpy(second.step)) == 2 * STEPS
    second.fit(Stream(batches[2 * STEPS :]), epochs=3, initial_epoch=2, steps_per_epoch=STEPS,
               shuffle=False, verbose=0)
    for model in (full, second):
        sync(model)
    np.testing.assert_allclose(to_numpy(second.table), to_numpy(full.table), rtol=1e-6, atol=1e-7)
    for a, b in zip(second.student.get_weights(), full.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_keras_file_round_trip(tmp_path):
    x, y = make_data()
    pskd, _, _, _ = train(make_batches(x, y, epochs=1), epochs=1, table_dtype="bfloat16")
    sync(pskd)
    pskd.save(tmp_path / "pskd.keras")
    loaded = keras.models.load_model(tmp_path / "pskd.keras")
    assert isinstance(loaded, PSKDModel)
    assert (loaded.num_examples, loaded.alpha, loaded.epochs, loaded.steps_per_epoch,
            loaded.table_dtype) == (N, ALPHA_T, EPOCHS, STEPS, "bfloat16")
    table = to_numpy(loaded.table).astype(np.float32)
    np.testing.assert_array_equal(table, to_numpy(pskd.table).astype(np.float32))
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=2e-2)  # bfloat16 rows, rounded
    assert int(to_numpy(loaded.step)) == STEPS


@pytest.mark.slow
@tensorflow_only("experiment.run with the tf.data pipeline")
def test_experiment_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    """experiment.run (train.py's body) with --method=pskd, killed right after epoch 2's
    checkpoint and run again: it resumes (table, counter, optimizer) to the uninterrupted result."""
    from conftest import killed_and_resumed_equals_uninterrupted

    history = killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, "pskd")
    assert len(history) == 4


# -- (c) two replicas -------------------------------------------------------------------------


@tensorflow_only("tf.distribute.MirroredStrategy")
def test_two_replicas_equal_one_device():
    """Batches 4, 4, 2 split 2 + 2 and 1 + 1: every replica's rows reach every replica's table."""
    from conftest import two_replicas

    x, y = make_data()
    batches = make_batches(x, y)
    one, initial, _, _ = train(batches)
    strategy = two_replicas()
    two = make_pskd(strategy)
    two.fit(tf_stream(batches), epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0)
    states = reference_run(initial, batches)
    for copy in two.table.value.values:  # each replica's copy of the table
        np.testing.assert_allclose(copy.numpy(), states[-1]["table"], rtol=1e-5, atol=1e-6)
    assert [int(c.numpy()) for c in two.step.value.values] == [EPOCHS * STEPS] * 2
    for a, b in zip(two.student.get_weights(), one.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@tensorflow_only("tf.distribute.MirroredStrategy")
def test_two_replicas_with_batches_they_split_unevenly():
    """11 examples, batches 4, 4, 3 (the last split 2 + 1): after epoch 0 every replica's table
    holds every example's row, as one device's (the forwards use the same weights)."""
    from conftest import two_replicas

    x, y = make_data(n=11)
    batches = make_batches(x, y, epochs=1)
    one = make_pskd(n=11)
    one.fit(tf_stream(batches), epochs=1, steps_per_epoch=STEPS, verbose=0)
    two = make_pskd(two_replicas(), n=11)
    two.fit(tf_stream(batches), epochs=1, steps_per_epoch=STEPS, verbose=0)
    expected = one.table.numpy()
    assert np.all(expected.sum(axis=1) > 0.99)  # every row written
    for copy in two.table.value.values:
        np.testing.assert_allclose(copy.numpy(), expected, rtol=1e-5, atol=1e-6)


_JAX_TWO_DEVICES = """
import sys
sys.path.insert(0, "tests")
import keras
devices = keras.distribution.list_devices("cpu")
assert len(devices) == 2, devices
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
import test_pskd as t
x, y = t.make_data()
batches = t.make_batches(x, y)  # 4, 4, 2: each device gets half of every batch
pskd, initial, recorder, history = t.train(batches)
t.assert_matches_reference(recorder, t.reference_run(initial, batches))
print("STEPS", [row["step"] for row in recorder.rows])
"""


@pytest.mark.slow
@tensorflow_only("run from the default (TensorFlow) suite, which starts the JAX process itself")
def test_jax_data_parallel_over_two_devices_equals_the_reference(tmp_path):
    """keras.distribution.DataParallel over two CPU devices (JAX): each device's rows reach the
    replicated table; step by step as the reference."""
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


# -- (e) the input pipelines carry each image's index -----------------------------------------


def images_and_labels(n=13, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.randint(0, 10, n)


def undo_normalization(images):
    mean = np.asarray(data.DATASETS["cifar10"].mean) * 255
    std = np.asarray(data.DATASETS["cifar10"].std) * 255
    return np.round(np.asarray(images, np.float64) * std + mean).astype(np.int64)


def check_indexed_stream(batches, plain, x, y, steps, per_epoch):
    """Each batch's index rows are its images and labels; every epoch visits ``per_epoch``
    distinct examples; the images and labels are those of the plain (labels) stream."""
    seen = []
    for (images, targets), (plain_images, plain_labels) in zip(batches, plain):
        index = np.asarray(targets["index"])
        assert index.dtype == np.int32
        np.testing.assert_array_equal(undo_normalization(images), x[index])
        np.testing.assert_array_equal(np.asarray(targets["labels"]), y[index])
        np.testing.assert_array_equal(np.asarray(images), np.asarray(plain_images))
        np.testing.assert_array_equal(np.asarray(targets["labels"]), np.asarray(plain_labels))
        seen.append(index)
    assert len(seen) == 2 * steps
    for epoch in range(2):
        rows = np.concatenate(seen[epoch * steps : (epoch + 1) * steps])
        assert len(rows) == len(set(rows.tolist())) == per_epoch


@pytest.mark.parametrize("batch_multiple", [1, 2])
def test_py_dataset_batches_carry_each_images_index(batch_multiple):
    x, y = images_and_labels()
    common = dict(dataset="cifar10", batch_size=4, seed=3, first_epoch=1, epochs=3, augment=False,
                  backend="jax", workers=1, batch_multiple=batch_multiple)
    indexed, steps = data.training_input(x, y, inputs="indices", **common)
    plain, _ = data.training_input(x, y, **common)
    assert steps == (4 if batch_multiple == 1 else 3)  # 13 = 4 + 4 + 4 + 1; cut to 12 over 2
    check_indexed_stream([indexed[i] for i in range(len(indexed))],
                         [plain[i] for i in range(len(plain))], x, y, steps, 13 if batch_multiple == 1 else 12)


@tensorflow_only("the tf.data pipeline")
def test_tf_data_batches_carry_each_images_index():
    x, y = images_and_labels()
    common = dict(dataset="cifar10", batch_size=4, seed=3, first_epoch=1, epochs=3, augment=False)
    indexed, steps = data.training_input(x, y, inputs="indices", **common)
    plain, _ = data.training_input(x, y, **common)
    check_indexed_stream(list(indexed), list(plain), x, y, steps, 13)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_indices_keep_the_order_and_augmentation(backend):
    """With augmentation the indexed stream is the labels stream, image for image."""
    if backend == "tensorflow" and BACKEND != "tensorflow":
        pytest.skip("the tf.data pipeline: TensorFlow backend only")
    x, y = images_and_labels()
    common = dict(dataset="cifar10", batch_size=4, seed=5, first_epoch=0, epochs=2, backend=backend)
    if backend != "tensorflow":
        common["workers"] = 1
    indexed, _ = data.training_input(x, y, inputs="indices", **common)
    plain, _ = data.training_input(x, y, **common)
    read = list if backend == "tensorflow" else (lambda ds: [ds[i] for i in range(len(ds))])
    for (images, targets), (plain_images, labels) in zip(read(indexed), read(plain)):
        np.testing.assert_array_equal(np.asarray(images), np.asarray(plain_images))
        np.testing.assert_array_equal(np.asarray(targets["labels"]), np.asarray(labels))


# -- (f) real CIFAR-10 ------------------------------------------------------------------------


@pytest.mark.slow
@tensorflow_only("one backend is enough for the behaviour on real data")
def test_on_real_cifar10(real_data_dir):
    """A small CNN, 1,500 real CIFAR-10 images, 4 epochs of PS-KD: the table holds finite
    probability vectors spread over the classes, accuracy improves, and a step at alpha > 0
    moves the student towards its stored predictions more than a CE step does."""
    x, y = data.load("cifar10", "train", str(real_data_dir))
    x, y = data.take_subset(x, y, 1500, seed=0)
    x_test, y_test = data.load("cifar10", "test", str(real_data_dir))
    x_test, y_test = data.take_subset(x_test, y_test, 1000, seed=0)  # the file is class-sorted
    epochs, batch = 4, 50
    train_input, steps = data.training_input(
        x, y, dataset="cifar10", batch_size=batch, seed=0, first_epoch=0, epochs=epochs,
        inputs="indices",
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    h = inputs
    for filters in (16, 32, 64):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
        h = keras.layers.MaxPooling2D()(h)
    student = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h)))
    pskd = PSKDModel(student, num_examples=len(x), alpha=0.8, epochs=epochs, steps_per_epoch=steps)
    pskd.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                 metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    evaluation = data.evaluation_input(x_test, y_test, dataset="cifar10", batch_size=250)
    history = pskd.fit(train_input, epochs=epochs, steps_per_epoch=steps,
                       validation_data=evaluation, verbose=0).history
    table = pskd.table.numpy()
    assert np.isfinite(table).all() and (table >= 0).all()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-5)
    assert len(np.unique(table.argmax(axis=1))) >= 5  # spread over the classes, not one
    assert table.std(axis=0).mean() > 0.01  # the rows differ
    assert history["val_accuracy"][-1] > history["val_accuracy"][0] + 0.03
    assert history["val_accuracy"][-1] > 0.2
    assert history["accuracy"][-1] > history["accuracy"][0]
    # The rows used in epoch e are the predictions of epoch e-1's forwards: their accuracy is
    # that epoch's training accuracy.
    np.testing.assert_allclose(history["teacher_accuracy"][1:], history["accuracy"][:-1], atol=1e-6)
    # One step on a batch, from the same state: with the PS-KD target (counter in the last
    # epoch, a = 0.8) against plain CE (counter at 0: epoch 0's target is the label).
    index = np.arange(batch, dtype=np.int32)
    images = data.evaluation_input(x[:batch], y[:batch], dataset="cifar10", batch_size=batch)
    images = next(iter(images))[0]
    stored = table[index].astype(np.float64)
    saved = [w.numpy() for w in pskd.weights]
    pskd.optimizer = keras.optimizers.SGD(0.5)  # no momentum carried into the comparison
    pskd.compile(optimizer=pskd.optimizer)

    def kl_to_stored_after_step(step):
        pskd.set_weights(saved)
        pskd.step.assign(step)
        pskd.train_on_batch(images, {"labels": y[index], "index": index})
        q = keras.ops.convert_to_numpy(keras.ops.softmax(student(images, training=True)))
        return np.mean(np.sum(stored * (np.log(stored + 1e-12) - np.log(q + 1e-12)), axis=1))

    assert kl_to_stored_after_step((epochs - 1) * steps) < kl_to_stored_after_step(0)

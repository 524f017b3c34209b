"""MrKDModel's weight-averaged teacher (``average_decay``; methods mrkd_ema, mrkd_ema_tc).

The reference is the average's update written out (``expected_averages``): at the start of
step t, after s = t - 1 >= 1 completed steps with s % every == 0, g = s / every,
``bar := r bar + (1-r) theta_s`` with ``r = min(1 - 1/(g+1), decay)``, starting from the
student's initial weights, for every student variable (BatchNorm moving statistics included).
The student's weights after every step come from a run where a batch callback sees every step
(``Recorder`` of tests/test_memory_replay.py). Beside the average the copies still follow
W Algorithm 1 exactly, and the teachers are counted as ``teaching()`` says.

Runs on every Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``, tests/test_backends.py).
"""

import contextlib

import keras
import numpy as np
import pytest

from conftest import sync, tensorflow_only, to_numpy, two_replicas
from keras_softkd import MrKDModel, losses
from test_memory_replay import (
    BATCH,
    STEPS_PER_EPOCH,
    Recorder,
    assert_memory_matches_algorithm_1,
    data,
    make_student,
)

BACKEND = keras.backend.backend()
EPOCHS = 3


class AverageRecorder(Recorder):
    """Recorder's snapshots (step, student, copies) plus the average's."""

    def __init__(self, mrkd):
        super().__init__(mrkd)
        self.average = []

    def _record(self):
        super()._record()
        self.average.append([to_numpy(v) for v in self.mrkd.average.variables])


def train(copies=0, interval=5, decay=0.999, every=1, epochs=EPOCHS, strategy=None,
          batchnorm="plain", **compile_kwargs):
    x, y = data()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        mrkd = MrKDModel(make_student(batchnorm), copies=copies, interval=interval, alpha=0.5,
                         temperature=2.0, average_decay=decay, average_interval=every)
        mrkd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), **compile_kwargs)
    recorder = AverageRecorder(mrkd)
    mrkd.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[recorder])
    return mrkd, recorder


def expected_averages(students, decay, every):
    """The average at the end of each step t = 0..T (index t), from the student after each step."""
    average = [np.asarray(v, np.float64) for v in students[0]]
    history = [average]
    for t in range(1, len(students)):
        s = t - 1  # the update at the start of step t uses the student after s steps
        if s >= 1 and s % every == 0:
            g = s // every
            r = min(1.0 - 1.0 / (g + 1), decay)
            average = [r * a + (1 - r) * np.asarray(v, np.float64) for a, v in zip(average, students[s])]
        history.append(average)
    return history


def assert_average_matches(recorder, decay, every, atol=1e-5):
    assert recorder.steps == list(range(len(recorder.steps)))  # every step seen
    expected = expected_averages(recorder.student, decay, every)
    for step, got in zip(recorder.steps, recorder.average):
        for a, b in zip(got, expected[step]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=f"after step {step}")


# -- (a) the average, step by step ----------------------------------------------------------------


def test_reference_is_the_running_mean_while_warming_up():
    students = [[np.full(2, float(i))] for i in range(6)]
    history = expected_averages(students, decay=0.999, every=1)
    # At the start of step t the average holds mean(theta_0 .. theta_(t-1)).
    np.testing.assert_allclose([h[0][0] for h in history], [0.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    history = expected_averages(students, decay=0.5, every=2)  # updates with theta_2, theta_4
    np.testing.assert_allclose([h[0][0] for h in history], [0.0, 0.0, 0.0, 1.0, 1.0, 2.5])


@pytest.mark.parametrize("decay, every", [(0.999, 1), (0.6, 1), (0.8, 3)])
def test_average_step_by_step(decay, every):
    """Weights and BatchNorm moving statistics, every step: the closed form while warming up
    (decay 0.999), the decay once reached (0.6), and updates every 3 steps."""
    mrkd, recorder = train(decay=decay, every=every)
    names = [v.name for v in mrkd._sources]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
    assert_average_matches(recorder, decay, every)
    # Not trivially satisfied: the average moved, and it is not the student.
    assert not np.allclose(recorder.average[-1][0], recorder.average[0][0])
    assert not np.allclose(recorder.average[-1][0], recorder.student[-1][0])


@pytest.mark.parametrize("copies", [1, 3])
def test_beside_copies_the_copies_still_follow_algorithm_1(copies):
    mrkd, recorder = train(copies=copies, interval=3, decay=0.7)
    assert_memory_matches_algorithm_1(recorder, recorder, copies, 3)
    assert_average_matches(recorder, 0.7, 1)


@pytest.mark.parametrize("per_execution", [2, 5])
def test_steps_per_execution(per_execution):
    if BACKEND == "torch":
        pytest.skip("PyTorch backend: steps_per_execution must be 1")
    _, reference = train(copies=2, interval=3, decay=0.7)
    mrkd, _ = train(copies=2, interval=3, decay=0.7, steps_per_execution=per_execution)
    sync(mrkd)
    for got, want in zip(mrkd.average.variables, reference.average[-1]):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-6)
    for copy, want in zip(mrkd.memory, reference.memory[-1]):
        for got, value in zip(copy, want):
            np.testing.assert_allclose(to_numpy(got), value, rtol=1e-5, atol=1e-6)


def test_xla():
    if BACKEND == "torch":
        pytest.skip("PyTorch backend: jit_compile=True is torch.compile (see test_memory_replay)")
    mrkd, recorder = train(copies=1, interval=3, decay=0.7, jit_compile=True)
    assert_average_matches(recorder, 0.7, 1)
    assert_memory_matches_algorithm_1(recorder, recorder, 1, 3)


# -- (b) who teaches, and what -----------------------------------------------------------------------


@pytest.mark.parametrize("copies, initial", [(0, False), (2, False), (2, True)])
def test_the_average_is_counted_first_and_teaches_from_kappa(copies, initial):
    """teaching() at each step t: the average from t >= kappa (step 1 with initial weights
    teaching), then the copies refreshed so far; the logged teaching_copies is its epoch mean."""
    x, y = data()
    student = make_student()
    mrkd = MrKDModel(student, copies=copies, interval=3, average_decay=0.9,
                     initial_weights_teach=initial)
    mrkd.compile(optimizer=keras.optimizers.SGD(0.1))
    counts = []
    for t in range(1, 10):
        mrkd.step.assign(t)
        counts.append(int(to_numpy(mrkd.teaching())))
    if initial:
        assert counts == [copies + 1] * 9
    else:
        expected = [(t >= 3) + min(copies, t // 3) for t in range(1, 10)]
        assert counts == expected
    mrkd.step.assign(0)
    history = mrkd.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    steps = range(1, 2 * STEPS_PER_EPOCH + 1)
    per_step = [copies + 1 if initial else (t >= 3) + min(copies, t // 3) for t in steps]
    np.testing.assert_allclose(history["teaching_copies"][1], np.mean(per_step[STEPS_PER_EPOCH:]))


@pytest.mark.parametrize("gamma", [None, 0.3])
def test_the_loss_distils_from_the_average_then_the_copies(gamma):
    """compute_loss equals losses.mrkd over [average, copies refreshed] (with TC), and the
    average's logits are the student's layers with its weights, in inference mode."""
    x, y = data()
    mrkd, _ = train(copies=2, interval=3, decay=0.7, epochs=1)
    mrkd = MrKDModel(mrkd.student, copies=2, interval=3, alpha=0.5, temperature=2.0, gamma=gamma,
                     average_decay=0.7)
    mrkd.compile(optimizer=keras.optimizers.SGD(0.1))
    mrkd.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # 4 steps: m = 1 + 1
    sync(mrkd)
    average = mrkd.average
    logits, _ = mrkd.student.stateless_call(average.variables[:average.num_trainable],
                                            average.variables[average.num_trainable:], x,
                                            training=False)
    np.testing.assert_allclose(to_numpy(mrkd.average_logits(x)), to_numpy(logits), rtol=1e-6)
    assert int(to_numpy(mrkd.teaching())) == 2
    teachers = np.stack([to_numpy(mrkd.average_logits(x)), to_numpy(mrkd.copy_logits(x))[0]])
    z = mrkd.student(x)
    expected = np.mean(to_numpy(losses.mrkd(y, z, teachers, alpha=0.5, temperature=2.0, gamma=gamma)))
    got = to_numpy(mrkd.compute_loss(x=x, y=y, y_pred=z, training=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_arguments_are_checked():
    student = make_student()
    with pytest.raises(ValueError, match="copies"):
        MrKDModel(student, copies=0, interval=3)  # nothing would teach
    for kwargs, message in [({"average_decay": 1.0}, "average_decay"),
                            ({"average_decay": -0.5}, "average_decay"),
                            ({"average_decay": 0.9, "average_interval": 0}, "average_interval"),
                            ({"average_decay": 0.9, "copies": -1}, "copies")]:
        with pytest.raises(ValueError, match=message):
            MrKDModel(student, interval=3, **{"copies": 0, **kwargs})
    with pytest.raises(ValueError, match="no weight average"):
        MrKDModel(student, copies=1, interval=3).average_logits(data()[0])


def test_config_horizon_and_update_interval():
    from keras_softkd import experiment
    from keras_softkd.config import ExperimentConfig, UsageError

    resolved = ExperimentConfig(method="mrkd_ema", epochs=16).resolved()
    assert (resolved.copies, resolved.kappa, resolved.ema_horizon, resolved.ema_every) == (0, 2.0, 2.0, "step")
    trainer = experiment.build_trainer(resolved, 3, steps_per_epoch=10, student=make_student())
    assert (trainer.copies, trainer.interval, trainer.average_interval) == (0, 20, 1)
    assert trainer.average_decay == pytest.approx(1 - 1 / 20)  # mean age 20 steps = kappa
    resolved = ExperimentConfig(method="mrkd_ema_tc", epochs=16, copies=3, ema_every="kappa",
                                ema_horizon=6.0).resolved()
    trainer = experiment.build_trainer(resolved, 3, steps_per_epoch=10, student=make_student())
    assert (trainer.copies, trainer.average_interval, trainer.distillation_loss.gamma) == (3, 20, 0.25)
    assert trainer.average_decay == pytest.approx(1 - 20 / 60)
    with pytest.raises(UsageError, match="--ema_horizon"):
        ExperimentConfig(method="mrkd_ema", epochs=16, ema_every="kappa").resolved()
    with pytest.raises(UsageError, match="--ema_decay does not apply"):
        ExperimentConfig(method="mrkd_ema", ema_decay=0.9).resolved()
    with pytest.raises(UsageError, match="--copies must be an integer >= 1"):
        ExperimentConfig(method="mrkd", copies=0).resolved()


# -- (c) saving and resuming -------------------------------------------------------------------------


@pytest.mark.slow
def test_save_load_weights_and_continue_equals_uninterrupted(tmp_path):
    x, y = data()
    full, _ = train(copies=1, interval=3, decay=0.7)

    def make():
        mrkd = MrKDModel(make_student(), copies=1, interval=3, alpha=0.5, temperature=2.0,
                         average_decay=0.7)
        mrkd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        return mrkd

    first = make()
    first.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    first.save_weights(tmp_path / "two.weights.h5")
    second = make()
    second.optimizer.build(second.trainable_variables)
    second.load_weights(tmp_path / "two.weights.h5")
    second.fit(x, y, batch_size=BATCH, epochs=EPOCHS, initial_epoch=2, shuffle=False, verbose=0)
    for model in (full, second):
        sync(model)
    for a, b in zip(second.weights, full.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7, err_msg=a.name)


def test_keras_file_round_trip(tmp_path):
    mrkd, _ = train(copies=1, interval=3, decay=0.7, every=2, epochs=1)
    sync(mrkd)
    mrkd.save(tmp_path / "mrkd.keras")
    again = keras.models.load_model(tmp_path / "mrkd.keras")
    assert isinstance(again, MrKDModel)
    assert (again.copies, again.average_decay, again.average_interval) == (1, 0.7, 2)
    for a, b in zip(mrkd.average.variables, again.average.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.slow
@tensorflow_only("experiment.run with the tf.data pipeline")
def test_experiment_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    """experiment.run with --method=mrkd_ema_tc beside one copy, killed right after epoch 2's
    checkpoint and run again: it resumes (average, copy, counter, optimizer) to the same result."""
    from conftest import killed_and_resumed_equals_uninterrupted

    history = killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, "mrkd_ema_tc", copies=1)
    assert "teaching_copies" in history[0]


# -- (d) two replicas --------------------------------------------------------------------------------


@pytest.mark.slow
@tensorflow_only("tf.distribute.MirroredStrategy")
def test_two_replicas_hold_identical_averages_equal_to_one_device():
    """Per-replica BatchNorm statistics drift apart; the average (of the primary replica's
    student, as the copies) is written once and identical on every replica; with synchronized
    BatchNorm the run, the average included, equals one device's."""
    mrkd, recorder = train(copies=1, interval=3, decay=0.7, epochs=1, strategy=two_replicas())
    for variable in mrkd.average.variables:
        replicas = [np.array(v) for v in variable.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
    assert_average_matches(recorder, 0.7, 1)
    _, single = train(copies=1, interval=3, decay=0.7, epochs=1, batchnorm="synchronized")
    mrkd, _ = train(copies=1, interval=3, decay=0.7, epochs=1, strategy=two_replicas(),
                    batchnorm="synchronized")
    for variable, want in zip(mrkd.average.variables, single.average[-1]):
        for replica in variable.value.values:
            np.testing.assert_allclose(np.array(replica), want, rtol=1e-4, atol=1e-5)


# -- (e) on a real network and real images --------------------------------------------------------------


@pytest.mark.slow
def test_on_real_cifar10(real_data_dir):
    """The small conv net of test_cskd.py on 1024 real CIFAR-10 training images, 4 epochs of
    mrkd_ema as train.py builds it (kappa and the average's horizon 0.5 epoch): the average
    teaches from its first kappa on, predicts many classes with finite logits, beats chance and
    the initial weights, and training improves the student."""
    from keras_softkd import data as data_module
    from keras_softkd import experiment
    from keras_softkd.config import ExperimentConfig
    from test_cskd import small_network

    x, y = data_module.load("cifar10", "train", str(real_data_dir))
    x, y = data_module.take_subset(x, y, 1024, 0)
    clean = np.asarray(data_module.normalize(x, "cifar10"))
    stream, steps = data_module.training_input(x, y, dataset="cifar10", batch_size=64, seed=0,
                                               first_epoch=0, epochs=4)
    config = ExperimentConfig(method="mrkd_ema", epochs=4).resolved()  # kappa = 0.5 epoch
    student = small_network()
    trainer = experiment.build_trainer(config, 10, steps_per_epoch=steps, student=student)
    initial = np.asarray(student.predict(clean[:256], verbose=0))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = trainer.fit(stream, epochs=4, steps_per_epoch=steps, shuffle=False, verbose=0).history
    assert history["teaching_copies"][0] == pytest.approx((steps - steps // 2 + 1) / steps, abs=0.1)
    assert history["teaching_copies"][-1] == 1.0
    assert all(np.isfinite(history[key]).all() for key in ("loss", "teacher_accuracy"))
    assert history["accuracy"][-1] > history["accuracy"][0] + 0.05, history["accuracy"]

    sync(trainer)
    teacher = to_numpy(trainer.average_logits(clean[:256])).astype(np.float64)
    assert np.all(np.isfinite(teacher))
    predicted = teacher.argmax(axis=1)
    assert len(np.unique(predicted)) >= 4, "the average predicts few classes"
    assert np.std(teacher, axis=0).mean() > 1e-2
    accuracy = np.mean(predicted == y[:256])
    assert accuracy > 0.2 and accuracy > np.mean(initial.argmax(axis=1) == y[:256]) + 0.05

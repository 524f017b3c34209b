"""MrKDModel: the memory schedule against W Algorithm 1, in every setting Keras runs steps.

The reference is Algorithm 1 written out literally (``algorithm_1_sources``):
which past student weights each copy must hold after each step. The student's
weights after every step come from a run with ``steps_per_execution=1`` where a
batch callback sees every step.

Runs on every Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``). On JAX the
step is stateless (the refresh returns new copies in the step's state) and
compiled with XLA by default; on PyTorch it is stateful, like TensorFlow's.
Tests of a backend-specific mechanism (``tf.distribute``, ``steps_per_execution``
which PyTorch refuses) skip elsewhere with the reason.
"""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import sync, tensorflow_only, to_numpy, two_replicas
from keras_softkd import KDModel, MrKDModel, losses

BACKEND = keras.backend.backend()
BATCH = 4
STEPS_PER_EPOCH = 4


def sweep(every: list, elsewhere: list) -> list:
    """A parameter sweep: ``every`` case on TensorFlow, ``elsewhere`` on JAX and PyTorch. The
    schedule is the same counter arithmetic on every backend (tested in full on TensorFlow);
    the other backends' runs check that their compiled step carries it out, for which each
    copies count and interval once is enough, and each case there costs a compile."""
    return every if BACKEND == "tensorflow" else elsewhere


def algorithm_1_sources(steps: int, copies: int, interval: int) -> list[list[int]]:
    """W Algorithm 1: after step t, copy i holds the student's weights after ``sources[t][i]`` updates.

    ``for t = 1..T: if t % kappa == 0: theta_i := theta_(i-1) (i = n..2); theta_1 := theta``,
    then the update of step t. Initially every copy holds theta_0.
    """
    memory = [0] * copies
    history = [list(memory)]
    for t in range(1, steps + 1):
        if t % interval == 0:
            memory = [t - 1] + memory[:-1]
        history.append(list(memory))
    return history


def make_student(batchnorm: str = "plain") -> keras.Model:
    keras.utils.set_random_seed(1)
    layers = [keras.Input((5,)), keras.layers.Dense(6)]
    if batchnorm != "none":
        layers.append(
            keras.layers.BatchNormalization(
                momentum=0.5, epsilon=1e-5, synchronized=batchnorm == "synchronized"
            )
        )
    layers += [keras.layers.ReLU(), keras.layers.Dense(3)]
    return keras.Sequential(layers)


def data(epochs: int = 1):
    rng = np.random.RandomState(0)
    n = BATCH * STEPS_PER_EPOCH
    return rng.randn(n, 5).astype("float32") * 2 + 1, rng.randint(0, 3, n)


class Recorder(keras.callbacks.Callback):
    """Snapshots of the student and the copies at the end of each callback batch."""

    def __init__(self, mrkd: MrKDModel):
        super().__init__()
        self.mrkd = mrkd
        self.steps, self.student, self.memory = [], [], []

    def on_train_begin(self, logs=None):
        self._record()

    def on_train_batch_end(self, batch, logs=None):
        self._record()

    def _record(self):
        sync(self.mrkd)
        self.steps.append(int(to_numpy(self.mrkd.step)))
        self.student.append([to_numpy(v) for v in self.mrkd._sources])
        self.memory.append([[to_numpy(v) for v in copy] for copy in self.mrkd.memory])


def train(copies, interval, epochs=3, strategy=None, batchnorm="plain", **compile_kwargs):
    x, y = data()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        mrkd = MrKDModel(
            make_student(batchnorm), copies=copies, interval=interval, alpha=0.5, temperature=2.0
        )
        mrkd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), **compile_kwargs)
    recorder = Recorder(mrkd)
    mrkd.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[recorder])
    return mrkd, recorder


_reference_runs = {}


def reference(copies, interval):
    """One-step-per-execution run: every step recorded."""
    key = (copies, interval)
    if key not in _reference_runs:
        _reference_runs[key] = train(copies, interval)[1]
    return _reference_runs[key]


def assert_memory_matches_algorithm_1(recorder, ref, copies, interval, atol=1e-6):
    sources = algorithm_1_sources(ref.steps[-1], copies, interval)
    assert len(recorder.steps) >= 2
    for step, memory in zip(recorder.steps, recorder.memory):
        for i, copy in enumerate(memory):
            expected = ref.student[sources[step][i]]
            for got, want in zip(copy, expected):
                np.testing.assert_allclose(got, want, atol=atol, err_msg=f"step {step} copy {i + 1}")


def test_algorithm_1_reference_itself():
    # n = 2, kappa = 3: refreshes before steps 3 and 6 take the weights after 2 and 5 updates.
    history = algorithm_1_sources(7, 2, 3)
    assert history[2] == [0, 0] and history[3] == [2, 0] and history[6] == [5, 2]


@pytest.mark.parametrize("copies,interval", sweep(
    [(copies, interval) for interval in (1, 3, 7) for copies in (1, 2, 3)],
    [(3, 1), (2, 3), (1, 7)],  # each copies count and each interval once
))
def test_schedule_step_by_step(copies, interval):
    ref = reference(copies, interval)
    assert ref.steps == list(range(3 * STEPS_PER_EPOCH + 1))  # every step seen
    assert_memory_matches_algorithm_1(ref, ref, copies, interval)
    # The schedule is not trivially satisfied: with kappa <= steps the copies moved.
    if interval <= 3 * STEPS_PER_EPOCH:
        assert not np.allclose(ref.memory[-1][0][0], ref.memory[0][0][0])


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch backend: steps_per_execution must be 1")
@pytest.mark.parametrize("copies,interval", sweep([(2, 3), (3, 7), (1, 1)], [(3, 7)]))
def test_schedule_with_steps_per_execution(copies, interval):
    # Refreshes at steps 3, 6, 9 (kappa = 3) and 7 (kappa = 7) fall inside blocks of 3 steps.
    _, recorder = train(copies, interval, steps_per_execution=3)
    assert recorder.steps == [0, 3, 4, 7, 8, 11, 12]  # block ends, clipped at epoch ends
    assert_memory_matches_algorithm_1(recorder, reference(copies, interval), copies, interval)


TORCH_COMPILE_ENV = "KERAS_SOFTKD_TORCH_COMPILE"


@pytest.mark.skipif(
    BACKEND == "torch" and not os.environ.get(TORCH_COMPILE_ENV),
    reason=f"PyTorch backend: jit_compile=True is torch.compile, which recompiles Keras's step "
    f"8 times and takes about 2 minutes per run on a 2-core CPU; set {TORCH_COMPILE_ENV}=1",
)
@pytest.mark.parametrize("copies,interval", sweep([(2, 3), (3, 1)], [(2, 3)]))
def test_schedule_with_xla(copies, interval):
    # TensorFlow: XLA. JAX: XLA, the default (the reference runs are jitted too).
    # PyTorch: torch.compile (the refresh itself runs outside the compiled graph).
    mrkd, recorder = train(copies, interval, jit_compile=True)
    assert mrkd.jit_compile
    assert_memory_matches_algorithm_1(
        recorder, reference(copies, interval), copies, interval, atol=1e-5
    )


@pytest.mark.parametrize("copies,interval", [(2, 3)])
def test_schedule_run_eagerly(copies, interval):
    # No tf.function / jax.jit: TensorFlow's eager assigns, JAX's lax.cond on concrete values.
    # The teaching count of fit's logs is checked here too (test_teaching_copies_follow_the_
    # step_counter covers the compiled modes): eager steps cost seconds each on JAX.
    epochs = 2
    mrkd, recorder = train(copies, interval, epochs=epochs, run_eagerly=True)  # refreshes at 3, 6
    assert_memory_matches_algorithm_1(
        recorder, reference(copies, interval), copies, interval, atol=1e-5
    )
    m = np.array(teaching_reference(epochs * STEPS_PER_EPOCH, copies, interval), float)
    np.testing.assert_allclose(mrkd.history.history["teaching_copies"],
                               m.reshape(epochs, STEPS_PER_EPOCH).mean(axis=1), rtol=1e-6)


@pytest.mark.slow
@tensorflow_only("tf.distribute.MirroredStrategy")
@pytest.mark.parametrize("copies,interval", [(2, 3)])
def test_mirrored_two_replicas_equals_single_device(copies, interval):
    # Synchronized BatchNorm makes the student's statistics those of the global batch, so the
    # two-replica run must follow the single-device trajectory: loss scaling, gradients and
    # refreshes included.
    single, single_rec = train(copies, interval, batchnorm="synchronized")
    mirrored, mirrored_rec = train(
        copies, interval, strategy=two_replicas(), batchnorm="synchronized"
    )
    assert mirrored_rec.steps == single_rec.steps
    assert mirrored.history.history["teaching_copies"] == single.history.history["teaching_copies"]
    np.testing.assert_allclose(
        mirrored.history.history["teacher_accuracy"], single.history.history["teacher_accuracy"],
        atol=1e-6,
    )
    for a, b in zip(single_rec.student[-1], mirrored_rec.student[-1]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert_memory_matches_algorithm_1(mirrored_rec, single_rec, copies, interval, atol=1e-5)
    x, y = data()
    np.testing.assert_allclose(
        single.evaluate(x, y, verbose=0), mirrored.evaluate(x, y, verbose=0), rtol=1e-5
    )


@tensorflow_only("tf.distribute.MirroredStrategy")
def test_mirrored_replicas_hold_identical_copies():
    # Plain (per-replica) BatchNorm: the replicas' own statistics drift apart, the copies must not.
    mrkd, _ = train(2, 3, strategy=two_replicas(), batchnorm="plain")
    for copy in mrkd.memory:
        for variable in copy:
            replicas = [np.array(v) for v in variable.value.values] if hasattr(
                variable.value, "values"
            ) else None
            assert replicas is not None and len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1])


def test_copies_hold_batchnorm_statistics_and_start_at_initial_weights():
    student = make_student("plain")
    initial = [np.array(v.numpy()) for v in student.weights]
    mrkd = MrKDModel(student, copies=2, interval=2)
    names = [v.name for v in mrkd._sources]
    assert "moving_mean" in names and "moving_variance" in names
    assert len(mrkd.memory[0]) == len(student.weights)
    by_path = dict(zip([v.path for v in student.weights], initial))
    assert len(by_path) == len(initial)
    for copy in mrkd.memory:
        for source, variable in zip(mrkd._sources, copy):
            np.testing.assert_array_equal(to_numpy(variable), by_path[source.path])
    mrkd.compile(optimizer="sgd")
    x, y = data()
    mrkd.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # 4 steps, refresh at 2, 4
    moving_mean = names.index("moving_mean")
    assert not np.allclose(to_numpy(mrkd.memory[0][moving_mean]), 0.0)  # stats were copied
    # copy 1 holds the student after 3 updates (refresh before step 4), statistics included
    student_after_3 = mrkd.memory[0][moving_mean]
    assert not np.allclose(to_numpy(student_after_3), to_numpy(mrkd._sources[moving_mean]))


def test_copies_run_in_inference_mode_without_gradient():
    student = make_student("plain")
    mrkd = MrKDModel(student, copies=3, interval=5, initial_weights_teach=True)
    x, _ = data()
    teacher = to_numpy(mrkd.teacher_logits(x))
    np.testing.assert_array_equal(teacher, to_numpy(mrkd.copy_logits(x)))
    # By default no copy teaches before its first refresh: not run, zeros.
    default = MrKDModel(student, copies=3, interval=5)
    assert int(to_numpy(default.teaching())) == 0
    np.testing.assert_array_equal(to_numpy(default.teacher_logits(x)), 0.0)
    np.testing.assert_allclose(to_numpy(default.copy_logits(x)), teacher, atol=1e-6)
    assert tuple(teacher.shape) == (3, len(x), 3)
    for i in range(3):
        np.testing.assert_allclose(teacher[i], to_numpy(student(x, training=False)), atol=1e-6)
    assert not np.allclose(teacher[0], to_numpy(student(x, training=True)), atol=1e-3)
    # The copies are never trained: not trainable on any backend (JAX's stateless step
    # differentiates the trainable values only), and no gradient reaches them.
    trainable = {id(v) for v in mrkd.trainable_variables}
    assert not any(v.trainable or id(v) in trainable for copy in mrkd.memory for v in copy)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x_tensor = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x_tensor)
            out = mrkd.teacher_logits(x_tensor)
        assert all(g is None for g in tape.gradient(out, mrkd.memory[0]))
    elif BACKEND == "torch":
        assert not mrkd.teacher_logits(x).requires_grad


@pytest.mark.parametrize("gamma", [None, 0.25])
def test_loss_is_the_mrkd_function_of_the_copies(gamma):
    student = make_student("plain")
    mrkd = MrKDModel(student, copies=2, interval=3, alpha=0.25, temperature=3.0, gamma=gamma)
    mrkd.compile(optimizer="sgd")
    x, y = data()
    mrkd.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)  # 8 steps: m = 2
    sync(mrkd)
    assert int(to_numpy(mrkd.teaching())) == 2
    logits = student(x, training=False)
    expected = losses.mrkd(y, logits, mrkd.teacher_logits(x), 0.25, 3.0, gamma)
    got = mrkd.compute_loss(x=x, y=y, y_pred=logits, training=True)
    np.testing.assert_allclose(to_numpy(got), np.mean(to_numpy(expected)), rtol=1e-5)
    # evaluate() runs the student alone: its cross-entropy, not the distillation loss.
    np.testing.assert_allclose(
        mrkd.evaluate(x, y, batch_size=len(x), verbose=0),
        np.mean(to_numpy(losses.ce(y, logits))),
        rtol=1e-5,
    )


def test_mixed_precision_fit():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mrkd, recorder = train(2, 3, epochs=1)
        assert isinstance(mrkd.optimizer, keras.optimizers.LossScaleOptimizer)
        assert np.isfinite(recorder.student[-1][0]).all()
        assert recorder.steps[-1] == STEPS_PER_EPOCH
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_save_student_and_wrapper(tmp_path):
    mrkd, _ = train(2, 3, epochs=1)
    x, _ = data()
    mrkd.student.save(tmp_path / "student.keras")
    restored = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(restored.predict(x, verbose=0), mrkd.predict(x, verbose=0), atol=1e-6)
    mrkd.save(tmp_path / "mrkd.keras")
    again = keras.models.load_model(tmp_path / "mrkd.keras")
    assert isinstance(again, MrKDModel) and again.copies == 2 and again.interval == 3
    assert int(to_numpy(again.step)) == STEPS_PER_EPOCH
    for a, b in zip(mrkd.memory[1], again.memory[1]):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_kd_model_distils_from_a_frozen_teacher():
    teacher = make_student("plain")
    teacher_weights = [np.array(w) for w in teacher.get_weights()]
    student = make_student("none")
    kd_model = KDModel(student, teacher=teacher, alpha=0.9, temperature=4.0)
    kd_model.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = data()
    kd_model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    for a, b in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # never trained, BN statistics untouched
    expected = to_numpy(losses.kd(y, student(x), teacher(x, training=False), 0.9, 4.0))
    got = kd_model.compute_loss(x=x, y=y, y_pred=student(x), training=True)
    np.testing.assert_allclose(to_numpy(got), np.mean(expected), rtol=1e-5)
    np.testing.assert_allclose(
        kd_model.evaluate(x, y, batch_size=len(x), verbose=0),
        np.mean(to_numpy(losses.ce(y, student(x)))),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"copies": 0}, "copies"),
        ({"copies": 1.5}, "copies"),
        ({"interval": 0}, "interval"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"gamma": -0.1}, "gamma"),
        ({"interval": None}, "interval.*W Figure 3"),
        ({"initial_weights_teach": 1}, "initial_weights_teach"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MrKDModel(make_student(), **{"interval": 2, **kwargs})


def test_unbuilt_model_and_compile_loss_are_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="built"):
        MrKDModel(Net(), interval=2)
    with pytest.raises(ValueError, match="loss"):
        MrKDModel(make_student(), interval=2).compile(optimizer="sgd", loss="mse")


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import keras, numpy as np
    from keras_softkd import MrKDModel
    keras.utils.set_random_seed(3)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    backup, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    student = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6),
                                keras.layers.BatchNormalization(), keras.layers.ReLU(),
                                keras.layers.Dense(3)])
    mrkd = MrKDModel(student, copies=2, interval=3, alpha=0.5, temperature=2.0)
    mrkd.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    rng = np.random.RandomState(0)
    x, y = rng.randn(16, 5).astype("float32"), rng.randint(0, 3, 16)

    value = keras.ops.convert_to_numpy

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if keras.backend.backend() == "jax":
                mrkd.jax_state_sync()
            if int(value(mrkd.step)) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    mrkd.fit(x, y, batch_size=4, epochs=5, shuffle=False, verbose=0,
             callbacks=[keras.callbacks.BackupAndRestore(backup), Kill()])
    np.savez(out, step=int(value(mrkd.step)),
             *[value(v) for v in student.weights + [w for c in mrkd.memory for w in c]])
    """
)


@pytest.mark.slow
@tensorflow_only(
    "three fresh processes cost 35 to 60 s on the other backends; "
    "test_resume_in_process_matches_uninterrupted_run covers resuming there"
)
def test_resume_after_killed_process_matches_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    def run(name, kill_at):
        return subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"backup_{name}"), str(tmp_path / f"{name}.npz"), str(kill_at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    full = run("full", -1)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run("resumed", 10)  # killed in epoch 3 (steps 9-12), after two backed-up epochs
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed.npz").exists()
    resumed = run("resumed", -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert int(a["step"]) == int(b["step"]) == 20
    names = [k for k in a.files if k != "step"]
    assert len(names) == 3 * 8  # student (2 Dense x 2 + BatchNorm x 4 variables) + 2 copies
    for key in names:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class Interrupted(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises after the step ``at`` (counted by the model's own step counter)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        sync(self.model)
        if int(to_numpy(self.model.step)) == self.at:
            raise Interrupted(f"step {self.at}")


@pytest.mark.slow
def test_resume_in_process_matches_uninterrupted_run(tmp_path):
    """BackupAndRestore, in one process: a run interrupted in epoch 3 and resumed by a
    fresh model (other initial weights) ends exactly where an uninterrupted run ends:
    student, BatchNorm statistics, copies, counter and optimizer state all restored."""
    x, y = data()

    def fresh(seed):
        student = make_student("plain")
        if seed:  # other initial weights: only the backup can make the runs agree
            keras.utils.set_random_seed(seed)
            student = keras.models.clone_model(student)
        mrkd = MrKDModel(student, copies=2, interval=3, alpha=0.5, temperature=2.0)
        mrkd.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        return mrkd

    def fit(mrkd, backup, *extra):
        callbacks = [keras.callbacks.BackupAndRestore(str(tmp_path / backup)), *extra]
        mrkd.fit(x, y, batch_size=BATCH, epochs=5, shuffle=False, verbose=0, callbacks=callbacks)
        return [to_numpy(v) for v in mrkd.weights + mrkd.optimizer.variables]

    full = fit(fresh(0), "full")
    with pytest.raises(Interrupted):
        fit(fresh(0), "resumed", InterruptAt(10))  # epoch 3 is steps 9-12; backup after step 8
    resumed_model = fresh(7)
    assert not np.allclose(to_numpy(resumed_model.weights[0]), full[0])
    resumed = fit(resumed_model, "resumed")
    assert int(to_numpy(resumed_model.step)) == 5 * STEPS_PER_EPOCH
    assert len(full) == len(resumed)
    for i, (a, b) in enumerate(zip(full, resumed)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")


# --------------------------------------------------------------------------
# Which copies teach, and the teacher diagnostics in fit's logs
# --------------------------------------------------------------------------


def teaching_reference(steps: int, copies: int, interval: int) -> list[int]:
    """m(t) for t = 1..steps: the copies refreshed by step t, min(n, floor(t / kappa))."""
    return [min(copies, t // interval) for t in range(1, steps + 1)]


@pytest.mark.parametrize(
    "compile_kwargs",
    [{}, {"steps_per_execution": 3}, {"jit_compile": True}],  # eager: test_schedule_run_eagerly
    ids=["one_step", "steps_per_execution", "xla"],
)
def test_teaching_copies_follow_the_step_counter(compile_kwargs):
    if BACKEND == "torch" and "steps_per_execution" in compile_kwargs:
        pytest.skip("PyTorch backend: steps_per_execution must be 1")
    if BACKEND == "torch" and "jit_compile" in compile_kwargs:
        pytest.skip("PyTorch backend: jit_compile=True is torch.compile (see test_schedule_with_xla)")
    copies, interval, epochs = 3, 3, 3
    mrkd, _ = train(copies, interval, epochs=epochs, **compile_kwargs)
    history = mrkd.history.history
    m = np.array(teaching_reference(epochs * STEPS_PER_EPOCH, copies, interval), float)
    per_epoch = m.reshape(epochs, STEPS_PER_EPOCH).mean(axis=1)  # 0.25, 1.75, 3.0
    np.testing.assert_allclose(history["teaching_copies"], per_epoch, rtol=1e-6)
    assert "val_teaching_copies" not in history


def test_no_copy_teaches_before_the_first_refresh():
    """Steps 1 .. kappa-1: the loss and the update are cross-entropy's, exactly."""
    x, y = data()
    student = make_student("plain")
    plain = keras.models.clone_model(student)
    plain.set_weights(student.get_weights())
    mrkd = MrKDModel(student, copies=2, interval=STEPS_PER_EPOCH + 1, alpha=0.5, temperature=2.0)
    mrkd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=losses.LSRLoss(alpha=0.0),  # CE(p, q(1))
    )
    got = mrkd.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    want = plain.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    sync(mrkd)
    for a, b in zip(student.weights, plain.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5)
    assert got["teaching_copies"] == [0.0]
    assert np.isnan(got["teacher_accuracy"][0]) and np.isnan(got["teacher_top_probability"][0])


def test_initial_weights_teach_distils_from_step_one():
    x, y = data()
    literal = MrKDModel(
        make_student("plain"), copies=2, interval=100, alpha=0.5, temperature=2.0,
        initial_weights_teach=True,
    )
    literal.compile(optimizer=keras.optimizers.SGD(0.1))
    history = literal.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    assert history["teaching_copies"] == [2.0]
    assert 0.0 <= history["teacher_accuracy"][0] <= 1.0
    # The loss of its first step is the distillation loss from the initial weights.
    again = MrKDModel(
        make_student("plain"), copies=2, interval=100, alpha=0.5, temperature=2.0,
        initial_weights_teach=True,
    )
    logits = again.student(x[:BATCH], training=True)
    want = losses.mrkd(y[:BATCH], logits, again.teacher_logits(x[:BATCH]), 0.5, 2.0)
    got = again.compute_loss(x=x[:BATCH], y=y[:BATCH], y_pred=logits, training=True)
    np.testing.assert_allclose(to_numpy(got), np.mean(to_numpy(want)), rtol=1e-5)
    assert not np.allclose(to_numpy(got), np.mean(to_numpy(losses.ce(y[:BATCH], logits))))


def test_teacher_diagnostics_are_the_teaching_copies_statistics():
    """teacher_accuracy and teacher_top_probability over an epoch equal NumPy's, computed
    from the copies that teach at each step (recorded batch by batch)."""
    x, y = data()
    copies, interval, temperature = 2, 3, 2.0
    mrkd = MrKDModel(make_student("plain"), copies=copies, interval=interval, alpha=0.5,
                     temperature=temperature)
    mrkd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    mrkd.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # steps 1-4, m = 0,0,1,1

    seen = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            sync(mrkd)
            seen.append([[to_numpy(v) for v in copy] for copy in mrkd.memory])

    history = mrkd.fit(
        x, y, batch_size=BATCH, initial_epoch=1, epochs=2, shuffle=False, verbose=0,
        callbacks=[Snapshot()],
    ).history
    # Steps 5-8 (m = 1, 2, 2, 2): the copies at a step are those after its refresh; the
    # refresh before step 6 happens inside that step, so take them from the next snapshot.
    sync(mrkd)
    after = seen[1:] + [[[to_numpy(v) for v in copy] for copy in mrkd.memory]]
    correct, top = [], []
    for step, (t, memory) in enumerate(zip(range(5, 9), after)):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        m = min(copies, t // interval)
        for i in range(m):
            values = memory[i]
            n_train = len(mrkd.student.trainable_variables)
            logits, _ = mrkd.student.stateless_call(values[:n_train], values[n_train:], x[batch])
            logits = to_numpy(logits).astype(np.float64)
            correct.extend(np.argmax(logits, -1) == y[batch])
            scaled = logits / temperature
            scaled -= scaled.max(-1, keepdims=True)
            top.extend(1.0 / np.exp(scaled).sum(-1))
    np.testing.assert_allclose(history["teacher_accuracy"], [np.mean(correct)], rtol=1e-5)
    np.testing.assert_allclose(history["teacher_top_probability"], [np.mean(top)], rtol=1e-4)
    np.testing.assert_allclose(history["teaching_copies"], [7 / 4], rtol=1e-6)


def test_a_degenerate_teacher_shows_in_the_diagnostics():
    """A KD teacher that puts everything on class 0: its accuracy is the share of class 0
    and its top probability 1, in fit's logs; evaluation reports the student alone."""
    x, y = data()
    teacher = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    teacher.set_weights([np.zeros((5, 3), "float32"), np.array([60.0, 0.0, 0.0], "float32")])
    kd_model = KDModel(make_student("none"), teacher=teacher, alpha=0.9, temperature=4.0)
    kd_model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    history = kd_model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x, y)
    ).history
    np.testing.assert_allclose(history["teacher_accuracy"], [np.mean(y == 0)] * 2, rtol=1e-6)
    np.testing.assert_allclose(history["teacher_top_probability"], [1.0, 1.0], rtol=1e-5)
    assert not any(key.startswith("val_teacher") for key in history)
    results = kd_model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    assert np.mean(y == 0) < 0.5  # so the accuracy does tell this teacher from a good one


@pytest.mark.parametrize("wrapper", ["mrkd", "kd"])
def test_evaluation_runs_the_student_alone(wrapper, monkeypatch):
    """evaluate() and fit's validation run no copy or teacher: the student's CE and metrics."""
    x, y = data()
    student = make_student("plain")
    if wrapper == "mrkd":
        model = MrKDModel(student, copies=2, interval=2, alpha=0.5, temperature=2.0)
    else:
        model = KDModel(student, teacher=make_student("plain"), alpha=0.5, temperature=2.0)
    model.compile(optimizer="sgd", metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    sync(model)

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher ran during evaluation")

    monkeypatch.setattr(model, "teacher_logits", no_teacher)
    results = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    logits = student(x, training=False)
    np.testing.assert_allclose(results["loss"], np.mean(to_numpy(losses.ce(y, logits))), rtol=1e-5)
    assert set(results) == {"loss", "accuracy"}

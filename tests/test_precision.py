"""--precision and --teacher_precision: every method under every policy, exact MrKD refreshes
under bfloat16, and bfloat16 teachers within a stated tolerance of float32's.

Runs on TensorFlow, JAX and PyTorch (tests/test_backends.py's FILES). Every test leaves the
global dtype policy at float32.

**The tolerance of a bfloat16 teacher** (:data:`LOGIT_SPREAD`, :data:`PROBABILITY`,
:data:`KL`, :data:`ARGMAX`). bfloat16 keeps 8 significant bits: each rounding has a
relative error up to ``u = 2**-8 ~ 0.004``. A layer of the teacher rounds its input, its
weights and its output (about 3 roundings; the convolutions accumulate in float32 and
BatchNorm computes in float32), and ResNet-20 has 20 such layers: random-sign errors add in
quadrature to ``sqrt(3 * 20) u ~ 8 u ~ 0.03`` of a logit's scale for a typical logit, and the
largest of the 1,280 logits compared here (128 images x 10 classes) lies a few such
deviations out: about ``0.1``. So the logits' largest error is bounded by
``LOGIT_SPREAD = 0.2`` times the float32 logits' standard deviation (measured on this CPU:
0.04-0.08 on all three backends). What the distillation loss sees is the tempered
distribution: ``|dp_i| <= max|dz| / (2T)`` (softmax's Jacobian), and at MrKD's temperature
``T = 3`` with logits spread like a trained ResNet-20's (std ~5, max ~20-50: the classifier
scaled x10 below) the measured largest ``|dp|`` is 0.012-0.016 and the mean
``KL(p_f32 || p_bf16)`` 3e-5-1.1e-4 nats. Bounds: ``PROBABILITY = 0.03``, ``KL = 5e-4``
nats (under 1% of a KD term's typical 0.05-0.5 nats), and the top-1 class agrees on
``ARGMAX = 95%`` of the images (it flips only at near-ties; measured 97-100%).
"""

from __future__ import annotations

import json
import os
import pathlib

import sys

import keras
import numpy as np
import pytest

from conftest import DATA_ENV, tensorflow_only, write_tiny_cifar
from keras_softkd import experiment, methods, models
from keras_softkd.config import ExperimentConfig, UsageError, is_text
from keras_softkd.distillation import KDModel
from keras_softkd.memory_replay import MrKDModel
from keras_softkd import precision
from keras_softkd.precision import PRECISIONS
from keras_softkd.teacher_network import TeacherNetwork

NUM_CLASSES = 10
LOGIT_SPREAD = 0.2  # max |z_bf16 - z_f32| / std(z_f32)
PROBABILITY = 0.03  # max |p_bf16 - p_f32| at T = 3
KL = 5e-4  # mean KL(p_f32 || p_bf16) at T = 3, nats
ARGMAX = 0.95  # fraction of images whose top-1 class agrees
TEMPERATURE = 3.0


@pytest.fixture(autouse=True)
def float32_afterwards():
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def tiny_network(seed: int, size: int = 8) -> keras.Model:
    """Conv + BatchNorm + classifier, built under the global policy (16-bit logits under a
    mixed one: the losses must cast them)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


def batch(name: str, rng: np.random.Generator):
    """A batch of 8 as train.py's input gives it to ``name``."""
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = np.arange(8) % NUM_CLASSES
    if methods.get(name).inputs == "pairs":
        x = {"images": x, "partners": rng.normal(size=x.shape).astype("float32")}
    if methods.get(name).inputs == "indices":
        y = {"labels": y, "index": np.arange(8, dtype="int32")}
    return x, y


def numpy(value) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")))


def all_finite(variables) -> list[str]:
    """The paths of the floating-point variables holding a non-finite value."""
    return [v.path for v in variables if "float" in str(v.dtype) and not np.isfinite(numpy(v)).all()]


# -- every method, every precision ---------------------------------------------------------


# Every method on TensorFlow; on JAX and PyTorch (tests/test_backends.py reruns this file) one
# method of each kind of trainer: a loss, MrKD's memories (copies beside an average), PS-KD's
# table, CS-KD's pairs, Beta-LS's training-mode average, KR-LS's matrix, KD's fixed teacher.
_EACH_KIND = ("ce", "mrkd_ema_tc", "pskd", "cs_kd", "beta_ls", "kr_ls", "kd")
_MATRIX = methods.names() if keras.backend.backend() == "tensorflow" else _EACH_KIND


@pytest.mark.parametrize("policy", PRECISIONS)
@pytest.mark.parametrize("name", _MATRIX)
def test_every_method_trains_a_step_under_each_precision(name, policy, tmp_path):
    """As train.py builds it (experiment.build_trainer): one step gives a finite loss and
    finite metrics (PS-KD's teacher diagnostics are NaN in its first epoch, by design); every variable of the trainer (student, memories, PS-KD's table, KR-LS's
    matrix, optimizer, metrics) stays finite, and the student's weights stay float32."""
    keras.mixed_precision.set_global_policy(policy)
    # kappa = 1 step: copies teach. Teachers in the student's precision on every machine (auto
    # would give bfloat16 ones under float32 where native; they have their test below).
    fields = {"method": name, "epochs": 8, "precision": policy, "teacher_precision": "same"}
    if "teacher" in methods.get(name).required():
        tiny_network(seed=1).save(tmp_path / "teacher.keras")
        fields["teacher"] = str(tmp_path / "teacher.keras")
    resolved = ExperimentConfig(**fields).resolved()
    student = tiny_network(seed=0)
    trainer = experiment.build_trainer(resolved, NUM_CLASSES, steps_per_epoch=1, student=student,
                                       num_examples=8)
    x, y = batch(name, np.random.default_rng(0))
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for metric, values in history.history.items():
        if name == "pskd" and metric.startswith("teacher_"):  # no teacher in epoch 1: NaN
            continue
        assert np.isfinite(values).all(), (metric, values)
    assert history.history["loss"][-1] > 0
    assert not all_finite(trainer.variables), all_finite(trainer.variables)
    if trainer.optimizer is not None:
        assert not all_finite(trainer.optimizer.variables)
    assert all(str(v.dtype) == "float32" for v in student.trainable_variables)


@pytest.mark.parametrize("name", [n for n in methods.names() if methods.get(n).teachers])
def test_every_method_with_teachers_trains_a_step_with_bfloat16_teachers(name, tmp_path):
    """float32 student, --teacher_precision=bfloat16, as train.py builds it: the teachers teach
    (MrKD: its copy or average, refreshed at step 1; KD: its network) and all stays finite."""
    fields = {"method": name, "epochs": 8, "teacher_precision": "bfloat16"}
    if "teacher" in methods.get(name).required():
        tiny_network(seed=1).save(tmp_path / "teacher.keras")
        fields["teacher"] = str(tmp_path / "teacher.keras")
    resolved = ExperimentConfig(**fields).resolved()
    trainer = experiment.build_trainer(resolved, NUM_CLASSES, steps_per_epoch=1,
                                       student=tiny_network(seed=0), num_examples=8)
    assert trainer.teacher_precision == "bfloat16"
    x, y = batch(name, np.random.default_rng(4))
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for metric, values in history.history.items():
        assert np.isfinite(values).all(), (metric, values)
    assert history.history.get("teaching_copies", [1])[0] == 1
    assert not all_finite(trainer.variables), all_finite(trainer.variables)


def test_pskd_table_stays_float32_and_finite_under_bfloat16():
    """PS-KD keeps last epoch's predictions per example: float32 (not the bfloat16 of the
    softmax it stores), finite after two epochs."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    resolved = ExperimentConfig(method="pskd", epochs=2, precision="mixed_bfloat16").resolved()
    trainer = experiment.build_trainer(resolved, NUM_CLASSES, steps_per_epoch=1,
                                       student=tiny_network(seed=0), num_examples=8)
    x, y = batch("pskd", np.random.default_rng(1))
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    tables = [v for v in trainer.non_trainable_variables if tuple(v.shape) == (8, NUM_CLASSES)]
    assert tables, [(v.path, v.shape) for v in trainer.non_trainable_variables]
    for table in tables:
        assert str(table.dtype) == "float32"
        values = numpy(table)
        assert np.isfinite(values).all() and np.abs(values).sum() > 0


@pytest.mark.parametrize("teacher_precision", ["same", "bfloat16"])
def test_mrkd_copies_refresh_exactly_under_mixed_bfloat16(teacher_precision):
    """Copies are float32 variables; a refresh copies the student's float32 values bit for
    bit (no trip through bfloat16), with bfloat16 compute and with bfloat16 teachers."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    student = tiny_network(seed=0)
    mrkd = MrKDModel(student, copies=2, interval=1, alpha=0.5, temperature=3.0,
                     teacher_precision=teacher_precision)
    mrkd.compile(optimizer=keras.optimizers.SGD(0.1))
    sources = list(student.trainable_variables) + list(student.non_trainable_variables)
    x, y = batch("mrkd", np.random.default_rng(2))
    snapshots = [[numpy(v) for v in sources]]
    for _ in range(2):  # interval 1: every step refreshes, before its forward pass
        mrkd.fit(x, y, batch_size=8, epochs=1, verbose=0)
        snapshots.append([numpy(v) for v in sources])
    assert not all(np.array_equal(a, b) for a, b in zip(snapshots[0], snapshots[2]))
    theta_1, theta_2 = mrkd.memory
    for copy, expected in ((theta_1, snapshots[1]), (theta_2, snapshots[0])):
        for variable, value in zip(copy, expected):
            assert str(variable.dtype) == "float32"
            np.testing.assert_array_equal(numpy(variable), value)


# -- bfloat16 teachers ----------------------------------------------------------------------


def images(count: int) -> np.ndarray:
    """Real CIFAR-10 test images (``KERAS_SOFTKD_DATA_DIR``) normalised as the pipeline does,
    else random ones."""
    folder = os.environ.get(DATA_ENV)
    path = pathlib.Path(folder or ".") / "cifar10_test.npz"
    if folder and path.exists():
        with np.load(path) as arrays:
            x = arrays["x"][:count].astype("float32") / 255.0
        return ((x - [0.4914, 0.4822, 0.4465]) / [0.2470, 0.2435, 0.2616]).astype("float32")
    return np.random.default_rng(0).normal(size=(count, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def resnet20():
    """ResNet-20 with BatchNorm statistics of the images (as after training) and the classifier
    scaled x10, so that its logits spread as a trained network's (std ~5)."""
    keras.mixed_precision.set_global_policy("float32")
    network = models.build("resnet20", NUM_CLASSES)
    x = images(128)
    norms = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:  # one pass sets the moving statistics to the batch's
        layer.momentum = 0.0
    _, statistics = network.stateless_call(
        network.trainable_variables, network.non_trainable_variables, x, training=True
    )
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    for variable, value in zip(network.non_trainable_variables, statistics):
        variable.assign(value)
    kernel = network.get_layer("fc").kernel
    kernel.assign(kernel * 10.0)
    return network, x


def assert_within_tolerance(float32_logits, bfloat16_logits):
    reference, low = numpy(float32_logits), numpy(bfloat16_logits)
    assert reference.shape == low.shape and np.isfinite(low).all()
    assert np.abs(low - reference).max() <= LOGIT_SPREAD * reference.std()
    p = numpy(keras.ops.softmax(reference / TEMPERATURE, axis=-1)).astype("float64")
    q = numpy(keras.ops.softmax(low / TEMPERATURE, axis=-1)).astype("float64")
    assert np.abs(p - q).max() <= PROBABILITY
    kl = np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=-1)
    assert kl.mean() <= KL, kl.mean()
    assert np.mean(reference.argmax(-1) == low.argmax(-1)) >= ARGMAX


def test_bfloat16_memories_are_within_the_tolerance_of_float32(resnet20):
    network, x = resnet20
    same = MrKDModel(network, copies=1, interval=1)
    low = MrKDModel(network, copies=1, interval=1, teacher_precision="bfloat16")
    reference = same.copy_logits(x)[0]
    teacher = low.copy_logits(x)[0]
    assert keras.backend.standardize_dtype(teacher.dtype) == "float32"
    assert_within_tolerance(reference, teacher)
    assert not np.array_equal(numpy(reference), numpy(teacher))  # bfloat16 did run


def test_a_bfloat16_kd_teacher_is_within_the_tolerance_of_float32(resnet20):
    network, x = resnet20
    trainable = network.trainable
    try:
        student = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                                    keras.layers.Dense(NUM_CLASSES)])
        same = KDModel(student, teacher=network)
        low = KDModel(student, teacher=network, teacher_precision="bfloat16")
        assert_within_tolerance(same.teacher_logits(x), low.teacher_logits(x))
    finally:
        network.trainable = trainable


def test_bfloat16_teachers_leave_the_weights_and_the_config_as_they_were(tmp_path):
    """The bfloat16 clone is not tracked: the wrapper's weights (checkpoints) are those of
    teacher_precision='same'; the setting is in the config."""
    student = tiny_network(seed=0)
    same = MrKDModel(student, copies=2, interval=1)
    low = MrKDModel(student, copies=2, interval=1, teacher_precision="bfloat16")
    assert [tuple(v.shape) for v in low.weights] == [tuple(v.shape) for v in same.weights]
    assert low.get_config()["teacher_precision"] == "bfloat16"
    again = MrKDModel.from_config(low.get_config())
    assert again.teacher_precision == "bfloat16"
    with pytest.raises(ValueError, match="teacher_precision"):
        MrKDModel(student, copies=1, interval=1, teacher_precision="float16")


# -- the run -------------------------------------------------------------------------------


def test_a_run_records_its_precisions(tmp_path, monkeypatch):
    def network(name, num_classes, synchronized_batchnorm=False):
        return tiny_network(seed=0, size=32)

    monkeypatch.setattr(experiment.models, "build", network)
    data_dir = write_tiny_cifar(tmp_path / "data", train=16, test=8)
    results = experiment.run(ExperimentConfig(
        method="mrkd", copies=1, kappa=1.0, epochs=1, batch_size=8, data_dir=str(data_dir),
        output_dir=str(tmp_path / "run"), precision="mixed_bfloat16", teacher_precision="bfloat16",
    ))
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["hyperparameters"]["precision"] == "mixed_bfloat16"
    assert written["hyperparameters"]["teacher_precision"] == "bfloat16"
    assert "mixed_precision" not in written["hyperparameters"]
    assert np.isfinite(results["test_nll"])


def test_a_run_puts_the_callers_dtype_policy_back(tmp_path, monkeypatch):
    """experiment.run trains under its precision's global policy, and restores the caller's
    afterwards, when it finishes and when it fails."""
    def network(name, num_classes, synchronized_batchnorm=False):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        return tiny_network(seed=0, size=32)

    monkeypatch.setattr(experiment.models, "build", network)
    data_dir = write_tiny_cifar(tmp_path / "data", train=16, test=8)
    settings = dict(method="ce", epochs=1, batch_size=8, data_dir=str(data_dir),
                    precision="mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    experiment.run(ExperimentConfig(output_dir=str(tmp_path / "run"), **settings))
    assert keras.mixed_precision.global_policy().name == "float32"

    def broken(name, num_classes, synchronized_batchnorm=False):
        raise RuntimeError("no network")

    monkeypatch.setattr(experiment.models, "build", broken)
    with pytest.raises(RuntimeError, match="no network"):
        experiment.run(ExperimentConfig(output_dir=str(tmp_path / "failed"), **settings))
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize(
    "fields,flag",
    [
        ({"precision": "bfloat16"}, "--precision"),
        ({"precision": "float16"}, "--precision"),
        ({"method": "ce", "teacher_precision": "bfloat16"}, "--teacher_precision"),
        ({"method": "pskd", "teacher_precision": "bfloat16"}, "--teacher_precision"),
        ({"method": "mrkd", "teacher_precision": "float16"}, "--teacher_precision"),
    ],
)
def test_bad_precisions_name_the_flag(fields, flag):
    with pytest.raises(UsageError, match=flag.replace("-", r"\-")):
        ExperimentConfig(**fields).resolved()


def test_teacher_precision_applies_to_the_methods_with_gradient_free_teachers():
    with_teachers = [name for name in methods.names() if methods.get(name).teachers]
    assert with_teachers == ["mrkd", "mrkd_tc", "mrkd_ema", "mrkd_ema_tc", "kd"]
    for name in with_teachers:
        fields = {"teacher": "t.keras"} if name == "kd" else {}
        resolved = ExperimentConfig(method=name, teacher_precision="bfloat16", **fields).resolved()
        assert resolved.hyperparameters()["teacher_precision"] == "bfloat16"


def test_teacher_network_same_is_the_network_itself():
    network = tiny_network(seed=0)
    assert TeacherNetwork(network).network is network
    clone = TeacherNetwork(network, "bfloat16").network
    assert clone is not network
    assert {layer.dtype_policy.name for layer in clone.layers[1:]} == {"mixed_bfloat16"}


@pytest.mark.parametrize("training", [True, False])
def test_the_networks_batchnorm_under_mixed_bfloat16_computes_as_keras(training):
    """The networks' BatchNormalization (TensorFlow's fused kernel on TensorFlow) under
    mixed_bfloat16: bfloat16 output, float32 moving statistics, Keras's values (to the
    output's bfloat16 rounding, 2**-8 relative) and Keras's moving-statistics update."""
    from keras_softkd.models._layers import BatchNormalization

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    x = (np.random.default_rng(3).normal(size=(16, 4, 4, 8)) * 3 + 1).astype("float32")
    ours = BatchNormalization(momentum=0.9, epsilon=1e-5)
    theirs = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 8))
        layer.beta.assign(np.linspace(-1, 1, 8))
        layer.moving_mean.assign(np.linspace(-0.5, 0.5, 8))
        layer.moving_variance.assign(np.linspace(1, 4, 8))
    y_ours, y_theirs = ours(x, training=training), theirs(x, training=training)
    assert keras.backend.standardize_dtype(y_ours.dtype) == "bfloat16"
    np.testing.assert_allclose(numpy(y_ours), numpy(y_theirs), rtol=2**-7, atol=2**-7)
    for mine, keras_own in ((ours.moving_mean, theirs.moving_mean),
                            (ours.moving_variance, theirs.moving_variance)):
        assert str(mine.dtype) == "float32"
        np.testing.assert_allclose(numpy(mine), numpy(keras_own), rtol=1e-3, atol=1e-4)


def test_native_bfloat16_answers_with_a_reason():
    native, why = precision.native_bfloat16()
    assert isinstance(native, bool) and why
    assert precision.cpu_bfloat16_flags("flags\t: fpu sse avx512f") == []
    assert precision.cpu_bfloat16_flags("processor: 0\nflags\t: avx512_bf16 amx_bf16\n") == [
        "avx512_bf16", "amx_bf16"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device files of Linux")
def test_the_backend_is_asked_only_where_an_accelerator_device_file_exists(monkeypatch):
    """No GPU or TPU device file: the CPU's flags answer, and Keras's backend is not asked."""
    asked = []

    def accelerator(backend):
        asked.append(backend)
        return None, ""

    monkeypatch.setattr(precision, "_accelerator", accelerator)
    for files, want_asked in (([], False), (["/dev/nvidia0"], True)):
        monkeypatch.setattr(precision.glob, "glob",
                            lambda pattern, files=files: [f for f in files if pattern.startswith(f[:8])])
        precision.native_bfloat16.cache_clear()
        try:
            native, why = precision.native_bfloat16()
        finally:
            precision.native_bfloat16.cache_clear()
        assert precision.accelerator_possible() is want_asked
        assert bool(asked) is want_asked and why.startswith(("CPU", "no GPU")), (asked, why)
        asked.clear()


def test_docstring_examples_run():
    import doctest

    from keras_softkd import teacher_network

    for module in (precision, teacher_network):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# -- auto: the defaults where the hardware computes bfloat16 natively (precision.resolve) ----

NATIVE = (True, "CPU with avx512_bf16")
NOT_NATIVE = (False, "CPU without avx512_bf16, amx_bf16 or bf16")


@pytest.fixture
def hardware(monkeypatch):
    """``hardware(answer)``: what ``native_bfloat16`` says from now on in this test (the
    config and the run ask it through the module), whatever this machine is."""
    def set_answer(answer):
        monkeypatch.setattr(precision, "native_bfloat16", lambda: answer)

    return set_answer


@pytest.mark.parametrize("native", [NATIVE, NOT_NATIVE])
@pytest.mark.parametrize("student", PRECISIONS)
@pytest.mark.parametrize("text", [False, True])
@pytest.mark.parametrize("name", methods.names())
def test_auto_teachers_are_bfloat16_only_where_native_with_teachers_on_images_beside_float32(
        name, text, student, native):
    has_teachers = methods.get(name).teachers
    resolved, teachers, why = precision.resolve(student, "auto", has_teachers, text, native=native)
    expected = "bfloat16" if native[0] and has_teachers and not text and student == "float32" else "same"
    assert (resolved, teachers) == (student, expected)
    assert why.startswith(f"teacher_precision=auto: {expected}, ")
    if expected == "bfloat16":
        assert why.endswith(f"native on {native[1]}")


def test_auto_resolves_per_kind_of_method_and_dataset():
    """The rule's cases by name: MrKD and KD on images, CE (no teachers), KD on text."""
    on = {"native": NATIVE}
    assert precision.resolve("float32", "auto", True, False, **on)[:2] == ("float32", "bfloat16")
    assert precision.resolve("float32", "auto", True, False, native=NOT_NATIVE)[:2] == ("float32", "same")
    assert precision.resolve("float32", "auto", False, False, **on)[:2] == ("float32", "same")
    assert precision.resolve("float32", "auto", True, True, **on)[:2] == ("float32", "same")
    # --precision=auto: bfloat16 compute where native, and then its teachers come along
    assert precision.resolve("auto", "auto", True, False, **on) == (
        "mixed_bfloat16", "same", "precision=auto: mixed_bfloat16, native on CPU with avx512_bf16; "
        "teacher_precision=auto: same, the student computes in bfloat16")
    assert precision.resolve("auto", "auto", True, False, native=NOT_NATIVE)[:2] == ("float32", "same")
    assert precision.resolve("auto", "bfloat16", True, False, native=NOT_NATIVE)[:2] == (
        "float32", "bfloat16")  # an explicit value stays
    assert precision.resolve("mixed_float16", "auto", True, False, **on)[:2] == ("mixed_float16", "same")


def test_the_hardware_is_asked_only_where_the_answer_matters(monkeypatch):
    def no(*_):
        raise AssertionError("native_bfloat16 was asked")

    monkeypatch.setattr(precision, "native_bfloat16", no)
    assert precision.resolve("float32", "same", True, False) == ("float32", "same", "as given")
    assert precision.resolve("float32", "auto", False, False)[1] == "same"  # no teachers
    assert precision.resolve("float32", "auto", True, True)[1] == "same"  # text
    assert precision.resolve("mixed_bfloat16", "auto", True, False)[1] == "same"
    with pytest.raises(AssertionError, match="asked"):
        precision.resolve("float32", "auto", True, False)


@pytest.mark.parametrize("dataset", ["cifar10", "rte"])
@pytest.mark.parametrize("name", methods.names())
def test_the_config_resolves_auto_and_never_fails_on_it(name, dataset, hardware):
    """Both precisions default to auto; resolved() turns them into the values a run uses (for
    every method, on images and on text): bfloat16 students where bfloat16 is native, and
    bfloat16 teachers beside an explicitly float32 student."""
    hardware(NATIVE)
    fields = {"method": name, "dataset": dataset}
    fields.update({"teacher": "t.keras"} if "teacher" in methods.get(name).required() else {})
    if is_text(dataset):
        if not methods.get(name).text:
            return  # refused on text for another reason (tests/test_methods.py)
        fields["model"] = "bert_tiny_scratch"
    default = ExperimentConfig(**fields)
    assert (default.precision, default.teacher_precision) == ("auto", "auto")
    resolved = default.resolved()
    assert (resolved.precision, resolved.teacher_precision) == ("mixed_bfloat16", "same")
    assert resolved.resolved() == resolved  # resolving again changes nothing
    teachers = methods.get(name).teachers and not is_text(dataset)
    float32 = ExperimentConfig(precision="float32", **fields).resolved()
    assert (float32.precision, float32.teacher_precision) == (
        "float32", "bfloat16" if teachers else "same")
    hardware(NOT_NATIVE)
    resolved = ExperimentConfig(**fields).resolved()
    assert (resolved.precision, resolved.teacher_precision) == ("float32", "same")


@pytest.mark.parametrize(
    "fields,flag",
    [
        ({"precision": "bfloat16"}, "precision"),
        ({"method": "mrkd", "teacher_precision": "float16"}, "teacher_precision"),
    ],
)
def test_a_bad_value_names_the_valid_ones_auto_included(fields, flag):
    with pytest.raises(UsageError) as error:
        ExperimentConfig(**fields).resolved()
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--{flag}=")
    valid = PRECISIONS if flag == "precision" else precision.TEACHER_PRECISIONS
    assert message.endswith(f"choose one of: {', '.join(valid)}, auto.")


def tiny_run_settings(tmp_path, monkeypatch, **fields):
    def network(name, num_classes, synchronized_batchnorm=False):
        return tiny_network(seed=0, size=32)

    monkeypatch.setattr(experiment.models, "build", network)
    data_dir = write_tiny_cifar(tmp_path / "data", train=16, test=8)
    settings = dict(method="mrkd", copies=1, kappa=1.0, epochs=2, batch_size=8,
                    data_dir=str(data_dir))
    return {**settings, **fields}


@pytest.mark.slow
@pytest.mark.parametrize("native", [NATIVE, NOT_NATIVE])
def test_a_run_records_the_resolved_precisions_what_was_asked_and_why(native, tmp_path, monkeypatch,
                                                                      hardware):
    hardware(native)
    settings = tiny_run_settings(tmp_path, monkeypatch, epochs=1, precision="float32")
    experiment.run(ExperimentConfig(output_dir=str(tmp_path / "run"), **settings))
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    teachers = "bfloat16" if native[0] else "same"
    assert written["hyperparameters"]["precision"] == "float32"
    assert written["hyperparameters"]["teacher_precision"] == teachers
    assert written["precision_requested"] == {"precision": "float32", "teacher_precision": "auto"}
    assert written["precision_reason"] == (
        f"teacher_precision=auto: {teachers}, {'native on' if native[0] else 'not native:'} {native[1]}")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["precision"]["teacher_precision"] == teachers


def test_a_run_with_precision_auto_records_mixed_bfloat16_where_native(tmp_path, monkeypatch, hardware):
    hardware(NATIVE)
    settings = tiny_run_settings(tmp_path, monkeypatch, epochs=1, precision="auto")
    results = experiment.run(ExperimentConfig(output_dir=str(tmp_path / "run"), **settings))
    assert results["hyperparameters"]["precision"] == "mixed_bfloat16"
    assert results["hyperparameters"]["teacher_precision"] == "same"
    assert results["precision_requested"] == {"precision": "auto", "teacher_precision": "auto"}
    assert "precision=auto: mixed_bfloat16, native on CPU" in results["precision_reason"]
    assert np.isfinite(results["test_nll"])


@tensorflow_only("a resume through experiment.run, tested on one backend")
def test_a_resumed_run_keeps_the_precisions_it_started_with(tmp_path, monkeypatch, hardware):
    """Started where bfloat16 is native (auto: bfloat16 teachers), killed after epoch 1, resumed
    where it is not: the run goes on with bfloat16 teachers and says so; an explicit
    --teacher_precision=same on resuming is refused in one line (a float32 student)."""
    settings = tiny_run_settings(tmp_path, monkeypatch, precision="float32")
    out = str(tmp_path / "run")

    class Killed(Exception):
        pass

    save = experiment.EpochCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        save(self, epoch, logs)
        raise Killed

    hardware(NATIVE)
    monkeypatch.setattr(experiment.EpochCheckpoint, "on_epoch_end", save_then_die)
    with pytest.raises(Killed):
        experiment.run(ExperimentConfig(output_dir=out, **settings))
    monkeypatch.setattr(experiment.EpochCheckpoint, "on_epoch_end", save)
    hardware(NOT_NATIVE)
    with pytest.raises(UsageError) as error:
        experiment.run(ExperimentConfig(output_dir=out, teacher_precision="same", **settings))
    assert "\n" not in str(error.value)
    assert "started with --teacher_precision=bfloat16" in str(error.value)
    results = experiment.run(ExperimentConfig(output_dir=out, **settings))
    assert results["hyperparameters"]["teacher_precision"] == "bfloat16"
    assert results["precision_requested"]["teacher_precision"] == "auto"
    assert results["precision_reason"] == (
        f"teacher_precision=auto: bfloat16, native on {NATIVE[1]}; kept on resuming, where auto "
        f"resolves otherwise (teacher_precision=auto: same, not native: {NOT_NATIVE[1]})")
    assert results["epochs"] == 2 and results["completed"]


def test_resuming_a_checkpoint_written_before_auto_takes_that_times_defaults(hardware):
    """state.json without a precision record: auto stands for float32 and same, as then."""
    hardware(NATIVE)
    asked = ExperimentConfig(method="mrkd", precision="auto")
    config = asked.resolved()
    assert (config.precision, config.teacher_precision) == ("mixed_bfloat16", "same")
    kept, record = experiment.run_precision(asked, config, {})
    assert (kept.precision, kept.teacher_precision) == ("float32", "same")
    assert record["requested"] == {"precision": "auto", "teacher_precision": "auto"}
    assert "records no precision" in record["reason"]
    explicit = ExperimentConfig(method="mrkd", precision="mixed_float16")
    kept, _ = experiment.run_precision(explicit, explicit.resolved(), {})
    assert kept.precision == "mixed_float16"  # an explicit value: nothing to check it against
    new, record = experiment.run_precision(asked, config, None)  # no checkpoint: a new run
    assert new == config and record["reason"].startswith("precision=auto: mixed_bfloat16")



# -- on a real network and real images, in the default precision where bfloat16 is native ---


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the real-data check runs once, in the TensorFlow suite")
def test_mrkd_in_bfloat16_on_real_images_teaches_a_spread_distribution_and_learns(
        real_data_dir, tmp_path, monkeypatch):
    """What --precision=auto picks where bfloat16 is native (this machine): MrKD with one copy,
    student and copy in mixed_bfloat16, through experiment.run (train.py's body) on 2,048 real
    CIFAR-10 training images, 4 epochs of a small conv net, the copy refreshed every epoch. The
    copy that teaches gives finite, spread predictions (not one class near certain), training
    accuracy rises, and the test error is well under chance."""
    def network(name, num_classes, synchronized_batchnorm=False):
        inputs = keras.Input((32, 32, 3))
        x = inputs
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))

    monkeypatch.setattr(experiment.models, "build", network)
    results = experiment.run(ExperimentConfig(
        method="mrkd", copies=1, kappa=1.0, epochs=4, batch_size=64, lr=0.05, seed=0,
        train_examples=2048, data_dir=str(real_data_dir), output_dir=str(tmp_path / "run"),
        precision="mixed_bfloat16",
    ))
    assert results["hyperparameters"]["precision"] == "mixed_bfloat16"
    assert results["hyperparameters"]["teacher_precision"] == "same"  # the copy: bfloat16 too
    history = {}
    lines = (tmp_path / "run" / "history.csv").read_text().splitlines()
    names = lines[0].split(",")
    for line in lines[1:]:
        for name, value in zip(names, line.split(",")):
            history.setdefault(name, []).append(float(value) if value else float("nan"))
    print({name: np.round(values, 3).tolist() for name, values in history.items()})
    teaching = [i for i, share in enumerate(history["teaching_copies"]) if share > 0]
    assert teaching, history["teaching_copies"]  # the copy taught after its first refresh
    top = [history["teacher_top_probability"][i] for i in teaching]
    assert np.all(np.isfinite(top)) and max(top) < 0.6, top
    assert history["accuracy"][-1] > history["accuracy"][0] + 0.05, history["accuracy"]
    assert np.isfinite(results["test_nll"]) and results["test_error"] < 0.8, results["test_error"]

"""The method table: every entry trains one step as train.py builds it, and agrees with the
places that read it (train.py's flags, ExperimentConfig, config, report, grid)."""

import dataclasses
import doctest
import importlib.util
import pathlib
import re

import keras
import numpy as np
import pytest

from keras_softkd import config, experiment, grid, methods, report
from keras_softkd.config import ExperimentConfig
from keras_softkd.models import portable

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
FIELDS = {field.name for field in dataclasses.fields(ExperimentConfig)}


def tiny_network(seed: int) -> keras.Model:
    """Conv + BatchNorm (MrKD's copies hold its moving statistics) + classifier, 8x8 images."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


@pytest.fixture(scope="module")
def train_script():
    """train.py as a module (its absl flags defined, none parsed)."""
    spec = importlib.util.spec_from_file_location("train_script_under_test", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", methods.names())
def test_every_method_trains_one_step_as_train_py_builds_it(name, tmp_path):
    """Through the table and experiment.build_trainer (train.py's path) with a tiny network:
    one real step of fit gives a finite loss and moves every weight of the student."""
    fields = {"method": name, "epochs": 8}  # kappa = 1 epoch = 1 step: an MrKD copy teaches
    for required in methods.get(name).required():
        assert required == "teacher", f"give the test a value for --{required}"
        # As a run saves it (raw images in, its normalisation inside): load_teacher takes the
        # normalisation off for the pipeline's normalised images.
        portable.for_images(tiny_network(seed=1), "cifar10").save(tmp_path / "teacher.keras")
        fields["teacher"] = str(tmp_path / "teacher.keras")
    resolved = ExperimentConfig(**fields).resolved()
    student = tiny_network(seed=0)
    trainer = experiment.build_trainer(resolved, NUM_CLASSES, steps_per_epoch=1, student=student,
                                       num_examples=8)
    before = [np.array(w) for w in student.trainable_weights]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = np.arange(8) % NUM_CLASSES
    if methods.get(name).inputs == "pairs":  # CS-KD: a same-class partner per example
        x = {"images": x, "partners": rng.normal(size=x.shape).astype("float32")}
    if methods.get(name).inputs == "indices":  # as data.training_input(inputs="indices") yields
        y = {"labels": y, "index": np.arange(8, dtype="int32")}
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    after = [np.array(w) for w in student.trainable_weights]
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    if "teaching_copies" in history.history:  # MrKD: the copy refreshed at step 1 (or the
        assert history.history["teaching_copies"][0] == 1  # average, with 0 copies) taught


def test_the_table_is_consistent():
    names = methods.names()
    assert len(set(names)) == len(names) and config.METHODS == tuple(names)
    assert report.METHOD_ORDER == tuple(names)
    labels = [methods.get(name).label_for({"copies": 3}) for name in names]
    assert len(set(labels)) == len(labels)
    for name in names:
        entry = methods.get(name)
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
        assert entry.help.strip() and "\n" not in entry.help, name
        for placeholder in re.findall(r"\{(\w+)\}", entry.label + entry.column):
            assert placeholder == "copies" and "copies" in entry.parameters, name
        for parameter, default in entry.parameters.items():
            assert parameter in FIELDS, f"{name}: {parameter} is not an ExperimentConfig field"
            assert isinstance(
                default,
                (bool, int, float, str, methods.PerDataset, methods.EpochsOver, methods.OnGlue,
                 methods.Required),
            ), f"{name}: {parameter} has neither a default nor Required"
        for ablation in entry.ablations:
            assert isinstance(entry.parameters[ablation], bool), name
        assert methods.parse_name(name) == (name, {})
        assert methods.train_flags(name) == [f"--method={name}"]
        if entry.column:
            column = methods.column_name(name, 3)
            assert methods.parse_name(column) == (name, {"copies": 3})
            assert methods.canonical(column.replace("3", "-3", 1)) == column
            assert grid.parse_column(column).flags == (f"--method={name}", "--copies=3")
    assert set(config.METHOD_HYPERPARAMETERS) == set(methods.hyperparameters())
    assert config.METHOD_PARAMETERS == {n: tuple(methods.get(n).parameters) for n in names}


def test_every_hyperparameter_is_a_train_py_flag_and_config_field(train_script):
    flags = train_script.FLAGS
    assert list(flags["method"].parser.enum_values) == methods.names()
    for parameter in methods.hyperparameters():
        assert parameter in FIELDS, f"ExperimentConfig has no field {parameter}"
        assert parameter in flags, f"train.py has no --{parameter} flag"
        assert flags[parameter].default is None, f"--{parameter}: unset must mean the paper's default"
        for name in methods.names():
            if parameter in methods.get(name).parameters:
                assert f"{name} (" in flags[parameter].help, (parameter, name)
    # Every field has its flag, with the same default.
    assert train_script.config_from_flags() == ExperimentConfig()


@pytest.mark.parametrize("dataset", config.DATASETS)
@pytest.mark.parametrize("name", methods.names())
def test_defaults_pass_the_config_checks(name, dataset):
    teacher = {"teacher": "teacher.keras"} if "teacher" in methods.get(name).parameters else {}
    if config.is_text(dataset):  # a text model; methods not tested on text are refused there
        teacher["model"] = "bert_tiny_scratch"
        if not methods.get(name).text:
            with pytest.raises(config.UsageError, match=f"--method={name} is not available"):
                ExperimentConfig(method=name, dataset=dataset, **teacher).resolved()
            return
    resolved = ExperimentConfig(method=name, dataset=dataset, epochs=200, **teacher).resolved()
    for parameter, value in methods.get(name).defaults(dataset, 200).items():
        assert getattr(resolved, parameter) == value


def test_defaults_are_the_papers():
    """METHODS.md's table, every value (CIFAR-100 / CIFAR-10; CINIC-10 as CIFAR-10), 200 epochs."""
    mrkd = {"temperature": 3.0, "copies": 3, "kappa": 25.0, "initial_weights_teach": False}
    expected = {
        "ce": ({}, {}),
        "lsr": ({"alpha": 0.1}, {"alpha": 0.1}),
        "lsrkd": ({"alpha": 0.1, "temperature": 3.0}, {"alpha": 0.1, "temperature": 3.0}),
        "lsrkd_tc": ({"alpha": 0.1, "temperature": 3.0, "gamma": 0.025},
                     {"alpha": 0.1, "temperature": 3.0, "gamma": 0.25}),
        "mrkd": ({"alpha": 0.25, **mrkd}, {"alpha": 0.1, **mrkd}),
        "mrkd_tc": ({"alpha": 0.25, "gamma": 0.25, **mrkd}, {"alpha": 0.1, "gamma": 0.25, **mrkd}),
        "pseudo_kd": ({"alpha": 0.2, "beta": 1.5}, {"alpha": 0.2, "beta": 2.5}),
        "pskd": ({"alpha": 0.8}, {"alpha": 0.8}),
        "kr_ls": ({"alpha": 1.0}, {"alpha": 1.0}),
        "kd": ({"alpha": 0.9, "temperature": 4.0}, {"alpha": 0.9, "temperature": 4.0}),
        "cs_kd": ({"temperature": 4.0, "lam": 1.0}, {"temperature": 4.0, "lam": 1.0}),
        "mrkd_ema": tuple({"alpha": a, "temperature": 3.0, "copies": 0, "kappa": 25.0,
                           "ema_horizon": 25.0, "ema_every": "step", "initial_weights_teach": False}
                          for a in (0.25, 0.1)),
        "mrkd_ema_tc": tuple({"alpha": a, "temperature": 3.0, "gamma": 0.25, "copies": 0,
                              "kappa": 25.0, "ema_horizon": 25.0, "ema_every": "step",
                              "initial_weights_teach": False} for a in (0.25, 0.1)),
        "beta_ls": ({"alpha": 0.6, "beta": 3.0, "ema_decay": 0.999},
                    {"alpha": 0.6, "beta": 3.0, "ema_decay": 0.999}),
        "tf_reg": tuple(
            {"alpha": 0.1, "temperature": 20.0, "multiplier": m, "correct_probability": 0.99,
             "tf_reg_form": "code"} for m in (100.0, 10.0)
        ),
    }
    assert set(expected) == set(methods.names())
    for name, (cifar100, others) in expected.items():
        assert config.method_defaults(name, "cifar100", 200) == cifar100
        assert config.method_defaults(name, "cifar10", 200) == others
        assert config.method_defaults(name, "cinic10", 200) == others
    assert config.method_defaults("mrkd", "cifar10", 15)["kappa"] == 15 / 8


def test_spellings():
    assert methods.parse_name("mrkd3_tc") == ("mrkd_tc", {"copies": 3})
    assert methods.canonical("mrkd-1") == "mrkd1" and methods.canonical("mrkd_tc") == "mrkd_tc"
    assert grid.parse_column("mrkd-3").name == "mrkd3"
    assert methods.get("mrkd_tc").label_for({"copies": 3}) == "MrKD-3-TC"
    assert methods.parse_name("mrkd3_ema_tc") == ("mrkd_ema_tc", {"copies": 3})
    assert methods.parse_name("mrkd0_ema") == ("mrkd_ema", {"copies": 0})
    assert methods.column_name("mrkd_ema", 0) == "mrkd_ema"
    assert methods.column_name("mrkd_ema", 1) == "mrkd1_ema"
    assert methods.get("mrkd_ema").label_for({"copies": 0}) == "MrKD-EMA"
    assert methods.get("mrkd_ema_tc").label_for({"copies": 3}) == "MrKD-3-EMA-TC"
    for bad, message in [("mrkd0", "at least 1 copy"), ("mrkd2x", "not a method"), ("kd3", "not a method")]:
        with pytest.raises(ValueError, match=message):
            methods.parse_name(bad)
    with pytest.raises(ValueError, match="valid names"):
        methods.get("mrkd3")


def test_docstring_examples():
    result = doctest.testmod(methods)
    assert result.attempted > 0 and result.failed == 0

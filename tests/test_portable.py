"""The models a run saves (keras_softkd.models.portable) and KD's teacher from a saved file
(models.loading.load_teacher): Keras's own layers in float32, the images' normalisation inside,
the same logits as the trained network; a saved trainer as --teacher gives its student.

In process, on a tiny network holding every layer of ours (the fused BatchNorm, the option-A
shortcut, ShuffleNet's split and shuffle, PyTorch's initialiser). tests/test_train.py and
tests/test_train_text.py load a run's files in a process where keras_softkd cannot be imported.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import DATA_ENV, to_numpy
from keras_softkd import MrKDModel
from keras_softkd.data import py_dataset
from keras_softkd.errors import UsageError
from keras_softkd.models import _layers, portable
from keras_softkd.models.loading import load_teacher

K = 5


def every_layer_of_ours(seed: int = 0) -> keras.Model:
    """32x32x3 -> 5 logits through each layer of ours, with moving statistics that matter."""
    keras.utils.set_random_seed(seed)
    net = _layers.Layers(conv_init="pytorch_default")
    inputs = _layers.cifar_input()
    x = net.conv_bn(inputs, 6, 3, strides=2, name="stem")
    x = _layers.ZeroPadShortcut(8, strides=2, name="shortcut")(x)
    left, right = _layers.ChannelSplit(name="split")(x)
    x = keras.layers.Concatenate(name="concat")([net.relu(right), left])
    x = _layers.ChannelShuffle(2, name="shuffle")(x)
    x = net.batch_norm(net.depthwise_conv(x, 3, strides=2, name="depthwise"), name="depthwise_bn")
    network = keras.Model(inputs, net.classifier(x, K), name="tiny")
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(size=size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype("float32"))
    return network


def images(count: int = 16) -> np.ndarray:
    """Real CIFAR-10 test images where the data folder is set, else random uint8 images."""
    import os
    import pathlib

    path = pathlib.Path(os.environ.get(DATA_ENV, "/nonexistent")) / "cifar10_test.npz"
    if path.exists():
        with np.load(path) as files:
            return files["x"][:count]
    return np.random.default_rng(1).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_the_saved_model_is_keras_float32_and_gives_the_networks_logits_on_stored_images(tmp_path):
    network = every_layer_of_ours()
    x = images()
    expected = to_numpy(network(py_dataset.normalize(x, "cifar10"), training=False))
    saved = portable.for_images(network, "cifar10")
    saved.save(tmp_path / "model.keras")
    config = json.dumps(saved.get_config())
    assert "keras_softkd" not in config and "mixed_" not in config
    assert {type(layer).__module__.split(".")[0] for layer in saved.layers} == {"keras"}
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert saved.name == "tiny" and saved.layers[1].name == portable.NORMALIZATION
    assert not saved.compiled  # a ce run's student is compiled with our loss: not saved with it
    loaded = keras.models.load_model(tmp_path / "model.keras")
    # A user's call: predict on the images as stored, uint8; and float images on that scale.
    np.testing.assert_allclose(to_numpy(loaded.predict(x, verbose=0)), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(saved(x.astype("float32"), training=False)), expected,
                               rtol=1e-5, atol=1e-5)


def test_a_mixed_precision_network_is_saved_in_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        student = every_layer_of_ours()
        saved = portable.for_images(student, "cifar10")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert student.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert "mixed_" not in json.dumps(saved.get_config())
    assert {layer.dtype_policy.name for layer in saved.layers[1:]} == {"float32"}  # [0]: input
    float32 = every_layer_of_ours()
    float32.set_weights(student.get_weights())
    x = images(8)
    expected = to_numpy(float32(py_dataset.normalize(x, "cifar10"), training=False))
    np.testing.assert_allclose(to_numpy(saved(x.astype("float32"), training=False)), expected,
                               rtol=1e-5, atol=1e-5)


def test_a_layer_keras_does_not_know_is_refused_in_one_line():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.factor = self.add_weight(shape=(), initializer="ones")

        def call(self, x):
            return x * self.factor

    inputs = keras.Input((4,))
    network = keras.Model(inputs, keras.layers.Dense(2)(Scale(name="scale")(inputs)))
    with pytest.raises(ValueError, match="'scale' is a Scale, not a Keras layer"):
        portable.keras_only(network)


def test_load_teacher_takes_the_normalisation_off_and_converts_another_datasets(tmp_path):
    """A saved model as --teacher gets the pipeline's normalised images: the teacher's logits
    are the saved model's on the raw images, for its own dataset and for another one."""
    saved = portable.for_images(every_layer_of_ours(), "cifar10")
    saved.save(tmp_path / "teacher.keras")
    x = images()
    expected = to_numpy(saved(x.astype("float32"), training=False))
    for dataset, tolerance in [("cifar10", 1e-5), ("cinic10", 1e-4), (None, 1e-5)]:
        teacher = load_teacher(str(tmp_path / "teacher.keras"), K, dataset=dataset)
        assert portable.NORMALIZATION not in [layer.name for layer in teacher.layers]
        assert teacher.name == "tiny"  # names results.json's teacher_model
        z = py_dataset.normalize(x, dataset or "cifar10")
        np.testing.assert_allclose(to_numpy(teacher(z, training=False)), expected,
                                   rtol=tolerance, atol=tolerance)
    with pytest.raises(UsageError, match="must predict 10 classes"):
        load_teacher(str(tmp_path / "teacher.keras"), 10, dataset="cifar10")


def test_a_saved_trainer_as_teacher_teaches_through_its_student(tmp_path, capsys):
    """What ModelCheckpoint writes when it watches the wrapper: its student teaches, in one line."""
    student = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(K)], name="small")
    trainer = MrKDModel(student, copies=1, interval=2)
    trainer.compile(optimizer="sgd")
    x = py_dataset.normalize(images(8), "cifar10")
    trainer.fit(x, np.arange(8) % K, batch_size=4, verbose=0)
    trainer.save(tmp_path / "wrapper.keras")
    teacher = load_teacher(str(tmp_path / "wrapper.keras"), K, dataset="cifar10")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"--teacher={tmp_path / 'wrapper.keras'}: a saved MrKDModel; its student "
                     "teaches."]
    assert teacher.name == "small"
    np.testing.assert_allclose(to_numpy(teacher(x, training=False)),
                               to_numpy(student(x, training=False)), rtol=1e-6)


def test_the_module_example_runs():
    import doctest

    result = doctest.testmod(portable)
    assert result.attempted > 0 and result.failed == 0

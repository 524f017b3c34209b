"""The CIFAR network registry: names, shapes, parameter counts, layer constants."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_softkd import models
from keras_softkd.models._layers import (
    BatchNormalization,
    ChannelShuffle,
    ChannelSplit,
    Layers,
    ZeroPadShortcut,
)

NAMES = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164",
    "preresnet110", "preresnet164", "wrn16_8", "wrn28_10", "wrn40_4", "resnext29_8x64d",
    "mobilenetv2", "shufflenetv2", "resnet18", "resnet50", "resnet101",
]

# Trainable parameters for (10, 100) classes, i.e. PyTorch's
# sum(p.numel() for p in model.parameters()), computed once with torch 2.13 on
# PyTorch transcriptions of the reference implementations (not a test
# dependency): He et al. 2016a's CIFAR ResNet with option-A shortcuts
# (fb.resnet.torch); the bottleneck ResNet-164 and PreResNet-110/164 of
# bearpaw/pytorch-classification (pre-activation shortcuts as in He et al.
# 2016b); the WRN authors' WRN-d-k; the CIFAR ResNeXt-29 of prlz77 /
# bearpaw; MobileNetV2, ShuffleNetV2 (1x) and ResNet-18/50/101 of
# kuangliu/pytorch-cifar.
REFERENCE_PARAMS = {
    "resnet20": (269_722, 275_572),
    "resnet32": (464_154, 470_004),
    "resnet44": (658_586, 664_436),
    "resnet56": (853_018, 858_868),
    "resnet110": (1_727_962, 1_733_812),
    "resnet164": (1_704_154, 1_727_284),
    "preresnet110": (1_730_522, 1_736_372),
    "preresnet164": (1_703_258, 1_726_388),
    "wrn16_8": (10_961_370, 11_007_540),
    "wrn28_10": (36_479_194, 36_536_884),
    "wrn40_4": (8_949_210, 8_972_340),
    "resnext29_8x64d": (34_426_698, 34_518_948),
    "mobilenetv2": (2_296_922, 2_412_212),
    "shufflenetv2": (1_263_854, 1_356_104),
    "resnet18": (11_173_962, 11_220_132),
    "resnet50": (23_520_842, 23_705_252),
    "resnet101": (42_512_970, 42_697_380),
}

# The MrKD paper's Table 1 (CIFAR-100), in millions, to its rounding.
PAPER_TABLE_MILLIONS = {
    "resnet20": 0.3, "resnet32": 0.5, "resnet44": 0.7, "resnet56": 0.9, "resnet110": 1.7,
    "resnet164": 1.7, "preresnet110": 1.7, "preresnet164": 1.7, "wrn40_4": 9.0,
    "wrn16_8": 11.0, "wrn28_10": 36.5, "resnext29_8x64d": 34.5,
}

# Small enough for a forward pass in the test budget.
SMALL = ["resnet20", "mobilenetv2", "shufflenetv2"]


def trainable_params(model: keras.Model) -> int:
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def batch_norm_layers(model: keras.Model) -> list:
    return [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]


@pytest.fixture(scope="module")
def small_models() -> dict[str, keras.Model]:
    return {name: models.build(name, 10) for name in SMALL}


def images(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 32, 32, 3)).astype("float32")


def test_names_are_the_registered_networks():
    assert models.names() == NAMES


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", NAMES)
def test_build(name, num_classes):
    model = models.build(name, num_classes)

    assert model.name == name
    assert tuple(model.input.shape) == (None, 32, 32, 3)
    assert tuple(model.output.shape) == (None, num_classes)
    assert model.output.dtype == "float32"
    assert model.layers[-1].activation is keras.activations.linear  # logits, no softmax

    count = trainable_params(model)
    assert count == REFERENCE_PARAMS[name][num_classes == 100]
    if num_classes == 100 and name in PAPER_TABLE_MILLIONS:
        assert round(count / 1e6, 1) == PAPER_TABLE_MILLIONS[name]

    batch_norms = batch_norm_layers(model)
    assert batch_norms
    for layer in batch_norms:
        assert (layer.momentum, layer.epsilon, layer.synchronized) == (0.9, 1e-5, False)
    for layer in model.layers:
        assert getattr(layer, "kernel_regularizer", None) is None
        assert getattr(layer, "bias_regularizer", None) is None
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            assert not layer.use_bias


@pytest.mark.parametrize("name", SMALL)
def test_forward_pass(small_models, name):
    logits = keras.ops.convert_to_numpy(small_models[name](images(), training=False))
    assert logits.shape == (2, 10)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


def test_training_step_runs():
    model = models.build("resnet20", 10)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss=loss)
    loss = model.train_on_batch(images(4), np.array([0, 1, 2, 3]))
    assert np.isfinite(loss)


def test_logits_are_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build("resnet20", 10)
        conv = model.get_layer("stem_conv")
        assert conv.compute_dtype == "float16"
        assert model.output.dtype == "float32"
        assert model(images(), training=False).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_synchronized_batchnorm_is_passed_through():
    model = models.build("resnet20", 10, synchronized_batchnorm=True)
    batch_norms = batch_norm_layers(model)
    assert batch_norms and all(layer.synchronized for layer in batch_norms)


def _batch_norm_pair(shape, dtype_policy, **options):
    """Keras's BatchNormalization and ours, same weights, built for ``shape``."""
    rng = np.random.default_rng(sum(shape))
    pair = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-5, dtype=dtype_policy, **options)
        layer.build(shape)
        pair.append(layer)
    for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
        if getattr(pair[0], weight, None) is None:
            continue
        value = rng.uniform(0.5, 2.0, shape[-1:]) if "variance" in weight else rng.normal(size=shape[-1:])
        for layer in pair:
            getattr(layer, weight).assign(value.astype("float32"))
    return pair


@pytest.mark.parametrize(
    "shape,policy,options,training",
    [
        ((8, 5, 5, 7), None, {}, True),            # the fused kernel
        ((3, 2, 2, 4), None, {}, True),            # few values per channel: m/(m-1) matters
        ((16, 8, 8, 3), "mixed_float16", {}, True),
        ((8, 5, 5, 7), None, {}, False),           # inference: the moving statistics
        ((16, 8, 8, 3), "mixed_float16", {}, False),
        ((8, 5, 5, 7), None, {"trainable": False}, True),  # frozen: inference even in training
        ((8, 5, 5, 7), None, {"synchronized": True}, False),
        ((8, 5, 5, 7), None, {"center": False}, True),
        ((6, 9), None, {}, True),                  # not 4-D
    ],
)
def test_fused_batchnorm_computes_what_keras_computes(shape, policy, options, training):
    """Outputs, input and gamma gradients and the moving statistics after two steps."""
    import tensorflow as tf

    keras_layer, ours = _batch_norm_pair(shape, policy, **options)
    rng = np.random.default_rng(1)
    x = tf.constant((3.0 * rng.normal(size=shape) + 1.0).astype(keras_layer.compute_dtype))
    results = []
    for layer in (keras_layer, ours):
        for _ in range(2):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                loss = tf.reduce_sum(tf.cast(y, "float32") * tf.cast(x, "float32") ** 2)
            grads = tape.gradient(loss, [x] + layer.trainable_weights)
        results.append([y] + grads + [layer.moving_mean, layer.moving_variance])
    tolerance = 2e-2 if policy else 1e-5
    for expected, got in zip(*results):
        expected, got = np.asarray(expected, "float64"), np.asarray(got, "float64")
        assert got.shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * scale)


def test_networks_use_the_fused_batchnorm_and_load_as_keras_layers(tmp_path):
    model = models.build("resnet20", 10)
    assert all(type(layer) is BatchNormalization for layer in batch_norm_layers(model))
    weights = tmp_path / "resnet20.weights.h5"
    model.save_weights(weights)
    # The weights are Keras BatchNormalization's: a model built with Keras's layer reads them.
    keras_model = keras.models.clone_model(
        model,
        clone_function=lambda layer: (
            keras.layers.BatchNormalization.from_config(layer.get_config())
            if isinstance(layer, BatchNormalization) else layer.__class__.from_config(layer.get_config())
        ),
    )
    keras_model.load_weights(weights)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras_model(x, training=False), model(x, training=False), atol=1e-5)


def test_family_options_are_passed_through():
    projection = models.build("resnet20", 10, shortcut="projection")
    # Option B adds two 1x1 conv + BN projections: 16*32 + 32*64 + 2*(32 + 64).
    assert trainable_params(projection) == REFERENCE_PARAMS["resnet20"][0] + 2_752
    assert models.build("wrn16_8", 10, dropout=0.3).get_layer("stage1_unit1_dropout").rate == 0.3


def test_initialisation_matches_pytorch_reference(small_models):
    layers = {layer.name: layer for layer in small_models["mobilenetv2"].layers}
    # He normal, fan-out: conv std sqrt(2 / (k*k*out)); depthwise counts the
    # channels in the fan-out as PyTorch does.
    kernel = keras.ops.convert_to_numpy(layers["unit17_project"].kernel)  # 1x1, 960 -> 320
    np.testing.assert_allclose(kernel.std(), math.sqrt(2 / 320), rtol=0.05)
    depthwise = keras.ops.convert_to_numpy(layers["unit16_depthwise"].kernel)  # 3x3, 960 ch.
    np.testing.assert_allclose(depthwise.std(), math.sqrt(2 / (9 * 960)), rtol=0.05)
    # PyTorch's nn.Linear default: kernel and bias in [-1/sqrt(fan_in), 1/sqrt(fan_in)].
    bound = 1 / math.sqrt(1280)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (layers["fc"].kernel, layers["fc"].bias))
    assert 0.99 * bound < np.abs(kernel).max() <= bound
    np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.05)
    assert 0 < np.abs(bias).max() <= bound


def test_strided_conv_pads_like_pytorch():
    # PyTorch's Conv2d(stride=2, padding=1) on 8x8 samples output (i, j) at
    # input rows/cols 2i-1 .. 2i+1; Keras' "same" would use 2i .. 2i+2.
    x = keras.Input((8, 8, 1))
    model = keras.Model(x, Layers().conv(x, 1, 3, strides=2, name="conv"))
    kernel = np.arange(9, dtype="float32").reshape(3, 3, 1, 1)
    model.get_layer("conv").kernel.assign(kernel)
    image = np.random.default_rng(1).normal(size=(1, 8, 8, 1)).astype("float32")

    padded = np.pad(image[0, :, :, 0].astype("float64"), 1)
    expected = np.array(
        [[(padded[2 * i:2 * i + 3, 2 * j:2 * j + 3] * kernel[:, :, 0, 0]).sum()
          for j in range(4)] for i in range(4)]
    )
    np.testing.assert_allclose(model.predict(image, verbose=0)[0, :, :, 0], expected, rtol=1e-5,
                               atol=1e-5)


def test_zero_pad_shortcut_is_option_a():
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 4)).astype("float32")
    y = keras.ops.convert_to_numpy(ZeroPadShortcut(filters=8, strides=2)(x))
    np.testing.assert_array_equal(y[..., :4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 4:], 0.0)


def test_channel_split_and_shuffle_match_the_reference():
    x = np.arange(2 * 2 * 2 * 6, dtype="float32").reshape(2, 2, 2, 6)
    first, second = (keras.ops.convert_to_numpy(t) for t in ChannelSplit()(x))
    np.testing.assert_array_equal(first, x[..., :3])
    np.testing.assert_array_equal(second, x[..., 3:])
    # PyTorch: view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4): channel order 0 3 1 4 2 5.
    y = keras.ops.convert_to_numpy(ChannelShuffle(groups=2)(x))
    np.testing.assert_array_equal(y, x[..., [0, 3, 1, 4, 2, 5]])


def test_save_and_load(small_models, tmp_path):
    # resnet20 has the option-A shortcut layer; the small model the ShuffleNet layers.
    x = keras.Input((4, 4, 6))
    first, second = ChannelSplit()(x)
    shuffled = ChannelShuffle(2)(keras.layers.Concatenate()([second, first]))
    tiny = keras.Model(x, ZeroPadShortcut(8, 2)(shuffled))
    inputs = {"resnet20": images(), "tiny": images()[:, :4, :4, :2].repeat(3, axis=-1)}
    for name, model in (("resnet20", small_models["resnet20"]), ("tiny", tiny)):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(loaded(inputs[name], training=False)),
            keras.ops.convert_to_numpy(model(inputs[name], training=False)),
            rtol=1e-5, atol=1e-5,
        )


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="resnet1202") as error:
        models.build("resnet1202", 10)
    for name in NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True, "10", None])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        models.build("resnet20", num_classes)


def test_bad_family_arguments():
    with pytest.raises(ValueError, match="shortcut"):
        models.build("resnet20", 10, shortcut="option_c")
    with pytest.raises(ValueError, match="depth"):
        models.resnet_cifar.resnet(10, depth=21)
    with pytest.raises(ValueError, match="depth"):
        models.build("resnet20", 10, depth=32)
    with pytest.raises(ValueError, match="width_multiplier"):
        models.build("shufflenetv2", 10, width_multiplier=3)

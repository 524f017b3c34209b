"""The CIFAR network registry: names, shapes, parameter counts, layer constants."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_softkd import models
from keras_softkd.models import resnet_cifar
from keras_softkd.models._layers import (
    BatchNormalization,
    ChannelShuffle,
    ChannelSplit,
    Layers,
    ZeroPadShortcut,
)
from keras_softkd.teacher_network import TeacherNetwork

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

    # The classifier, in every family: PyTorch's nn.Linear default, kernel and
    # bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (bearpaw/pytorch-classification's
    # ResNet/PreResNet and kuangliu/pytorch-cifar leave nn.Linear at it); the
    # Torch7 references' zero bias is Layers(classifier_bias="zeros"), not used.
    fc = model.get_layer("fc")
    bound = 1 / math.sqrt(fc.kernel.shape[0])
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (fc.kernel, fc.bias))
    assert 0.9 * bound < np.abs(kernel).max() <= bound
    assert 0 < np.abs(bias).max() <= bound
    assert np.count_nonzero(bias) == num_classes
    assert len(np.unique(bias)) > num_classes // 2  # drawn, not a constant

    # train.py's default --teacher_precision=auto runs MrKD's copies (and a registry network as
    # KD's teacher) through a bfloat16 clone where bfloat16 is native: every network must clone
    # layer by layer, holding its variables in its order (TeacherNetwork checks that).
    if num_classes == 10:
        TeacherNetwork(model, "bfloat16")


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
    # atol 1e-5 per unit of the logits' scale (float32 rounding; logits reach ~14 here).
    expected = np.asarray(model(x, training=False))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(keras_model(x, training=False), expected, rtol=0, atol=1e-5 * scale)


def test_family_options_are_passed_through():
    projection = models.build("resnet20", 10, shortcut="projection")
    # Option B adds two 1x1 conv + BN projections: 16*32 + 32*64 + 2*(32 + 64).
    assert trainable_params(projection) == REFERENCE_PARAMS["resnet20"][0] + 2_752
    assert models.build("wrn16_8", 10, dropout=0.3).get_layer("stage1_unit1_dropout").rate == 0.3


# The networks of kuangliu/pytorch-cifar set no initialisation of their own
# (models/mobilenetv2.py, shufflenetv2.py, resnet.py; main.py calls none), so
# PyTorch's defaults apply: every nn.Conv2d and nn.Linear weight and bias
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels / groups * kh * kw.
PYTORCH_DEFAULT_INIT = ["mobilenetv2", "shufflenetv2", "resnet18", "resnet50", "resnet101"]


def pytorch_fan_in(layer) -> int:
    """PyTorch's fan-in of the equivalent nn.Conv2d / nn.Linear, from the layer's config."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # nn.Conv2d(c, c, k, groups=c)
        return math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.Conv2D):
        return math.prod(layer.kernel_size) * layer.input.shape[-1] // layer.groups
    return layer.input.shape[-1]  # Dense


def pytorch_default_violations(model: keras.Model) -> list[str]:
    """Where a conv/dense weight does not look like PyTorch's default init.

    Every value within +-1/sqrt(fan_in); for weights of >= 1000 values the
    standard deviation within 10% of the uniform's bound / sqrt(3) (its
    sampling error is about 0.45 / sqrt(n), under 1.5%) and the largest value
    above 0.95 bound.
    """
    problems = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D
                          | keras.layers.Dense):
            continue
        bound = 1 / math.sqrt(pytorch_fan_in(layer))
        weights = [("kernel", layer.kernel)] + ([("bias", layer.bias)] if layer.use_bias else [])
        for kind, weight in weights:
            values = keras.ops.convert_to_numpy(weight).astype("float64")
            top = np.abs(values).max()
            if top > bound * (1 + 1e-6):
                problems.append(f"{layer.name}.{kind}: max |w| {top:.4g} > bound {bound:.4g}")
            if values.size >= 1000 and (
                abs(values.std() / (bound / math.sqrt(3)) - 1) > 0.1 or top < 0.95 * bound
            ):
                problems.append(f"{layer.name}.{kind}: std {values.std():.4g} (uniform: "
                                f"{bound / math.sqrt(3):.4g}), max |w| {top:.4g}")
    return problems


@pytest.mark.parametrize("name", PYTORCH_DEFAULT_INIT)
def test_pytorch_cifar_networks_start_as_pytorch_defaults(name):
    model = models.build(name, 100)
    assert pytorch_default_violations(model) == []
    checked = [layer for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)]
    assert len(checked) > 20
    # Convs are bias-free as in the reference (bias=False); the classifier has a
    # uniform bias, BatchNorm gamma 1, beta 0.
    assert all(not layer.use_bias for layer in checked if isinstance(layer, keras.layers.Conv2D))
    bias = keras.ops.convert_to_numpy(model.get_layer("fc").bias)
    assert 0 < np.abs(bias).max() <= 1 / math.sqrt(model.get_layer("fc").kernel.shape[0])
    for layer in batch_norm_layers(model):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.gamma), 1.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.beta), 0.0)


def test_pytorch_default_check_fails_for_he_normal(monkeypatch):
    """The statistics test tells the old init (He-normal, fan-out) from PyTorch's."""
    from keras_softkd.models import mobilenetv2

    monkeypatch.setattr(mobilenetv2, "Layers",
                        lambda synchronized_batchnorm, conv_init: Layers(synchronized_batchnorm))
    problems = pytorch_default_violations(models.build("mobilenetv2", 10))
    # Every conv but none of the classifier: He fan-out's std sqrt(2 / (k k out)) is
    # not 1 / sqrt(3 k k in / groups) anywhere in MobileNetV2.
    assert {p.split(".")[0] for p in problems} >= {"stem_conv", "unit1_expand", "unit16_depthwise",
                                                   "unit17_project", "head_conv"}
    assert not any(p.startswith("fc.") for p in problems)


@pytest.mark.parametrize(
    "keras_shape,depthwise,torch_layer",
    [
        ((3, 3, 64, 128), False, ("Conv2d", 64, 128, 3, 1)),
        ((1, 1, 320, 1280), False, ("Conv2d", 320, 1280, 1, 1)),
        ((3, 3, 64, 512), False, ("Conv2d", 512, 512, 3, 8)),  # grouped: in / groups = 64
        ((3, 3, 960, 1), True, ("Conv2d", 960, 960, 3, 960)),  # depthwise: fan_in 9
        ((1280, 100), False, ("Linear", 1280, 100)),
    ],
)
def test_torch_default_uniform_matches_torch(keras_shape, depthwise, torch_layer):
    """Same bound (PyTorch's own fan-in) and statistics as torch.nn's default init."""
    from keras_softkd.models._layers import TorchDefaultUniform

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if torch_layer[0] == "Conv2d":
        _, cin, cout, k, groups = torch_layer
        module = torch.nn.Conv2d(cin, cout, k, groups=groups, bias=True)
    else:
        module = torch.nn.Linear(*torch_layer[1:])
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
    bound = 1 / math.sqrt(fan_in)
    initializer = TorchDefaultUniform(depthwise=depthwise, seed=0)
    assert initializer.bound(keras_shape) == pytest.approx(bound, rel=1e-12)

    ours = keras.ops.convert_to_numpy(initializer(keras_shape)).astype("float64")
    theirs = module.weight.detach().numpy().astype("float64")
    assert ours.size == theirs.size
    for values in (ours, theirs):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.99 * bound
        np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.05)
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.05)
    # The bias: PyTorch draws it from the weight's bound; ours is told the fan-in.
    bias = keras.ops.convert_to_numpy(TorchDefaultUniform(fan_in=fan_in, seed=1)((4096,)))
    assert np.abs(bias).max() <= bound
    assert np.abs(module.bias.detach().numpy()).max() <= bound
    np.testing.assert_allclose(bias.std(), bound / math.sqrt(3), rtol=0.05)


def test_torch_default_uniform_serializes(tmp_path):
    from keras_softkd.models._layers import TorchDefaultUniform

    initializer = TorchDefaultUniform(fan_in=7, depthwise=True, seed=3)
    restored = keras.initializers.deserialize(keras.initializers.serialize(initializer))
    assert type(restored) is TorchDefaultUniform
    assert (restored.fan_in, restored.depthwise) == (7, True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored((5, 3))),
                                  keras.ops.convert_to_numpy(initializer((5, 3))))
    x = keras.Input((8, 8, 4))
    net = Layers(conv_init="pytorch_default")
    y = net.classifier(net.depthwise_conv(net.conv(x, 6, 3, strides=2, name="c"), 3, name="d"), 3)
    model = keras.Model(x, y)
    model.save(tmp_path / "tiny.keras")
    loaded = keras.models.load_model(tmp_path / "tiny.keras")
    assert isinstance(loaded.get_layer("c").kernel_initializer, TorchDefaultUniform)
    assert loaded.get_layer("d").depthwise_initializer.depthwise
    with pytest.raises(ValueError, match="conv_init"):
        Layers(conv_init="he_normal")
    with pytest.raises(ValueError, match="classifier_bias"):
        Layers(classifier_bias="ones")


def test_classifier_bias_option():
    """``classifier_bias="zeros"`` (the Torch7 references' FC init) stays available."""
    x = keras.Input((4, 4, 8))
    for option in ("pytorch_default", "zeros"):
        fc = keras.Model(x, Layers(classifier_bias=option).classifier(x, 5)).get_layer("fc")
        bias = keras.ops.convert_to_numpy(fc.bias)
        kernel = keras.ops.convert_to_numpy(fc.kernel)
        assert np.abs(kernel).max() <= 1 / math.sqrt(8)
        if option == "zeros":
            np.testing.assert_array_equal(bias, 0.0)
        else:
            assert 0 < np.abs(bias).max() <= 1 / math.sqrt(8)


def test_preresnet164_strides_on_the_first_1x1_conv():
    """He et al.'s resnet-pre-act.lua (KaimingHe/resnet-1k-layers), lines 43, 48, 70, 75, 82-83."""
    model = models.build("preresnet164", 10)
    strided = sorted(layer.name for layer in model.layers
                     if getattr(layer, "strides", (1, 1)) != (1, 1))
    assert strided == ["stage2_unit1_conv1", "stage2_unit1_shortcut",
                       "stage3_unit1_conv1", "stage3_unit1_shortcut"]
    for stage, size in (("stage2", 16), ("stage3", 8)):
        unit = f"{stage}_unit1"
        conv1, conv2, conv3, shortcut = (model.get_layer(f"{unit}_{part}")
                                         for part in ("conv1", "conv2", "conv3", "shortcut"))
        assert (conv1.kernel_size, conv1.strides) == ((1, 1), (2, 2))
        assert (conv2.kernel_size, conv2.strides) == ((3, 3), (1, 1))
        assert (conv3.kernel_size, conv3.strides) == ((1, 1), (1, 1))
        assert (shortcut.kernel_size, shortcut.strides) == ((1, 1), (2, 2))
        assert conv1.output.shape[1:3] == (size, size)
        # One BN-ReLU feeds both branches; the shortcut is a bare conv (no BN).
        preact = model.get_layer(f"{unit}_preact_relu").output
        assert conv1.input is preact and shortcut.input is preact
        assert shortcut.output in model.get_layer(f"{unit}_add").input
    # Identity units add the raw input (no BN-ReLU on the shortcut).
    add = model.get_layer("stage2_unit2_add")
    assert model.get_layer("stage2_unit1_add").output in add.input


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
        resnet_cifar.resnet(10, depth=21)
    with pytest.raises(ValueError, match="depth"):
        models.build("resnet20", 10, depth=32)
    with pytest.raises(ValueError, match="width_multiplier"):
        models.build("shufflenetv2", 10, width_multiplier=3)

"""Building pieces shared by the CIFAR networks: conv, BatchNorm, ReLU, the head.

Everything here follows the reference implementations, so that a run compares
with the literature. Each family states its reference in its module docstring
and picks the initialisation of that reference (``Layers(conv_init=...,
classifier_bias=...)``):

* **Convolutions** have no bias (in every reference: ``bias=False`` in the
  PyTorch code, ``v.bias = nil`` in the Torch7 code). Two initialisations:

  - ``conv_init="he_fan_out"`` (default): He-normal with fan-out,
    ``N(0, 2 / (k * k * out_channels))``, untruncated, the ``ConvInit`` of
    fb.resnet.torch (``models/resnet.lua`` and ``models/preresnet.lua``), He
    et al.'s ``resnet-pre-act.lua`` (KaimingHe/resnet-1k-layers, lines 127-138),
    the WRN authors' ``MSRinit`` (szagoruyko/wide-residual-networks,
    ``models/utils.lua``), facebookresearch/ResNeXt's ``models/resnext.lua``
    and bearpaw/pytorch-classification. Keras' ``"he_normal"`` is truncated and
    uses fan-in, so it is not used. For a depthwise convolution PyTorch's
    fan-out is ``k * k * channels`` (its weight has shape ``(channels, 1, k,
    k)``), while Keras would count ``k * k``; the scale is divided by
    ``channels`` to give PyTorch's variance.
  - ``conv_init="pytorch_default"``: PyTorch's default ``nn.Conv2d`` init,
    :class:`TorchDefaultUniform`, for the networks of kuangliu/pytorch-cifar,
    which set no initialisation of their own.

* A **stride-2 convolution** pads ``k // 2`` zeros on every side and then runs
  ``"valid"``, as PyTorch's ``padding=k // 2`` does. Keras' ``"same"`` would pad
  only the bottom/right of an even-sized input and sample other pixels.
* **BatchNorm** uses PyTorch's constants: ``momentum=0.9`` in Keras terms (0.1 in
  PyTorch terms) and ``epsilon=1e-5``; gamma 1, beta 0 (every reference). It is
  :class:`BatchNormalization`: Keras's layer, computed on the TensorFlow
  backend by TensorFlow's fused kernel (a ResNet-20 training step about 1.4x
  faster on CPU), with Keras's results.
* The **classifier** is global average pooling and a Dense layer whose kernel
  is uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, the default of both
  PyTorch's ``nn.Linear`` and Torch7's ``nn.Linear:reset`` (torch/nn
  ``Linear.lua``). Its bias is drawn from the same uniform
  (``classifier_bias="pytorch_default"``, PyTorch's default) or is zero
  (``classifier_bias="zeros"``: the Torch7 references set ``v.bias:zero()`` on
  every ``nn.Linear``). A final float32 ``linear`` activation makes the logits
  float32 under a mixed-precision policy.
* No kernel regularizers: weight decay belongs to the optimizer.

Layers carry names (``stage2_unit1_conv1``) so that summaries and checkpoints
read like the reference code. Everything is channels-last and uses only
``keras.layers`` and ``keras.ops``, so it runs on every Keras backend.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import layers, ops

DATA_FORMAT = "channels_last"
INPUT_SHAPE = (32, 32, 3)
BATCHNORM_MOMENTUM = 0.9
BATCHNORM_EPSILON = 1e-5


def he_normal_fan_out(scale: float = 2.0) -> keras.initializers.Initializer:
    """``N(0, scale / fan_out)``, untruncated (PyTorch's ``kaiming_normal_``, fan-out)."""
    return keras.initializers.VarianceScaling(
        scale=scale, mode="fan_out", distribution="untruncated_normal"
    )


@keras.saving.register_keras_serializable(package="keras_softkd")
class TorchDefaultUniform(keras.initializers.RandomUniform):
    """PyTorch's default init of ``nn.Conv2d`` and ``nn.Linear`` weights and biases.

    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in`` counted as PyTorch
    counts it, ``in_channels / groups * kh * kw`` for a convolution and
    ``in_features`` for a linear layer. PyTorch's ``reset_parameters`` draws
    the weight with ``kaiming_uniform_(a=sqrt(5))``, whose bound is
    ``gain * sqrt(3 / fan_in)`` with ``gain = sqrt(2 / (1 + a^2)) = sqrt(1/3)``,
    i.e. ``1/sqrt(fan_in)``, and the bias with ``uniform_(-1/sqrt(fan_in),
    1/sqrt(fan_in))`` (torch/nn/modules/conv.py ``_ConvNd.reset_parameters``,
    torch/nn/modules/linear.py ``Linear.reset_parameters``). The standard
    deviation is ``1/sqrt(3 fan_in)``.

    Fan-in from the Keras kernel shape: ``(kh, kw, in / groups, out)`` for
    ``Conv2D`` and ``(in, out)`` for ``Dense`` give ``prod(shape[:-1])``;
    ``DepthwiseConv2D``'s ``(kh, kw, in, multiplier)`` is PyTorch's
    ``(in * multiplier, 1, kh, kw)`` with ``groups = in``, so ``kh * kw``
    (``depthwise=True``). A bias does not see the kernel: give ``fan_in``.

    Args:
        fan_in: the fan-in to use; ``None`` computes it from the shape.
        depthwise: the shape is a ``DepthwiseConv2D`` kernel.
        seed: as for ``keras.initializers.RandomUniform``.

    Example:
        >>> import keras
        >>> from keras_softkd.models._layers import TorchDefaultUniform
        >>> w = keras.ops.convert_to_numpy(TorchDefaultUniform(seed=0)((3, 3, 16, 32)))
        >>> bool(0.99 / 12 < abs(w).max() <= 1 / 12)  # fan_in 3 * 3 * 16 = 144
        True
    """

    def __init__(self, fan_in: int | None = None, depthwise: bool = False, seed=None):
        super().__init__(minval=-1.0, maxval=1.0, seed=seed)
        self.fan_in = None if fan_in is None else int(fan_in)
        self.depthwise = bool(depthwise)

    def bound(self, shape) -> float:
        """``1 / sqrt(fan_in)`` for a weight of ``shape``."""
        if self.fan_in is not None:
            fan_in = self.fan_in
        else:
            fan_in = math.prod(shape[:-2] if self.depthwise else shape[:-1])
        if fan_in < 1:
            raise ValueError(f"TorchDefaultUniform needs fan_in >= 1; got {fan_in} for {shape}.")
        return 1.0 / math.sqrt(fan_in)

    def __call__(self, shape, dtype=None):
        bound = self.bound(shape)
        return keras.random.uniform(shape, minval=-bound, maxval=bound, seed=self.seed, dtype=dtype)

    def get_config(self):
        return {"fan_in": self.fan_in, "depthwise": self.depthwise,
                "seed": super().get_config()["seed"]}


CONV_INITS = ("he_fan_out", "pytorch_default")
CLASSIFIER_BIASES = ("pytorch_default", "zeros")


@dataclasses.dataclass(frozen=True)
class Layers:
    """Conv / BatchNorm / ReLU / head factories with the reference constants.

    One instance per network, so that options that apply to every layer of a
    kind (``synchronized_batchnorm``, the initialisation of the network's
    reference) are given once.

    Attributes:
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        conv_init: ``"he_fan_out"`` (He-normal, fan-out) or ``"pytorch_default"``
            (:class:`TorchDefaultUniform`) for every convolution.
        classifier_bias: ``"pytorch_default"`` (uniform, bound
            ``1/sqrt(fan_in)``) or ``"zeros"`` (the Torch7 references).
    """

    synchronized_batchnorm: bool = False
    conv_init: str = "he_fan_out"
    classifier_bias: str = "pytorch_default"

    def __post_init__(self):
        if self.conv_init not in CONV_INITS:
            raise ValueError(f"`conv_init` must be one of {CONV_INITS}; got {self.conv_init!r}.")
        if self.classifier_bias not in CLASSIFIER_BIASES:
            raise ValueError(
                f"`classifier_bias` must be one of {CLASSIFIER_BIASES}; "
                f"got {self.classifier_bias!r}."
            )

    def conv(self, x, filters: int, kernel_size: int, strides: int = 1, groups: int = 1,
             name: str | None = None):
        """A bias-free ``Conv2D`` padded like PyTorch's ``padding=kernel_size // 2``."""
        x, padding = _pad_for_stride(x, kernel_size, strides, name)
        return layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, groups=groups,
            use_bias=False,
            kernel_initializer=(
                he_normal_fan_out() if self.conv_init == "he_fan_out" else TorchDefaultUniform()
            ),
            data_format=DATA_FORMAT, name=name,
        )(x)

    def depthwise_conv(self, x, kernel_size: int, strides: int = 1, name: str | None = None):
        """A bias-free ``DepthwiseConv2D``, initialised as a PyTorch ``groups=channels`` conv."""
        channels = x.shape[-1]
        x, padding = _pad_for_stride(x, kernel_size, strides, name)
        return layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=padding, use_bias=False,
            depthwise_initializer=(
                he_normal_fan_out(2.0 / channels) if self.conv_init == "he_fan_out"
                else TorchDefaultUniform(depthwise=True)
            ),
            data_format=DATA_FORMAT, name=name,
        )(x)

    def batch_norm(self, x, name: str | None = None):
        """``BatchNormalization`` with PyTorch's momentum and epsilon."""
        return BatchNormalization(
            axis=-1, momentum=BATCHNORM_MOMENTUM, epsilon=BATCHNORM_EPSILON,
            synchronized=self.synchronized_batchnorm, name=name,
        )(x)

    def relu(self, x, name: str | None = None):
        return layers.ReLU(name=name)(x)

    def conv_bn(self, x, filters: int, kernel_size: int, strides: int = 1, groups: int = 1,
                relu: bool = True, name: str = "conv"):
        """conv -> BN [-> ReLU], the post-activation unit; layers ``{name}``, ``{name}_bn``."""
        x = self.conv(x, filters, kernel_size, strides, groups, name=name)
        x = self.batch_norm(x, name=f"{name}_bn")
        return self.relu(x, name=f"{name}_relu") if relu else x

    def bn_relu(self, x, name: str):
        """BN -> ReLU, the pre-activation unit; layers ``{name}_bn``, ``{name}_relu``."""
        return self.relu(self.batch_norm(x, name=f"{name}_bn"), name=f"{name}_relu")

    def classifier(self, x, num_classes: int):
        """Global average pooling, a Dense initialised as ``nn.Linear``, float32 logits."""
        x = layers.GlobalAveragePooling2D(data_format=DATA_FORMAT, name="avg_pool")(x)
        fan_in = x.shape[-1]
        x = layers.Dense(
            num_classes,
            kernel_initializer=TorchDefaultUniform(),
            bias_initializer=(
                TorchDefaultUniform(fan_in=fan_in) if self.classifier_bias == "pytorch_default"
                else "zeros"
            ),
            name="fc",
        )(x)
        return layers.Activation("linear", dtype="float32", name="logits")(x)


def cifar_input() -> keras.KerasTensor:
    """``keras.Input((32, 32, 3))``, channels-last."""
    return keras.Input(INPUT_SHAPE, name="image")


def _pad_for_stride(x, kernel_size: int, strides: int, name: str | None):
    """Explicit symmetric padding before a strided conv (PyTorch's alignment)."""
    if strides == 1:
        return x, "same"
    if kernel_size // 2:
        pad_name = f"{name}_pad" if name else None
        x = layers.ZeroPadding2D(kernel_size // 2, data_format=DATA_FORMAT, name=pad_name)(x)
    return x, "valid"


@keras.saving.register_keras_serializable(package="keras_softkd")
class BatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Keras 3 computes BatchNorm on TensorFlow from separate ops (moments, then
    ``tf.nn.batch_normalization``), and their gradients, several passes over
    every activation: on CPU about a quarter of a ResNet-20 training step.
    TensorFlow's ``FusedBatchNormV3`` does the forward and the backward pass in
    one kernel each, and normalises with the moving statistics in one pass at
    inference (the MrKD copies' and the evaluation's forward passes). This
    layer uses it where it computes exactly what Keras computes (TensorFlow
    backend, a 4-D channels-last input, ``center`` and ``scale``, no mask or
    renorm, no synchronisation when training) and Keras's own ``call``
    everywhere else (JAX, PyTorch):

        training:  y = gamma (x - mean_B) / sqrt(var_B + epsilon) + beta
                   moving_mean := momentum moving_mean + (1 - momentum) mean_B
                   moving_var  := momentum moving_var  + (1 - momentum) var_B
        inference: y = gamma (x - moving_mean) / sqrt(moving_var + epsilon) + beta

    with ``var_B`` the biased batch variance, as Keras (the fused kernel
    returns the unbiased one, ``m / (m - 1)`` larger for ``m`` values per
    channel; it is scaled back). Float16/bfloat16 inputs are computed in
    float32, as Keras does. Weights and configuration are Keras's, so
    checkpoints of either layer load into the other.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.models._layers import BatchNormalization
        >>> layer = BatchNormalization(momentum=0.9, epsilon=1e-5)
        >>> y = layer(np.ones((2, 4, 4, 3), "float32"), training=True)
        >>> float(np.abs(np.asarray(y)).max())
        0.0
    """

    def call(self, inputs, training=None, mask=None):
        batch_statistics = bool(training) and self.trainable  # else the moving statistics, as Keras
        if not (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.center
            and self.scale
            and not self.renorm
            and not (batch_statistics and self.synchronized)
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        scale, offset = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        if not batch_statistics:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=moving_mean, variance=moving_variance,
                epsilon=self.epsilon, data_format="NHWC", is_training=False,
            )
            return ops.cast(y, self.compute_dtype)
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
        )
        values = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
        variance = variance * ((values - 1.0) / values)  # unbiased -> biased, as Keras
        momentum = self.momentum
        self.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_softkd")
class ZeroPadShortcut(layers.Layer):
    """He et al. (2016) option-A shortcut: subsample by ``strides``, pad zero channels.

    ``y = concat([x[:, ::s, ::s, :], zeros], axis=-1)`` with ``filters`` channels
    in all (the zeros appended, as in fb.resnet.torch's CIFAR shortcut type A).
    Parameter-free.
    """

    def __init__(self, filters: int, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, inputs):
        s = self.strides
        x = inputs[:, ::s, ::s, :]
        extra = self.filters - inputs.shape[-1]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]]) if extra else x

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        if channels is not None and channels > self.filters:
            raise ValueError(
                f"ZeroPadShortcut pads channels: filters={self.filters} < {channels} inputs."
            )
        s = self.strides
        down = lambda n: None if n is None else (n + s - 1) // s  # noqa: E731
        return (batch, down(height), down(width), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package="keras_softkd")
class ChannelSplit(layers.Layer):
    """Splits the channels in two halves: ``(x[..., :c // 2], x[..., c // 2:])``."""

    def call(self, inputs):
        half = inputs.shape[-1] // 2
        return inputs[..., :half], inputs[..., half:]

    def compute_output_shape(self, input_shape):
        half = input_shape[-1] // 2
        return (*input_shape[:-1], half), (*input_shape[:-1], input_shape[-1] - half)


@keras.saving.register_keras_serializable(package="keras_softkd")
class ChannelShuffle(layers.Layer):
    """ShuffleNet's channel shuffle: channel ``i * (c // g) + j`` moves to ``j * g + i``.

    The channels-last form of PyTorch's ``view(N, g, c // g, H, W).transpose(1, 2)``.
    """

    def __init__(self, groups: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def call(self, inputs):
        _, height, width, channels = inputs.shape
        x = ops.reshape(inputs, (-1, height, width, self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}

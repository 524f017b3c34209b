"""ShuffleNetV2 (Ma, Zhang, Zheng, Sun 2018, "ShuffleNet V2: Practical Guidelines
for Efficient CNN Architecture Design") in its CIFAR form.

As in the kuangliu/pytorch-cifar implementation that the Pseudo-KD paper's
numbers come from: a 3x3 stride-1 conv with 24 channels, BN, ReLU, and no
max-pool (ImageNet: stride 2 and a max-pool); three stages, each a
down-sampling unit followed by 3, 7 and 3 basic units (32x32 -> 16x16 -> 8x8
-> 4x4); a 1x1 conv, BN, ReLU; global average pooling; a fully connected layer.

* basic unit: split the channels in halves; the second half goes through 1x1
  conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU; concatenate with the
  first half; channel shuffle (2 groups).
* down-sampling unit: left branch 3x3 depthwise stride-2 conv-BN, 1x1
  conv-BN-ReLU; right branch 1x1 conv-BN-ReLU, 3x3 depthwise stride-2 conv-BN,
  1x1 conv-BN-ReLU; each branch gives half the output channels; concatenate;
  channel shuffle.

Stage widths by ``width_multiplier`` (the paper's "0.5x" ... "2x"): 0.5: (48,
96, 192, 1024); 1.0: (116, 232, 464, 1024), the default; 1.5: (176, 352, 704,
1024); 2.0: (224, 488, 976, 2048) (as in the reference; the paper's 2x has 244
channels in its first stage).

Initialisation: the reference sets none, so PyTorch's defaults apply
(kuangliu/pytorch-cifar ``models/shufflenetv2.py`` at 49b7aa9, lines 37-112:
all ten ``nn.Conv2d`` ``bias=False``, one ``nn.Linear``; ``main.py`` calls no
init, and ``utils.py``'s ``init_params`` is never called). Here likewise: every
conv, the depthwise ones included (fan-in ``9``), and the classifier's kernel
and bias uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``; BatchNorm gamma 1,
beta 0 (``_layers.TorchDefaultUniform``).

Trainable parameters at 1.0x: 1,263,854 (10 classes) and 1,356,104 (100
classes), equal to the PyTorch reference.

Example:

>>> from keras_softkd import models
>>> models.build("shufflenetv2", 10).output.shape
(None, 10)
"""

from __future__ import annotations

import keras
from keras import layers

from keras_softkd.models._layers import ChannelShuffle, ChannelSplit, Layers, cifar_input

_WIDTHS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (224, 488, 976, 2048),
}
_BASIC_UNITS = (3, 7, 3)


def _branch(net: Layers, x, channels: int, strides: int, name: str):
    """1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU."""
    x = net.conv_bn(x, channels, 1, name=f"{name}_conv1")
    x = net.depthwise_conv(x, 3, strides, name=f"{name}_depthwise")
    x = net.batch_norm(x, name=f"{name}_depthwise_bn")
    return net.conv_bn(x, channels, 1, name=f"{name}_conv2")


def _merge(left, right, name: str):
    x = layers.Concatenate(axis=-1, name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(x)


def _basic_unit(net: Layers, x, name: str):
    kept, x = ChannelSplit(name=f"{name}_split")(x)
    return _merge(kept, _branch(net, x, x.shape[-1], 1, name=name), name)


def _down_unit(net: Layers, x, filters: int, name: str):
    half = filters // 2
    left = net.depthwise_conv(x, 3, 2, name=f"{name}_left_depthwise")
    left = net.batch_norm(left, name=f"{name}_left_depthwise_bn")
    left = net.conv_bn(left, half, 1, name=f"{name}_left_conv")
    right = _branch(net, x, half, 2, name=f"{name}_right")
    return _merge(left, right, name)


def shufflenetv2(
    num_classes: int,
    *,
    width_multiplier: float = 1.0,
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """ShuffleNetV2 for 32x32 inputs (kuangliu/pytorch-cifar form).

    Args:
        num_classes: number of output logits.
        width_multiplier: 0.5, 1.0 (default), 1.5 or 2.0.
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``"shufflenetv2"``).
    """
    if width_multiplier not in _WIDTHS:
        raise ValueError(
            f"`width_multiplier` must be one of {sorted(_WIDTHS)}; "
            f"got width_multiplier={width_multiplier!r}."
        )
    widths = _WIDTHS[width_multiplier]
    net = Layers(synchronized_batchnorm, conv_init="pytorch_default")
    inputs = cifar_input()
    x = net.conv_bn(inputs, 24, 3, name="stem_conv")
    for i, (filters, units) in enumerate(zip(widths[:3], _BASIC_UNITS, strict=True)):
        x = _down_unit(net, x, filters, name=f"stage{i + 1}_unit1")
        for j in range(units):
            x = _basic_unit(net, x, name=f"stage{i + 1}_unit{j + 2}")
    x = net.conv_bn(x, widths[3], 1, name="head_conv")
    outputs = net.classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name or "shufflenetv2")

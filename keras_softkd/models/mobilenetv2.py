"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks") in its CIFAR form.

As in the kuangliu/pytorch-cifar implementation that the Pseudo-KD paper's
numbers come from: a 3x3 stride-1 conv with 32 channels (ImageNet: stride 2),
BN, ReLU; 17 inverted-residual units with (expansion, channels, units, stride) =
(1, 16, 1, 1), (6, 24, 2, 1) (ImageNet: stride 2), (6, 32, 3, 2), (6, 64, 4, 2),
(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1); a 1x1 conv to 1280 channels, BN,
ReLU; global average pooling (4x4) and a fully connected layer.

A unit is a 1x1 expansion conv (also for expansion 1), BN, ReLU, a 3x3
depthwise conv, BN, ReLU, a linear 1x1 projection, BN. Stride-1 units add a
shortcut: the identity, or a 1x1 conv + BN where the width changes (the
reference's choice; the paper has no shortcut there). Stride-2 units have none.
The reference uses ReLU, not the paper's ReLU6; so does this.

Initialisation: the reference sets none, so PyTorch's defaults apply
(kuangliu/pytorch-cifar ``models/mobilenetv2.py`` at 49b7aa9, lines 18-28, 53-58:
every ``nn.Conv2d`` ``bias=False``, one ``nn.Linear``; ``main.py`` calls no
init, and ``utils.py``'s ``init_params`` is never called). Here likewise: every
conv, the depthwise ones included (fan-in ``9``), and the classifier's kernel
and bias uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``; BatchNorm gamma 1,
beta 0 (``_layers.TorchDefaultUniform``).

Trainable parameters: 2,296,922 (10 classes) and 2,412,212 (100 classes),
equal to the PyTorch reference.

Example:

>>> from keras_softkd import models
>>> models.build("mobilenetv2", 10).output.shape
(None, 10)
"""

from __future__ import annotations

import keras
from keras import layers

from keras_softkd.models._layers import Layers, cifar_input

# (expansion, output channels, units, stride of the first unit)
_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(net: Layers, x, expansion: int, filters: int, strides: int, name: str):
    hidden = expansion * x.shape[-1]
    out = net.conv_bn(x, hidden, 1, name=f"{name}_expand")
    out = net.depthwise_conv(out, 3, strides, name=f"{name}_depthwise")
    out = net.relu(net.batch_norm(out, name=f"{name}_depthwise_bn"), name=f"{name}_depthwise_relu")
    out = net.conv_bn(out, filters, 1, relu=False, name=f"{name}_project")
    if strides != 1:
        return out
    skip = x
    if x.shape[-1] != filters:
        skip = net.conv_bn(x, filters, 1, relu=False, name=f"{name}_shortcut")
    return layers.Add(name=f"{name}_add")([out, skip])


def mobilenetv2(
    num_classes: int,
    *,
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """MobileNetV2 for 32x32 inputs (kuangliu/pytorch-cifar form).

    Args:
        num_classes: number of output logits.
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``"mobilenetv2"``).
    """
    net = Layers(synchronized_batchnorm, conv_init="pytorch_default")
    inputs = cifar_input()
    x = net.conv_bn(inputs, 32, 3, name="stem_conv")
    unit = 0
    for expansion, filters, units, strides in _CONFIG:
        for i in range(units):
            unit += 1
            x = _inverted_residual(net, x, expansion, filters, strides if i == 0 else 1,
                                   name=f"unit{unit}")
    x = net.conv_bn(x, 1280, 1, name="head_conv")
    outputs = net.classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name or "mobilenetv2")

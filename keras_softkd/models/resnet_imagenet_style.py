"""ResNet-18/34/50/101/152 (He et al. 2016a's ImageNet networks) in their CIFAR form.

As in the kuangliu/pytorch-cifar implementation that the Pseudo-KD paper's
numbers come from: the ImageNet 7x7 stride-2 stem and max-pool are replaced by
a 3x3 stride-1 conv with 64 channels, BN, ReLU; four stages at 64, 128, 256,
512 channels (32x32, 16x16, 8x8, 4x4) of post-activation basic units (18, 34)
or bottleneck units with 4x expansion (50, 101, 152), projection shortcuts
(1x1 conv + BN) where the shape changes; global average pooling and a fully
connected layer.

Units per stage: 18: (2, 2, 2, 2); 34 and 50: (3, 4, 6, 3); 101: (3, 4, 23, 3);
152: (3, 8, 36, 3).

Initialisation: the reference sets none, so PyTorch's defaults apply
(kuangliu/pytorch-cifar ``models/resnet.py`` at 49b7aa9, lines 19-30, 47-59,
78-85: every ``nn.Conv2d`` ``bias=False``, one ``nn.Linear``; ``main.py`` calls
no init, and ``utils.py``'s ``init_params`` is never called). Here likewise:
every conv's kernel and the classifier's kernel and bias uniform in
``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``; BatchNorm gamma 1, beta 0
(``_layers.TorchDefaultUniform``).

Trainable parameters (10 / 100 classes), equal to the PyTorch reference:
ResNet-18 11,173,962 / 11,220,132; ResNet-50 23,520,842 / 23,705,252;
ResNet-101 42,512,970 / 42,697,380.

Example:

>>> from keras_softkd import models
>>> models.build("resnet18", 100).output.shape
(None, 100)
"""

from __future__ import annotations

import keras

from keras_softkd.models import _blocks
from keras_softkd.models._layers import Layers, cifar_input

_UNITS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def resnet(
    num_classes: int,
    depth: int,
    *,
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """ResNet-``depth`` (18, 34, 50, 101 or 152) with a CIFAR stem.

    Args:
        num_classes: number of output logits.
        depth: 18, 34, 50, 101 or 152.
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``f"resnet{depth}"``).
    """
    if depth not in _UNITS:
        raise ValueError(f"`depth` must be one of {sorted(_UNITS)}; got depth={depth!r}.")
    block, units = _UNITS[depth]
    net = Layers(synchronized_batchnorm, conv_init="pytorch_default")
    inputs = cifar_input()
    x = net.conv_bn(inputs, 64, 3, name="stem_conv")
    stages = zip((64, 128, 256, 512), units, (1, 2, 2, 2), strict=True)
    for i, (width, n, strides) in enumerate(stages):
        if block == "basic":
            x = _blocks.stage(_blocks.basic, net, x, n, strides, f"stage{i + 1}",
                              filters=width, shortcut="projection")
        else:
            x = _blocks.stage(_blocks.bottleneck, net, x, n, strides, f"stage{i + 1}",
                              filters=width, out_filters=4 * width)
    outputs = net.classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")

"""ResNeXt for CIFAR (Xie, Girshick, Dollar, Tu, He 2017, "Aggregated Residual
Transformations for Deep Neural Networks", section 5.3).

A 3x3 conv with 64 channels, BN, ReLU; three stages of ``n = (depth - 2) / 9``
post-activation bottleneck units with outputs 256, 512 and 1024 channels
(32x32, 16x16, 8x8). A unit is 1x1 conv to ``D`` channels, a grouped 3x3 conv
(``cardinality`` groups, stride 2 in the first unit of stages 2 and 3), 1x1
conv to the output width, each with BN, ReLU after the first two and after the
addition; projection shortcut (1x1 conv + BN) where the shape changes.
``D = cardinality * base_width * output_channels / 256``, i.e. 512, 1024 and
2048 for 8x64d. Global average pooling and a fully connected layer.

ResNeXt-29 8x64d has 34,426,698 trainable parameters for 10 classes (the
paper's 34.4M) and 34,518,948 for 100 (the MrKD paper's 34.5M).

Initialisation: convs He-normal with fan-out (``kaiming_normal(mode="fan_out")``)
and BatchNorm gamma 1, beta 0, as bearpaw/pytorch-classification
``models/cifar/resnext.py`` (at 24f1c45, lines 83-90; the PyTorch model zoo
whose network list the MrKD paper follows) and the authors' ``ConvInit``; the
classifier's kernel and bias PyTorch's ``nn.Linear`` default
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``Layers``'
``classifier_bias="pytorch_default"``), the initialisation this package's
reproduction runs were measured with. Checked, not followed: the classifier
bias is zero in the authors' Torch code (facebookresearch/ResNeXt at 1f59a2c,
``models/resnext.lua`` lines 230-232), in prlz77/ResNeXt.pytorch, and also in
bearpaw's ``resnext.py`` (lines 89-90 set every ``bias`` in the state dict to
0, the classifier's included; its kernel stays PyTorch's default); that is
``Layers(classifier_bias="zeros")``.

Example:

>>> from keras_softkd import models
>>> models.build("resnext29_8x64d", 100).output.shape
(None, 100)
"""

from __future__ import annotations

import keras

from keras_softkd.models import _blocks
from keras_softkd.models._layers import Layers, cifar_input


def resnext(
    num_classes: int,
    depth: int = 29,
    cardinality: int = 8,
    base_width: int = 64,
    *,
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """ResNeXt-``depth`` ``cardinality`` x ``base_width``d for 32x32 inputs.

    Args:
        num_classes: number of output logits.
        depth: ``9n + 2`` (29 for three units per stage).
        cardinality: number of groups of the 3x3 convs.
        base_width: channels per group in the first stage (doubles per stage).
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``f"resnext{depth}_{cardinality}x{base_width}d"``).
    """
    if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ValueError(f"`depth` must be 9n + 2 (n >= 1); got depth={depth!r}.")
    for arg, value in (("cardinality", cardinality), ("base_width", base_width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be an integer >= 1; got {arg}={value!r}.")
    n = (depth - 2) // 9
    net = Layers(synchronized_batchnorm)
    inputs = cifar_input()
    x = net.conv_bn(inputs, 64, 3, name="stem_conv")
    for i, (out_filters, strides) in enumerate(((256, 1), (512, 2), (1024, 2))):
        group_width = cardinality * base_width * out_filters // 256
        x = _blocks.stage(_blocks.bottleneck, net, x, n, strides, f"stage{i + 1}",
                          filters=group_width, out_filters=out_filters, groups=cardinality)
    outputs = net.classifier(x, num_classes)
    return keras.Model(
        inputs, outputs, name=name or f"resnext{depth}_{cardinality}x{base_width}d"
    )

"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

A bare 3x3 conv with 16 channels; three stages of ``n = (d - 4) / 6``
pre-activation basic units (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) at
``16k``, ``32k`` and ``64k`` channels (32x32, 16x16, 8x8); BN-ReLU, global
average pooling, a fully connected layer. Where the shape changes the shortcut
is a 1x1 conv on the pre-activated input, as in the paper's code. Dropout
between the two convs is 0 by default (the MrKD paper trains without it).

Trainable parameters (10 / 100 classes): WRN-16-8 10,961,370 / 11,007,540;
WRN-28-10 36,479,194 / 36,536,884; WRN-40-4 8,949,210 / 8,972,340. The MrKD
paper's table (100 classes): 11.0, 36.5, 9.0 M.

Initialisation: convs He-normal with fan-out, ``N(0, 2 / (k * k *
out_channels))``, and BatchNorm gamma 1, beta 0, as bearpaw/pytorch-classification
``models/cifar/wrn.py`` (at 24f1c45, lines 68-74; the PyTorch model zoo whose
network list the MrKD paper follows) and the authors' ``MSRinit``; the
classifier's kernel and bias PyTorch's ``nn.Linear`` default
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``Layers``'
``classifier_bias="pytorch_default"``), the initialisation this package's
reproduction runs were measured with. Checked, not followed: the classifier
bias is zero in the authors' Torch code (szagoruyko/wide-residual-networks at
ae6d0d0, ``models/utils.lua`` ``FCinit``, called in ``models/wide-resnet.lua``
line 109), in its PyTorch port (``pytorch/utils.py``) and also in bearpaw's
``wrn.py`` (lines 75-76, ``m.bias.data.zero_()`` for ``nn.Linear``); that is
``Layers(classifier_bias="zeros")``.

Example:

>>> from keras_softkd import models
>>> models.build("wrn16_8", 10).output.shape
(None, 10)
"""

from __future__ import annotations

import keras

from keras_softkd.models import _blocks
from keras_softkd.models._layers import Layers, cifar_input


def wide_resnet(
    num_classes: int,
    depth: int,
    width: int,
    *,
    dropout: float = 0.0,
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """WRN-``depth``-``width``.

    Args:
        num_classes: number of output logits.
        depth: ``6n + 4`` (16, 28, 40, ...).
        width: the widening factor ``k`` (stage widths ``16k, 32k, 64k``).
        dropout: dropout rate between the two convs of every unit, in [0, 1).
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``f"wrn{depth}_{width}"``).
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"`depth` must be 6n + 4 (n >= 1); got depth={depth!r}.")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be an integer >= 1; got width={width!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); got dropout={dropout!r}.")
    n = (depth - 4) // 6
    net = Layers(synchronized_batchnorm)
    inputs = cifar_input()
    x = net.conv(inputs, 16, 3, name="stem_conv")
    for i, (channels, strides) in enumerate(((16, 1), (32, 2), (64, 2))):
        x = _blocks.stage(_blocks.preact_basic, net, x, n, strides, f"stage{i + 1}",
                          filters=channels * width, dropout=dropout)
    x = net.bn_relu(x, name="final")
    outputs = net.classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"wrn{depth}_{width}")

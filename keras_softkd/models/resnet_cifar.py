"""CIFAR ResNets: ResNet-20/32/44/56/110/164 and PreResNet-110/164.

**ResNet** (He, Zhang, Ren, Sun 2016a, "Deep Residual Learning for Image
Recognition", section 4.2): a 3x3 conv with 16 channels, BN, ReLU; three stages
of ``n`` units at 16, 32 and 64 channels (32x32, 16x16, 8x8; the first unit of
stages 2 and 3 has stride 2); global average pooling; a fully connected layer.

* ``block="basic"``: two 3x3 convs per unit, ``depth = 6n + 2`` (20, 32, 44,
  56, 110). The shortcut where the shape changes is **option A** by default,
  the original CIFAR ResNet's parameter-free identity (subsample by 2 and append
  zero channels), which gives the paper's 0.27M parameters for ResNet-20 on
  CIFAR-10. ``shortcut="projection"`` selects option B (1x1 conv + BN) instead;
  both round to the MrKD paper's table (option B adds 2,752 parameters).
* ``block="bottleneck"``: 1x1-3x3-1x1 units with 4x expansion (outputs 64, 128,
  256 channels), ``depth = 9n + 2`` (164), projection shortcuts.

**PreResNet** (He, Zhang, Ren, Sun 2016b, "Identity Mappings in Deep Residual
Networks"): the same stages with pre-activation units (BN-ReLU-conv), a bare 3x3
conv as the stem, and BN-ReLU before the pooling. Basic units for
``depth = 6n + 2`` (110), bottleneck units for ``depth = 9n + 2`` (164);
projection shortcuts are 1x1 convs on the pre-activated input.

The **PreResNet bottleneck** follows He et al.'s own code
(KaimingHe/resnet-1k-layers ``resnet-pre-act.lua`` at fde7ee9): the stride is on
the *first 1x1 conv* (lines 43 and 70: ``Convolution(nInputPlane,
nBottleneckPlane, 1, 1, stride, stride, 0, 0)``; the 3x3 conv has stride 1,
lines 48 and 75), and where the width changes the unit applies BN-ReLU once
(lines 64-66) and feeds it to both the residual branch and a strided 1x1 conv
shortcut without BN (lines 82-83); otherwise the shortcut is the identity on
the raw input (line 55). The post-activation ResNet-164 bottleneck keeps the
stride on its 3x3 conv (bearpaw/pytorch-classification ``models/cifar/resnet.py``
``Bottleneck``, the PyTorch transcription its parameter count is pinned to).

**Initialisation** as bearpaw/pytorch-classification (at 24f1c45), the PyTorch
model zoo whose network list the MrKD paper follows: convs He-normal with
fan-out, ``N(0, 2 / (k * k * out_channels))``, BatchNorm gamma 1 and beta 0
(``models/cifar/resnet.py`` lines 121-127, ``preresnet.py`` lines 120-126), and
the classifier left at PyTorch's ``nn.Linear`` default, kernel and bias
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``Layers``'
``classifier_bias="pytorch_default"``). Checked, not followed: the Torch7
references zero the classifier bias, ``v.bias:zero()`` for every ``nn.Linear``
(fb.resnet.torch ``models/resnet.lua`` lines 191-193, ``models/preresnet.lua``
lines 221-223; He et al.'s ``resnet-pre-act.lua`` lines 151-153); that is
``Layers(classifier_bias="zeros")``.

Trainable parameters (BatchNorm's moving statistics not counted, as PyTorch
counts), 10 / 100 classes: ResNet-20 269,722 / 275,572; ResNet-32 464,154 /
470,004; ResNet-44 658,586 / 664,436; ResNet-56 853,018 / 858,868; ResNet-110
1,727,962 / 1,733,812; ResNet-164 1,704,154 / 1,727,284; PreResNet-110
1,730,522 / 1,736,372; PreResNet-164 1,703,258 / 1,726,388. The MrKD paper's
table (100 classes): 0.3, 0.5, 0.7, 0.9, 1.7, 1.7, 1.7, 1.7 M.

Example:

>>> from keras_softkd import models
>>> model = models.build("resnet20", 10)
>>> model.count_params()  # includes BN moving mean/variance (2 x 688)
271098
"""

from __future__ import annotations

import keras

from keras_softkd.models import _blocks
from keras_softkd.models._layers import Layers, cifar_input

_STAGES = ((16, 1), (32, 2), (64, 2))


def _units_per_stage(depth: int, block: str) -> int:
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"`block` must be 'basic' or 'bottleneck'; got {block!r}.")
    per_unit = 6 if block == "basic" else 9
    if not isinstance(depth, int) or depth < per_unit + 2 or (depth - 2) % per_unit:
        raise ValueError(
            f"`depth` must be {per_unit}n + 2 (n >= 1) for {block} units; got depth={depth!r}."
        )
    return (depth - 2) // per_unit


def resnet(
    num_classes: int,
    depth: int,
    *,
    block: str = "basic",
    shortcut: str = "zero_pad",
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """CIFAR ResNet of He et al. (2016a); see the module docstring.

    Args:
        num_classes: number of output logits.
        depth: ``6n + 2`` for ``block="basic"``, ``9n + 2`` for ``"bottleneck"``.
        block: ``"basic"`` or ``"bottleneck"``.
        shortcut: for basic units where the shape changes: ``"zero_pad"``
            (option A, default) or ``"projection"`` (option B). Bottleneck units
            always project.
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``f"resnet{depth}"``).
    """
    n = _units_per_stage(depth, block)
    net = Layers(synchronized_batchnorm)
    inputs = cifar_input()
    x = net.conv_bn(inputs, 16, 3, name="stem_conv")
    for i, (width, strides) in enumerate(_STAGES):
        if block == "basic":
            x = _blocks.stage(_blocks.basic, net, x, n, strides, f"stage{i + 1}",
                              filters=width, shortcut=shortcut)
        else:
            x = _blocks.stage(_blocks.bottleneck, net, x, n, strides, f"stage{i + 1}",
                              filters=width, out_filters=4 * width)
    outputs = net.classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def preresnet(
    num_classes: int,
    depth: int,
    *,
    block: str = "basic",
    synchronized_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """CIFAR pre-activation ResNet of He et al. (2016b); see the module docstring.

    Args:
        num_classes: number of output logits.
        depth: ``6n + 2`` for ``block="basic"``, ``9n + 2`` for ``"bottleneck"``.
        block: ``"basic"`` or ``"bottleneck"``.
        synchronized_batchnorm: synchronise BatchNorm statistics across replicas.
        name: the model's name (default ``f"preresnet{depth}"``).
    """
    n = _units_per_stage(depth, block)
    net = Layers(synchronized_batchnorm)
    inputs = cifar_input()
    x = net.conv(inputs, 16, 3, name="stem_conv")
    for i, (width, strides) in enumerate(_STAGES):
        if block == "basic":
            x = _blocks.stage(_blocks.preact_basic, net, x, n, strides, f"stage{i + 1}",
                              filters=width)
        else:
            x = _blocks.stage(_blocks.preact_bottleneck, net, x, n, strides, f"stage{i + 1}",
                              filters=width, out_filters=4 * width)
    x = net.bn_relu(x, name="final")
    outputs = net.classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"preresnet{depth}")

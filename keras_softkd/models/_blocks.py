"""Residual units shared by the ResNet, PreResNet, WRN and ResNeXt families.

Two orderings, each with a basic (two 3x3) and a bottleneck (1x1-3x3-1x1) form:

* **post-activation** (He et al. 2016a, "Deep Residual Learning"): conv-BN-ReLU
  inside, ``ReLU(F(x) + shortcut(x))`` at the end; a projection shortcut is a
  1x1 conv + BN. Used by CIFAR ResNet-20..164, ResNeXt and ResNet-18/50/101.
* **pre-activation** (He et al. 2016b, "Identity Mappings"): BN-ReLU-conv
  inside, ``F(x) + shortcut(x)`` with nothing after the addition; a projection
  shortcut is a bare 1x1 conv applied to the pre-activated input (as in He et
  al.'s code and the WRN reference code). Used by PreResNet and WRN.

A projection is used where the shape changes (stride or width); otherwise the
shortcut is the identity. The stride sits on the 3x3 conv in every unit except
the pre-activation bottleneck, which has it on its first 1x1 conv as in He et
al.'s code (see :func:`preact_bottleneck`).
"""

from __future__ import annotations

from collections.abc import Callable

from keras import layers

from keras_softkd.models._layers import Layers, ZeroPadShortcut


def stage(block: Callable, net: Layers, x, num_units: int, strides: int, name: str, **kwargs):
    """``num_units`` units of ``block``; the first has ``strides``, the rest stride 1.

    Units are named ``{name}_unit1``, ``{name}_unit2``, ...
    """
    for i in range(num_units):
        x = block(net, x, strides=strides if i == 0 else 1, name=f"{name}_unit{i + 1}", **kwargs)
    return x


def _changes_shape(x, filters: int, strides: int) -> bool:
    return strides != 1 or x.shape[-1] != filters


def basic(net: Layers, x, filters: int, strides: int, name: str, shortcut: str = "projection"):
    """Post-activation basic unit: conv3x3-BN-ReLU-conv3x3-BN, add, ReLU.

    ``shortcut`` for a shape change: ``"projection"`` (option B, 1x1 conv + BN)
    or ``"zero_pad"`` (option A, subsample and zero channels; no parameters).
    """
    if shortcut not in ("projection", "zero_pad"):
        raise ValueError(f"`shortcut` must be 'projection' or 'zero_pad'; got {shortcut!r}.")
    residual = net.conv_bn(x, filters, 3, strides, name=f"{name}_conv1")
    residual = net.conv_bn(residual, filters, 3, relu=False, name=f"{name}_conv2")
    if not _changes_shape(x, filters, strides):
        skip = x
    elif shortcut == "zero_pad":
        skip = ZeroPadShortcut(filters, strides, name=f"{name}_shortcut")(x)
    else:
        skip = net.conv_bn(x, filters, 1, strides, relu=False, name=f"{name}_shortcut")
    x = layers.Add(name=f"{name}_add")([residual, skip])
    return net.relu(x, name=f"{name}_out")


def bottleneck(net: Layers, x, filters: int, out_filters: int, strides: int, name: str,
               groups: int = 1):
    """Post-activation bottleneck: 1x1 (``filters``) - 3x3 (grouped) - 1x1 (``out_filters``).

    Each conv is followed by BN, ReLU after the first two and after the
    addition; projection shortcut (1x1 conv + BN) where the shape changes.
    ``groups > 1`` makes it the ResNeXt unit (grouped 3x3 conv).
    """
    residual = net.conv_bn(x, filters, 1, name=f"{name}_conv1")
    residual = net.conv_bn(residual, filters, 3, strides, groups=groups, name=f"{name}_conv2")
    residual = net.conv_bn(residual, out_filters, 1, relu=False, name=f"{name}_conv3")
    skip = x
    if _changes_shape(x, out_filters, strides):
        skip = net.conv_bn(x, out_filters, 1, strides, relu=False, name=f"{name}_shortcut")
    x = layers.Add(name=f"{name}_add")([residual, skip])
    return net.relu(x, name=f"{name}_out")


def preact_basic(net: Layers, x, filters: int, strides: int, name: str, dropout: float = 0.0):
    """Pre-activation basic unit: BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, add.

    ``dropout`` (between the two convs) is the WRN paper's; 0 leaves it out.
    """
    preact = net.bn_relu(x, name=f"{name}_preact")
    skip = x
    if _changes_shape(x, filters, strides):
        skip = net.conv(preact, filters, 1, strides, name=f"{name}_shortcut")
    residual = net.conv(preact, filters, 3, strides, name=f"{name}_conv1")
    residual = net.bn_relu(residual, name=f"{name}_conv1")
    if dropout:
        residual = layers.Dropout(dropout, name=f"{name}_dropout")(residual)
    residual = net.conv(residual, filters, 3, name=f"{name}_conv2")
    return layers.Add(name=f"{name}_add")([residual, skip])


def preact_bottleneck(net: Layers, x, filters: int, out_filters: int, strides: int, name: str):
    """Pre-activation bottleneck: BN-ReLU-conv1x1(stride)-BN-ReLU-conv3x3-BN-ReLU-conv1x1, add.

    As He et al.'s official code, KaimingHe/resnet-1k-layers ``resnet-pre-act.lua``
    (commit fde7ee9), ``bottleneck``: the stride is on the first 1x1 conv (lines 43
    and 70, ``Convolution(nInputPlane, nBottleneckPlane, 1, 1, stride, stride, 0,
    0)``), the 3x3 conv has stride 1 (lines 48 and 75). Where the shape changes,
    BN-ReLU is applied once to the input (lines 64-66) and feeds both the residual
    branch and the shortcut, a strided 1x1 conv without BN (lines 82-83);
    otherwise the shortcut is the identity on the raw input (lines 38-55).
    """
    preact = net.bn_relu(x, name=f"{name}_preact")
    skip = x
    if _changes_shape(x, out_filters, strides):
        skip = net.conv(preact, out_filters, 1, strides, name=f"{name}_shortcut")
    residual = net.conv(preact, filters, 1, strides, name=f"{name}_conv1")
    residual = net.conv(net.bn_relu(residual, name=f"{name}_conv1"), filters, 3,
                        name=f"{name}_conv2")
    residual = net.conv(net.bn_relu(residual, name=f"{name}_conv2"), out_filters, 1,
                        name=f"{name}_conv3")
    return layers.Add(name=f"{name}_add")([residual, skip])

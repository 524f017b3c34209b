"""CIFAR networks by name: ``build("resnet56", num_classes=100)``.

Every network is built as its own paper defines it for 32x32 inputs, with the
Keras functional API on ``keras.Input((32, 32, 3))`` (channels-last), and
returns float32 logits (no softmax), also under a mixed-precision policy.
BatchNorm uses PyTorch's constants (``momentum=0.9`` in Keras terms,
``epsilon=1e-5``); convolutions are bias-free; there are no kernel
regularizers (weight decay is the optimizer's job). Each family is initialised
as its reference code: ResNet, PreResNet, WRN and ResNeXt convs He-normal
(fan-out) as bearpaw/pytorch-classification (``models/cifar/*.py``), the PyTorch
model zoo whose network list the MrKD paper follows, and the classifier
PyTorch's ``nn.Linear`` default, kernel and bias ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``, as bearpaw's ResNet and PreResNet (the zero classifier bias
of the Torch7 references and of bearpaw's WRN and ResNeXt is
``Layers(classifier_bias="zeros")``, not used); MobileNetV2, ShuffleNetV2 and
ResNet-18/50/101 (kuangliu/pytorch-cifar, which sets no init) PyTorch's default
for every conv and the classifier, kernel and bias. See ``_layers.py`` and each
family's module.

Networks (module, trainable parameters for 10 / 100 classes, in millions):

* ``resnet20 resnet32 resnet44 resnet56 resnet110``: He et al. 2016a, basic
  units, option-A shortcuts (``resnet_cifar``): 0.27 / 0.28, 0.46 / 0.47,
  0.66 / 0.66, 0.85 / 0.86, 1.73 / 1.73.
* ``resnet164``: He et al. 2016a, bottleneck units (``resnet_cifar``): 1.70 / 1.73.
* ``preresnet110 preresnet164``: He et al. 2016b (``resnet_cifar``): 1.73 / 1.74,
  1.70 / 1.73.
* ``wrn16_8 wrn28_10 wrn40_4``: Zagoruyko & Komodakis 2016 (``wide_resnet``):
  10.96 / 11.01, 36.48 / 36.54, 8.95 / 8.97.
* ``resnext29_8x64d``: Xie et al. 2017, CIFAR form (``resnext``): 34.43 / 34.52.
* ``mobilenetv2``: Sandler et al. 2018, CIFAR form (``mobilenetv2``): 2.30 / 2.41.
* ``shufflenetv2``: Ma et al. 2018, 1x, CIFAR form (``shufflenetv2``): 1.26 / 1.36.
* ``resnet18 resnet50 resnet101``: He et al. 2016a's ImageNet networks with a
  CIFAR stem (``resnet_imagenet_style``): 11.17 / 11.22, 23.52 / 23.71,
  42.51 / 42.70.

(Trainable parameters, as PyTorch counts them; ``model.count_params()`` also
counts BatchNorm's moving mean and variance.)

Keyword arguments after ``num_classes`` go to the family's function: every
network takes ``synchronized_batchnorm`` (synchronise BatchNorm statistics
across replicas; TensorFlow backend only); ResNet-20..110 take
``shortcut`` ("zero_pad" or "projection"), the WRNs ``dropout``, ShuffleNetV2
``width_multiplier``.

Example:

>>> from keras_softkd import models
>>> model = models.build("resnet20", 10)
>>> model.output.shape
(None, 10)
>>> model.count_params()  # 269,722 trainable + 1,376 BatchNorm moving statistics
271098
>>> "resnet56" in models.names()
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

# name -> (module, function, the keyword arguments the name fixes). The family's module
# (and Keras) is imported when a network is built, so the names are known without them.
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resnet20": ("resnet_cifar", "resnet", {"depth": 20}),
    "resnet32": ("resnet_cifar", "resnet", {"depth": 32}),
    "resnet44": ("resnet_cifar", "resnet", {"depth": 44}),
    "resnet56": ("resnet_cifar", "resnet", {"depth": 56}),
    "resnet110": ("resnet_cifar", "resnet", {"depth": 110}),
    "resnet164": ("resnet_cifar", "resnet", {"depth": 164, "block": "bottleneck"}),
    "preresnet110": ("resnet_cifar", "preresnet", {"depth": 110}),
    "preresnet164": ("resnet_cifar", "preresnet", {"depth": 164, "block": "bottleneck"}),
    "wrn16_8": ("wide_resnet", "wide_resnet", {"depth": 16, "width": 8}),
    "wrn28_10": ("wide_resnet", "wide_resnet", {"depth": 28, "width": 10}),
    "wrn40_4": ("wide_resnet", "wide_resnet", {"depth": 40, "width": 4}),
    "resnext29_8x64d": ("resnext", "resnext", {"depth": 29, "cardinality": 8, "base_width": 64}),
    "mobilenetv2": ("mobilenetv2", "mobilenetv2", {}),
    "shufflenetv2": ("shufflenetv2", "shufflenetv2", {}),
    "resnet18": ("resnet_imagenet_style", "resnet", {"depth": 18}),
    "resnet50": ("resnet_imagenet_style", "resnet", {"depth": 50}),
    "resnet101": ("resnet_imagenet_style", "resnet", {"depth": 101}),
}


def names() -> list[str]:
    """The registered network names, in the order of the table above."""
    return list(_REGISTRY)


def build(name: str, num_classes: int, **kwargs) -> "keras.Model":
    """Builds the CIFAR network ``name`` with ``num_classes`` logits.

    Args:
        name: one of ``names()``.
        num_classes: number of classes, an integer >= 2.
        **kwargs: options of the network's family (see the module docstring).

    Returns:
        A functional ``keras.Model`` named ``name``, freshly initialised, from
        images ``(batch, 32, 32, 3)`` to float32 logits ``(batch, num_classes)``.

    Raises:
        ValueError: for an unknown ``name``, ``num_classes < 2``, or a keyword
            argument that the name already fixes (``depth``, ``width``, ...).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(_REGISTRY)}.")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ValueError(f"`num_classes` must be an integer >= 2; got num_classes={num_classes!r}.")
    module, function, fixed_arguments = _REGISTRY[name]
    fixed = sorted(set(kwargs) & set(fixed_arguments))
    if fixed:
        raise ValueError(f"{name!r} fixes {', '.join(fixed)}; pick another name instead.")
    family = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return family(int(num_classes), name=name, **fixed_arguments, **kwargs)


__all__ = ["build", "names"]

"""keras-softkd: teacher-free self-knowledge-distillation for Keras 3.

Label smoothing (LSR), LsrKD and its teacher correction (TC), memory-replay
KD (MrKD, MrKD-TC) and Pseudo-KD, as Keras losses and Keras model wrappers.

    losses       per-example loss functions and keras.losses.Loss classes
    teachers     the papers' teacher distributions (uniform, TC, memory-replay TC, P*)
    MrKDModel    memory-replay self-distillation around any Keras classifier
    KDModel      distillation from a fixed pre-trained teacher
    CSKDModel    class-wise self-distillation (CS-KD) from same-class partners
    PSKDModel    progressive self-KD (PS-KD): last epoch's predictions as targets
    BetaLSModel  Beta smoothing (Beta-LS) from a weight average of the student
    KRLSModel    Knowledge Refinery (KR-LS): a learned K x K residual label per class
    models       CIFAR networks: models.build("resnet56", num_classes=100)
    metrics      top-k error, NLL, expected calibration error; the GLUE metrics
    optimizers   PyTorchSGD: SGD with weight decay as torch.optim.SGD applies it

The tf.data input pipeline (``keras_softkd.data``), the experiment runner
(``keras_softkd.experiment``), the report (``keras_softkd.report``) and the
KerasHub text classifiers (``keras_softkd.models.text``, the ``[text]`` extra;
the wrappers above take their raw strings, ``keras_softkd.preprocessing``) are
imported on their own.
"""

__version__ = "0.1.0"

import importlib
from typing import Any

from keras_softkd._quiet import quiet_startup

quiet_startup()  # JAX without its TPU probe; TensorFlow, whenever it loads, without its start-up lines

# Loaded on first use (PEP 562), so that importing a light module (train.py's flags,
# ``keras_softkd.config``) does not import Keras and TensorFlow.
_SUBMODULES = ("losses", "metrics", "models", "optimizers", "teachers")
_CLASSES = {
    "BetaLSModel": "beta_smoothing",
    "CSKDModel": "class_wise",
    "Distiller": "distillation",
    "KDModel": "distillation",
    "KRLSModel": "knowledge_refinery",
    "MrKDModel": "memory_replay",
    "PSKDModel": "progressive",
}

__all__ = [*sorted(_CLASSES), *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _CLASSES:
        value = getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

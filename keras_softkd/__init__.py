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

from keras_softkd._quiet import quiet_startup  # noqa: E402

quiet_startup()  # Keras (and TensorFlow) without TensorFlow's start-up lines

from keras_softkd import losses, metrics, models, optimizers, teachers  # noqa: E402,F401
from keras_softkd.distillation import Distiller, KDModel  # noqa: E402,F401
from keras_softkd.memory_replay import MrKDModel  # noqa: E402,F401
from keras_softkd.class_wise import CSKDModel  # noqa: E402,F401
from keras_softkd.progressive import PSKDModel  # noqa: E402,F401
from keras_softkd.beta_smoothing import BetaLSModel  # noqa: E402,F401
from keras_softkd.knowledge_refinery import KRLSModel  # noqa: E402,F401

__all__ = [
    "BetaLSModel",
    "CSKDModel",
    "Distiller",
    "KDModel",
    "KRLSModel",
    "MrKDModel",
    "PSKDModel",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "teachers",
]

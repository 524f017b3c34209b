"""keras-softkd: teacher-free self-knowledge-distillation for Keras 3.

Label smoothing (LSR), LsrKD and its teacher correction (TC), memory-replay
KD (MrKD, MrKD-TC) and Pseudo-KD, as Keras losses and a Keras model wrapper.
"""

__version__ = "0.1.0"

from keras_softkd import losses, teachers  # noqa: E402,F401
from keras_softkd.distillation import Distiller, KDModel  # noqa: E402,F401
from keras_softkd.memory_replay import MrKDModel  # noqa: E402,F401

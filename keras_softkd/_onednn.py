"""TensorFlow's oneDNN CPU kernels switched on wherever TensorFlow would leave them off.

TensorFlow (x86-64) runs its convolutions, matrix products and BatchNorm
through oneDNN by default only on processors with ``avx512_vnni``,
``avx512_bf16``, ``avx_vnni`` or AMX; elsewhere (every AVX2-only processor, an
AMD EPYC before Zen 4 for one) it runs its Eigen kernels, and a ResNet-20 step
there trains at about half the images/s of a hand-written PyTorch loop, which
uses oneDNN on every x86 processor. TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS``
once, when it loads; ``import keras_softkd`` runs :func:`default_onednn`,
which sets it to ``1`` where Keras's backend is TensorFlow, the processor is
x86-64, TensorFlow is not imported yet and the variable is unset. Where
TensorFlow already enables oneDNN nothing changes; elsewhere the results move
within float32 rounding (the numerics tests run with oneDNN on).

A user's own ``TF_ENABLE_ONEDNN_OPTS`` (``0`` to keep Eigen's kernels) wins.
Where TensorFlow was imported before ``keras_softkd``, its setting stands.
:func:`onednn_record` says which applies; ``results.json`` records it first
under ``environment``.

Example::

    import os
    import keras_softkd  # sets TF_ENABLE_ONEDNN_OPTS=1 where it is unset
    from keras_softkd._onednn import onednn_record
    print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), onednn_record())
"""

from __future__ import annotations

import os
import platform
import sys

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
_X86_64 = ("x86_64", "amd64")

#: How this process's ``TF_ENABLE_ONEDNN_OPTS`` came about (set by :func:`default_onednn`).
_origin = "not checked (keras_softkd._onednn.default_onednn did not run)"


def default_onednn(backend: str) -> None:
    """``TF_ENABLE_ONEDNN_OPTS=1`` where ``backend`` is TensorFlow, the processor x86-64,
    TensorFlow not imported and the variable unset; notes which case applied."""
    global _origin
    if VARIABLE in os.environ:
        _origin = "the user's"
    elif "tensorflow" in sys.modules:
        _origin = ("unset; TensorFlow was imported before keras_softkd, "
                   "so TensorFlow's default for this processor applies")
    elif backend != "tensorflow":
        _origin = f"unset; Keras's backend is {backend}, TensorFlow's default applies to tf.data"
    elif platform.machine().lower() not in _X86_64:
        _origin = f"unset; TensorFlow's default for {platform.machine()} applies"
    else:
        os.environ[VARIABLE] = "1"
        _origin = ("set by keras_softkd: TensorFlow's oneDNN kernels, which TensorFlow enables by "
                   "default only on processors with avx512_vnni, avx512_bf16, avx_vnni or AMX")


def onednn_record() -> str:
    """``TF_ENABLE_ONEDNN_OPTS`` and where it came from, e.g. ``"1 (set by keras_softkd: ...)"``."""
    return f"{os.environ.get(VARIABLE, '(unset)')} ({_origin})"

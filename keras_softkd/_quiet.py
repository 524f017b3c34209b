"""TensorFlow's and JAX's start-up lines kept off the user's terminal.

Importing TensorFlow 2.20+ writes C++ log lines to stderr before its logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them (abseil-cpp#1718):
``oneDNN custom operations are on``, ``Could not find cuda drivers``, and on a
machine without a GPU ``E0000 ... failed call to cuInit ... (303)`` at the first
device query. :func:`quiet_tensorflow_imports` makes TensorFlow's import, by
whichever module asks for it first (Keras's TensorFlow backend, tf.data, or Keras
under JAX or PyTorch seeding TensorFlow in ``keras.utils.set_random_seed``), run
with that first query and file descriptor 2 sent to a temporary file; if they
fail, what they wrote is shown with the error. ``KERAS_SOFTKD_TF_LOGS=1`` shows
the lines again.

``import keras_softkd`` runs :func:`quiet_startup` (which also sets TensorFlow's
oneDNN default before TensorFlow loads: :mod:`keras_softkd._onednn`) and imports
nothing heavier, so
``train.py`` checks its flags before TensorFlow loads.

JAX without an accelerator plugin probes for a TPU on its first
operation (``Unable to initialize backend 'tpu': ... libtpu.so``, logged where
Python logging shows INFO, as under absl's ``app.run``): where the backend is
JAX, ``JAX_PLATFORMS`` is unset and no plugin is installed (``jax_plugins``, its
entry points, ``libtpu``), :func:`quiet_startup` sets ``JAX_PLATFORMS=cpu``, the
only platform JAX then has. A machine with a GPU or TPU plugin is left as it is.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
from typing import Iterator

from keras_softkd._onednn import default_onednn

#: Set to 1 to see TensorFlow's start-up lines (debugging a driver or a device).
SHOW_LOGS = "KERAS_SOFTKD_TF_LOGS"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Sends file descriptor 2 to a temporary file inside the block.

    What was written is replayed on stderr if the block raises.
    """
    if os.environ.get(SHOW_LOGS, "") not in ("", "0"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        _restore(saved)


def quiet_startup() -> None:
    """What ``import keras_softkd`` runs: JAX on the CPU alone where it has nothing else to
    probe, TensorFlow's oneDNN kernels on x86-64 unless the user says otherwise
    (:mod:`keras_softkd._onednn`), and TensorFlow's import quiet whenever it comes."""
    backend = _keras_backend()  # keras.json read once
    _jax_on_cpu_only(backend)
    default_onednn(backend)
    quiet_tensorflow_imports()


def quiet_tensorflow_imports() -> None:
    """From now on, the first ``import tensorflow`` (by any module) runs without the start-up lines.

    Does nothing where TensorFlow is already imported (its lines are out) or the
    hook is in place.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


def quiet_tensorflow():
    """``import tensorflow`` (for tf.data under any backend) without the start-up lines."""
    quiet_tensorflow_imports()
    import tensorflow  # noqa: F401

    return sys.modules["tensorflow"]


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as Python would, and gives it a loader that runs quietly."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the other finders answer from here on
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """``loader``, with the module's execution and the first device query under :func:`quiet_stderr`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with quiet_stderr():
            self.loader.exec_module(module)
            _first_device_query()

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self.loader, name)


def _jax_on_cpu_only(backend: str) -> None:
    """``JAX_PLATFORMS=cpu`` where Keras's ``backend`` is JAX, JAX is not imported yet, the
    variable is unset and no accelerator plugin is installed (nothing else to find)."""
    if "JAX_PLATFORMS" in os.environ or "jax" in sys.modules or backend != "jax":
        return
    if any(importlib.util.find_spec(name) is not None for name in ("jax_plugins", "libtpu")):
        return
    if importlib.metadata.entry_points(group="jax_plugins"):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"


def _keras_backend() -> str:
    """The backend Keras will pick: ``KERAS_BACKEND``, else ``keras.json``'s (Keras's order)."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return str(json.load(file).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _first_device_query() -> None:
    # The first query loads the device plugins (the cuInit line).
    sys.modules["tensorflow"].config.list_physical_devices()


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)

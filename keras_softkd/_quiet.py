"""TensorFlow's and JAX's start-up lines kept off the user's terminal.

Importing TensorFlow 2.20+ writes C++ log lines to stderr before its logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them (abseil-cpp#1718):
``oneDNN custom operations are on``, ``Could not find cuda drivers``, and on a
machine without a GPU ``E0000 ... failed call to cuInit ... (303)`` at the first
device query. :func:`quiet_startup` runs the import and that first query with
file descriptor 2 sent to a temporary file; if they fail, what they wrote is
shown with the error. ``KERAS_SOFTKD_TF_LOGS=1`` shows the lines again.

Under JAX or PyTorch, Keras imports TensorFlow where it is installed, to seed it
(``keras.utils.set_random_seed``); :func:`quiet_installed_tensorflow` imports it
quietly first. JAX without an accelerator plugin probes for a TPU on its first
operation (``Unable to initialize backend 'tpu': ... libtpu.so``, logged where
Python logging shows INFO, as under absl's ``app.run``): where the backend is
JAX, ``JAX_PLATFORMS`` is unset and no plugin is installed (``jax_plugins``, its
entry points, ``libtpu``), :func:`quiet_startup` sets ``JAX_PLATFORMS=cpu``, the
only platform JAX then has. A machine with a GPU or TPU plugin is left as it is.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
from typing import Iterator

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
    """Imports Keras (and TensorFlow, if it is Keras's backend) without the start-up lines.

    Does nothing where TensorFlow is already imported (its lines are out).
    """
    _jax_on_cpu_only()
    if "tensorflow" in sys.modules:
        import keras  # noqa: F401

        return
    with quiet_stderr():
        import keras  # noqa: F401

        if "tensorflow" in sys.modules:
            _first_device_query()


def quiet_tensorflow():
    """``import tensorflow`` (for tf.data under any backend) without the start-up lines."""
    if "tensorflow" not in sys.modules:
        with quiet_stderr():
            import tensorflow  # noqa: F401

            _first_device_query()
    return sys.modules["tensorflow"]


def quiet_installed_tensorflow() -> None:
    """:func:`quiet_tensorflow` where TensorFlow is installed (else nothing): under JAX or
    PyTorch, before ``keras.utils.set_random_seed``, which imports it to seed it."""
    if "tensorflow" in sys.modules:
        return
    try:
        installed = importlib.util.find_spec("tensorflow") is not None
    except ValueError:  # blocked in sys.modules
        installed = False
    if installed:
        quiet_tensorflow()


def _jax_on_cpu_only() -> None:
    """``JAX_PLATFORMS=cpu`` where Keras's backend is JAX, JAX is not imported yet, the
    variable is unset and no accelerator plugin is installed (nothing else to find)."""
    if "JAX_PLATFORMS" in os.environ or "jax" in sys.modules or _keras_backend() != "jax":
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

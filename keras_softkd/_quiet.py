"""TensorFlow's start-up lines kept off the user's terminal.

Importing TensorFlow 2.20+ writes C++ log lines to stderr before its logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them (abseil-cpp#1718):
``oneDNN custom operations are on``, ``Could not find cuda drivers``, and on a
machine without a GPU ``E0000 ... failed call to cuInit ... (303)`` at the first
device query. :func:`quiet_startup` runs the import and that first query with
file descriptor 2 sent to a temporary file; if they fail, what they wrote is
shown with the error. ``KERAS_SOFTKD_TF_LOGS=1`` shows the lines again.
"""

from __future__ import annotations

import contextlib
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


def _first_device_query() -> None:
    # The first query loads the device plugins (the cuInit line).
    sys.modules["tensorflow"].config.list_physical_devices()


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)

"""The backend-neutral test files again under JAX and PyTorch, as background processes.

The Keras backend is fixed when Keras is first imported, so each backend runs in its own
``python -m pytest`` process with ``KERAS_BACKEND`` set. They start as soon as the session
knows it will run ``tests/test_backends.py::test_suite_passes_under_backend`` (at the end of
collection: in the process that runs the tests, or, under pytest-xdist, in the controller),
run beside the TensorFlow tests, and that test only waits for its backend's exit status and
reads its log. The suite's tests are ordered so that it comes last (``conftest``).

Each run writes ``<backend>.log`` and, when it ends, ``<backend>.rc`` (its exit status) into
:func:`folder`, a folder named after the process that started them, which every xdist worker
can find from its parent's process id.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [
    "tests/test_losses.py",
    "tests/test_teachers.py",
    "tests/test_memory_replay.py",
    "tests/test_py_dataset.py",
    "tests/test_cskd.py",
    "tests/test_pskd.py",
    "tests/test_beta_ls.py",
    "tests/test_mrkd_average.py",
    "tests/test_krls.py",
    "tests/test_precision.py",
]
BACKENDS = ("jax", "torch")
#: The test whose presence among the session's tests starts the runs.
SUITE_TEST = "tests/test_backends.py::test_suite_passes_under_backend"

_started: list[subprocess.Popen] = []


def folder(starter_pid: int) -> pathlib.Path:
    """Where the runs started by process ``starter_pid`` write their logs and exit statuses."""
    return pathlib.Path(tempfile.gettempdir()) / f"keras_softkd_backend_runs_{starter_pid}"


def starter_pid(config) -> int:
    """The process that starts the runs: this one, or under xdist the controller (the parent)."""
    return os.getppid() if hasattr(config, "workerinput") else os.getpid()


def wanted(node_ids) -> bool:
    """Whether the session's tests include the backend suite test (and this is TensorFlow's run)."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return False
    return any(node_id.startswith(SUITE_TEST) for node_id in node_ids)


def start(config, node_ids) -> None:
    """Starts each installed backend's run in the background, once per session (not for
    ``--collect-only``)."""
    import importlib.util

    if _started or config.option.collectonly or not wanted(node_ids):
        return
    where = folder(os.getpid())
    where.mkdir(parents=True, exist_ok=True)
    for backend in BACKENDS:
        for stale in (where / f"{backend}.rc", where / f"{backend}.log"):
            stale.unlink(missing_ok=True)
        if importlib.util.find_spec(backend) is None:
            continue  # the test skips, saying so
        env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
        # -n 0: no xdist workers of its own (the cores are shared with the TensorFlow tests).
        command = [sys.executable, "-m", "pytest", *FILES, "-q", "-x", "-n", "0",
                   "-p", "no:cacheprovider"]
        log, rc = shlex.quote(str(where / f"{backend}.log")), shlex.quote(str(where / f"{backend}.rc"))
        script = f"{shlex.join(command)} > {log} 2>&1; echo $? > {rc}.tmp && mv {rc}.tmp {rc}"
        _started.append(subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env,
                                         start_new_session=True))


def stop() -> None:
    """Ends runs still going when the session ends (an interrupted or failed session) and
    removes their folder."""
    import shutil

    if not _started:
        return
    for process in _started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    _started.clear()
    shutil.rmtree(folder(os.getpid()), ignore_errors=True)

"""The grid on a Ray cluster: each cell a Ray task that runs the cell's ``train.py`` on some node.

    python -m keras_softkd.grid --methods=ce,lsr --models=resnet20 --seeds=0-4 \\
        --output_root=/shared/runs --data_dir=/shared/data --ray_address=HEAD:6379 --gpus_per_cell=1

``keras_softkd.grid.cli`` imports this module only when ``--ray_address`` is given
(``pip install 'keras-softkd[cluster]'``). The grid keeps its meaning: the same
cells (:mod:`keras_softkd.grid.cells`), commands, folders, skipping, resuming,
conflicts, lines and report (:mod:`keras_softkd.grid.progress`) as the local
runner (:mod:`keras_softkd.grid.local`); only where each ``train.py`` runs changes.
Named ``on_ray``, not ``ray``: the real ``ray`` package is imported by its name.

Decisions:

* **One task per cell**, asking for ``--cpus_per_cell`` and ``--gpus_per_cell``
  (Ray sets ``CUDA_VISIBLE_DEVICES`` for the GPUs it grants), spread over the
  nodes (``SPREAD``). The task runs the same ``train.py`` command as the local
  runner, as a subprocess on its node, its output appended to the cell's
  ``train.log``; a first line names the node. CPU-only cells get
  ``--cpus_per_cell`` threads (``TF_NUM_INTRAOP_THREADS`` ...), as ``--jobs``
  gives each local cell its share of the cores.
* **Shared storage**: the driver writes a token file under ``--output_root``
  and each task first reads it back on its node; a node that cannot see it (no
  shared filesystem, another mount point, a same-named local folder) fails the
  cell at once with one line and trains nothing. The driver's working
  directory is the subprocess's too when the node has it (relative
  ``--output_root`` and ``--data_dir`` then mean what they mean locally).
* **Faults**: a task whose node or worker dies is run again by Ray
  (``--max_retries``, default 3) on a node that has the resources; the rerun
  uses the same ``--output_dir``, so ``train.py`` resumes from the cell's last
  epoch checkpoint and ends as an uninterrupted run. ``train.py`` dies with
  its task (Linux ``PR_SET_PDEATHSIG``), so a cancelled or orphaned task
  never keeps training into the folder a rerun uses.
* **Environment**: nodes have their own environment (``PATH``, GPUs); of the
  driver's, only the variables in ``FORWARDED`` are passed on.
* **Workers stay light**: the task's code is sent by value and uses only the
  standard library, so a Ray worker never imports Keras or TensorFlow; only
  its ``train.py`` does.
* **Ctrl-C** (or SIGTERM) cancels every task (``ray.cancel(force=True)``,
  which ends their ``train.py``) and ends the driver with one line and 130
  (143); run the same command again to go on. The signals are noted, not
  raised: an exception raised inside ``ray.wait`` surfaces as ``SystemError``.
* **Progress**: one line per finished cell with its figures, the node, how many
  remain, and the time left estimated from the finished cells' durations and
  the cells the cluster runs at once.
"""

from __future__ import annotations

import datetime
import math
import os
import pathlib
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

from keras_softkd._signals import StopSignals, exit_status
from keras_softkd.grid.cells import LOG_FILE, Cell, prepare_cell
from keras_softkd.grid.progress import headline, interrupted, summarize, tail, triage

__all__ = ["run", "FORWARDED"]

#: The driver's environment variables passed on to every ``train.py`` (when set).
FORWARDED = (
    "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "TF_DETERMINISTIC_OPS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS",
    "TFDS_DATA_DIR", "KERAS_SOFTKD_DATA_DIR",
)
_THREADS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
TOKEN_PREFIX = ".grid-ray-"
_PREFIX = "python -m keras_softkd.grid: error: "


# --------------------------------------------------------------------------
# On the node: the task (standard library only; sent to the workers by value)
# --------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``train.py`` gets SIGKILL when its task's process dies (Linux; elsewhere nothing)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def check_output_root(root: str, token_name: str, token: str, cwd: str) -> str:
    """``""`` when this node sees the driver's ``root`` (its token file), else one line saying so.

    Example:
        >>> import tempfile
        >>> check_output_root(tempfile.mkdtemp(), ".grid-ray-x", "x", "/")[:25]
        'cannot see --output_root='
    """
    path = os.path.join(cwd, root)
    try:
        with open(os.path.join(path, token_name)) as file:
            seen = file.read().strip()
    except OSError:
        seen = None
    if seen != token:
        return (f"cannot see --output_root={path} as the driver wrote it (no {token_name} there): "
                "the output root must be on storage every node mounts at the same path (NFS, a "
                "cluster filesystem)")
    if not os.access(path, os.W_OK):
        return f"cannot write to --output_root={path} (permissions on this node)"
    return ""


def cell_task(command: Sequence[str], output_dir: str, root: str, token_name: str, token: str,
              cwd: str, env: dict, threads: Optional[int]) -> dict:
    """Runs one cell's ``train.py`` on this node; ``{"code", "error", "node", "host", "seconds",
    "end"}`` (``end``: when it finished, as ``time.time()``).

    ``code`` is ``train.py``'s exit status (None when it never started, with
    ``error`` saying why in one line). Its output is appended to the cell's
    ``train.log``, after a line naming the node.
    """
    start = time.time()
    node = "-"  # called outside Ray (tests)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # never starts Ray itself
        node = sys.modules["ray"].get_runtime_context().get_node_id()
    host = socket.gethostname()
    result = {"code": None, "error": "", "node": node, "host": host, "seconds": 0.0}
    cwd = cwd if os.path.isdir(cwd) else os.path.abspath(os.sep)
    problem = check_output_root(root, token_name, token, cwd)
    for path, flag in ((command[0], "--python"), (command[1], "--train_script")):
        if not problem and not os.path.isfile(os.path.join(cwd, path)):
            problem = (f"has no {path} ({flag}): install the same environment at the same path "
                       "on every node")
    if problem:
        result["error"] = f"node {host} ({node[:8]}) {problem}"
        return result
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            if name not in env:  # Ray sets OMP_NUM_THREADS for its workers: the cell's share wins
                child_env[name] = str(threads)
    log_path = os.path.join(cwd, output_dir, "train.log")
    with open(log_path, "a") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} Ray node {node} ({host}), pid {os.getpid()}\n"
                  f"=== {stamp} {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=child_env, preexec_fn=_die_with_parent)
        try:
            result["code"] = process.wait()
        except BaseException:  # a cancelled task: its train.py stops too
            process.kill()
            process.wait()
            raise
    result["end"] = time.time()
    result["seconds"] = result["end"] - start
    return result


# --------------------------------------------------------------------------
# On the driver
# --------------------------------------------------------------------------


def run(
    cells: Sequence[Cell],
    output_root,
    address: str,
    *,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    max_retries: int = 3,
    resources: Optional[dict] = None,
    report: bool = True,
    out=None,
) -> int:
    """Runs the cells not done yet as Ray tasks on the cluster at ``address``, then the report.

    Args:
        cells: :func:`keras_softkd.grid.plan`'s cells.
        output_root: their folder, on storage every node mounts at the same path.
        address: ``HEAD:PORT``, ``"auto"`` or ``"local"`` (``ray.init``'s address).
        cpus_per_cell, gpus_per_cell: what each cell asks Ray for.
        max_retries: reruns of a cell whose node or worker died.
        resources: custom Ray resources each cell asks for (``{"big_gpu": 1}``).
        report, out: as :func:`keras_softkd.grid.local.run`.

    Returns:
        0 when every cell completed (and the report was written), 1 when a cell
        failed, conflicted or the report failed, 2 when Ray is missing or the
        cluster unreachable, 130 (Ctrl-C) or 143 (SIGTERM) when interrupted.
    """
    out = out or sys.stdout
    try:
        import ray
    except ImportError:
        print(f"{_PREFIX}--ray_address needs Ray: pip install 'keras-softkd[cluster]'.",
              file=sys.stderr)
        return 2
    problem = _unreachable(address)
    if problem:
        print(f"{_PREFIX}{problem}", file=sys.stderr)
        return 2
    counts, failed, to_run = triage(cells, out)
    if not to_run:
        return summarize(cells, counts, failed, output_root, report, out)

    root = pathlib.Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    token_file = root / f"{TOKEN_PREFIX}{token}"
    token_file.write_text(token + "\n")
    try:
        try:
            _connect(ray, address)
        except Exception as error:  # no cluster at "auto", a refused client address, ...
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"{_PREFIX}--ray_address={address}: cannot connect: {first[:300]}",
                  file=sys.stderr)
            return 2
        closing = ""
        try:
            status, closing = _run_tasks(
                ray, cells, to_run, counts, failed, root, token_file.name, token, cpus_per_cell,
                gpus_per_cell, max_retries, resources, report, out)
            return status
        finally:
            ray.shutdown()
            if closing:  # an interrupted grid's line, last: after what Ray prints on shutdown
                print(closing, file=sys.stderr, flush=True)
    finally:
        token_file.unlink(missing_ok=True)


def _unreachable(address: str) -> str:
    """One line when nothing listens at ``HOST:PORT`` (ray.init would retry for minutes)."""
    host, colon, port = address.rpartition(":")
    if not colon or address.startswith(("ray://", "http")) or not port.isdigit():
        return ""  # "auto", "local", a client address: ray.init says what is wrong
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as error:
        return (f"--ray_address={address}: no Ray head answers there ({error.strerror or error}); "
                "start one with `ray start --head --port=6379`.")
    return ""


def _connect(ray, address: str) -> None:
    import logging

    _plain_ray_messages()
    options = {"include_dashboard": False} if address == "local" else {}
    host = address.rpartition(":")[0]
    if host in ("127.0.0.1", "localhost"):  # a loopback cluster: this driver is on its machine
        options["_node_ip_address"] = "127.0.0.1"
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=True, **options)


#: Cut from Ray's messages to the driver: the raylet's log tail after a crash, and hints that
#: need ``ray[default]`` (``ray list nodes``, the dashboard), which the cluster extra leaves out.
_RAY_NOISE = (
    re.compile(r"\s*Last \d+ lines of the Raylet logs:.*", re.S),
    re.compile(r"\s*To see node death information, [^\n]*"),
)


def _plain_ray_messages() -> None:
    """Ray's messages to the driver (a node lost, a task retried) as plain text: no colour
    codes where stdout is not a terminal (``RAY_COLOR_PREFIX=0``, unless set), and
    without :data:`_RAY_NOISE` (``ray._private.worker.print_to_stdstream`` wrapped; left
    alone where Ray has no such function)."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    worker = sys.modules.get("ray._private.worker")
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "plain", False):
        return

    def plain(data, *args, **kwargs):
        lines = data.get("lines")
        if isinstance(lines, list):
            data = {**data, "lines": [_without_noise(line) for line in lines]}
        return original(data, *args, **kwargs)

    plain.plain = True
    worker.print_to_stdstream = plain


def _without_noise(message: str) -> str:
    """``message`` without :data:`_RAY_NOISE`.

    Example:
        >>> _without_noise("Task failed. To see node death information, use `ray list nodes`.")
        'Task failed.'
    """
    if not isinstance(message, str):
        return message
    for pattern in _RAY_NOISE:
        message = pattern.sub("", message)
    return message


def _run_tasks(ray, cells, to_run, counts, failed, root, token_name, token, cpus_per_cell,
               gpus_per_cell, max_retries, resources, report, out) -> tuple[int, str]:
    """``(exit status, closing line)``: the line of an interrupted grid, else ``""``."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import us
    forwarded = {name: os.environ[name] for name in FORWARDED if name in os.environ}
    threads = None if gpus_per_cell else max(1, int(cpus_per_cell))
    task = ray.remote(cell_task)
    options = dict(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, resources=resources or {},
                   max_retries=max_retries, retry_exceptions=False, scheduling_strategy="SPREAD")
    cwd = os.getcwd()
    pending = {}
    durations: list[float] = []
    # Ctrl-C and SIGTERM are noted, not raised: raised inside ray.wait, an exception surfaces
    # as SystemError. The loop sees them within its 0.5 s wait.
    with StopSignals() as stop:
        try:
            for where, cell, doing in to_run:
                if stop.signum is not None:
                    break
                prepare_cell(cell)
                log = cell.output_dir / LOG_FILE
                size = log.stat().st_size if log.exists() else 0
                name = f"grid {cell.model} {cell.column.name} seed{cell.seed}"
                ref = task.options(**options, name=name).remote(
                    list(cell.command), str(cell.output_dir), str(root), token_name, token, cwd,
                    forwarded, threads)
                pending[ref] = (where, cell, size)
                print(f"{where}: {doing} (queued) -> {log}", file=out, flush=True)
            if stop.signum is None:
                asks = {"CPU": cpus_per_cell, "GPU": gpus_per_cell, **(resources or {})}
                _describe(ray, len(pending), asks, out)
            while pending and stop.signum is None:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    where, cell, size = pending.pop(ref)
                    result = _result(ray, ref)
                    counts["ran"] += 1
                    attempts, seconds = _attempts(cell, size, result)
                    if seconds:
                        durations.append(seconds)
                    left = _left(len(pending), durations,
                                 _slots(ray, cpus_per_cell, gpus_per_cell, resources))
                    summary = _finished(where, cell, result, left, out, attempts, seconds)
                    if summary:
                        counts["failed"] += 1
                        failed.append(summary)
        except KeyboardInterrupt:  # Ctrl-C where no handler could be installed (a thread)
            stop.signum = signal.SIGINT
        if stop.signum is not None:
            stopped = _cancel(ray, pending)
            not_started = len(to_run) - counts["ran"] - len(stopped)
            return exit_status(stop.signum), interrupted(stop.signum, stopped, not_started)
    return summarize(cells, counts, failed, root, report, out), ""


def _describe(ray, cells: int, asks: dict, out) -> None:
    """Prints the cluster's size, and a warning when no node can hold a cell now."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    print(f"{cells} cells sent to the Ray cluster ({len(alive)} node{'s' * (len(alive) != 1)}, "
          f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs); each asks for "
          f"{asks['CPU']:g} CPU, {asks['GPU']:g} GPU.", file=out, flush=True)
    asked = {name: amount for name, amount in asks.items() if amount}
    def holds(node: dict) -> bool:
        return all(node.get("Resources", {}).get(name, 0) >= need for name, need in asked.items())

    if not any(holds(node) for node in alive):
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in asked.items())
        print(f"Warning: no node of the cluster has {wanted} now; the cells wait until one joins "
              "(or stop with Ctrl-C and lower --cpus_per_cell / --gpus_per_cell).", file=out,
              flush=True)


def _result(ray, ref) -> dict:
    try:
        return ray.get(ref)
    except Exception as error:  # retries used up (node lost again and again), or a Ray failure
        text = " ".join(str(error).split())
        return {"code": None, "error": f"{type(error).__name__}: {text[:300]}", "node": "-",
                "host": "?", "seconds": 0.0}


def _attempts(cell: Cell, size: int, result: dict) -> tuple[int, float]:
    """``(attempts, seconds)``: the cell's tries (Ray reruns a cell whose node died; each
    try's task writes a ``Ray node`` line to ``train.log`` past ``size``, its length when the
    cell was sent) and the time from the first one's start to the end of the last."""
    starts = []
    try:
        with open(cell.output_dir / LOG_FILE, "rb") as log:
            log.seek(size)
            for line in log.read().decode(errors="replace").splitlines():
                if line.startswith("=== ") and " Ray node " in line:
                    starts.append(line.split()[1])
    except OSError:
        pass
    if len(starts) < 2:
        return 1, result["seconds"]
    try:
        first = datetime.datetime.fromisoformat(starts[0]).timestamp()
    except ValueError:
        return len(starts), result["seconds"]
    return len(starts), max(result["seconds"], result.get("end", time.time()) - first)


def _finished(where: str, cell: Cell, result: dict, left: str, out, attempts: int = 1,
              seconds: Optional[float] = None) -> str:
    """Prints the cell's line; ``""`` when it completed, else what failed. ``attempts``,
    ``seconds``: :func:`_attempts`'s (a rerun cell's time is over all its attempts)."""
    node = f"{result['host']} {result['node'][:8]}"
    seconds = result["seconds"] if seconds is None else seconds
    took = (f"{seconds:.0f} s on {node}" if attempts < 2 else
            f"{_duration(seconds)} over {attempts} attempts, the last on {node}")
    if cell.state()[0] == "done":
        code = result["code"]
        note = "" if code == 0 else f"; train.py then exited with {code}, see {LOG_FILE}"
        print(f"{where}: {headline(cell)} ({took}{note}); {left}", file=out, flush=True)
        return ""
    if result["error"]:
        print(f"{where}: FAILED: {result['error']}; {left}", file=out, flush=True)
        return f"{cell.output_dir}: {result['error']}"
    log = cell.output_dir / LOG_FILE
    lines = "\n".join(f"      {line}" for line in tail(log, 8))
    print(f"{where}: FAILED (exit {result['code']}, {took}); {left}; "
          f"last lines of {log}:\n{lines}", file=out, flush=True)
    return f"{cell.output_dir}: train.py exited with {result['code']} on {node}"


def _slots(ray, cpus: float, gpus: float, resources: Optional[dict]) -> int:
    """How many cells the cluster runs at once now (at least 1)."""
    try:
        total = ray.cluster_resources()
    except Exception:
        return 1
    asks = {"CPU": cpus, "GPU": gpus, **(resources or {})}
    fits = [math.floor(total.get(name, 0) / need + 1e-9) for name, need in asks.items() if need]
    return max(1, min(fits)) if fits else 1


def _left(remaining: int, durations: Sequence[float], slots: int) -> str:
    """``"3 left, about 12 min"``: the mean finished cell's time per round of ``slots`` cells.

    Example:
        >>> _left(4, [600.0, 660.0], 2)
        '4 left, about 21 min'
        >>> _left(0, [5.0], 1)
        '0 left'
    """
    if not remaining:
        return "0 left"
    if not durations:
        return f"{remaining} left"
    seconds = sum(durations) / len(durations) * math.ceil(remaining / max(1, slots))
    return f"{remaining} left, about {_duration(seconds)}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def _cancel(ray, pending: dict) -> list[Cell]:
    """Cancels the tasks (killing their workers and so their ``train.py``); notes it in the logs
    of the cells that had started; returns those cells."""
    import threading

    def cancel_all():
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        try:
            ray.wait(list(pending), num_returns=len(pending), timeout=10)
        except Exception:
            pass

    # Bounded: a cancel that does not return (seen once, under load) must not keep the driver
    # alive; when the driver exits, Ray ends the tasks it owns anyway.
    canceller = threading.Thread(target=cancel_all, daemon=True)
    canceller.start()
    canceller.join(timeout=20)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    stopped = []
    for _, cell, size in pending.values():
        log = cell.output_dir / LOG_FILE
        try:
            if log.stat().st_size > size:  # its task wrote its first lines: it had started
                with open(log, "a") as file:
                    file.write(f"=== {stamp} stopped by the grid runner (Ray task cancelled)\n")
                stopped.append(cell)
        except OSError:
            pass
    return stopped

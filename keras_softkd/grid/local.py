"""The grid on this machine: each cell a ``train.py`` subprocess, ``--jobs`` at a time.

Each cell's output is appended to its ``train.log`` (and echoed with
``--stream``); ``--jobs=N`` gives each cell an N-th of the CPU cores
(``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``, ``OMP_NUM_THREADS``).
Ctrl-C or SIGTERM stops every running cell (SIGTERM to each ``train.py``, which saves
nothing more and exits) and ends the grid with one line and 130 or 143; the same command
resumes them.
"""

from __future__ import annotations

import datetime
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Optional, Sequence

from keras_softkd._signals import StopSignals, exit_status
from keras_softkd.grid.cells import LOG_FILE, Cell, prepare_cell
from keras_softkd.grid.progress import headline, interrupted, summarize, tail, triage

__all__ = ["run"]


def run(
    cells: Sequence[Cell],
    output_root,
    *,
    report: bool = True,
    stream: bool = False,
    out=None,
    jobs: int = 1,
) -> int:
    """Runs the cells not done yet, ``jobs`` ``train.py`` subprocesses at a time, then the report.

    Returns:
        0 when every cell completed (and the report was written), 1 when a
        cell failed, conflicted or the report failed, 130 or 143 when Ctrl-C or SIGTERM
        stopped it (every running cell is stopped; one line on stderr says where each one's
        checkpoint stands, and the same command resumes them).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"`jobs` must be an integer >= 1; got jobs={jobs!r}.")
    out = out or sys.stdout
    counts, failed, to_run = triage(cells, out)
    runner = _Runner(stream, out, _cell_environment(jobs))
    pool = futures.ThreadPoolExecutor(jobs, thread_name_prefix="keras_softkd_grid")
    with StopSignals() as stop:  # Ctrl-C and SIGTERM noted; the loop below stops on them
        try:
            pending = [pool.submit(runner.run, *job) for job in to_run]
            for future in pending:
                while stop.signum is None:  # a timed wait: the signal is seen within 0.5 s
                    try:
                        code, summary = future.result(timeout=0.5)
                        break
                    except futures.TimeoutError:
                        continue
                if stop.signum is not None:
                    break
                counts["ran"] += 1
                if code is not None:
                    counts["failed"] += 1
                    failed.append(summary)
        except KeyboardInterrupt:  # Ctrl-C where no handler could be installed (a thread)
            stop.signum = signal.SIGINT
        except BaseException:  # a cell's runner failed: stop the others
            runner.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        if stop.signum is not None:  # stop every cell, then say where each one stands
            order = {cell: i for i, (_, cell, _) in enumerate(to_run)}
            stopped = sorted(runner.stop(), key=order.get)
            pool.shutdown(wait=True, cancel_futures=True)
            print(interrupted(stop.signum, stopped, len(to_run) - runner.started), file=sys.stderr,
                  flush=True)
            return exit_status(stop.signum)
        pool.shutdown(wait=True)

    return summarize(cells, counts, failed, output_root, report, out)


def _cell_environment(jobs: int) -> dict[str, str]:
    """The environment of every ``train.py``: with ``jobs`` > 1, an equal share of the cores."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if jobs > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        share = str(max(1, (cores or 1) // jobs))
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            env.setdefault(name, share)
    return env


class _Runner:
    """Runs cells (from the pool's threads), prints their lines, and stops them all on demand."""

    def __init__(self, stream: bool, out, env: dict[str, str]):
        self.stream, self.out, self.env = stream, out, env
        self._lock = threading.Lock()
        self._processes: dict[subprocess.Popen, Cell] = {}
        self._stopping = False
        self.started = 0  # cells whose train.py was started

    @property
    def stopping(self) -> bool:
        return self._stopping

    def say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def run(self, where: str, cell: Cell, doing: str) -> tuple[Optional[int], str]:
        """``(None, "")`` when the cell completed, else ``(exit code, what failed)``."""
        self.say(f"{where}: {doing} -> {cell.output_dir / LOG_FILE}")
        start = time.perf_counter()
        code = _run_cell(cell, self)
        elapsed = time.perf_counter() - start
        if cell.state()[0] == "done":  # results.json written: the run is complete
            note = "" if code == 0 else f"; train.py then exited with {code}, see {LOG_FILE}"
            self.say(f"    {where}: {headline(cell)} ({elapsed:.0f} s{note})")
            return None, ""
        if self.stopping:  # terminated by stop(): the grid says "Interrupted"
            return code, f"{cell.output_dir}: stopped"
        lines = "\n".join(f"      {line}" for line in tail(cell.output_dir / LOG_FILE, 8))
        self.say(f"    {where}: FAILED (exit {code}, {elapsed:.0f} s); last lines of "
                 f"{cell.output_dir / LOG_FILE}:\n{lines}")
        return code, f"{cell.output_dir}: train.py exited with {code}"

    def start(self, cell: Cell) -> Optional[subprocess.Popen]:
        """The cell's process, or None once :meth:`stop` was called."""
        with self._lock:
            if self._stopping:
                return None
            process = subprocess.Popen(
                cell.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=self.env, bufsize=1, errors="replace",
            )
            self._processes[process] = cell
            self.started += 1
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.pop(process, None)

    def echo(self, prefix: str, line: str) -> None:
        if self.stream:
            with self._lock:
                self.out.write(prefix + line)
                self.out.flush()

    def stop(self) -> list[Cell]:
        """Terminates every running cell (then kills what has not exited after 30 s); the
        cells that were running, in the order they started."""
        with self._lock:
            self._stopping = True
            running = dict(self._processes)
        for process in running:
            if process.poll() is None:
                process.terminate()
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return list(running.values())


def _run_cell(cell: Cell, runner: _Runner) -> Optional[int]:
    """Runs ``cell``'s ``train.py``, its output appended to its ``train.log``; its exit code
    (None when the grid was stopped before it started)."""
    prepare_cell(cell)
    with open(cell.output_dir / LOG_FILE, "a") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} {shlex.join(cell.command)}\n")
        log.flush()
        process = runner.start(cell)
        if process is None:
            return None
        prefix = f"[{cell.model} {cell.column.name} seed{cell.seed}] "
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                runner.echo(prefix, line)
            code = process.wait()
        finally:
            runner.finished(process)
        if runner.stopping:
            log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} "
                      "stopped by the grid runner\n")
        return code

"""Run a grid of ``train.py`` runs (methods x models x seeds), resuming what is done, then report.

    python -m keras_softkd.grid --methods=ce,lsr,lsrkd,lsrkd_tc,mrkd1,mrkd3,mrkd3_tc,pseudo_kd \
        --models=resnet20 --seeds=0,1,2 --output_root=runs/cifar10_15ep \
        --flagfile=flags/quickstart.flags --epochs=15 --train_examples=50000 --data_dir=data/
    python -m keras_softkd.grid --methods=ce,lsr,mrkd3_tc --models=resnet56 --seeds=0-4 \
        --dataset=cifar100 --output_root=/shared/runs/w_table1 --data_dir=/shared/data \
        --ray_address=HEAD:6379 --gpus_per_cell=1 --cpus_per_cell=8

Every other ``--flag=value`` is passed to each ``train.py`` unchanged (after
the ``--flagfile``s, so it overrides them). ``--dry_run`` prints each cell's
state and command and runs nothing.

Decisions:

* **Columns (``--methods``)** are named as the flagfiles' columns
  (``flags/make_flagfiles.py``), the method table's column names
  (``keras_softkd.methods.parse_name``), and a name is also the column's folder:

  ==================  ============================================
  name                train.py flags
  ==================  ============================================
  ``ce`` ``lsr`` ...  ``--method=<name>`` (any of ``methods.names()``)
  ``mrkd<N>``         ``--method=mrkd --copies=<N>`` (MrKD-N)
  ``mrkd<N>_tc``      ``--method=mrkd_tc --copies=<N>`` (MrKD-N-TC)
  ``mrkd``            ``--method=mrkd`` (the paper's 3 copies)
  ==================  ============================================

  ``mrkd-3`` (the benchmarks' former spelling) is read as ``mrkd3``.

  Any name takes settings of its own after colons, ``name:key=value:...``
  (``lsr:alpha=0.2``, ``mrkd3_tc:gamma=0.5:kappa=2``): each becomes
  ``--key=value`` for that column only, and the folder is
  ``lsr_alpha0.2``, ``mrkd3_tc_gamma0.5_kappa2``. A key must be an
  ``ExperimentConfig`` field, and a method hyper-parameter one the method
  uses (``lsr:gamma=0.1`` is refused before anything runs).
* **Folders**: ``<output_root>/<model>/<column>/seed<seed>``, each holding
  ``train.py``'s files plus ``train.log`` (the run's stdout and stderr,
  appended on every attempt) and ``grid_cell.json`` (the ``train.py``
  arguments the cell was started with).
* **Order**: seed-major (every column and model of seed 0, then seed 1, ...),
  so an interrupted grid already has a one-seed table of everything.
* **Skipping and resuming**: a cell whose ``results.json`` says
  ``"completed": true`` is skipped; a cell with a checkpoint is started again
  with the same ``--output_dir``, which makes ``train.py`` resume from its last
  epoch. A cell started with other ``train.py`` arguments than the grid's
  now (another ``--epochs``, say; ``--data_dir`` and the flagfile's path are
  not compared, the flagfile's content is) is a *conflict*: it is neither
  skipped nor resumed, and the grid says so; use another ``--output_root``.
* **Runs**: each cell is a ``train.py`` subprocess, so a crash or a kill of
  one run loses only that run's current epoch. A failed cell does not stop
  the grid; the exit status is 1 when any cell failed, 130 when interrupted
  (run the same command again to go on; an interrupt stops every running cell).
* **``--jobs=N``** runs N cells at once (default 1), in the same order, and
  gives each an N-th of the CPU cores: ``TF_NUM_INTRAOP_THREADS``,
  ``TF_NUM_INTEROP_THREADS`` and ``OMP_NUM_THREADS`` (those not already set).
  On a CPU, small networks use cores better as separate runs than as threads
  of one: on 2 cores, two one-thread ResNet-20 runs trained 1.44x the images
  per second of one two-thread run (benchmarks/README.md). On GPUs, start one
  grid per device instead (``CUDA_VISIBLE_DEVICES``, disjoint ``--seeds``).
* **On a Ray cluster** (``--ray_address=HEAD:PORT``, ``pip install
  'keras-softkd[cluster]'``): the same grid, each cell a Ray task that runs the
  same ``train.py`` command on any node with the CPUs and GPUs it asks for
  (``--cpus_per_cell``, default 1; ``--gpus_per_cell``, default 0).
  ``--output_root`` must be on storage every node mounts at the same path: a
  node that cannot see it fails the cell at once. A cell whose node dies is run
  again elsewhere (``--max_retries``, default 3) and resumes from its last
  epoch. One line per finished cell with the cells left and the time left.
  ``keras_softkd._grid_ray`` holds it, and Ray is imported only with this flag.
* **Report**: at the end ``keras_softkd.report`` tabulates every completed run
  under ``output_root`` into ``<output_root>/report.md`` (test error, NLL, ECE:
  mean ± std over seeds) and plots ``<output_root>/curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Optional, Sequence

from keras_softkd import _io
from keras_softkd import methods as method_table  # plan()'s argument is `methods`
from keras_softkd.config import ExperimentConfig, UsageError

__all__ = ["Column", "Cell", "parse_column", "parse_seeds", "plan", "run", "main"]

RESULTS_FILE = "results.json"
LOG_FILE = "train.log"
CELL_FILE = "grid_cell.json"
REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"

# Set by the grid for each cell; given on the command line they would be overridden.
_GRID_FLAGS = {
    "method": "--methods",
    "model": "--models",
    "seed": "--seeds",
    "output_dir": "--output_root",
}
# Not part of a cell's setting: a moved data folder or flagfile is the same experiment.
_NOT_COMPARED = ("--data_dir", "--flagfile")
_FIELDS = {field.name for field in dataclasses.fields(ExperimentConfig)}


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the grid: a method with its own ``train.py`` flags."""

    name: str  # the folder name, e.g. "mrkd3_tc" or "lsr_alpha0.2"
    method: str  # a keras_softkd.methods.names() name
    flags: tuple[str, ...]  # e.g. ("--method=mrkd_tc", "--copies=3")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: a column, a model and a seed."""

    column: Column
    model: str
    seed: int
    output_dir: pathlib.Path
    command: tuple[str, ...]  # python train.py ...
    flagfile_sha256: Optional[str] = None

    @property
    def train_args(self) -> list[str]:
        """The ``train.py`` arguments (the command without the interpreter and script)."""
        return list(self.command[2:])

    def setting(self) -> dict:
        """What a restart must agree with (``grid_cell.json``)."""
        ignored = tuple(f"{flag}=" for flag in _NOT_COMPARED)
        args = [arg for arg in self.train_args if not arg.startswith(ignored)]
        return {"train_args": args, "flagfile_sha256": self.flagfile_sha256}

    def state(self) -> tuple[str, str]:
        """``(state, detail)``, state one of ``done resume new conflict broken``."""
        results = self.output_dir / RESULTS_FILE
        checkpoint = self.output_dir / "checkpoint" / "state.json"
        if results.exists() or checkpoint.exists():
            differ = self._differences()
            if differ:
                return "conflict", f"started with other train.py arguments: {differ}"
        if results.exists():
            try:
                completed = json.loads(results.read_text()).get("completed")
            except (ValueError, AttributeError, UnicodeDecodeError):
                completed = None
            if completed is True:
                return "done", ""
            return "broken", f"{results} is not a completed run; delete it to run the cell again"
        if checkpoint.exists():
            try:
                epoch = json.loads(checkpoint.read_text()).get("epoch")
            except (ValueError, AttributeError, UnicodeDecodeError):
                epoch = "?"
            return "resume", f"from epoch {epoch}"
        return "new", ""

    def _differences(self) -> str:
        recorded_file = self.output_dir / CELL_FILE
        if not recorded_file.exists():
            return ""  # made by train.py itself: nothing to compare with
        try:
            recorded = json.loads(recorded_file.read_text())
        except ValueError:
            return f"{recorded_file} is unreadable"
        now = self.setting()
        if recorded.get("flagfile_sha256") != now["flagfile_sha256"]:
            return "the flagfile's content changed"
        before, after = recorded.get("train_args", []), now["train_args"]
        removed = [a for a in before if a not in after]
        added = [a for a in after if a not in before]
        if not removed and not added:
            return ""
        return f"then {' '.join(removed) or '-'}, now {' '.join(added) or '-'}"


# --------------------------------------------------------------------------
# Parsing the grid
# --------------------------------------------------------------------------


def parse_column(spec: str) -> Column:
    """A ``--methods`` entry -> :class:`Column` (see the module docstring for the names).

    Example:
        >>> column = parse_column("mrkd3_tc:gamma=0.5")
        >>> column.name, column.method
        ('mrkd3_tc_gamma0.5', 'mrkd_tc')
        >>> column.flags
        ('--method=mrkd_tc', '--copies=3', '--gamma=0.5')
    """
    base, *settings = spec.strip().split(":")
    try:
        method, _ = method_table.parse_name(base)
    except ValueError as error:
        raise UsageError(f"--methods: {error}") from None
    flags = method_table.train_flags(base)
    name = method_table.canonical(base)  # mrkd-3 -> mrkd3
    given = {flag.split("=")[0][2:] for flag in flags}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key or not value:
            raise UsageError(f"--methods: {spec!r}: write settings as name:key=value:key=value.")
        if key not in _FIELDS or key in _GRID_FLAGS or key == "overwrite":
            raise UsageError(
                f"--methods: {spec!r}: {key!r} is not a per-column setting (a train.py flag "
                "other than method, model, seed and output_dir)."
            )
        uses = method_table.get(method).parameters
        if key in method_table.hyperparameters() and key not in uses:
            raise UsageError(
                f"--methods: {spec!r}: --{key} does not apply to --method={method} (it uses: "
                f"{', '.join(uses) or 'no hyper-parameter'})."
            )
        if key in given:
            raise UsageError(f"--methods: {spec!r} sets {key!r} twice.")
        given.add(key)
        flags.append(f"--{key}={value}")
        name += f"_{key}{re.sub(r'[^A-Za-z0-9.+-]', '-', value)}"
    return Column(name=name, method=method, flags=tuple(flags))


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` (or a mix, ``"0-2,7"``) -> ``[0, 1, 2]``.

    Example:
        >>> parse_seeds("0-2,7")
        [0, 1, 2, 7]
    """
    seeds: list[int] = []
    for part in _split(text):
        low, dash, high = part.partition("-")
        try:
            values = range(int(low), int(high) + 1) if dash else [int(part)]
        except ValueError:
            raise UsageError(f"--seeds: {part!r} is not a seed or a range like 0-4.") from None
        for seed in values:
            if seed < 0:
                raise UsageError(f"--seeds: seeds are integers >= 0; got {seed}.")
            if seed not in seeds:
                seeds.append(seed)
    if not seeds:
        raise UsageError("--seeds: give at least one seed.")
    return seeds


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _flag_name(arg: str) -> str:
    return arg.lstrip("-").split("=")[0]


def normalize_train_args(args: Sequence[str]) -> list[str]:
    """Pass-through ``train.py`` flags as ``--name=value`` (``--epochs 3`` -> ``--epochs=3``)."""
    out: list[str] = []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            raise UsageError(f"unexpected argument {arg!r}: pass train.py flags as --name=value.")
        if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("-"):
            arg = f"{arg}={args[i + 1]}"
            i += 1
        name = _flag_name(arg)
        if name in _GRID_FLAGS:
            raise UsageError(
                f"{arg}: the grid sets --{name} for each cell; use {_GRID_FLAGS[name]}."
            )
        if name in ("overwrite", "nooverwrite"):
            raise UsageError(
                f"{arg}: the grid never overwrites a finished run; delete the cell's folder (or "
                "use another --output_root) to run it again."
            )
        out.append("--" + arg.lstrip("-"))
        i += 1
    return out


def plan(
    methods: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    output_root,
    flagfiles: Sequence[str] = (),
    train_args: Sequence[str] = (),
    python: str = sys.executable,
    train_script: Optional[str] = None,
) -> list[Cell]:
    """The grid's cells, seed-major, each with its ``train.py`` command.

    Args:
        methods: column names (:func:`parse_column`), e.g. ``["ce", "mrkd3_tc"]``.
        models: network names (``keras_softkd.models.names()``) or, with a GLUE
            ``--dataset``, text models (:func:`model_folder` names their folders).
        seeds: integer seeds.
        output_root: the folder of the grid's runs.
        flagfiles: absl flagfiles given to every run first (a preset such as
            ``flags/quickstart.flags``, without method flags).
        train_args: more ``train.py`` flags for every run (``--epochs=15``).
        python: the interpreter that runs ``train.py``.
        train_script: ``train.py``'s path (default: the repository's).

    Raises:
        UsageError: an unknown method, model, setting or seed, a flag the grid
            sets itself, a hyper-parameter that a column's method does not
            use, a missing flagfile or ``train.py``.
    """
    columns = [parse_column(spec) for spec in methods]
    names = [column.name for column in columns]
    if not columns or len(set(names)) != len(names):
        raise UsageError(f"--methods: give distinct columns; got {', '.join(names) or 'none'}.")
    models = list(models)
    if not models or len(set(models)) != len(models):
        raise UsageError(f"--models: give distinct networks; got {', '.join(models) or 'none'}.")
    _check_models(models)
    seeds = list(seeds)
    train_args = normalize_train_args(train_args)
    for arg in train_args:
        name = _flag_name(arg)
        for column in columns:
            uses = method_table.get(column.method).parameters
            if name in method_table.hyperparameters() and name not in uses:
                raise UsageError(
                    f"{arg} does not apply to column {column.name} (--method={column.method}); "
                    f"give it only to the columns that use it, in --methods as NAME:{name}=VALUE."
                )
    script = pathlib.Path(train_script) if train_script else _default_train_script()
    if not script.is_file():
        raise UsageError(
            f"--train_script: {script} does not exist (the default is the train.py of the "
            "repository the package was installed from); pass --train_script=path/to/train.py."
        )
    digest = hashlib.sha256()
    flagfile_args = []
    for flagfile in flagfiles:
        path = pathlib.Path(flagfile)
        if not path.is_file():
            raise UsageError(f"--flagfile={flagfile}: no such file.")
        digest.update(path.read_bytes())
        flagfile_args.append(f"--flagfile={path.resolve()}")
    flagfile_sha256 = digest.hexdigest() if flagfiles else None

    root = pathlib.Path(output_root)
    cells = []
    for seed in seeds:
        for model in models:
            for column in columns:
                output_dir = root / model_folder(model) / column.name / f"seed{seed}"
                command = (
                    python, str(script), *flagfile_args, *train_args, *column.flags,
                    f"--model={model}", f"--seed={seed}", f"--output_dir={output_dir}",
                )
                cells.append(Cell(column, model, seed, output_dir, command, flagfile_sha256))
    return cells


def _default_train_script() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[1] / "train.py"


def _check_models(names: Sequence[str]) -> None:
    from keras_softkd import models  # imports Keras: only once the cheap checks passed
    from keras_softkd.config import TEXT_MODELS

    valid = [*models.names(), *TEXT_MODELS]  # text models: with --dataset=<a GLUE task>
    for name in names:
        if name not in valid and not _text_preset(name):
            raise UsageError(
                f"--models: {name!r} is not a network; choose from {', '.join(valid)}, a "
                "KerasHub text classifier preset (roberta_large_en, ...), an hf:// or kaggle:// "
                "handle, or a local preset directory."
            )
    folders = [model_folder(name) for name in names]
    if len(set(folders)) != len(folders):
        raise UsageError(
            f"--models: {', '.join(names)} would share output folders ({', '.join(folders)}); "
            "give presets whose last path parts differ."
        )


def _text_preset(name: str) -> bool:
    """A text model that ``train.py --dataset=<GLUE task>`` builds (``models.text``): a
    local preset directory, a ``hf://``/``kaggle://`` handle, or a KerasHub text
    classifier preset (known to the installed KerasHub, no download)."""
    if os.path.isdir(name) or name.startswith(("hf://", "kaggle://")):
        return True
    try:
        from keras_softkd.models.text import keras_hub

        return name in keras_hub().models.TextClassifier.presets
    except ImportError:  # no KerasHub: only the named models are known
        return False


def model_folder(model: str) -> str:
    """The grid's folder for a model: its name, or a preset path's or handle's last part.

    Example:
        >>> model_folder("resnet20"), model_folder("hf://distilbert/distilroberta-base")
        ('resnet20', 'distilroberta-base')
        >>> model_folder("/data/presets/my_roberta/")
        'my_roberta'
    """
    last = model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", last) or "model"


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------


class _Terminated(Exception):
    """SIGTERM, turned into an exception so that the running cell is stopped cleanly."""


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
        cell failed, conflicted or the report failed, 130 when interrupted.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"`jobs` must be an integer >= 1; got jobs={jobs!r}.")
    out = out or sys.stdout
    counts, failed, to_run = triage(cells, out)
    runner = _Runner(stream, out, _cell_environment(jobs))
    previous_handler = _install_sigterm()
    pool = futures.ThreadPoolExecutor(jobs, thread_name_prefix="keras_softkd_grid")
    try:
        pending = [pool.submit(runner.run, *job) for job in to_run]
        for future in pending:
            while True:  # a timed wait, so that Ctrl-C and SIGTERM reach this thread
                try:
                    code, summary = future.result(timeout=0.5)
                    break
                except futures.TimeoutError:
                    continue
            counts["ran"] += 1
            if code is not None:
                counts["failed"] += 1
                failed.append(summary)
    except BaseException as error:  # Ctrl-C, SIGTERM, or a cell's runner failed: stop them all
        runner.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        if not isinstance(error, (KeyboardInterrupt, _Terminated)):
            raise
        print("\nInterrupted: run the same command again to resume.", file=out, flush=True)
        return 130
    finally:
        pool.shutdown(wait=True)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    return summarize(cells, counts, failed, output_root, report, out)


def triage(cells: Sequence[Cell], out
           ) -> tuple[dict[str, int], list[str], list[tuple[str, Cell, str]]]:
    """Prints the cells that are done or cannot run; ``(counts, failed, to_run)``.

    ``to_run`` holds ``(where, cell, doing)``: the cell's ``[i/n] model column
    seed`` label and ``"running"`` or ``"resuming from epoch N"``. Shared by the
    local runner and the Ray one (``keras_softkd._grid_ray``).
    """
    counts = {"done": 0, "ran": 0, "failed": 0}
    failed: list[str] = []
    to_run = []
    for index, cell in enumerate(cells, 1):
        state, detail = cell.state()
        where = f"[{index}/{len(cells)}] {cell.model} {cell.column.name} seed{cell.seed}"
        if state == "done":
            counts["done"] += 1
            print(f"{where}: done, skipped", file=out, flush=True)
        elif state in ("conflict", "broken"):
            counts["failed"] += 1
            failed.append(f"{cell.output_dir}: {state}: {detail}")
            print(f"{where}: {state}, not run: {detail}", file=out, flush=True)
        else:
            to_run.append((where, cell, "resuming " + detail if state == "resume" else "running"))
    return counts, failed, to_run


def summarize(cells: Sequence[Cell], counts: dict[str, int], failed: Sequence[str], output_root,
              report: bool, out) -> int:
    """The closing lines and the report; the exit status (0, or 1 if a cell or the report failed)."""
    print(f"\n{len(cells)} cells: {counts['done']} already done, {counts['ran']} run, "
          f"{counts['failed']} failed.", file=out)
    for line in failed:
        print(f"  {line}", file=out)
    status = 1 if failed else 0
    if report:
        status = max(status, write_report(output_root, out))
    out.flush()
    return status


def prepare_cell(cell: Cell) -> None:
    """Creates the cell's folder and records its setting (``grid_cell.json``) on its first start."""
    cell.output_dir.mkdir(parents=True, exist_ok=True)
    if not (cell.output_dir / CELL_FILE).exists():
        _io.write_json_atomic(cell.output_dir / CELL_FILE, cell.setting())


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
        self._processes: set[subprocess.Popen] = set()
        self._stopping = False

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
            self.say(f"    {where}: {_headline(cell)} ({elapsed:.0f} s{note})")
            return None, ""
        if self.stopping:  # terminated by stop(): the grid says "Interrupted"
            return code, f"{cell.output_dir}: stopped"
        lines = "\n".join(f"      {line}" for line in _tail(cell.output_dir / LOG_FILE, 8))
        self.say(f"    {where}: FAILED (exit {code}, {elapsed:.0f} s); last lines of "
                 f"{cell.output_dir / LOG_FILE}:\n{lines}")
        return code, f"{cell.output_dir}: train.py exited with {code}"

    def start(self, command: Sequence[str]) -> Optional[subprocess.Popen]:
        """The cell's process, or None once :meth:`stop` was called."""
        with self._lock:
            if self._stopping:
                return None
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=self.env, bufsize=1, errors="replace",
            )
            self._processes.add(process)
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def echo(self, prefix: str, line: str) -> None:
        if self.stream:
            with self._lock:
                self.out.write(prefix + line)
                self.out.flush()

    def stop(self) -> None:
        """Terminates every running cell (then kills what has not exited after 30 s)."""
        with self._lock:
            self._stopping = True
            processes = list(self._processes)
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _install_sigterm():
    def terminate(signum, frame):
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (e.g. inside some notebook runners)
        return None


def _run_cell(cell: Cell, runner: _Runner) -> Optional[int]:
    """Runs ``cell``'s ``train.py``, its output appended to its ``train.log``; its exit code
    (None when the grid was stopped before it started)."""
    prepare_cell(cell)
    with open(cell.output_dir / LOG_FILE, "a") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} {shlex.join(cell.command)}\n")
        log.flush()
        process = runner.start(cell.command)
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


def _headline(cell: Cell) -> str:
    results = json.loads((cell.output_dir / RESULTS_FILE).read_text())
    if results.get("diverged") or results.get("test_error") is None:
        return "diverged: no finite test logits (recorded, not run again)"
    glue = (f"dev {results['glue_metric']} {results['glue_score']:.2f} | "
            if results.get("glue_score") is not None else "")  # a GLUE run's headline
    return (f"{glue}test error {100 * results['test_error']:.2f}% | NLL {results['test_nll']:.4f} | "
            f"ECE {100 * results['test_ece']:.2f}%")


def _tail(path: pathlib.Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def write_report(output_root, out=None) -> int:
    """Tables and curves of every completed run under ``output_root``; 0 if written."""
    from keras_softkd import report

    out = out or sys.stdout
    root = pathlib.Path(output_root)
    try:
        runs = report.collect([root]) if root.exists() else report.Runs()
        if not runs:
            print(f"No completed run under {root}: no report.", file=out)
            return 1
        text = report.table_all(runs)
        _io.write_text_atomic(root / REPORT_FILE, text)
        report.plot_curves(runs, root / CURVES_FILE)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"Report failed: {error}", file=out)
        return 1
    print(f"\n{text}\nWrote {root / REPORT_FILE} and {root / CURVES_FILE}", file=out)
    return 0


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m keras_softkd.grid --methods=.. --output_root=DIR [--models=..] [flags]``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_softkd.grid",
        description="Run methods x models x seeds as train.py subprocesses (--jobs at a time), "
        "skipping completed cells and resuming interrupted ones; then tabulate them. "
        "Other --flag=value arguments go to every train.py run.",
        epilog=f"Columns: {' '.join(method_table.names())}, "
        f"{' and '.join(method_table.counted_columns())} (N copies), each "
        "optionally with :key=value settings (lsr:alpha=0.2).",
        allow_abbrev=False,  # --model=... must not be taken for --models
    )
    parser.add_argument("--methods", required=True,
                        help="comma-separated columns, e.g. ce,lsr,mrkd1,mrkd3,mrkd3_tc")
    parser.add_argument("--models", default="resnet20", help="comma-separated networks")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds or ranges (0-2)")
    parser.add_argument("--output_root", required=True, help="folder of the grid's runs")
    parser.add_argument("--flagfile", action="append", default=[],
                        help="a train.py flagfile for every run (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print the cells and commands only")
    parser.add_argument("--stream", action="store_true",
                        help="also echo each run's output here (it always goes to train.log)")
    parser.add_argument("--no_report", action="store_true", help="skip the final report")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run at once, each with an equal share of the CPU cores")
    parser.add_argument("--python", default=sys.executable, help="interpreter for train.py")
    parser.add_argument("--train_script", default=None, help="path of train.py")
    cluster = parser.add_argument_group(
        "on a Ray cluster", "each cell a Ray task on any node; --output_root must be on storage "
        "every node mounts at the same path (pip install 'keras-softkd[cluster]')")
    cluster.add_argument("--ray_address", default=None,
                         help="the cluster's HEAD:PORT, 'auto' (the one `ray start` runs here) or "
                         "'local' (start Ray on this machine only)")
    cluster.add_argument("--cpus_per_cell", type=float, default=None,
                         help="CPUs each cell asks Ray for (default 1)")
    cluster.add_argument("--gpus_per_cell", type=float, default=None,
                         help="GPUs each cell asks Ray for (default 0)")
    cluster.add_argument("--max_retries", type=int, default=None,
                         help="times Ray reruns a cell whose node or worker died (default 3); "
                         "the rerun resumes from the cell's last epoch")
    args, train_args = parser.parse_known_args(argv)
    try:
        cells = plan(
            _split(args.methods), _split(args.models), parse_seeds(args.seeds), args.output_root,
            flagfiles=args.flagfile, train_args=train_args, python=args.python,
            train_script=args.train_script,
        )
    except UsageError as error:
        print(f"python -m keras_softkd.grid: error: {error}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"python -m keras_softkd.grid: error: --jobs must be an integer >= 1; got "
              f"--jobs={args.jobs}.", file=sys.stderr)
        return 2
    problem = _cluster_usage(args)
    if problem:
        print(f"python -m keras_softkd.grid: error: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell in cells:
            state, detail = cell.state()
            print(f"# {cell.model} {cell.column.name} seed{cell.seed}: {state}"
                  + (f" ({detail})" if detail else ""))
            print(shlex.join(cell.command))
        return 0
    if args.ray_address is not None:
        from keras_softkd import _grid_ray  # imports Ray: only when asked for

        return _grid_ray.run(
            cells, args.output_root, args.ray_address, report=not args.no_report,
            cpus_per_cell=1.0 if args.cpus_per_cell is None else args.cpus_per_cell,
            gpus_per_cell=args.gpus_per_cell or 0.0,
            max_retries=3 if args.max_retries is None else args.max_retries,
        )
    return run(cells, args.output_root, report=not args.no_report, stream=args.stream,
               jobs=args.jobs)


def _cluster_usage(args: argparse.Namespace) -> str:
    """What is wrong with the Ray flags (one line), or ``""``."""
    given = [f"--{name}" for name in ("cpus_per_cell", "gpus_per_cell", "max_retries")
             if getattr(args, name) is not None]
    if args.ray_address is None:
        if given:
            return (f"{given[0]} applies to cells on a Ray cluster only: add "
                    "--ray_address=HEAD:PORT (or use --jobs to run several cells on this machine).")
        return ""
    if not args.ray_address.strip():
        return "--ray_address: give HEAD:PORT, 'auto' or 'local'; got an empty address."
    if args.jobs != 1:
        return ("--jobs is for cells on this machine; on a Ray cluster each cell asks for "
                "--cpus_per_cell and --gpus_per_cell and Ray runs as many as the cluster holds.")
    if args.stream:
        return ("--stream is for cells on this machine; on a Ray cluster each cell's output is in "
                "its train.log under --output_root.")
    if args.cpus_per_cell is not None and not args.cpus_per_cell > 0:
        return f"--cpus_per_cell must be a number > 0; got --cpus_per_cell={args.cpus_per_cell:g}."
    if args.gpus_per_cell is not None and not args.gpus_per_cell >= 0:
        return f"--gpus_per_cell must be a number >= 0; got --gpus_per_cell={args.gpus_per_cell:g}."
    if args.max_retries is not None and args.max_retries < 0:
        return f"--max_retries must be an integer >= 0; got --max_retries={args.max_retries}."
    return ""


if __name__ == "__main__":
    sys.exit(main())

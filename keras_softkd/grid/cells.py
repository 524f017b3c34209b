"""The grid's cells: columns, models and seeds -> one ``train.py`` command and folder each.

:func:`plan` turns ``--methods``, ``--models``, ``--seeds``, flagfiles and
pass-through flags into :class:`Cell` s, seed-major; a :class:`Cell` knows its
folder (``<output_root>/<model>/<column>/seed<seed>``), its command, and its
state on disk (done, resume, new, conflict, broken); :func:`prepare_cell`
creates its folder and records its setting (``grid_cell.json``). Both runners
(:mod:`keras_softkd.grid.local`, :mod:`keras_softkd.grid.on_ray`) run these
cells; the naming and resuming rules are in :mod:`keras_softkd.grid`'s docstring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import sys
from typing import Optional, Sequence

from keras_softkd import _io
from keras_softkd import methods as method_table  # plan()'s argument is `methods`
from keras_softkd.config import ExperimentConfig
from keras_softkd.errors import UsageError

__all__ = [
    "CELL_FILE", "LOG_FILE", "RESULTS_FILE", "Cell", "Column", "model_folder",
    "normalize_train_args", "parse_column", "parse_seeds", "plan", "prepare_cell", "split_list",
]

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
            epoch = self.checkpoint_epoch()
            return "resume", f"from epoch {'?' if epoch is None else epoch}"
        return "new", ""

    def checkpoint_epoch(self) -> Optional[int]:
        """The epochs the cell's checkpoint holds, where its ``train.py`` resumes (0: no
        checkpoint yet; None: unreadable)."""
        checkpoint = self.output_dir / "checkpoint" / "state.json"
        try:
            return int(json.loads(checkpoint.read_text())["epoch"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

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
    for part in split_list(text):
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


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated flag's entries."""
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
    return pathlib.Path(__file__).resolve().parents[2] / "train.py"


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


def prepare_cell(cell: Cell) -> None:
    """Creates the cell's folder and records its setting (``grid_cell.json``) on its first start."""
    cell.output_dir.mkdir(parents=True, exist_ok=True)
    if not (cell.output_dir / CELL_FILE).exists():
        _io.write_json_atomic(cell.output_dir / CELL_FILE, cell.setting())

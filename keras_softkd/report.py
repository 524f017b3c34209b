"""Many runs -> the papers' tables (mean ± std over seeds) and test-error curves.

A run is an output directory of ``train.py`` holding ``results.json`` (the
final metrics and the run's setting) and ``history.csv`` (Keras'
``CSVLogger``: one row per epoch, ``val_*`` being the test set)::

    python -m keras_softkd.report runs/ [more_runs/ ...] [--markdown out.md] [--plot [curves.png]]

(``--plot`` alone writes ``curves.png`` in the first run folder, beside the results;
``--layout=p_table2`` and ``--layout=p_table3`` give the Pseudo-KD paper's Table 2
(:func:`p_table2`) and its GLUE Table 3 (:func:`p_table3`) instead of the tables.)

or from Python::

    from keras_softkd import report
    runs = report.collect(["runs/"])
    print(report.table(runs, metric="test_error"))
    report.plot_curves(runs, "curves.png")

Decisions:

* **Cells.** ``mean ± std (n)`` over seeds, ``std`` the sample standard
  deviation (``ddof=1``), ``n`` the number of seeds; a single seed shows as
  ``mean (1)``; a cell without runs is ``—``. Errors and ECE are shown in
  percent with 2 decimals, NLL in nats with 3 decimals. A run whose metric is
  ``null`` (e.g. ``test_top5_error`` with fewer than 5 classes) does not count.
* **Columns** are methods in the papers' order, named as in the MrKD paper's
  Table 1: ``Baseline`` (``ce``), ``LSR``, ``LsrKD``, ``LsrKD-TC``,
  ``MrKD-n`` and ``MrKD-n-TC`` (``n`` = ``copies``, one column per ``n``,
  ascending), ``Pseudo-KD``, ``KD``; any other method follows, by name. Order
  and labels are the method table's (``keras_softkd.methods``).
* **One setting per cell.** A cell averages seeds of *one* setting. Two runs
  of a cell with the same seed, or differing in ``epochs`` or a
  hyper-parameter the method uses (e.g. two ``gamma`` for ``mrkd_tc``, two
  learning rates), raise ``ValueError`` naming both files, rather than
  silently mixing a sweep into one mean: pass the directories of one setting,
  or tabulate by the differing key (``table(runs, columns="gamma")``).
  Hyper-parameters a method ignores (``gamma`` for ``ce``) are not compared.
* **Incomplete runs** (``"completed": false``) are skipped and counted in
  :attr:`Runs.skipped`; a malformed ``results.json`` raises ``ValueError``
  naming the file.
* **Paired differences.** A seed fixes a run's initial weights and its data
  order and augmentation, whatever the method, so methods run with the same
  seed start alike. :func:`differences` tabulates each method minus the
  baseline on the same seed: mean ± std over the seeds both have. Pairing
  removes the seeds' differences in starting point and data order, not the
  divergence of two trajectories: whether its std is smaller than the cells'
  in :func:`table` is an empirical matter (in docs/results.md's 15-epoch
  reproduction it is not).
* **Curves.** A resumed run's ``history.csv`` may repeat epochs (``CSVLogger``
  appends from the resumed epoch): the last row of each epoch wins.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import pathlib
import re
import sys
import warnings
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from keras_softkd import _io, methods
from keras_softkd.data.glue import GLUE_TASKS

__all__ = [
    "Runs",
    "collect",
    "read_history",
    "table",
    "differences",
    "table_all",
    "p_table2",
    "p_table3",
    "plot_curves",
    "main",
]

PathLike = Union[str, os.PathLike]

RESULTS_FILE = "results.json"
PLOT_FILE = "curves.png"  # ``--plot`` without a file name: beside the results
HISTORY_FILE = "history.csv"

METHOD_ORDER = tuple(methods.names())
DATASET_ORDER = ("cifar10", "cifar100", "cinic10")

# The distillation hyper-parameters each method reads; the others it ignores
# (and a cell does not compare them). Training hyper-parameters (lr, ...)
# always matter. An unknown method compares them all.
_DISTILLATION_KEYS = tuple(k for k in methods.hyperparameters() if k != "teacher")
_METHOD_USES = {
    name: tuple(k for k in methods.get(name).parameters if k != "teacher") for name in METHOD_ORDER
}

# metric -> (title, scale, decimals)
METRICS = {
    "test_error": ("Top-1 test error (%)", 100.0, 2),
    "test_top5_error": ("Top-5 test error (%)", 100.0, 2),
    "test_nll": ("Test negative log-likelihood (nats)", 1.0, 3),
    "test_ece": ("Test expected calibration error (%, 15 bins)", 100.0, 2),
    "test_accuracy": ("Top-1 test accuracy (%)", 100.0, 2),
    # A GLUE run's headline (already in %): the task's first metric on its first dev split.
    "glue_score": ("GLUE dev score (%: Matthews correlation on CoLA, else accuracy; P Table 3)",
                   1.0, 2),
}
TABLE_ALL_METRICS = ("test_error", "test_nll", "test_ece")
LAYOUTS = ("tables", "p_table2", "p_table3")  # the command line's --layout

MISSING = "—"

_REQUIRED = {"method": str, "dataset": str, "model": str, "seed": int}

_log = logging.getLogger(__name__)


class Runs(list):
    """The runs :func:`collect` found: a ``list`` of ``results.json`` dicts.

    Each dict is the file's content plus ``"run_dir"``, the run's directory.

    Attributes:
        skipped: the ``results.json`` files skipped as incomplete
            (``"completed": false``).
    """

    def __init__(self, runs: Iterable[dict] = (), skipped: Iterable[pathlib.Path] = ()):
        super().__init__(runs)
        self.skipped = list(skipped)


# --------------------------------------------------------------------------
# Collecting runs
# --------------------------------------------------------------------------


def collect(paths: Sequence[PathLike]) -> Runs:
    """Loads every completed run's ``results.json`` under ``paths``.

    Args:
        paths: run directories, directories of runs (searched recursively), or
            ``results.json`` files.

    Returns:
        A :class:`Runs` list of dicts, sorted by file path; ``.skipped`` lists
        the incomplete runs left out.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a ``results.json`` is not valid JSON, not an object, or
            lacks ``completed``, ``method``, ``dataset``, ``model`` or ``seed``
            (or has them of the wrong type); the message names the file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: dict[pathlib.Path, None] = {}
    for path in paths:
        path = pathlib.Path(path)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(path.rglob(RESULTS_FILE))
        else:
            raise FileNotFoundError(f"{path}: no such run directory or file.")
        for file in found:
            files.setdefault(file.resolve(), None)

    runs, skipped = [], []
    for file in sorted(files):
        run = _load_results(file)
        if run is None:
            skipped.append(file)
        else:
            runs.append(run)
    if skipped:
        _log.info("Skipped %d incomplete run(s): %s", len(skipped), [str(f) for f in skipped])
    return Runs(runs, skipped)


def _load_results(file: pathlib.Path) -> Optional[dict]:
    """The run's dict, or ``None`` for an incomplete run."""
    try:
        run = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: malformed {RESULTS_FILE}, not valid JSON: {error}") from None
    if not isinstance(run, dict):
        raise ValueError(
            f"{file}: malformed {RESULTS_FILE}, expected a JSON object, got "
            f"{type(run).__name__}."
        )
    if not isinstance(run.get("completed"), bool):
        raise ValueError(
            f"{file}: malformed {RESULTS_FILE}, `completed` must be true or false; got "
            f"{run.get('completed', '<missing>')!r}."
        )
    if not run["completed"]:
        return None
    for key, kind in _REQUIRED.items():
        value = run.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"{file}: malformed {RESULTS_FILE}, `{key}` must be a {kind.__name__}; got "
                f"{value if key in run else '<missing>'!r}."
            )
    hyperparameters = run.get("hyperparameters")
    if hyperparameters is None:
        run["hyperparameters"] = {}
    elif not isinstance(hyperparameters, dict):
        raise ValueError(
            f"{file}: malformed {RESULTS_FILE}, `hyperparameters` must be an object; got "
            f"{hyperparameters!r}."
        )
    _upgrade_precision(run["hyperparameters"])
    run["run_dir"] = str(file.parent)
    return run


def _upgrade_precision(hyperparameters: dict) -> None:
    """A results.json written before ``--precision``: its ``mixed_precision`` (a boolean)
    read as ``precision``, and ``teacher_precision`` the only value there was (``same``), so
    its seeds share a cell with the same setting's newer runs; likewise the keys of
    :data:`_ADDED_LATER`."""
    mixed = hyperparameters.pop("mixed_precision", False)  # older still: neither key, float32
    hyperparameters.setdefault("precision", "mixed_float16" if mixed else "float32")
    hyperparameters.setdefault("teacher_precision", "same")
    for key, before in _ADDED_LATER.items():  # a flag added later: older runs ran its default
        hyperparameters.setdefault(key, before)


#: Hyper-parameters results.json gained after its first runs, with the value those runs had.
_ADDED_LATER = {"keep_best": False}


def read_history(run_dir: PathLike) -> dict[str, np.ndarray]:
    """A run's ``history.csv`` as ``{column: float array}``, one entry per epoch.

    Rows are sorted by ``epoch`` (0-based, as Keras writes it); a repeated
    epoch (a resumed run) keeps its last row. Empty cells are NaN.

    Raises:
        FileNotFoundError: no ``history.csv`` in ``run_dir``.
        ValueError: the file has no rows, no ``epoch`` column, or a value that
            is not a number; the message names the file.
    """
    file = pathlib.Path(run_dir) / HISTORY_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (every completed run writes one).")
    with open(file, newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
        columns = list(reader.fieldnames or ())
    if "epoch" not in columns or not rows:
        raise ValueError(f"{file}: malformed {HISTORY_FILE}, needs an `epoch` column and rows.")
    by_epoch: dict[int, dict[str, str]] = {}
    try:
        for row in rows:
            by_epoch[int(float(row["epoch"]))] = row
        epochs = sorted(by_epoch)
        return {
            column: np.array(
                [_to_float(by_epoch[epoch].get(column)) for epoch in epochs], dtype=np.float64
            )
            for column in columns
        }
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file}: malformed {HISTORY_FILE}: {error}") from None


def _to_float(value: Optional[str]) -> float:
    return math.nan if value is None or value.strip() == "" else float(value)


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def table(
    runs: Sequence[Mapping[str, Any]],
    metric: str = "test_error",
    group_by: Sequence[str] = ("dataset", "model"),
    columns: str = "method",
) -> str:
    """A Markdown table of ``metric``: mean ± sample std over seeds, and ``n``.

    Args:
        runs: run dicts, as :func:`collect` returns them.
        metric: a key of ``results.json``: ``test_error``, ``test_top5_error``,
            ``test_ece`` (shown in %, 2 decimals), ``test_nll`` (3 decimals), or
            any other numeric key (3 decimals).
        group_by: the keys that make a row; a key is looked up in the run, then
            in its ``hyperparameters``.
        columns: the key that makes a column. ``"method"`` gives the papers'
            columns (``Baseline``, ``LSR``, ..., ``MrKD-3``, ``MrKD-3-TC``, ...);
            another key gives ``key=value`` columns, sorted by value.

    Returns:
        The table, rows sorted (datasets CIFAR-10, CIFAR-100, CINIC-10 first,
        then names in natural order: ``resnet20 < resnet56 < resnet110``).

    Raises:
        ValueError: no runs; two runs of a cell share a seed or differ in their
            setting (see the module docstring); a metric value is not a number.

    Example:
        >>> runs = [
        ...     {"method": m, "dataset": "cifar10", "model": "resnet20", "seed": s,
        ...      "test_error": e, "hyperparameters": {}}
        ...     for m, s, e in [("ce", 0, 0.1), ("ce", 1, 0.12), ("lsr", 0, 0.09)]
        ... ]
        >>> print(table(runs))
        | dataset | model    | Baseline         | LSR      |
        | ------- | -------- | ---------------- | -------- |
        | cifar10 | resnet20 | 11.00 ± 1.41 (2) | 9.00 (1) |
    """
    group_by, rows, labels = _grid(runs, group_by, columns)
    header = [*group_by, *labels.values()]
    body = []
    for row, cells in rows.items():
        line = [_display(value) for value in row]
        for column in labels:
            line.append(_format_cell(list(_metric_by_seed(cells[column], metric).values()), metric))
        body.append(line)
    return _markdown([header, *body])


def differences(
    runs: Sequence[Mapping[str, Any]],
    metric: str = "test_error",
    baseline: str = "ce",
    group_by: Sequence[str] = ("dataset", "model"),
) -> str:
    """A Markdown table of each method's ``metric`` minus the baseline's on the same seed.

    Cell: ``mean ± std (n)`` of ``metric(method, seed) - metric(baseline, seed)``
    over the ``n`` seeds run with both, in the row (``group_by``) of both; scaled
    and rounded as in :func:`table`, with a sign. The columns are those of
    :func:`table` without the baseline's. A seed fixes the initial weights and
    the data order for every method, so a pair starts alike.

    Raises:
        ValueError: as :func:`table`; or no ``baseline`` run.

    Example:
        >>> runs = [
        ...     {"method": m, "dataset": "cifar10", "model": "resnet20", "seed": s,
        ...      "test_error": e, "hyperparameters": {}}
        ...     for m, s, e in [("ce", 0, 0.10), ("ce", 1, 0.12), ("lsr", 0, 0.09), ("lsr", 1, 0.12)]
        ... ]
        >>> print(differences(runs))
        | dataset | model    | LSR              |
        | ------- | -------- | ---------------- |
        | cifar10 | resnet20 | -0.50 ± 0.71 (2) |
    """
    baseline_columns = {_column(run, "method")[0] for run in runs if run.get("method") == baseline}
    if len(baseline_columns) > 1:  # the baseline in float32 too: the others are set against it
        baseline_columns = {_column(run, "method")[0] for run in runs
                            if run.get("method") == baseline and not _precision_tag(run)}
    if len(baseline_columns) != 1:
        raise ValueError(
            f"`baseline` must name the method of one column; {baseline!r} has "
            f"{len(baseline_columns)} in these runs."
        )
    (baseline_column,) = baseline_columns
    group_by, rows, labels = _grid(runs, group_by, "method")
    columns = [column for column in labels if column != baseline_column]
    header = [*group_by, *(labels[column] for column in columns)]
    body = []
    for row, cells in rows.items():
        base = _metric_by_seed(cells[baseline_column], metric)
        line = [_display(value) for value in row]
        for column in columns:
            values = _metric_by_seed(cells[column], metric)
            paired = [value - base[seed] for seed, value in values.items() if seed in base]
            line.append(_format_cell(paired, metric, signed=True))
        body.append(line)
    return _markdown([header, *body])


def _grid(runs, group_by, columns) -> tuple[tuple, dict[tuple, dict[tuple, list]], dict[tuple, str]]:
    """``(group_by, {row: {column: runs}}, {column: label})``, rows and columns in order,
    every cell checked to hold distinct seeds of one setting; an empty cell holds ``[]``."""
    if not runs:
        raise ValueError("`runs` is empty: no completed run to tabulate.")
    group_by = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    cells: dict[tuple, dict[tuple, list[Mapping[str, Any]]]] = {}
    column_labels: dict[tuple, str] = {}
    for run in runs:
        row = tuple(_field(run, key) for key in group_by)
        column, label = _column(run, columns)
        column_labels[column] = label
        cells.setdefault(row, {}).setdefault(column, []).append(run)
    exclude = set(group_by) | {columns}
    labels = {column: column_labels[column] for column in sorted(column_labels)}
    rows = {}
    for row in sorted(cells, key=lambda r: tuple(_sort_key(k, v) for k, v in zip(group_by, r))):
        rows[row] = {column: cells[row].get(column, []) for column in labels}
        for column, label in labels.items():
            _check_one_setting(rows[row][column], exclude, f"{_display_row(row)} / {label}")
    return group_by, rows, labels


def table_all(runs: Sequence[Mapping[str, Any]]) -> str:
    """The papers' three tables: top-1 test error, NLL and ECE, in Markdown.

    Each under a ``###`` heading; then, where there are baseline (``ce``) runs
    and other methods, the same three as :func:`differences` to the baseline on
    the same seed; then a note on the cells and, for a :class:`Runs` from
    :func:`collect`, the number of incomplete runs skipped. Runs on GLUE tasks add
    their headline (``glue_score``) first; their "test" figures are on the dev set.
    """
    glue = any(run.get("glue_score") is not None for run in runs)
    shown = ("glue_score",) * glue + TABLE_ALL_METRICS
    sections = [f"### {METRICS[m][0]}\n\n{table(runs, metric=m)}" for m in shown]
    note = (
        "Cells: mean ± sample standard deviation (ddof=1) over seeds, (n) = number of "
        f"seeds; {MISSING} = no run."
    )
    methods = {run.get("method") for run in runs}
    if "ce" in methods and len(methods) > 1:
        sections += [
            f"### {METRICS[m][0]}: method minus baseline, same seed\n\n{differences(runs, metric=m)}"
            for m in shown
        ]
        note += (
            " Differences: mean ± std over the seeds run with both the method and the baseline, "
            "(n) = those seeds; a seed fixes the initial weights and the data order for every method."
        )
    skipped = getattr(runs, "skipped", None)
    if skipped:
        note += f" {len(skipped)} incomplete run(s) skipped."
    return "\n\n".join([*sections, note]) + "\n"


def p_table2(runs: Sequence[Mapping[str, Any]]) -> str:
    """P's Table 2 layout: a row per method, for each dataset and model the test accuracy and time.

    Accuracy: ``100 (1 - test_error)``, mean ± sample std (n) over seeds, as in
    :func:`table`; time: the mean ``wall_seconds`` of those runs (P: "training
    time for 200 epoch", on its V100), in hours (minutes under one hour).

    Example:
        >>> runs = [
        ...     {"method": m, "dataset": "cifar100", "model": "resnet18", "seed": s,
        ...      "test_error": e, "wall_seconds": 3960.0, "hyperparameters": {}}
        ...     for m, s, e in [("ce", 0, 0.23), ("ce", 1, 0.24), ("tf_reg", 0, 0.22)]
        ... ]
        >>> print(p_table2(runs))
        | method   | cifar100 resnet18 accuracy | cifar100 resnet18 time |
        | -------- | -------------------------- | ---------------------- |
        | Baseline | 76.50 ± 0.71 (2)           | 1.1 h                  |
        | TF-reg   | 78.00 (1)                  | 1.1 h                  |
    """
    with_accuracy = []
    for run in runs:
        error = run.get("test_error")
        accuracy = None if error is None else 1.0 - error
        with_accuracy.append({**run, "test_accuracy": accuracy})
    group_by, rows, labels = _grid(with_accuracy, ("dataset", "model"), "method")
    header = ["method"]
    for row in rows:
        header += [f"{_display_row(row).replace(' / ', ' ')} accuracy",
                   f"{_display_row(row).replace(' / ', ' ')} time"]
    body = []
    for column, label in labels.items():
        line = [label]
        for cells in rows.values():
            cell = cells[column]
            line.append(_format_cell(list(_metric_by_seed(cell, "test_accuracy").values()),
                                     "test_accuracy"))
            seconds = [run["wall_seconds"] for run in cell if run.get("wall_seconds") is not None]
            line.append(_duration(float(np.mean(seconds))) if seconds else MISSING)
        body.append(line)
    return _markdown([header, *body])


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# P's Table 3: its GLUE columns in its order, and its rows after Teacher and Student.
P_TABLE3_TASKS = ("cola", "mrpc", "rte", "sst2", "qnli", "qqp", "mnli")
_P_TABLE3_METHODS = ("kd", "lsr", "pseudo_kd")


def p_table3(runs: Sequence[Mapping[str, Any]]) -> str:
    """P's Table 3 layout: GLUE dev scores, a column per task and ``Avg.``, a row per model and method.

    * **Columns**: the GLUE tasks present in the runs, in P's order (CoLA, MRPC,
      RTE, SST-2, QNLI, QQP, MNLI; a task without any run is left out, not shown
      empty), then ``Avg.``: the mean of the row's task means, shown only when
      the row has a score on every task shown (else ``—``); over fewer than P's
      seven tasks a note says so.
    * **Cells**: ``glue_score`` (the run's headline in %: Matthews correlation
      on CoLA, else accuracy, on the first dev split, MNLI's matched), mean ±
      sample std (n) over seeds as in :func:`table`; a ``null`` score (a
      diverged run) does not count. MNLI's mismatched dev accuracy, where the
      runs have it (``glue``), is a note line under the table.
    * **Rows**: ``Teacher``, ``Student`` (``ce`` of the student model), then
      ``w/ KD``, ``w/ LSR``, ``w/ Pseudo-KD`` (the method table's labels,
      ``w/ LSR`` being P's "w/ LS"), always shown; any other method with runs
      follows (``w/`` its label); a run in another precision is a row of its
      own (``w/ LSR (bf16)``), as in :func:`table`.
    * **The teacher**, on each task: the ``ce`` runs of the model of the run a
      ``kd`` run's ``--teacher`` names (the teacher file's folder is that run's
      ``output_dir`` or directory; or the KD run's ``teacher_model`` is its
      model; a teacher of the students' own model: the named runs only);
      without such a KD run, the ``ce`` runs of a model other than the
      students' (the model most of the task's non-``ce`` runs have, else most
      of all the GLUE non-``ce`` runs, else most of the task's ``ce`` runs).
      Every other ``ce`` run is ``Student``. A note names the models.
    * Runs not on a GLUE task (images) are ignored, and a note counts them;
      without any GLUE run the result is one line saying so.

    Raises:
        ValueError: two runs of a cell share a seed or differ in their setting
            (a third model's ``ce`` runs beside the student's, two KD teachers:
            as :func:`table`); KD runs name ``ce`` runs of two models as their
            teachers; or, without a KD run naming one, ``ce`` runs of two models
            other than the students' (or no way to tell the students' model).

    Example (no KD run: the teacher is the ``ce`` model that is not the students')::

        >>> runs = [
        ...     {"dataset": task, "model": model, "method": method, "seed": seed,
        ...      "glue_score": score, "hyperparameters": {}}
        ...     for task, model, method, seed, score in [
        ...         ("rte", "roberta_large_en", "ce", 0, 86.0),
        ...         ("mrpc", "roberta_large_en", "ce", 0, 90.0),
        ...         ("rte", "distil_roberta_base_en", "ce", 0, 70.0),
        ...         ("rte", "distil_roberta_base_en", "ce", 1, 72.0),
        ...         ("mrpc", "distil_roberta_base_en", "ce", 0, 86.0),
        ...         ("mrpc", "distil_roberta_base_en", "ce", 1, 87.0),
        ...         ("rte", "distil_roberta_base_en", "pseudo_kd", 0, 71.0),
        ...         ("cifar10", "resnet20", "ce", 0, None),
        ...     ]
        ... ]
        >>> table3, notes = p_table3(runs).split("\\n\\n")
        >>> print(table3)
        | method       | MRPC             | RTE              | Avg.  |
        | ------------ | ---------------- | ---------------- | ----- |
        | Teacher      | 90.00 (1)        | 86.00 (1)        | 88.00 |
        | Student      | 86.50 ± 0.71 (2) | 71.00 ± 1.41 (2) | 78.75 |
        | w/ KD        | —                | —                | —     |
        | w/ LSR       | —                | —                | —     |
        | w/ Pseudo-KD | —                | 71.00 (1)        | —     |
        >>> print(notes.splitlines()[-1])
        1 run(s) not on a GLUE task ignored (cifar10).
    """
    glue_runs = [run for run in runs if run.get("dataset") in GLUE_TASKS]
    others = sorted({_display(run.get("dataset")) for run in runs
                     if run.get("dataset") not in GLUE_TASKS})
    ignored = len(runs) - len(glue_runs)
    ignored_note = (f"{ignored} run(s) not on a GLUE task ignored ({', '.join(others)})."
                    if ignored else "")
    if not glue_runs:
        return (f"No GLUE run to lay out as P's Table 3 (tasks: {', '.join(P_TABLE3_TASKS)})"
                + (f"; {ignored_note[:-1]}." if ignored else "."))
    tasks = [task for task in P_TABLE3_TASKS if any(run["dataset"] == task for run in glue_runs)]
    students_anywhere = _most_common(run["model"] for run in glue_runs if run["method"] != "ce")

    # rows[key] = (label, {task: runs}); P's five rows always, other rows where there are runs.
    p_rows = [((0, 0, ""), "Teacher"), ((1, 0, ""), "Student")] + [
        ((2, i, ""), f"w/ {methods.get(method).label}") for i, method in enumerate(_P_TABLE3_METHODS)
    ]
    rows = {key: (label, {task: [] for task in tasks}) for key, label in p_rows}
    teachers, students = {}, set()
    for task in tasks:
        task_runs = [run for run in glue_runs if run["dataset"] == task]
        teacher = _glue_teacher(task, task_runs, students_anywhere)
        if teacher:
            teachers[task] = teacher
        for run in task_runs:
            method, tag = run["method"], _precision_tag(run)
            if teacher and any(run is member for member in teacher[2]):
                key, label = (0, 0, tag), "Teacher"
            else:
                students.add(run["model"])
                if method == "ce":
                    key, label = (1, 0, tag), "Student"
                elif method in _P_TABLE3_METHODS:
                    key = (2, _P_TABLE3_METHODS.index(method), tag)
                    label = f"w/ {methods.get(method).label}"
                else:  # a method P's Table 3 does not have: the label table() gives it
                    column, label = _column(run, "method")
                    key, label, tag = (3, column), f"w/ {label}", ""  # the label has the precision
            label = f"{label} ({tag})" if tag else label
            rows.setdefault(key, (label, {t: [] for t in tasks}))[1][task].append(run)

    decimals = METRICS["glue_score"][2]
    header = ["method", *(GLUE_TASKS[task].label for task in tasks), "Avg."]
    body, mismatched = [], []
    for key in sorted(rows):
        label, cells = rows[key]
        line, means = [label], []
        for task in tasks:
            _check_one_setting(cells[task], set(), f"{GLUE_TASKS[task].label} / {label}")
            values = list(_metric_by_seed(cells[task], "glue_score").values())
            line.append(_format_cell(values, "glue_score"))
            if values:
                means.append(float(np.mean(values)))
        line.append(f"{np.mean(means):.{decimals}f}" if len(means) == len(tasks) else MISSING)
        body.append(line)
        if "mnli" in tasks:
            values = _mnli_mismatched(cells["mnli"])
            if values:
                mismatched.append(f"{label} {_format_cell(values, 'glue_score')}")

    notes = [
        "Cells: GLUE dev score in % (Matthews correlation on CoLA, else accuracy; MNLI: "
        "matched), mean ± sample standard deviation (ddof=1) over seeds, (n) = number of "
        f"seeds; {MISSING} = no run. Avg.: the mean of the row's task means, {MISSING} where the "
        "row lacks a task"
        + (f"; over the {len(tasks)} task(s) shown, not P's {len(P_TABLE3_TASKS)}."
           if len(tasks) < len(P_TABLE3_TASKS) else "."),
        _models_note(tasks, teachers, students),
    ]
    if mismatched:
        notes.append(f"MNLI mismatched dev accuracy (not in P's table): {'; '.join(mismatched)}.")
    if ignored_note:
        notes.append(ignored_note)
    skipped = getattr(runs, "skipped", None)
    if skipped:
        notes.append(f"{len(skipped)} incomplete run(s) skipped.")
    return _markdown([header, *body]) + "\n\n" + "\n".join(notes)


def _most_common(models: Iterable[str]) -> Optional[str]:
    """The model most runs have; ``None`` for no runs or a tie."""
    counts: dict[str, int] = {}
    for model in models:
        counts[model] = counts.get(model, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def _glue_teacher(task: str, task_runs: list, students_anywhere: Optional[str]
                  ) -> Optional[tuple[str, str, list]]:
    """``(teacher model, how it was found, the teacher's runs)`` on one task, or ``None``
    (see :func:`p_table3`)."""
    ce = [run for run in task_runs if run["method"] == "ce"]
    students = (_most_common(run["model"] for run in task_runs if run["method"] != "ce")
                or students_anywhere or _most_common(run["model"] for run in ce))
    named = []
    for run in task_runs:
        if run["method"] != "kd":
            continue
        path = _field(run, "teacher")
        for candidate in ce:
            if (isinstance(path, str) and _names_run(path, candidate)) or (
                    run.get("teacher_model") and run.get("teacher_model") == candidate["model"]):
                if not any(candidate is seen for seen in named):
                    named.append(candidate)
    named_models = sorted({run["model"] for run in named}, key=_natural)
    if len(named_models) > 1:
        raise ValueError(
            f"{task}: KD runs name ce runs of {len(named_models)} models as their teacher "
            f"({', '.join(named_models)}): pass the runs of one teacher."
        )
    if named_models:
        (model,) = named_models
        if model == students:  # a teacher of the students' own model: the named runs only
            return model, "the ce runs KD's --teacher names, those only", named
        return model, "the ce runs KD's --teacher names", [r for r in ce if r["model"] == model]
    ce_models = sorted({run["model"] for run in ce}, key=lambda model: _natural(model))
    if students is None and len(ce_models) > 1:
        raise ValueError(
            f"{task}: ce runs of {len(ce_models)} models ({', '.join(ce_models)}) and no way to tell "
            "the teacher's: no KD run names a teacher, and neither the other methods' runs nor "
            "the ce runs' counts single out the students' model. Pass the KD runs too."
        )
    teachers = [model for model in ce_models if model != students]
    if len(teachers) > 1:
        raise ValueError(
            f"{task}: ce runs of {len(teachers)} models other than the students' ({students}): "
            f"{', '.join(teachers)}, and no KD run naming its teacher: pass one teacher's runs."
        )
    if not teachers:
        return None
    return (teachers[0], "ce runs of a model other than the students'",
            [run for run in ce if run["model"] == teachers[0]])


def _names_run(teacher: str, run: Mapping[str, Any]) -> bool:
    """Whether a KD run's ``--teacher`` (a ``.keras`` file in a run folder, or a preset
    folder) is ``run``'s: its folder is ``run``'s ``output_dir`` as given to ``train.py``, or
    the same directory as ``run_dir`` here."""
    folder = pathlib.PurePath(teacher)
    folder = folder.parent if folder.suffix == ".keras" else folder
    output_dir = run.get("output_dir")
    if isinstance(output_dir, str) and os.path.normpath(output_dir) == os.path.normpath(folder):
        return True
    run_dir = run.get("run_dir")
    try:
        return bool(run_dir) and pathlib.Path(folder).resolve() == pathlib.Path(run_dir).resolve()
    except OSError:  # pragma: no cover - an unreadable path names no run
        return False


def _mnli_mismatched(cell_runs: Sequence[Mapping[str, Any]]) -> list[float]:
    """The mismatched dev scores (``glue``) of MNLI runs, ``null`` left out."""
    info = GLUE_TASKS["mnli"]
    values = []
    for run in cell_runs:
        split = (run.get("glue") or {}).get(info.dev_splits[-1]) or {}
        value = split.get(info.metrics[0])
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
    return values


def _models_note(tasks: Sequence[str], teachers: Mapping[str, tuple[str, str]],
                 students: set) -> str:
    """Which models the Teacher and the other rows are, and how the teacher was found."""
    found = {teachers[task][:2] for task in tasks if task in teachers}
    if not found:
        teacher = ("Teacher: none (no KD run names a teacher, and no ce run of a model other "
                   "than the students')")
    elif len(found) == 1 and len(teachers) == len(tasks):
        model, how = next(iter(found))
        teacher = f"Teacher: {model} ({how})"
    else:
        teacher = "Teacher: " + ", ".join(
            f"{GLUE_TASKS[task].label} {teachers[task][0]} ({teachers[task][1]})"
            if task in teachers else f"{GLUE_TASKS[task].label} none" for task in tasks
        )
    return (f"{teacher}; students: {', '.join(sorted(students, key=_natural)) or 'none'}.")


def _field(run: Mapping[str, Any], key: str) -> Any:
    if key in run:
        return run[key]
    return (run.get("hyperparameters") or {}).get(key)


def _column(run: Mapping[str, Any], columns: str) -> tuple[tuple, str]:
    """``(sort key, label)`` of the run's column."""
    if columns != "method":
        value = _field(run, columns)
        return (_sort_key(columns, value),), f"{columns}={_display(value)}"
    method = run["method"]
    if method not in METHOD_ORDER:
        return (1, 0, method), method
    entry = methods.get(method)
    copies = _field(run, "copies") if "{copies}" in entry.label else None
    ablations = {name: bool(_field(run, name)) for name in entry.ablations}  # each its own column
    teacher = run.get("teacher_model") or ""  # KD from two networks: two columns (P's KD-29)
    precision = _precision_tag(run)  # a run in bfloat16 is a column of its own
    key = (0, METHOD_ORDER.index(method), teacher, _sort_key("copies", copies), *ablations.values(),
           precision)
    label = entry.label_for({"copies": copies, **ablations})
    label = f"{label}-{teacher}" if teacher else label
    return key, f"{label} ({precision})" if precision else label


# How a column names a precision other than float32 (train.py's --precision and --teacher_precision).
_PRECISION_TAGS = {"mixed_bfloat16": "bf16", "mixed_float16": "fp16", "bfloat16": "bf16"}


def _precision_tag(run: Mapping[str, Any]) -> str:
    """``""`` for a float32 run (runs from before ``--precision`` too), else ``"bf16"``,
    ``"bf16 teachers"``, ``"fp16"``...: the run's column label says it."""
    precision = _field(run, "precision") or "float32"
    teachers = _field(run, "teacher_precision") or "same"
    tags = [_PRECISION_TAGS.get(precision, precision)] if precision != "float32" else []
    if teachers != "same":
        tags.append(f"{_PRECISION_TAGS.get(teachers, teachers)} teachers")
    return ", ".join(tags)


def _sort_key(key: str, value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), ())
    if key == "dataset" and value in DATASET_ORDER:
        return (1, float(DATASET_ORDER.index(value)), ())
    return (2, 0.0, _natural(_display(value)))


def _natural(text: str) -> tuple:
    """``resnet20 < resnet56 < resnet110``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", text)
        if part
    )


def _display(value: Any) -> str:
    return MISSING if value is None else str(value)


def _display_row(row: tuple) -> str:
    return " / ".join(_display(v) for v in row)


def _source(run: Mapping[str, Any]) -> str:
    run_dir = run.get("run_dir")
    return str(pathlib.Path(run_dir) / RESULTS_FILE) if run_dir else repr(run)[:200]


def _setting(run: Mapping[str, Any], exclude: set) -> dict[str, Any]:
    """What must agree between the seeds of a cell."""
    used = _METHOD_USES.get(run.get("method"), _DISTILLATION_KEYS)
    setting = {key: run.get(key) for key in ("method", "dataset", "model", "epochs")}
    for key, value in (run.get("hyperparameters") or {}).items():
        if key not in _DISTILLATION_KEYS or key in used:
            setting[key] = value
    for key in ("precision", "teacher_precision"):  # in the column's key (_precision_tag)
        setting.pop(key, None)
    return {key: value for key, value in setting.items() if key not in exclude}


def _check_one_setting(cell_runs: Sequence[Mapping[str, Any]], exclude: set, where: str) -> None:
    seeds: dict[Any, Mapping[str, Any]] = {}
    for run in cell_runs:
        seed = run.get("seed")
        if seed in seeds:
            raise ValueError(
                f"Two runs of cell {where} have seed {seed}: {_source(seeds[seed])} and "
                f"{_source(run)}. A cell averages distinct seeds of one setting: pass the run "
                "directories of one sweep only."
            )
        seeds[seed] = run
    if len(cell_runs) < 2:
        return
    first = cell_runs[0]
    reference = _setting(first, exclude)
    for run in cell_runs[1:]:
        setting = _setting(run, exclude)
        differ = sorted(
            key
            for key in set(reference) | set(setting)
            if reference.get(key) != setting.get(key)
        )
        if differ:
            details = ", ".join(
                f"{key}={reference.get(key)!r} vs {setting.get(key)!r}" for key in differ
            )
            raise ValueError(
                f"Runs of cell {where} differ in {details}: {_source(first)} and "
                f"{_source(run)}. A cell averages seeds of one setting: pass the run "
                f"directories of one setting, or tabulate by that key "
                f"(table(runs, columns={differ[0]!r}))."
            )


def _metric_by_seed(cell_runs: Sequence[Mapping[str, Any]], metric: str) -> dict[Any, float]:
    """``{seed: metric}`` of a cell's runs (distinct seeds: ``_grid`` checks), ``null`` left out."""
    values = {}
    for run in cell_runs:
        value = run.get(metric)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{_source(run)}: `{metric}` must be a number; got {value!r}.")
        values[run.get("seed")] = float(value)
    return values


def _format_cell(values: list[float], metric: str, signed: bool = False) -> str:
    if not values:
        return MISSING
    _, scale, decimals = METRICS.get(metric, (metric, 1.0, 3))
    scaled = np.asarray(values, dtype=np.float64) * scale
    mean = f"{np.mean(scaled):{'+' if signed else ''}.{decimals}f}"
    if len(values) == 1:
        return f"{mean} (1)"
    return f"{mean} ± {np.std(scaled, ddof=1):.{decimals}f} ({len(values)})"


def _markdown(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [rows[0], ["-" * w for w in widths], *rows[1:]]
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
        for line in lines
    )


# --------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------


# Per-epoch quantities that plot_curves draws: (history column, y label, scale). The test
# error is 1 - val_accuracy; the teacher diagnostics are logged by KDModel and MrKDModel
# (keras_softkd.distillation) and get their own panels when any run has them.
_CURVES = (
    ("val_accuracy", "test error (%)", lambda v: 100 * (1.0 - v)),
    ("teacher_accuracy", "teachers' top-1 accuracy on training batches (%)", lambda v: 100 * v),
    ("teacher_top_probability", "teachers' mean top probability at t", lambda v: v),
    ("teaching_copies", "MrKD copies teaching (mean over the epoch)", lambda v: v),
)

#: Each panel's title names its metric (the y label says it in full).
_TITLES = {
    "val_accuracy": "test error",
    "teacher_accuracy": "teachers' accuracy",
    "teacher_top_probability": "teachers' top probability",
    "teaching_copies": "copies teaching",
}
_PANEL_INCHES = (6.0, 3.6)  # at the 120 dpi of the PNG: 720 x 432 pixels a panel


def plot_curves(
    runs_dirs: Union[Sequence[PathLike], Sequence[Mapping[str, Any]]], path: PathLike
) -> pathlib.Path:
    """Plots test error per epoch, one line per method, and the teacher diagnostics, to a PNG.

    Test error is ``1 - val_accuracy`` of each run's ``history.csv``, against
    the 1-based epoch (Keras' 0-based ``epoch`` + 1: the error after that
    many epochs). Panels two across, each titled with its metric: per
    (dataset, model) the test error, and where any run logged them
    (``KDModel``, ``MrKDModel``), the teachers' top-1 accuracy on the training
    batches, their mean top probability at the distillation temperature and
    how many MrKD copies taught (an epoch in which no teacher taught has no
    point); each (dataset, model) starts a new row. In each panel
    one line per column of :func:`table` (``Baseline``, ``MrKD-3``, ...): the
    mean over seeds, shaded between the seeds' min and max. Written atomically
    with matplotlib's Agg canvas (no ``pyplot``, so the caller's backend is
    left alone).

    Args:
        runs_dirs: directories to :func:`collect` runs from, or the run dicts
            :func:`collect` returned.
        path: the ``.png`` file to write.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ImportError: matplotlib is not installed (``pip install keras-softkd[plots]``).
        ValueError: no runs, or a ``history.csv`` without ``val_accuracy``.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_curves needs matplotlib: pip install 'keras-softkd[plots]'."
        ) from error

    runs = list(runs_dirs)
    if not all(isinstance(run, Mapping) for run in runs):
        runs = collect(runs)
    if not runs:
        raise ValueError("`runs_dirs` holds no completed run to plot.")

    # panels[(dataset, model)][column] = (label, {history column: [(epochs, values), ...]})
    panels: dict[tuple, dict[tuple, tuple[str, dict[str, list[np.ndarray]]]]] = {}
    for run in runs:
        history = read_history(run["run_dir"])
        if "val_accuracy" not in history:
            raise ValueError(
                f"{pathlib.Path(run['run_dir']) / HISTORY_FILE}: no `val_accuracy` column "
                "(the test accuracy per epoch)."
            )
        column, label = _column(run, "method")
        panel = (run["dataset"], run["model"])
        curves = panels.setdefault(panel, {}).setdefault(column, (label, {}))[1]
        for key, _, scale in _CURVES:
            if key in history:
                values = scale(history[key])
                curves.setdefault(key, []).append(np.stack([history["epoch"], values]))

    all_columns = sorted({column for panel in panels.values() for column in panel})
    order = sorted(
        panels, key=lambda p: (_sort_key("dataset", p[0]), _sort_key("model", p[1]))
    )
    shown = [
        (key, ylabel) for key, ylabel, _ in _CURVES
        if any(key in curves for panel in panels.values() for _, curves in panel.values())
    ]
    # Two panels across (1,440 pixels wide at 120 dpi: a laptop screen's width): a
    # (dataset, model)'s panels, test error first, then its diagnostics, in rows of two; the
    # next (dataset, model) starts a new row.
    across = 2 if len(shown) > 1 or len(order) > 1 else 1
    cells: list = []
    for panel in order:
        cells += [(panel, key, ylabel) for key, ylabel in shown]
        if len(shown) > 1:
            cells += [None] * (-len(cells) % across)
    down = math.ceil(len(cells) / across)
    figure = Figure(figsize=(_PANEL_INCHES[0] * across, _PANEL_INCHES[1] * down),
                    layout="constrained")
    axes = figure.subplots(down, across, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(all_columns))]
    for ax, cell in zip(axes, cells):
        if cell is None:
            ax.set_visible(False)
            continue
        panel, key, ylabel = cell
        for column in sorted(panels[panel]):
            label, curves = panels[panel][column]
            if key not in curves:
                continue
            epochs, mean, low, high = _aggregate(curves[key])
            colour = colours[all_columns.index(column)]
            ax.plot(epochs + 1, mean, color=colour, marker="." if len(epochs) < 30 else None,
                    label=f"{label} (n={len(curves[key])})")
            if len(curves[key]) > 1:
                ax.fill_between(epochs + 1, low, high, color=colour, alpha=0.2)
        ax.set_title(f"{_TITLES[key]}: {panel[0]} / {panel[1]}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel, fontsize="small" if key != "val_accuracy" else None)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[len(cells):]:
        ax.set_visible(False)

    path = pathlib.Path(path)
    _io.write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return path


def _aggregate(curves: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """``(epochs, mean, min, max)`` over the seeds that reached each epoch."""
    epochs = np.unique(np.concatenate([curve[0] for curve in curves]))
    grid = np.full((len(curves), len(epochs)), np.nan)
    for i, (curve_epochs, values) in enumerate(curves):
        grid[i, np.searchsorted(epochs, curve_epochs)] = values
    with warnings.catch_warnings():  # an epoch where every seed's value is NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return epochs, np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m keras_softkd.report RUN_DIR [RUN_DIR ...] [--markdown F] [--plot F]``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_softkd.report",
        description=(
            "Tabulate runs (directories with results.json and history.csv) as the papers "
            "do: test error, NLL and ECE, mean ± std over seeds."
        ),
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, searched recursively"
    )
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the tables here")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="tables",
        help="tables: error, NLL and ECE per dataset and model, and the differences to the "
        "baseline; p_table2: P's Table 2, a row per method with accuracy and training time; "
        "p_table3: P's Table 3, the GLUE dev scores, a column per task and their average, "
        "rows Teacher, Student, w/ KD, w/ LSR, w/ Pseudo-KD",
    )
    parser.add_argument(
        "--plot", metavar="CURVES.png", nargs="?", const="",
        help="plot test error per epoch (and the teacher diagnostics of KD and MrKD runs) to this "
        f"file; without a file name, to {PLOT_FILE} in the first RUN_DIR, beside the results",
    )
    args = parser.parse_args(argv)
    try:
        runs = collect(args.run_dirs)
        if runs.skipped:
            print(f"Skipped {len(runs.skipped)} incomplete run(s):", file=sys.stderr)
            for file in runs.skipped:
                print(f"  {file}", file=sys.stderr)
        if not runs:
            raise ValueError(f"no completed run ({RESULTS_FILE}) under {args.run_dirs}")
        if args.layout == "tables":
            text = table_all(runs)
        else:
            text = (p_table2 if args.layout == "p_table2" else p_table3)(runs) + "\n"
        print(text, end="")
        if args.markdown:
            _io.write_text_atomic(args.markdown, text)
            print(f"Wrote {args.markdown}", file=sys.stderr)
        if args.plot is not None:
            plot = args.plot or os.path.join(args.run_dirs[0], PLOT_FILE)
            plot_curves(runs, plot)
            print(f"Wrote {plot}", file=sys.stderr)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

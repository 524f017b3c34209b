"""The seven GLUE tasks of the Pseudo-KD paper, and reading one split as NumPy arrays.

:data:`GLUE_TASKS` describes CoLA, SST-2, MRPC, QQP, MNLI, QNLI and RTE: their
text fields and label names as TensorFlow Datasets' ``glue`` builder has them,
their dev splits, and the metrics the paper reports for them.

:func:`load` reads a split from the official GLUE files when ``data_dir`` holds
them, as ``<data_dir>/<Folder>/<file>.tsv`` or ``<data_dir>/glue/<Folder>/<file>.tsv``
(``Folder`` is ``CoLA``, ``SST-2``, ``MRPC``, ``QQP``, ``MNLI``, ``QNLI`` or
``RTE``; ``file`` is ``train``, ``dev``, or for MNLI ``dev_matched`` and
``dev_mismatched``), and otherwise asks TensorFlow Datasets. Either way the
texts and labels are the same: TFDS' field names and integer labels.

The official files are tab-separated, with quote characters that are part of
the text (never CSV quoting), a header row except in CoLA's train and dev
files, and labels written as ``0``/``1`` (CoLA, SST-2, MRPC, QQP) or as words
(MNLI, QNLI, RTE).

Example:
    >>> from keras_softkd.data.glue import GLUE_TASKS
    >>> list(GLUE_TASKS)
    ['cola', 'sst2', 'mrpc', 'qqp', 'mnli', 'qnli', 'rte']
    >>> task = GLUE_TASKS["mnli"]
    >>> task.text_fields, task.label_names, task.dev_splits
    (('premise', 'hypothesis'), ('entailment', 'neutral', 'contradiction'), ('dev_matched', 'dev_mismatched'))
    >>> GLUE_TASKS["mrpc"].metrics, GLUE_TASKS["cola"].metrics
    (('accuracy', 'f1'), ('matthews_correlation',))
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from types import MappingProxyType
from typing import Mapping

import numpy as np

from keras_softkd.data import sources

#: Where TFDS' ``glue`` builder downloads every task's files (its ``data_url``;
#: MRPC's train and test files too).
_DOWNLOAD_HOST = "dl.fbaipublicfiles.com"


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE classification task.

    Attributes:
        name: the name :func:`load` takes (``"sst2"``).
        label: the paper's column title (``"SST-2"``).
        folder: the task's folder in the official GLUE download (``"SST-2"``).
        tfds_name: the TensorFlow Datasets builder (``"glue/sst2"``).
        text_fields: the text inputs, one or a sentence pair, named as TFDS names them.
        label_names: the classes in TFDS' integer order (label ``i`` is ``label_names[i]``).
        dev_splits: the dev splits the paper evaluates on (MNLI: matched and mismatched).
        metrics: the paper's metrics for the task, as keys of
            :func:`keras_softkd.metrics.glue_scores`; the first is the headline. For MRPC
            and QQP it is accuracy, with F1 beside it: P (section 4.2) reports "accuracy
            for the other tasks for the development set" and "F1 for the QQP and MRPC
            and the corresponding test sets", and its dev figures (QQP 91.3, MRPC 86.5
            for DistilRoBERTa) are accuracies, not F1s.
    """

    name: str
    label: str
    folder: str
    tfds_name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    dev_splits: tuple[str, ...]
    metrics: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """The number of classes ``K``; labels are in ``[0, K)``."""
        return len(self.label_names)

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split :func:`load` takes: ``train``, ``dev`` and the dev splits."""
        return ("train", "dev") + tuple(s for s in self.dev_splits if s != "dev")


def _task(name, label, text_fields, label_names, metrics=("accuracy",), dev_splits=("dev",)):
    return GlueTask(
        name=name,
        label=label,
        folder=label,
        tfds_name=f"glue/{name}",
        text_fields=text_fields,
        label_names=label_names,
        dev_splits=dev_splits,
        metrics=metrics,
    )


#: The paper's seven tasks by name, in its order (read-only; the module's example shows it).
GLUE_TASKS: Mapping[str, GlueTask] = MappingProxyType({
    task.name: task
    for task in (
        _task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
              metrics=("matthews_correlation",)),
        _task("sst2", "SST-2", ("sentence",), ("negative", "positive")),
        _task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
              metrics=("accuracy", "f1")),
        _task("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
              metrics=("accuracy", "f1")),
        _task("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              dev_splits=("dev_matched", "dev_mismatched")),
        _task("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment")),
        _task("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
    )
})


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a task's official .tsv files are written.

    Attributes:
        columns: the columns of a file without a header row; ``None``: the
            first row names them.
        text_columns: the columns holding the task's ``text_fields``, in order.
        label_column: the column holding the label.
        label_values: the labels as the file writes them, in TFDS' integer order.
    """

    columns: tuple[str, ...] | None
    text_columns: tuple[str, ...]
    label_column: str
    label_values: tuple[str, ...]


_LAYOUTS = {
    "cola": _Layout(("source", "label", "original_label", "sentence"), ("sentence",), "label",
                    ("0", "1")),
    "sst2": _Layout(None, ("sentence",), "label", ("0", "1")),
    "mrpc": _Layout(None, ("#1 String", "#2 String"), "Quality", ("0", "1")),
    "qqp": _Layout(None, ("question1", "question2"), "is_duplicate", ("0", "1")),
    "mnli": _Layout(None, ("sentence1", "sentence2"), "gold_label",
                    ("entailment", "neutral", "contradiction")),
    "qnli": _Layout(None, ("question", "sentence"), "label", ("entailment", "not_entailment")),
    "rte": _Layout(None, ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
}

# split -> (the official file, TFDS' split); MNLI's "dev" is its matched dev split.
_SPLIT_SOURCES = {
    "train": ("train.tsv", "train"),
    "dev": ("dev.tsv", "validation"),
    "dev_matched": ("dev_matched.tsv", "validation_matched"),
    "dev_mismatched": ("dev_mismatched.tsv", "validation_mismatched"),
}


def get(task: str) -> GlueTask:
    """The :class:`GlueTask` of ``task``; ``ValueError`` naming the valid names.

    Example:
        >>> get("rte").label_names
        ('entailment', 'not_entailment')
    """
    try:
        return GLUE_TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(f"`task` must be one of {list(GLUE_TASKS)}; got task={task!r}.") from None


def load(task: str, split: str, data_dir: str | os.PathLike | None = None
         ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Loads one split of a GLUE task as NumPy arrays.

    Args:
        task: one of :data:`GLUE_TASKS` (``"cola"``, ``"sst2"``, ``"mrpc"``,
            ``"qqp"``, ``"mnli"``, ``"qnli"``, ``"rte"``).
        split: ``"train"`` or ``"dev"``; for MNLI also ``"dev_matched"`` (what
            ``"dev"`` means there) and ``"dev_mismatched"``.
        data_dir: a folder holding the official GLUE files as
            ``<data_dir>/<Folder>/<split>.tsv`` or ``<data_dir>/glue/<Folder>/<split>.tsv``
            (a ``<Folder>`` counts when it holds at least one of the task's
            files). Without them (or for ``None``), TensorFlow Datasets
            prepares the task in ``data_dir`` (``None``: TFDS' default folder),
            downloading it if needed.

    Returns:
        ``(texts, labels)``: ``texts`` one array per ``GLUE_TASKS[task].text_fields``,
        of Python ``str`` (dtype object: no padding to the longest text);
        ``labels`` int32 of shape ``(N,)``, TFDS' integer for each label.

    Raises:
        ValueError: an unknown ``task`` or ``split``; a task folder without the
            split's file; a file that is not UTF-8, lacks a column, has a row
            with the wrong number of columns or an unknown label (the message
            names the file and line).
        FileNotFoundError: no local files, and TFDS cannot load the task
            (offline: within seconds, saying which files to provide).

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> (folder / "RTE").mkdir()
        >>> _ = (folder / "RTE" / "dev.tsv").write_text(
        ...     "index\\tsentence1\\tsentence2\\tlabel\\n"
        ...     "0\\tA dog \\"barks\\".\\tAn animal makes a sound.\\tentailment\\n")
        >>> (premises, hypotheses), labels = load("rte", "dev", folder)
        >>> premises[0], hypotheses[0], labels
        ('A dog "barks".', 'An animal makes a sound.', array([0], dtype=int32))
    """
    info = get(task)
    if split not in info.splits:
        raise ValueError(f"`split` must be one of {list(info.splits)} for task={task!r}; "
                         f"got split={split!r}.")
    if split == "dev" and "dev" not in info.dev_splits:
        split = info.dev_splits[0]
    file_name, tfds_split = _SPLIT_SOURCES[split]
    looked: list[str] = []
    folder = _local_folder(info, data_dir, looked)
    if folder is None:
        return _load_tfds(info, split, tfds_split, data_dir, looked)
    path = folder / file_name
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*.tsv"))
        raise ValueError(f"{path}: no such file for task={task!r}, split={split!r}; the folder "
                         f"holds {present}, a complete copy has {_file_names(info)}.")
    return _read_tsv(path, info)


# ---------------------------------------------------------------------------
# The official files
# ---------------------------------------------------------------------------


def _file_names(info: GlueTask) -> list[str]:
    return [_SPLIT_SOURCES[s][0] for s in info.splits if s != "dev" or s in info.dev_splits]


def _local_folder(info: GlueTask, data_dir, looked: list[str]) -> pathlib.Path | None:
    """``<data_dir>/<Folder>`` or ``<data_dir>/glue/<Folder>`` where it holds one of the task's files.

    A folder without them is no local copy: on a case-insensitive file system
    TFDS' own ``<data_dir>/glue/rte`` is also ``<data_dir>/glue/RTE``.
    """
    if data_dir is None:
        return None
    root = pathlib.Path(data_dir).expanduser()
    if root.is_file():
        raise ValueError(f"`data_dir` must be a folder; got the file data_dir={str(root)!r}.")
    for folder in (root / info.folder, root / "glue" / info.folder):
        looked.append(f"{folder}/{{{','.join(_file_names(info))}}}")
        if any((folder / name).is_file() for name in _file_names(info)):
            return folder
    return None


def _read_tsv(path: pathlib.Path, info: GlueTask) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Reads one official file line by line (MNLI's train file is hundreds of megabytes)."""
    try:
        # utf-8-sig: a byte-order mark is not part of the first column's name;
        # newline="\n": a stray carriage return inside a text is not a line end.
        with open(path, encoding="utf-8-sig", newline="\n") as file:
            return _parse_rows(path, info, (line.removesuffix("\n").removesuffix("\r")
                                            for line in file))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err}).") from None


def _parse_rows(path: pathlib.Path, info: GlueTask, lines) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Splits on tabs only, so quote characters stay text (never CSV quoting)."""
    layout = _LAYOUTS[info.name]
    rows = (line.split("\t") for line in lines)
    columns, first_line = layout.columns, 1
    if columns is None:
        columns, first_line = tuple(next(rows, [])), 2
        missing = [c for c in (*layout.text_columns, layout.label_column) if c not in columns]
        if missing:
            raise ValueError(f"{path}:1: the header must name the columns {missing} of the "
                             f"official {info.label} file; got {list(columns)}.")
    text_index = [columns.index(c) for c in layout.text_columns]
    label_index = columns.index(layout.label_column)
    label_of = {value: i for i, value in enumerate(layout.label_values)}
    texts: list[list[str]] = [[] for _ in text_index]
    labels: list[int] = []
    for number, fields in enumerate(rows, start=first_line):
        if len(fields) != len(columns):
            raise ValueError(f"{path}:{number}: expected {len(columns)} tab-separated columns "
                             f"{list(columns)}; got {len(fields)}.")
        label = fields[label_index]
        if label not in label_of:
            raise ValueError(f"{path}:{number}: unknown label {label!r} in column "
                             f"{layout.label_column!r}; valid: {list(layout.label_values)}.")
        labels.append(label_of[label])
        for values, index in zip(texts, text_index):
            values.append(fields[index])
    if not labels:
        raise ValueError(f"{path}: holds no examples.")
    return tuple(_strings(values) for values in texts), np.asarray(labels, np.int32)


def _strings(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# ---------------------------------------------------------------------------
# TensorFlow Datasets
# ---------------------------------------------------------------------------


def _load_tfds(info: GlueTask, split: str, tfds_split: str, data_dir, looked: list[str]
               ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    where = f"data_dir={None if data_dir is None else str(data_dir)!r}"
    searched = f"looked for: {', '.join(looked)}" if looked else "no data_dir to look in"
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(f"No local {info.label} files in {where} ({searched}) and "
                          "tensorflow-datasets is not installed: `pip install tensorflow-datasets`."
                          ) from err
    problem = sources.download_blocked(info.tfds_name, data_dir, host=_DOWNLOAD_HOST)
    if problem is not None:
        raise FileNotFoundError(
            f"no local {info.label} {split!r} file in {where} ({searched}) and TensorFlow Datasets "
            f"cannot download {info.tfds_name!r} ({problem}); give data_dir a folder holding "
            f"{info.folder}/{_SPLIT_SOURCES[split][0]} (or glue/{info.folder}/...) in the official "
            "GLUE layout (GLUE's download_glue_data.py writes it)."
        )
    try:
        batches = list(tfds.as_numpy(tfds.load(
            info.tfds_name,
            split=tfds_split,
            data_dir=None if data_dir is None else str(data_dir),
            batch_size=10_000,  # not -1: tfds.testing.mock_data sets no split sizes
        )))
        if not batches:
            raise ValueError(f"the {tfds_split!r} split is empty")
    except Exception as err:
        raise FileNotFoundError(
            f"No local {info.label} {split!r} file in {where} ({searched}), and TensorFlow "
            f"Datasets could not load or download {info.tfds_name!r} split {tfds_split!r} "
            f"({type(err).__name__}: {sources._first_line(err)})."
        ) from err
    texts = tuple(
        _strings([text.decode("utf-8") for batch in batches for text in batch[field]])
        for field in info.text_fields
    )
    labels = np.concatenate([batch["label"] for batch in batches]).astype(np.int32)
    if labels.min() < 0 or labels.max() >= info.num_classes:
        raise ValueError(f"tfds:{info.tfds_name}/{tfds_split}: labels must be in "
                         f"[0, {info.num_classes}); got values from {labels.min()} to {labels.max()}.")
    return texts, labels

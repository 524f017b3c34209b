"""Tests of keras_softkd.data.glue: the task table against TFDS' glue builder, each
official file layout with its quirks, the TFDS path (mocked), the errors, and the
real SST-2 and RTE files.

Every file is written by the test itself in the official GLUE layout; nothing is
downloaded.
"""

from __future__ import annotations

import doctest
import pathlib
import time

import numpy as np
import pytest

from conftest import real_data_folder
from keras_softkd.data import GLUE_TASKS, glue, sources

# ---------------------------------------------------------------------------
# Writers of the official GLUE files
# ---------------------------------------------------------------------------

# The labels as the official files write them, by TFDS' integer (written from
# tensorflow_datasets/text/glue.py's label_classes, not from the package).
FILE_LABELS = {
    "cola": ("0", "1"),
    "sst2": ("0", "1"),
    "mrpc": ("0", "1"),
    "qqp": ("0", "1"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}

MNLI_TRAIN_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                     "sentence1", "sentence2", "label1", "gold_label")
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ("label2", "label3", "label4", "label5", "gold_label")


def official_row(task: str, split: str, index: int, texts: tuple[str, ...], label: int) -> list[str]:
    """One row of ``task``'s official file, as GLUE writes it."""
    word = FILE_LABELS[task][label]
    if task == "cola":  # source, label, original label ("*" for unacceptable), sentence
        return ["gj04", word, "*" if label == 0 else "", texts[0]]
    if task == "sst2":
        return [texts[0], word]
    if task == "mrpc":
        return [word, str(1000 + index), str(2000 + index), texts[0], texts[1]]
    if task == "qqp":
        return [str(index), str(2 * index), str(2 * index + 1), texts[0], texts[1], word]
    if task == "mnli":
        parses = ["( x )"] * 4
        votes = [word] * (1 if split == "train" else 5)
        return [str(index), "31193", f"{index}n", "government", *parses, texts[0], texts[1],
                *votes, word]
    return [str(index), texts[0], texts[1], word]  # qnli, rte


def official_header(task: str, split: str) -> list[str] | None:
    return {
        "cola": None,
        "sst2": ["sentence", "label"],
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "mnli": list(MNLI_TRAIN_HEADER if split == "train" else MNLI_DEV_HEADER),
        "qnli": ["index", "question", "sentence", "label"],
        "rte": ["index", "sentence1", "sentence2", "label"],
    }[task]


def examples(task: str, split: str, count: int = 5) -> tuple[list[tuple[str, ...]], list[int]]:
    """Texts with quirks: an unclosed quote, quotes around a word, an apostrophe, non-ASCII."""
    fields = len(GLUE_TASKS[task].text_fields)
    quirks = ['He said "no.', '"Quoted" at the start', "it 's a café", "plain text .", "x"]
    texts = [
        tuple(f"{quirks[i % len(quirks)]} {task} {split} {i} field{f}" for f in range(fields))
        for i in range(count)
    ]
    labels = [(3 * i + 1) % len(FILE_LABELS[task]) for i in range(count)]
    return texts, labels


def write_official(folder: pathlib.Path, task: str, split: str, count: int = 5,
                   line_end: str = "\n") -> tuple[list[tuple[str, ...]], list[int]]:
    """Writes ``folder/<split>.tsv`` in the official layout; returns what it holds."""
    texts, labels = examples(task, split, count)
    header = official_header(task, split)
    rows = ([header] if header else []) + [
        official_row(task, split, i, t, y) for i, (t, y) in enumerate(zip(texts, labels))
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.tsv").write_bytes(
        "".join("\t".join(row) + line_end for row in rows).encode("utf-8"))
    return texts, labels


def assert_loaded(loaded, texts, labels, task):
    loaded_texts, loaded_labels = loaded
    assert len(loaded_texts) == len(GLUE_TASKS[task].text_fields)
    for f, column in enumerate(loaded_texts):
        assert column.dtype == object and column.shape == (len(texts),)
        assert column.tolist() == [t[f] for t in texts]
    assert loaded_labels.dtype == np.int32 and loaded_labels.tolist() == labels


# ---------------------------------------------------------------------------
# The task table
# ---------------------------------------------------------------------------


def test_task_table_matches_tfds_glue_builder(tmp_path):
    import tensorflow_datasets as tfds

    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte"]
    for name, task in GLUE_TASKS.items():
        builder = tfds.builder(task.tfds_name, data_dir=tmp_path)
        features = builder.info.features
        assert task.name == name and task.tfds_name == f"glue/{name}"
        assert set(task.text_fields) == set(features) - {"label", "idx"}, name
        assert task.label_names == tuple(features["label"].names), name
        assert task.num_classes == features["label"].num_classes, name
        assert task.folder == builder.builder_config.data_dir == task.label, name
    assert list(tmp_path.iterdir()) == []


def test_task_table_holds_the_papers_metrics_and_splits():
    metrics = {name: task.metrics for name, task in GLUE_TASKS.items()}
    assert metrics == {
        "cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
        "qqp": ("accuracy", "f1"), "mnli": ("accuracy",), "qnli": ("accuracy",),
        "rte": ("accuracy",),
    }
    assert GLUE_TASKS["mnli"].splits == ("train", "dev", "dev_matched", "dev_mismatched")
    assert GLUE_TASKS["rte"].splits == ("train", "dev") and GLUE_TASKS["rte"].dev_splits == ("dev",)
    assert GLUE_TASKS["qnli"].text_fields == ("question", "sentence")
    assert GLUE_TASKS["qqp"].text_fields == ("question1", "question2")


# ---------------------------------------------------------------------------
# The official files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_official_layout_loads_back_exactly(tmp_path, task):
    folder = tmp_path / GLUE_TASKS[task].folder
    for split in ("train",) + GLUE_TASKS[task].dev_splits:
        texts, labels = write_official(folder, task, split)
        assert_loaded(glue.load(task, split, tmp_path), texts, labels, task)


def test_mnli_dev_is_matched_and_mismatched_is_its_own_file(tmp_path):
    folder = tmp_path / "MNLI"
    matched = write_official(folder, "mnli", "dev_matched", count=4)
    mismatched = write_official(folder, "mnli", "dev_mismatched", count=3)
    assert_loaded(glue.load("mnli", "dev", tmp_path), *matched, "mnli")
    assert_loaded(glue.load("mnli", "dev_mismatched", tmp_path), *mismatched, "mnli")


def test_glue_folder_inside_data_dir_is_found(tmp_path):
    texts, labels = write_official(tmp_path / "glue" / "RTE", "rte", "dev")
    assert_loaded(glue.load("rte", "dev", tmp_path), texts, labels, "rte")
    assert_loaded(glue.load("rte", "dev", str(tmp_path / "glue")), texts, labels, "rte")


def test_quotes_crlf_and_byte_order_mark(tmp_path):
    texts, labels = write_official(tmp_path / "RTE", "rte", "train", count=7, line_end="\r\n")
    assert_loaded(glue.load("rte", "train", tmp_path), texts, labels, "rte")
    assert texts[0][0].startswith('He said "no.')  # an unclosed quote swallows no lines
    path = tmp_path / "MRPC" / "train.tsv"
    texts, labels = write_official(tmp_path / "MRPC", "mrpc", "train")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # the MSR files' BOM
    assert_loaded(glue.load("mrpc", "train", tmp_path), texts, labels, "mrpc")


# ---------------------------------------------------------------------------
# TensorFlow Datasets (mocked: no network)
# ---------------------------------------------------------------------------


def tfds_examples(config: str, split: str, count: int = 3) -> dict:
    """Fake examples whose texts name their field, builder config and split."""
    task = GLUE_TASKS["mnli" if config.startswith("mnli") else config]
    batch = {field: [f"{field} {config} {split} {i}" for i in range(count)]
             for field in task.text_fields}
    batch["label"] = np.arange(count, dtype=np.int64) % task.num_classes
    batch["idx"] = np.arange(count, dtype=np.int32)
    return batch


@pytest.fixture
def mocked_tfds(monkeypatch):
    """TFDS' glue builder serving :func:`tfds_examples`; yields the (config, split)s asked for."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    asked = []

    def as_dataset(builder, split, **kwargs):
        asked.append((builder.builder_config.name, str(split)))
        return tf.data.Dataset.from_tensor_slices(tfds_examples(builder.builder_config.name, str(split)))

    monkeypatch.setattr(sources, "_unreachable", lambda host: None)  # as if online
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        yield asked


@pytest.mark.parametrize("task, split, tfds_split", [
    ("cola", "train", "train"), ("sst2", "dev", "validation"), ("mrpc", "dev", "validation"),
    ("qqp", "train", "train"), ("mnli", "dev", "validation_matched"),
    ("mnli", "dev_matched", "validation_matched"),
    ("mnli", "dev_mismatched", "validation_mismatched"), ("qnli", "dev", "validation"),
    ("rte", "train", "train"),
])
def test_tfds_fields_and_splits(tmp_path, mocked_tfds, task, split, tfds_split):
    texts, labels = glue.load(task, split, tmp_path)
    assert mocked_tfds == [(task, tfds_split)]
    expected = tfds_examples(task, tfds_split)
    for field, column in zip(GLUE_TASKS[task].text_fields, texts):
        assert column.dtype == object and column.tolist() == expected[field]
    assert labels.dtype == np.int32 and labels.tolist() == expected["label"].tolist()


def test_a_task_folder_without_task_files_is_no_local_copy(tmp_path, mocked_tfds):
    # On a case-insensitive file system TFDS' own glue/rte/ is also glue/RTE/.
    (tmp_path / "glue" / "RTE" / "2.0.0").mkdir(parents=True)
    texts, labels = glue.load("rte", "dev", tmp_path)
    assert mocked_tfds == [("rte", "validation")] and len(labels) == 3


def test_tfds_failure_is_one_line_naming_what_was_looked_for(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def fails(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(tfds, "load", fails)
    monkeypatch.setattr(sources, "_unreachable", lambda host: None)  # the host answers, TFDS fails
    with pytest.raises(FileNotFoundError) as error:
        glue.load("qnli", "dev", tmp_path)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path}/QNLI/" in message and f"{tmp_path}/glue/QNLI/" in message
    assert "could not load or download 'glue/qnli' split 'validation' (ConnectionError: no network)" in message


def test_offline_without_local_files_fails_fast_and_leaves_nothing(tmp_path, offline):
    folder = tmp_path / "empty"
    folder.mkdir()
    for data_dir in (folder, None):
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError) as error:
            glue.load("mnli", "dev_mismatched", data_dir)
        assert time.perf_counter() - start < 10
        message = str(error.value)
        assert "\n" not in message and "dl.fbaipublicfiles.com unreachable" in message
        assert "MNLI/dev_mismatched.tsv" in message and "official GLUE layout" in message
    assert list(folder.iterdir()) == [] and not offline.exists()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_unknown_task_and_split(tmp_path):
    with pytest.raises(ValueError, match=r"`task` must be one of \['cola', 'sst2', .*'rte'\]; "
                                         r"got task='stsb'"):
        glue.load("stsb", "train", tmp_path)
    with pytest.raises(ValueError, match=r"one of \['train', 'dev'\] for task='rte'; got split='test'"):
        glue.load("rte", "test", tmp_path)
    with pytest.raises(ValueError, match=r"got split='dev_matched'"):
        glue.load("sst2", "dev_matched", tmp_path)
    with pytest.raises(ValueError, match=r"\['train', 'dev', 'dev_matched', 'dev_mismatched'\]"):
        glue.load("mnli", "validation", tmp_path)


def test_missing_file_in_a_task_folder(tmp_path):
    write_official(tmp_path / "RTE", "rte", "train")
    with pytest.raises(ValueError) as error:
        glue.load("rte", "dev", tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'RTE' / 'dev.tsv'}: no such file")
    assert "holds ['train.tsv'], a complete copy has ['train.tsv', 'dev.tsv']" in message


def test_data_dir_must_be_a_folder(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=r"`data_dir` must be a folder; got the file data_dir="):
        glue.load("sst2", "train", path)


@pytest.mark.parametrize("task, line, bad, expected", [
    ("rte", 3, "7\tonly two columns", r":3: expected 4 tab-separated columns"),
    ("rte", 2, "0\ta\tb\tentailed", r":2: unknown label 'entailed' in column 'label'; "
                                    r"valid: \['entailment', 'not_entailment'\]"),
    ("cola", 1, "gj04\t1\t\ta\textra tab", r":1: expected 4 tab-separated columns"),
    ("sst2", 4, "great film\t2", r":4: unknown label '2'.*valid: \['0', '1'\]"),
    ("mnli", 3, "", r":3: expected 16 tab-separated columns"),
    ("qnli", 1, "index\tquestion\tsentence", r":1: the header must name the columns \['label'\]"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, line, bad, expected):
    folder = tmp_path / GLUE_TASKS[task].folder
    split = GLUE_TASKS[task].dev_splits[0]
    write_official(folder, task, split)
    path = folder / f"{split}.tsv"
    lines = path.read_text().split("\n")
    lines[line - 1] = bad
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=expected) as error:
        glue.load(task, "dev", tmp_path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_not_utf8_and_empty_files(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(ValueError, match=r"SST-2/train.tsv: not UTF-8 text"):
        glue.load("sst2", "train", tmp_path)
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=r"SST-2/dev.tsv: holds no examples"):
        glue.load("sst2", "dev", tmp_path)


def test_docstring_examples_run():
    for module in (glue, sources):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ---------------------------------------------------------------------------
# The real SST-2 and RTE files (SOURCES.md, glue/)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glue_data_dir() -> pathlib.Path:
    """The folder holding glue/SST-2 and glue/RTE, or skip the test."""
    return real_data_folder("glue/SST-2/train.tsv", "GLUE")


@pytest.mark.parametrize("task, split, rows, counts", [
    ("sst2", "train", 67349, [29780, 37569]),  # negative, positive
    ("sst2", "dev", 872, [428, 444]),
    ("rte", "train", 2490, [1249, 1241]),  # entailment, not_entailment
    ("rte", "dev", 277, [146, 131]),
])
def test_real_glue_rows_and_label_counts(glue_data_dir, task, split, rows, counts):
    texts, labels = glue.load(task, split, glue_data_dir)
    assert len(labels) == rows and np.bincount(labels).tolist() == counts
    assert all(len(column) == rows for column in texts)
    assert all(isinstance(text, str) and text for column in texts for text in column[:50])


def test_real_sst2_first_sentence(glue_data_dir):
    (sentences,), labels = glue.load("sst2", "train", glue_data_dir)
    assert sentences[0] == "hide new secretions from the parental units" and labels[0] == 0

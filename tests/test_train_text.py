"""train.py on the GLUE tasks (P section 4.2): ce, lsr, pseudo_kd and kd end to end on tiny
KerasHub classifiers (tests/text_fixtures.py, saved as local preset directories) and tiny
files in the official GLUE layout of all seven tasks, written here; results.json against
the float64 references of tests/test_glue_metrics.py on the saved model's predictions;
a killed-and-resumed run; the protocol's defaults; the one-line errors."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from conftest import assert_resumed_equals_full, run_killed_and_resumed
from test_glue_data import official_header, official_row
from test_glue_metrics import reference_f1, reference_mcc
from test_train import run_train
from text_fixtures import bert_classifier, roberta_classifier, save_preset, toy_texts

from keras_softkd.config import ExperimentConfig, UsageError
from keras_softkd.data import GLUE_TASKS

pytest.importorskip("keras_hub")

SEQUENCE = "--sequence_length=16"
# float32: check_results recomputes each run's dev metrics from the saved classifier, exactly
# (and the NLL to 1e-4), which bfloat16's rounding between two batchings would not allow;
# test_a_text_run_in_bfloat16 covers --precision's default (auto) where bfloat16 is native.
TINY = ["--epochs=1", "--batch_size=8", "--lr=1e-3", SEQUENCE, "--precision=float32"]


def write_glue(root: pathlib.Path, train: int = 32, dev: int = 16) -> pathlib.Path:
    """Every task's train and dev files (MNLI: dev_matched, dev_mismatched) in the official
    layout, from the fixtures' toy vocabulary (single sentences and pairs)."""
    for number, (name, task) in enumerate(GLUE_TASKS.items()):
        for split, count in [("train", train)] + [(s, dev) for s in task.dev_splits]:
            pairs = len(task.text_fields) == 2
            texts, labels = toy_texts(count, seed=10 * number + len(split), pairs=pairs)
            labels = labels % task.num_classes if name != "mnli" else (
                labels + np.arange(count)) % 3
            columns = list(zip(*texts)) if pairs else [(text,) for text in texts]
            header = official_header(name, split)
            rows = ([header] if header else []) + [
                official_row(name, split, i, fields, int(label))
                for i, (fields, label) in enumerate(zip(columns, labels))
            ]
            folder = root / task.folder
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """GLUE files, and the presets: a 1-layer RoBERTa student and a 2-layer BERT teacher."""
    root = tmp_path_factory.mktemp("text")
    presets = {
        "student": save_preset(roberta_classifier("student"), root / "student"),
        "teacher": save_preset(bert_classifier("teacher"), root / "teacher"),
    }
    return {"data": write_glue(root / "glue"), "root": root, **presets}


def load_dev(data: pathlib.Path, task: str, split: str):
    from keras_softkd.data import glue

    return glue.load(task, split, data)


def check_results(setup, out: pathlib.Path, task: str) -> dict:
    """results.json's dev metrics are the references' on the saved student's predictions."""
    import keras
    import tensorflow as tf

    import keras_softkd.models.text  # noqa: F401  (a reloaded classifier keeps its loss)

    results = json.loads((out / "results.json").read_text())
    info = GLUE_TASKS[task]
    assert results["completed"] and not results["diverged"] and results["dataset"] == task
    assert list(results["glue"]) == list(info.dev_splits)
    assert results["glue_metric"] == info.metrics[0]
    student = keras.models.load_model(out / "model.keras")
    for split in info.dev_splits:
        texts, labels = load_dev(setup["data"], task, split)
        # The saved classifier's own preprocessor and network, called eagerly (no tracing).
        raw = tuple(tf.constant(part.astype(str)) for part in texts)
        tokens, _ = student.preprocessor(raw[0] if len(raw) == 1 else raw, labels)
        logits = np.asarray(student(tokens, training=False), np.float64)
        predictions = logits.argmax(1).tolist()
        reference = {
            "accuracy": 100 * sum(int(y == p) for y, p in zip(labels, predictions)) / len(labels),
            "f1": 100 * reference_f1(labels.tolist(), predictions),
            "matthews_correlation": 100 * reference_mcc(labels.tolist(), predictions),
        }
        scores = results["glue"][split]
        assert list(scores)[: len(info.metrics)] == list(info.metrics)
        for name in info.metrics:
            assert scores[name] == pytest.approx(reference[name], abs=1e-9), (task, split, name)
        nll = np.mean([math.log(np.exp(row - row.max()).sum()) + row.max() - row[y]
                       for row, y in zip(logits, labels)])
        assert scores["nll"] == pytest.approx(nll, abs=1e-4)
        assert 0.0 <= scores["ece"] <= 1.0
    first = results["glue"][info.dev_splits[0]]
    assert results["glue_score"] == first[info.metrics[0]]
    assert results["test_nll"] == first["nll"] and results["test_error"] == first["error"]
    hyper = results["hyperparameters"]
    assert (hyper["optimizer"], hyper["lr_schedule"], hyper["sequence_length"]) == (
        "adamw", "linear", 16)
    assert hyper["warmup_fraction"] == 0.06 and hyper["momentum"] is None
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and "val_accuracy" in history[0]
    assert any((out / "tensorboard").rglob("*tfevents*"))
    return results


# -- train.py end to end (the teacher's run), and its body in process --------------------------


def run_in_process(setup, out: pathlib.Path, **settings) -> dict:
    """``experiment.run`` (train.py's body) with TINY's settings: a subprocess would only
    import TensorFlow and KerasHub again."""
    from keras_softkd import experiment

    return experiment.run(ExperimentConfig(
        model=setup["student"], data_dir=str(setup["data"]), epochs=1, batch_size=8, lr=1e-3,
        sequence_length=16, precision="float32", output_dir=str(out), **settings,
    ))


@pytest.fixture(scope="module")
def teacher_run(setup):
    """A ce run of the bigger BERT on RTE (pairs): the KD teacher, saved as model.keras."""
    out = setup["root"] / "teacher_rte"
    result = run_train("--method=ce", "--dataset=rte", f"--model={setup['teacher']}",
                       f"--data_dir={setup['data']}", *TINY, f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dev accuracy" in result.stdout
    return out


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_ce_trains_the_teacher_on_sentence_pairs(setup, teacher_run):
    results = check_results(setup, teacher_run, "rte")
    assert results["method"] == "ce" and "teacher_model" not in results


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_kd_from_a_bigger_teacher_with_its_own_tokenizer(setup, teacher_run):
    out = setup["root"] / "kd_rte"
    run_in_process(setup, out, method="kd", dataset="rte", teacher=str(teacher_run / "model.keras"))
    results = check_results(setup, out, "rte")
    assert results["teacher_model"] == "bert_teacher"
    assert results["teacher_logits"].startswith("computed once")
    # P's grid {0.1, 0.2, 0.5} x {1, 5, 10}: the text defaults, not the image side's 0.9 / 4.
    assert (results["hyperparameters"]["alpha"], results["hyperparameters"]["temperature"]) == (
        0.5, 5.0)


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
@pytest.mark.parametrize("method,task", [("lsr", "cola"), ("pseudo_kd", "mnli")])
def test_a_method_on_a_task(setup, method, task):
    out = setup["root"] / f"{method}_{task}"
    run_in_process(setup, out, method=method, dataset=task)
    results = check_results(setup, out, task)
    if method == "pseudo_kd":  # P's Appendix C: alpha 0.1, MNLI's beta 2
        assert (results["hyperparameters"]["alpha"], results["hyperparameters"]["beta"]) == (0.1, 2.0)
        assert set(results["glue"]) == {"dev_matched", "dev_mismatched"}


# -- the other task formats, in process (experiment.run, train.py's body) ----------------------


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
@pytest.mark.parametrize("task,method", [("sst2", "pseudo_kd"), ("mrpc", "ce"), ("qqp", "lsr"),
                                         ("qnli", "kd")])
def test_every_task_format(setup, tmp_path, task, method):
    """The other four tasks in process; KD here from the teacher's preset directory."""
    out = tmp_path / task
    teacher = {"teacher": setup["teacher"]} if method == "kd" else {}
    run_in_process(setup, out, method=method, dataset=task, **teacher)
    results = check_results(setup, out, task)
    if method == "kd":
        assert results["teacher_model"] == "bert_teacher" and "teacher_logits" in results
    if task in ("mrpc", "qqp"):
        assert set(results["glue"]["dev"]) >= {"accuracy", "f1"}


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_a_text_run_in_bfloat16(setup, tmp_path):
    """--precision=mixed_bfloat16 (what auto picks where bfloat16 is native) on a KerasHub
    classifier with sentence pairs and KD from a teacher of another size: the run finishes
    with finite float32 metrics, the student trained in bfloat16 and saved in float32, and the
    metrics are those of the saved classifier's predictions."""
    import keras
    import tensorflow as tf

    from keras_softkd import experiment

    out = tmp_path / "bf16"
    results = experiment.run(ExperimentConfig(
        method="kd", dataset="rte", model=setup["student"], teacher=setup["teacher"],
        data_dir=str(setup["data"]), epochs=1, batch_size=8, lr=1e-3, sequence_length=16,
        output_dir=str(out), precision="mixed_bfloat16",
    ))
    assert results["completed"] and not results["diverged"]
    assert results["hyperparameters"]["precision"] == "mixed_bfloat16"
    scores = results["glue"]["dev"]
    assert np.isfinite(scores["nll"]) and 0.0 <= scores["accuracy"] <= 100.0
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's, put back
    student = keras.models.load_model(out / "model.keras")
    assert student.backbone.compute_dtype == "float32"
    texts, labels = load_dev(setup["data"], "rte", "dev")
    tokens, _ = student.preprocessor(tuple(tf.constant(part.astype(str)) for part in texts), labels)
    logits = np.asarray(student(tokens, training=False), np.float64)
    nll = np.mean([math.log(np.exp(row - row.max()).sum()) + row.max() - row[y]
                   for row, y in zip(logits, labels)])
    assert scores["nll"] == pytest.approx(nll, abs=1e-4)


#: Loads a saved classifier where keras_softkd cannot be imported (Keras and KerasHub only) and
#: prints its logits on the sentence pairs of a JSON file, as JSON.
KERAS_AND_HUB_ALONE = """
import json, sys
sys.modules["keras_softkd"] = None  # unimportable here, whatever the environment installs
try:
    import keras_softkd
except ImportError:
    pass
else:
    raise SystemExit("keras_softkd was imported")
import keras, numpy as np
model = keras.models.load_model(sys.argv[1])
first, second = (np.array(part) for part in json.loads(open(sys.argv[2]).read()))
print("LOGITS=" + json.dumps(model.predict((first, second), verbose=0).tolist()))
"""


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_model_keras_needs_keras_and_keras_hub_alone_and_takes_raw_sentences(setup, teacher_run):
    """The ce run's model.keras loads where keras_softkd cannot be imported, takes the dev
    sentence pairs as strings, and scores results.json's dev accuracy and NLL."""
    import os
    import subprocess
    import sys

    texts, labels = load_dev(setup["data"], "rte", "dev")
    pairs = teacher_run / "dev_pairs.json"
    pairs.write_text(json.dumps([part.astype(str).tolist() for part in texts]))
    result = subprocess.run(
        [sys.executable, "-I", "-c", KERAS_AND_HUB_ALONE, str(teacher_run / "model.keras"),
         str(pairs)],
        capture_output=True, text=True, timeout=300, cwd=teacher_run,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("LOGITS=")][0]
    logits = np.array(json.loads(line[len("LOGITS="):]), np.float64)
    scores = json.loads((teacher_run / "results.json").read_text())["glue"]["dev"]
    assert scores["accuracy"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels), abs=1e-9)
    nll = np.mean([math.log(np.exp(row - row.max()).sum()) + row.max() - row[y]
                   for row, y in zip(logits, labels)])
    assert scores["nll"] == pytest.approx(nll, abs=1e-4)


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_a_scratch_model_with_subsets_and_a_held_out_split(setup, tmp_path):
    """bert_tiny_scratch (vocabulary from the training texts), --train_examples and
    --validation_fraction on texts, --keep_best on the held-out split."""
    from keras_softkd import experiment

    out = tmp_path / "scratch"
    results = experiment.run(ExperimentConfig(
        method="lsr", dataset="sst2", model="bert_tiny_scratch", data_dir=str(setup["data"]),
        epochs=2, batch_size=8, lr=1e-3, sequence_length=16, train_examples=24,
        validation_fraction=0.25, keep_best=True, output_dir=str(out),
        precision="float32",  # as TINY
    ))
    assert results["train_examples_used"] == 18 and results["best_epoch"] in (1, 2)
    assert (out / "model_best.keras").exists()
    check_results(setup, out, "sst2")


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_a_killed_text_run_resumes_to_the_uninterrupted_result(setup, tmp_path, monkeypatch, capsys):
    """Killed right after epoch 1's checkpoint, run again: the same weights and metrics as a
    run never interrupted (the batches of epoch 2 are a function of the seed and the epoch)."""
    settings = dict(method="pseudo_kd", dataset="rte", model=setup["student"],
                    data_dir=str(setup["data"]), epochs=2, batch_size=8, lr=1e-3, seed=3,
                    sequence_length=16)
    capsys.readouterr()
    full, resumed = run_killed_and_resumed(tmp_path, monkeypatch, settings, killed_after=0)
    assert capsys.readouterr().out.count("Resuming from") == 1  # epoch 2 only, from the checkpoint
    assert_resumed_equals_full(tmp_path, full, resumed,
                               ("test_error", "test_nll", "test_ece", "glue_score"),
                               epochs=2, weights_rtol=1e-5)


# -- defaults and errors ---------------------------------------------------------------------


def test_text_defaults_and_image_defaults_are_resolved_per_dataset_kind():
    text = ExperimentConfig(method="pseudo_kd", dataset="sst2", model="bert_tiny_scratch").resolved()
    assert (text.optimizer, text.lr, text.batch_size, text.epochs, text.lr_schedule) == (
        "adamw", 2e-5, 32, 10, "linear")
    assert (text.weight_decay, text.momentum, text.warmup_fraction, text.sequence_length) == (
        0.01, None, 0.06, 128)
    assert (text.alpha, text.beta) == (0.1, 5.0)  # P's Appendix C, SST-2
    betas = {task: ExperimentConfig(method="pseudo_kd", dataset=task, model="bert_tiny_scratch")
             .resolved().beta for task in GLUE_TASKS}
    assert betas == {"cola": 2.0, "sst2": 5.0, "mrpc": 2.0, "qqp": 4.0, "mnli": 2.0, "qnli": 4.0,
                     "rte": 2.0}
    assert ExperimentConfig(method="lsr", dataset="rte", model="x").resolved().alpha == 0.1
    image = ExperimentConfig(method="pseudo_kd").resolved()
    assert (image.optimizer, image.lr, image.batch_size, image.epochs, image.lr_schedule,
            image.weight_decay, image.momentum, image.warmup_fraction, image.sequence_length) == (
        "sgd", 0.1, 128, 200, "cosine", 5e-4, 0.9, None, None)
    assert (image.alpha, image.beta) == (0.2, 2.5)
    # An image run's results.json records what it always did.
    assert "optimizer" not in image.hyperparameters()
    assert "sequence_length" not in image.hyperparameters()


def test_the_linear_schedule_warms_up_then_decays_to_zero():
    from keras_softkd import experiment

    config = ExperimentConfig(dataset="rte", model="x", epochs=10, lr=1e-3).resolved()
    schedule = experiment.learning_rate_schedule(config, 10)  # 100 steps, 6 of warm-up
    values = [float(schedule(step)) for step in (0, 3, 6, 53, 100)]
    assert values == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 0.0], abs=1e-9)
    optimizer = experiment.make_optimizer(config, 10)
    assert type(optimizer).__name__ == "AdamW" and optimizer.weight_decay == 0.01
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-8)


@pytest.mark.parametrize("overrides,flag", [
    ({"dataset": "rte", "model": "resnet20"}, "--model=resnet20"),
    ({"dataset": "cifar10", "model": "bert_tiny_scratch"}, "--model='bert_tiny_scratch'"),
    ({"dataset": "rte", "model": "x", "method": "mrkd"}, "--method=mrkd"),
    ({"dataset": "rte", "model": "x", "momentum": 0.9}, "--momentum"),
    ({"dataset": "rte", "model": "x", "lr_schedule": "cosine", "warmup_fraction": 0.1},
     "--warmup_fraction"),
    ({"dataset": "cifar10", "sequence_length": 64}, "--sequence_length"),
    ({"dataset": "rte", "model": "x", "sequence_length": 1}, "--sequence_length"),
    ({"dataset": "rte", "model": "x", "optimizer": "adam"}, "--optimizer"),
    ({"dataset": "rte", "model": "x", "method": "kd", "teacher": "t.keras",
      "teacher_precision": "bfloat16"}, "--teacher_precision"),
])
def test_wrong_pairings_and_settings_name_the_flag(overrides, flag):
    with pytest.raises(UsageError, match=flag.replace("-", r"\-")):
        ExperimentConfig(**overrides).resolved()


@pytest.mark.xdist_group("text_presets")
@pytest.mark.slow
def test_command_line_errors_are_one_line(setup, tmp_path):
    for args, expected in [
        (["--dataset=cifar10", "--model=bert_tiny_scratch"], "--model='bert_tiny_scratch'"),
        (["--dataset=rte", "--model=resnet20"], "--dataset=rte (GLUE) takes a text model"),
        (["--dataset=rte", "--model=no_such_preset_en", f"--data_dir={setup['data']}"],
         "--model='no_such_preset_en'"),
    ]:
        result = run_train(*args, f"--output_dir={tmp_path / 'out'}")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error")]
        assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("text_presets")
def test_an_uncached_preset_offline_fails_at_once(setup, tmp_path, monkeypatch):
    """No internet here; with it, the check is made to fail as it would offline."""
    from keras_softkd import experiment
    from keras_softkd.data import sources

    monkeypatch.setattr(sources, "_unreachable", lambda host: "offline (test)")
    with pytest.raises(UsageError, match="--model=roberta_base_en.*not cached"):
        experiment.run(ExperimentConfig(dataset="rte", model="roberta_base_en",
                                        data_dir=str(setup["data"]), output_dir=str(tmp_path)))


@pytest.mark.slow
@pytest.mark.xdist_group("text_presets")
def test_report_and_grid_show_a_text_runs_headline(setup, teacher_run):
    """The image side's report reads a GLUE run (its test_* are on the dev set) and shows the
    task's headline first; the grid's one-line summary shows it too."""
    from keras_softkd import report
    from keras_softkd.grid import progress

    runs = report.collect([teacher_run])
    text = report.table_all(runs)
    headline = json.loads((teacher_run / "results.json").read_text())["glue_score"]
    assert text.startswith("### GLUE dev score") and f"{headline:.2f} (1)" in text
    assert "### Top-1 test error (%)" in text

    class Cell:
        output_dir = teacher_run

    assert progress.headline(Cell()).startswith(f"dev accuracy {headline:.2f} | test error")


def test_p_table3_flagfiles_hold_appendix_c_and_resolve():
    """flags/p_table3: every task's columns, P's batch size and lr, a config that resolves."""
    root = pathlib.Path(__file__).resolve().parents[1] / "flags" / "p_table3"
    appendix_c = {"cola": (32, 1e-5), "rte": (16, 2e-5), "sst2": (64, 2e-5), "mrpc": (8, 2e-5),
                  "qnli": (64, 2e-5), "qqp": (32, 2e-5), "mnli": (32, 2e-5)}
    assert sorted(p.name for p in root.iterdir()) == sorted(GLUE_TASKS)
    for task, (batch, lr) in appendix_c.items():
        columns = sorted(p.stem for p in (root / task).glob("*.flags"))
        assert columns == ["ce", "kd", "lsr", "pseudo_kd", "teacher"], task
        for column in columns:
            values = {}
            for line in (root / task / f"{column}.flags").read_text().splitlines():
                if line.startswith("--"):
                    key, value = line[2:].split("=", 1)
                    values[key] = int(value) if value.isdigit() else (
                        float(value) if key == "lr" else value)
            config = ExperimentConfig(**{**values, "output_dir": "x"}).resolved()
            assert (config.dataset, config.batch_size, config.lr) == (task, batch, lr)
            assert config.model == ("roberta_large_en" if column == "teacher"
                                    else "distil_roberta_base_en")


def test_configs_text_model_names_are_the_text_modules():
    """config names them without importing KerasHub; they must stay models.text's names."""
    from keras_softkd import config
    from keras_softkd.models import text

    assert set(config.TEXT_MODELS) == {*text.ALIASES, *text.SCRATCH}

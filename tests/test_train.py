"""train.py and experiment.run: flag errors, outputs, resume after a killed process."""

import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TF_STARTUP, run_on_one_and_two_devices, write_tiny_cifar
from keras_softkd import experiment
from keras_softkd.config import ExperimentConfig, UsageError, method_defaults

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")


def cpu_native() -> bool:
    """Whether train.py under :func:`run_train` (no GPU) finds native bfloat16: the CPU's flags."""
    from keras_softkd.precision import cpu_bfloat16_flags

    try:
        return bool(cpu_bfloat16_flags(pathlib.Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def run_train(*args, timeout=600, umask=None):
    """train.py in a subprocess with the user's environment (no log-level variables of ours)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_SOFTKD_TF_LOGS"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, TRAIN, *args], capture_output=True, text=True, timeout=timeout, env=env,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


# -- configuration errors (in process: fast) ----------------------------------------------


@pytest.mark.parametrize(
    "overrides,flag",
    [
        ({"method": "mrkd2"}, "--method"),
        ({"model": "resnet21"}, "--model"),
        ({"dataset": "mnist"}, "--dataset"),
        ({"method": "lsr", "copies": 3}, "--copies"),
        ({"method": "lsr", "gamma": 0.2}, "--gamma"),
        ({"method": "ce", "alpha": 0.1}, "--alpha"),
        ({"method": "lsr", "alpha": 1.5}, "--alpha"),
        ({"method": "lsrkd", "temperature": 0.0}, "--temperature"),
        ({"method": "mrkd", "copies": 0}, "--copies"),
        ({"method": "mrkd", "kappa": -1.0}, "--kappa"),
        ({"method": "pseudo_kd", "beta": 0.0}, "--beta"),
        ({"method": "kd"}, "--teacher"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": -2}, "--batch_size"),
        ({"lr": 0.0}, "--lr"),
        ({"train_examples": 0}, "--train_examples"),
        ({"strategy": "tpu"}, "--strategy"),
        ({"lr_schedule": "exponential"}, "--lr_schedule"),
        ({"method": "lsr", "initial_weights_teach": True}, "--initial_weights_teach"),
        ({"method": "mrkd", "initial_weights_teach": "yes"}, "--initial_weights_teach"),
        ({"keep_best": True}, "--validation_fraction"),
        ({"eval_examples": 0}, "--eval_examples"),
        ({"dataset": "rte", "model": "bert_tiny_scratch", "eval_examples": 8}, "--eval_examples"),
        ({"precision": "bfloat16"}, "--precision"),
        ({"method": "lsr", "teacher_precision": "bfloat16"}, "--teacher_precision"),
    ],
)
def test_bad_configuration_names_the_flag(overrides, flag):
    with pytest.raises(UsageError, match=flag.replace("-", r"\-")):
        ExperimentConfig(**overrides).resolved()


def test_defaults_follow_the_papers_per_dataset():
    assert method_defaults("lsrkd_tc", "cifar100", 200)["gamma"] == 0.025
    assert method_defaults("lsrkd_tc", "cifar10", 200)["gamma"] == 0.25
    assert method_defaults("mrkd", "cifar100", 200) == {
        "alpha": 0.25, "temperature": 3.0, "copies": 3, "kappa": 25.0,
        "initial_weights_teach": False,
    }
    assert method_defaults("mrkd", "cinic10", 200)["alpha"] == 0.1
    assert method_defaults("pseudo_kd", "cifar10", 200) == {"alpha": 0.2, "beta": 2.5}
    config = ExperimentConfig(method="mrkd", epochs=16, kappa=10 / 391, seed=4,
                              output_dir="runs/{method}/s{seed}").resolved()
    assert config.interval_steps(391) == 10 and config.copies == 3
    assert config.output_dir == "runs/mrkd/s4"
    assert ExperimentConfig(method="mrkd", kappa=1e-6).resolved().interval_steps(391) == 1


def test_missing_and_corrupt_data_files(tmp_path):
    base = dict(method="ce", dataset="cifar10", epochs=1, output_dir=str(tmp_path / "out"))
    with pytest.raises(UsageError, match="--data_dir"):
        experiment.run(ExperimentConfig(data_dir=str(tmp_path / "nowhere"), **base))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "cifar10_train.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (corrupt / "cifar10_test.npz").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="--data_dir"):
        experiment.run(ExperimentConfig(data_dir=str(corrupt), **base))


def test_teacher_must_be_a_model_with_the_datasets_classes(tmp_path):
    import keras

    not_a_model = tmp_path / "teacher.keras"
    not_a_model.write_text("hello")
    with pytest.raises(UsageError, match="--teacher"):
        experiment.load_teacher(str(not_a_model), 10)
    wrong = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(7)])
    wrong.save(tmp_path / "seven.keras")
    with pytest.raises(UsageError, match="10 classes"):
        experiment.load_teacher(str(tmp_path / "seven.keras"), 10)


class _Stop(Exception):
    """Raised from a wrapped ``build_trainer`` once the initial weights are recorded."""


def test_a_seed_fixes_the_initial_weights_and_the_batches_for_every_method(tmp_path, monkeypatch):
    """What makes report.differences paired: with the same seed, ce, lsrkd and mrkd start from
    the same weights and read the same first batch; another seed changes both."""
    data_dir = write_tiny_cifar(tmp_path / "data")
    seen = {}
    original_input, original_build = experiment.data.training_input, experiment.image.build_trainer

    def recording_input(*args, **kwargs):
        stream, steps = original_input(*args, **kwargs)
        seen["batch"] = [np.asarray(part) for part in next(iter(stream))]
        return stream, steps

    def recording_build(config, *args, **kwargs):
        trainer = original_build(config, *args, **kwargs)
        student = getattr(trainer, "student", trainer)
        seen["weights"] = [np.asarray(w) for w in student.get_weights()]
        raise _Stop

    monkeypatch.setattr(experiment.data, "training_input", recording_input)
    monkeypatch.setattr(experiment.image, "build_trainer", recording_build)
    starts = {}
    for method, seed in [("ce", 3), ("lsrkd", 3), ("mrkd", 3), ("ce", 4)]:
        config = ExperimentConfig(method=method, model="resnet20", epochs=1, batch_size=16, seed=seed,
                                  data_dir=str(data_dir), output_dir=str(tmp_path / f"{method}{seed}"))
        with pytest.raises(_Stop):
            experiment.run(config)
        starts[method, seed] = dict(seen)
    reference = starts["ce", 3]
    for key in [("lsrkd", 3), ("mrkd", 3)]:
        for a, b in zip(reference["weights"] + reference["batch"], starts[key]["weights"] + starts[key]["batch"]):
            np.testing.assert_array_equal(a, b)
    other = starts["ce", 4]
    assert not np.array_equal(reference["batch"][0], other["batch"][0])
    assert not all(np.array_equal(a, b) for a, b in zip(reference["weights"], other["weights"]))


@pytest.mark.slow
def test_a_kd_run_records_its_teachers_network(tmp_path):
    """results.json names the teacher's network, which names the report's KD column (KD-29)."""
    import keras

    from keras_softkd import models

    data_dir = write_tiny_cifar(tmp_path / "data")
    teacher = tmp_path / "teacher.keras"
    models.build("resnet20", 10).save(teacher)
    results = {}
    for method, extra in [("kd", {"teacher": str(teacher)}), ("ce", {})]:
        keras.backend.clear_session()
        results[method] = experiment.run(ExperimentConfig(
            method=method, model="resnet20", epochs=1, batch_size=32, data_dir=str(data_dir),
            output_dir=str(tmp_path / method), **extra,
        ))
    assert results["kd"]["teacher_model"] == "resnet20"
    assert "teacher_model" not in results["ce"]
    written = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert written["teacher_model"] == "resnet20" and written["completed"]


@pytest.mark.slow
def test_eval_examples_evaluates_each_epoch_on_a_subset_and_the_result_on_the_whole_test_set(tmp_path):
    """--eval_examples (the quickstart's 2,000): history.csv's val_* are the final student's on a
    seeded subset of the test images, results.json's on all of them (model.keras reproduces both)."""
    import keras

    from keras_softkd import data

    data_dir = write_tiny_cifar(tmp_path / "data", train=64, test=32)
    out = tmp_path / "out"
    # float32: the last epoch's evaluation and model.keras compute alike.
    results = experiment.run(ExperimentConfig(
        method="ce", model="resnet20", epochs=1, batch_size=32, seed=2, data_dir=str(data_dir),
        output_dir=str(out), eval_examples=7, precision="float32"))
    assert results["hyperparameters"]["eval_examples"] == 7
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    x_test, y_test = data.load("cifar10", "test", str(data_dir))
    x_sub, y_sub = data.take_subset(x_test, y_test, 7, 2)
    model = keras.models.load_model(out / "model.keras")
    sub_accuracy = float(np.mean(model.predict(x_sub, verbose=0).argmax(1) == y_sub))
    all_error = float(np.mean(model.predict(x_test, verbose=0).argmax(1) != y_test))
    assert float(history["val_accuracy"]) == pytest.approx(sub_accuracy, abs=1e-6)
    assert round(float(history["val_accuracy"]) * 7, 6).is_integer()
    assert results["test_error"] == pytest.approx(all_error, abs=1e-9)


@pytest.mark.slow
def test_keep_best_saves_the_student_of_the_best_held_out_epoch(tmp_path):
    """P picks teachers "based on their best accuracy": on the held-out split, never the test set."""
    import keras

    from keras_softkd import data

    data_dir = write_tiny_cifar(tmp_path / "data", train=96, test=32)
    out = tmp_path / "out"
    # float32: the held-out accuracy of each epoch is the student's in the run's precision,
    # and model_best.keras computes in float32 (bfloat16 could move an image of 24).
    config = ExperimentConfig(method="ce", model="resnet20", epochs=4, batch_size=24, seed=5,
                              data_dir=str(data_dir), output_dir=str(out),
                              validation_fraction=0.25, keep_best=True, precision="float32")
    results = experiment.run(config)
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    best_epoch = int(np.argmax(history["val_accuracy"])) + 1  # the first of the best
    assert results["best_epoch"] == best_epoch
    assert results["best_val_accuracy"] == pytest.approx(history["val_accuracy"].max())
    assert json.loads((out / "best.json").read_text())["epoch"] == best_epoch
    # The saved student scores that accuracy on the held-out split (not on the test set), from
    # the images as stored.
    x, y = data.load("cifar10", "train", str(data_dir))
    _, (x_valid, y_valid) = data.split_validation(x, y, 0.25, 5)
    best = keras.models.load_model(out / "model_best.keras")
    logits = best.predict(x_valid, verbose=0)
    assert np.mean(np.argmax(logits, 1) == y_valid) == pytest.approx(results["best_val_accuracy"])


def test_learning_rate_schedules_reach_the_papers_values():
    cosine = experiment.learning_rate_schedule(ExperimentConfig(epochs=10, lr=0.1, lr_schedule="cosine"), 5)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(1e-4, rel=1e-3)
    step = experiment.learning_rate_schedule(
        ExperimentConfig(epochs=200, lr=0.1, lr_schedule="step"), 10
    )
    assert [float(step(s)) for s in (0, 599, 600, 1200, 1600, 1999)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008]
    )


# -- the command line (subprocesses: real exits) ------------------------------------------


def error_lines(stderr: str, flag: str) -> list[str]:
    """stderr's ``train.py: error`` lines, checked to be the only output, one, naming ``flag``."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error") and flag in lines[0], stderr
    return lines


@pytest.mark.slow
def test_flag_and_configuration_errors_are_refused_before_tensorflow_loads(tmp_path):
    """One line, exit 2, with Keras and TensorFlow unimportable: the checks come first."""
    without_keras = (
        "import runpy, sys\n"
        "sys.modules['tensorflow'] = sys.modules['keras'] = None\n"
        f"sys.argv = [{TRAIN!r}, *sys.argv[1:]]\n"
        f"runpy.run_path({TRAIN!r}, run_name='__main__')\n"
    )
    for args, flag in [
        (["--method=nonsense"], "--method"),  # absl's enum
        (["--precision=bf16"], "--precision"),
        (["--batch_size=12x"], "--batch_size"),  # absl's integer
        (["--alpa=0.1"], "alpa"),  # an unknown flag (absl suggests --alpha)
        (["--method=lsr", "--copies=2"], "--copies"),  # the configuration's checks
        (["--model=resnet21"], "--model"),
    ]:
        result = subprocess.run([sys.executable, "-c", without_keras, *args], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        error_lines(result.stderr, flag)


@pytest.mark.slow
def test_command_line_errors_are_one_line_without_traceback(tmp_path):
    data_dir = write_tiny_cifar(tmp_path / "data")
    for args, flag in [
        (["--method=mrkd", f"--data_dir={tmp_path / 'nowhere'}"], "--data_dir"),
        (["--method=kd", f"--teacher={tmp_path / 'none.keras'}", f"--data_dir={data_dir}"], "--teacher"),
    ]:
        result = run_train(*args, f"--output_dir={tmp_path / 'out'}")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error")]
        assert len(lines) == 1 and flag in lines[0], result.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An uninterrupted 3-epoch MrKD run of ResNet-20 on 64 random images."""
    root = tmp_path_factory.mktemp("train")
    data_dir = write_tiny_cifar(root / "data")
    args = [
        "--method=mrkd", "--copies=2", "--kappa=1", "--model=resnet20", "--epochs=3",
        "--batch_size=32", f"--data_dir={data_dir}", "--seed=1",
    ]
    full = run_train(*args, f"--output_dir={root / 'full'}", umask=0o022)
    assert full.returncode == 0, full.stderr[-3000:]
    return root, args, full


@pytest.mark.xdist_group("train_tiny_run")
@pytest.mark.slow
def test_a_run_prints_our_lines_not_tensorflows(tiny_run):
    *_, full = tiny_run
    output = full.stdout + full.stderr
    assert "test error" in full.stdout
    assert not TF_STARTUP.search(output), TF_STARTUP.search(output).group(0)


@pytest.mark.slow
@pytest.mark.xdist_group("train_tiny_run")
def test_run_files_are_readable_as_a_plain_write_makes_them(tiny_run):
    root, *_ = tiny_run
    files = [path for path in (root / "full").rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"results.json", "model.keras", "history.csv", "state.json"} <= names, names
    modes = {str(path.relative_to(root)): oct(path.stat().st_mode & 0o777) for path in files}
    assert set(modes.values()) == {"0o644"}, modes  # umask 0022: rw-r--r--, as open(..., "w")


@pytest.mark.slow
def test_precision_flags_in_a_dry_run_and_the_deprecated_mixed_precision():
    def resolved(*args):
        result = run_train("--dry_run", *args)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout), result.stderr

    config, _ = resolved("--method=mrkd", "--precision=mixed_bfloat16", "--teacher_precision=bfloat16")
    assert config["precision"] == "mixed_bfloat16" and config["teacher_precision"] == "bfloat16"
    assert "mixed_precision" not in config
    config, stderr = resolved("--mixed_precision")
    assert config["precision"] == "mixed_float16" and "deprecated" in stderr
    assert config["teacher_precision"] == "same"  # auto, beside a float16 student
    # auto, resolved in the dry run as a run resolves it (here: the CPU, run_train hides GPUs)
    native = cpu_native()
    config, _ = resolved("--method=mrkd")  # --precision=auto, the default
    assert (config["precision"], config["teacher_precision"]) == (
        ("mixed_bfloat16", "same") if native else ("float32", "same"))
    config, _ = resolved("--method=mrkd", "--precision=float32")
    assert (config["precision"], config["teacher_precision"]) == (
        "float32", "bfloat16" if native else "same")
    config, _ = resolved("--method=ce", "--teacher_precision=auto")
    assert config["teacher_precision"] == "same"  # auto never fails where no teacher runs
    for flag in ("--precision=bfloat16", "--teacher_precision=float16"):
        result = run_train("--dry_run", flag)
        assert result.returncode == 2 and "auto" in error_lines(result.stderr, flag.split("=")[0])[0]
    result = run_train("--dry_run", "--mixed_precision", "--precision=mixed_bfloat16")
    assert result.returncode == 2
    error_lines(result.stderr, "--precision")


@pytest.mark.slow
def test_help_exits_zero_without_tensorflow_lines():
    result = run_train("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--method" in result.stdout and "--data_dir" in result.stdout
    assert "cifar100 \\\n        --data_dir" in result.stdout  # the example's line break, no stray spaces
    assert not TF_STARTUP.search(result.stdout + result.stderr)


@pytest.mark.slow
def test_offline_without_data_fails_fast_with_one_line_and_leaves_nothing(tmp_path):
    # Fast: the first failed name lookup ends it, no retries (a count, not a time: the
    # machine's load would make a time flaky).
    calls = tmp_path.parent / f"{tmp_path.name}_lookups"
    offline = (
        "import atexit, runpy, socket, sys\n"
        "lookups = []\n"
        f"atexit.register(lambda: open({str(calls)!r}, 'w').write(str(len(lookups))))\n"
        "def no_network(*args, **kwargs):\n"
        "    lookups.append(args)\n"
        "    raise socket.gaierror(-3, 'Temporary failure in name resolution')\n"
        "socket.getaddrinfo = no_network\n"
        f"sys.argv = [{TRAIN!r}, '--output_dir={tmp_path / 'run'}']\n"
        f"runpy.run_path({TRAIN!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", offline], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert int(calls.read_text()) == 1, calls.read_text()
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train.py: error: --data_dir:")
    for name in ("cifar10_train.npz", "cifar-10-python.tar.gz", "docs/training.md"):
        assert name in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.xdist_group("train_tiny_run")
def test_outputs_of_a_run(tiny_run):
    root, *_ = tiny_run
    out = root / "full"
    results = json.loads((out / "results.json").read_text())
    for key in ("test_error", "test_top5_error", "test_nll", "test_ece"):
        assert 0.0 <= results[key] <= (1.0 if key != "test_nll" else 100.0)
    assert results["method"] == "mrkd" and results["epochs"] == 3 and results["completed"]
    assert results["hyperparameters"]["copies"] == 2 and results["hyperparameters"]["kappa"] == 1
    # The precisions' defaults, auto: a bfloat16 student where train.py's CPU (no GPU: run_train)
    # computes bfloat16 natively (its copies then run in the student's bfloat16), else float32
    # throughout; recorded with what was asked and why.
    native = cpu_native()
    assert results["hyperparameters"]["precision"] == ("mixed_bfloat16" if native else "float32")
    assert results["hyperparameters"]["teacher_precision"] == "same"
    assert results["precision_requested"] == {"precision": "auto", "teacher_precision": "auto"}
    assert results["precision_reason"].startswith("precision=auto: ")
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["precision"]["teacher_precision"] == results["hyperparameters"]["teacher_precision"]
    assert results["images_per_second"] > 0 and results["versions"]["keras"]
    # TensorFlow's oneDNN switch first, with where it came from (keras_softkd._onednn).
    onednn = results["environment"]["TF_ENABLE_ONEDNN_OPTS"]
    assert next(iter(results["environment"])) == "TF_ENABLE_ONEDNN_OPTS"
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        assert onednn == f"{os.environ['TF_ENABLE_ONEDNN_OPTS']} (the user's)"
    elif platform.machine().lower() in ("x86_64", "amd64"):
        assert onednn.startswith("1 (set by keras_softkd: ")
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 4
    assert (out / "model.keras").exists() and (out / "checkpoint" / "state.json").exists()
    assert any((out / "tensorboard").rglob("*tfevents*"))
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporary files


@pytest.mark.slow
@pytest.mark.xdist_group("train_tiny_run")
def test_model_keras_scores_results_json_on_stored_images_with_keras_alone(tiny_run, tmp_path):
    """docs/training.md's load-and-predict block, as written, on the run's model.keras and
    test file, where keras_softkd cannot be imported (a sitecustomize blocks it): the uint8
    images as stored give results.json's accuracy (a bfloat16 run where the CPU computes it
    natively, saved and evaluated in float32)."""
    import re

    from test_readme import PYTHON, bash_blocks

    root, *_ = tiny_run
    [block] = [b for b in bash_blocks("docs/training.md") if "keras.models.load_model" in b]
    documented = re.search(r'load_model\("([^"]+)"\)', block).group(1)
    script = block.replace(documented, str(root / "full" / "model.keras"))
    script = re.sub(r"\bDIR\b", str(root / "data"), script).replace(PYTHON, sys.executable)
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["keras_softkd"] = None\n')
    blocked = f"{sys.executable} -c 'import keras_softkd' 2>/dev/null && exit 3\n"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", "-c", blocked + script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{script}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    printed = np.array([int(n) for n in re.findall(r"\d+", result.stdout[result.stdout.rindex("["):])])
    with np.load(root / "data" / "cifar10_test.npz") as stored:
        y = stored["y"]
    results = json.loads((root / "full" / "results.json").read_text())
    assert len(printed) == len(y)
    assert np.mean(printed == y) == pytest.approx(1 - results["test_error"], abs=1e-9)


@pytest.mark.xdist_group("train_tiny_run")
@pytest.mark.slow
def test_finished_run_is_not_overwritten(tiny_run):
    root, args, _ = tiny_run
    before = (root / "full" / "results.json").read_text()
    result = run_train(*args, f"--output_dir={root / 'full'}")
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (root / "full" / "results.json").read_text() == before


@pytest.mark.xdist_group("train_tiny_run")
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_run):
    import keras

    root, args, _ = tiny_run
    out = root / "resumed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(
        [sys.executable, TRAIN, *args, f"--output_dir={out}"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_train(*args, f"--output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    full = json.loads((root / "full" / "results.json").read_text())
    again = json.loads((out / "results.json").read_text())
    for key in ("test_error", "test_nll", "test_ece"):
        assert again[key] == pytest.approx(full[key], abs=1e-5)
    a = keras.models.load_model(root / "full" / "model.keras")
    b = keras.models.load_model(out / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-5)
    rows = (out / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2"]


TWO_LOGICAL_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


@pytest.mark.slow
def test_two_replicas_train_like_one_device(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    runs = run_on_one_and_two_devices(tmp_path, TWO_LOGICAL_CPUS, env)
    one, two = runs["one_device"], runs["mirrored"]
    assert one["replicas"] == 1 and two["replicas"] == 2
    # Float32 sums in another order (two replicas; and one device uses TensorFlow's fused
    # BatchNorm kernel where two synchronised replicas use Keras's ops), amplified by 4 SGD
    # steps at lr 0.1 on noise images, separate the runs by up to ~2e-3 (3e-4 with the same
    # BatchNorm kernel on both); a wrong per-replica loss scaling doubles the gradients.
    for key in ("test_error", "test_nll", "test_ece"):
        assert two[key] == pytest.approx(one[key], rel=5e-3, abs=5e-3), key
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=5e-3, atol=5e-3)


# -- interruptions and start-up lines ----------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_and_sigterm_end_a_run_with_one_line_naming_its_checkpoint(tmp_path):
    """Ctrl-C, then SIGTERM on the resumed run: each ends train.py with one line naming the epoch
    the last checkpoint holds, no traceback, 130 / 143; the same command resumes there."""
    data_dir = write_tiny_cifar(tmp_path / "data", train=32, test=16)
    out = tmp_path / "run"
    command = [sys.executable, TRAIN, "--method=ce", "--model=resnet20", "--epochs=20",
               "--batch_size=32", f"--data_dir={data_dir}", f"--output_dir={out}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    state = out / "checkpoint" / "state.json"
    held = 0
    for signame in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, signame)
        # SIGINT's default disposition: CI's shell starts the suite with SIGINT ignored.
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while not (state.exists() and json.loads(state.read_text())["epoch"] > held):
            assert time.time() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 128 + signum, stderr[-3000:]
        if held:
            assert f"Resuming from {out / 'checkpoint' / 'weights.weights.h5'} at epoch {held}." in stdout
        held = json.loads(state.read_text())["epoch"]
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines() == [
            f"train.py: interrupted by {signame}{' (Ctrl-C)' * (signame == 'SIGINT')}; the last "
            f"checkpoint in {out} holds epoch {held} of 20: run the same command to resume from there."
        ]
    assert not (out / "results.json").exists()


def test_an_interrupt_swallowed_where_it_lands_is_raised_again():
    """Keras's bare ``except:`` (pythonify_logs, where JAX's results are awaited each batch)
    swallows an interrupt: train.py's is raised again until caught."""
    import threading

    from keras_softkd._signals import Interrupted, StopSignals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    with StopSignals(raise_first=True) as stop:
        start = time.monotonic()
        with pytest.raises(Interrupted):
            try:
                signal.raise_signal(signal.SIGTERM)
                time.sleep(0.5)  # the interrupt lands here...
            except:  # noqa: E722 - ...and is swallowed, as in Keras
                pass
            time.sleep(5)
        stop.caught()
        assert time.monotonic() - start < 3
    assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not stop._handle  # the handler is put back

@pytest.mark.slow
def test_a_jax_run_prints_no_start_up_lines(tmp_path):
    """Under JAX, neither JAX's TPU probe nor TensorFlow's lines (Keras imports it to seed it)
    reach the terminal: a run failing on its data says its one line alone."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_SOFTKD_TF_LOGS", "JAX_PLATFORMS"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, TRAIN, f"--data_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: --data_dir="), result.stderr


def test_a_text_model_without_keras_hub_says_what_to_install(monkeypatch):
    """The name is valid; the install is not: the line names the extra and does not offer the
    rejected name as a valid one."""
    from keras_softkd.experiment import text

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # importing it fails
    config = ExperimentConfig(method="ce", dataset="sst2", model="bert_tiny_scratch").resolved()
    with pytest.raises(UsageError) as error:
        text.build_student(config, 2, (np.array(["a good movie", "a dull plot"]),))
    message = str(error.value)
    assert "pip install 'keras-softkd[text]'" in message
    assert message.count("bert_tiny_scratch") == 1, message

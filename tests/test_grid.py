"""keras_softkd.grid: column names, commands, skipping and resuming cells, one real tiny grid."""

import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_tiny_cifar
from keras_softkd import grid
from keras_softkd.config import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "flags" / "quickstart.flags"


def fake_finished_run(cell: grid.Cell, completed: bool = True, error: float = 0.5) -> None:
    """What train.py leaves in a finished cell, with made-up numbers."""
    cell.output_dir.mkdir(parents=True, exist_ok=True)
    copies = next((int(f.split("=")[1]) for f in cell.column.flags if f.startswith("--copies=")), None)
    results = {
        "method": cell.column.method, "dataset": "cifar10", "model": cell.model,
        "seed": cell.seed, "epochs": 2, "hyperparameters": {"copies": copies, "lr": 0.1},
        "test_error": error, "test_nll": 1.5, "test_ece": 0.05, "completed": completed,
    }
    (cell.output_dir / "results.json").write_text(json.dumps(results))
    (cell.output_dir / "history.csv").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n0,0.3,2.0,0.4,1.9\n1,0.5,1.5,0.5,1.6\n"
    )


# -- naming and commands ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,name,flags",
    [
        ("ce", "ce", ["--method=ce"]),
        ("lsrkd_tc", "lsrkd_tc", ["--method=lsrkd_tc"]),
        ("mrkd", "mrkd", ["--method=mrkd"]),
        ("mrkd1", "mrkd1", ["--method=mrkd", "--copies=1"]),
        ("mrkd3_tc", "mrkd3_tc", ["--method=mrkd_tc", "--copies=3"]),
        ("mrkd:copies=1", "mrkd_copies1", ["--method=mrkd", "--copies=1"]),
        ("lsr:alpha=0.2", "lsr_alpha0.2", ["--method=lsr", "--alpha=0.2"]),
        ("mrkd3_tc:gamma=0.5:kappa=2", "mrkd3_tc_gamma0.5_kappa2",
         ["--method=mrkd_tc", "--copies=3", "--gamma=0.5", "--kappa=2"]),
        ("ce:lr=0.05", "ce_lr0.05", ["--method=ce", "--lr=0.05"]),
        ("mrkd1:teacher_precision=auto", "mrkd1_teacher_precisionauto",
         ["--method=mrkd", "--copies=1", "--teacher_precision=auto"]),
        ("ce:precision=auto", "ce_precisionauto", ["--method=ce", "--precision=auto"]),
    ],
)
def test_column_names_map_to_train_flags(spec, name, flags):
    column = grid.parse_column(spec)
    assert (column.name, list(column.flags)) == (name, flags)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("mrkd0", "at least 1 copy"),
        ("mrkd2x", "not a method"),
        ("lsr:gamma=0.1", "does not apply"),
        ("ce:alpha=0.1", "does not apply"),
        ("mrkd3:copies=2", "twice"),
        ("lsr:alpha", "key=value"),
        ("lsr:seed=3", "not a per-column setting"),
        ("lsr:colour=red", "not a per-column setting"),
    ],
)
def test_bad_columns_are_refused_before_running(spec, message):
    with pytest.raises(UsageError, match=message):
        grid.parse_column(spec)


def test_seeds_accept_lists_and_ranges():
    assert grid.parse_seeds("0,1,2") == [0, 1, 2]
    assert grid.parse_seeds("0-2, 5,1") == [0, 1, 2, 5]
    for bad in ("", "a", "-1"):
        with pytest.raises(UsageError, match="--seeds"):
            grid.parse_seeds(bad)


def test_dry_run_prints_every_command_seed_major(tmp_path, capsys):
    root = tmp_path / "runs"
    code = grid.main([
        "--methods=ce,lsr,mrkd1,mrkd3_tc", "--models=resnet20,resnet32", "--seeds=0,1",
        f"--output_root={root}", f"--flagfile={QUICKSTART}", "--epochs", "3",
        "--train_examples=64", "--data_dir=/data", "--dry_run",
    ])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    headers, commands = lines[0::2], [shlex.split(line) for line in lines[1::2]]
    assert len(commands) == 4 * 2 * 2
    assert headers[0] == "# resnet20 ce seed0: new"
    assert headers[4] == "# resnet32 ce seed0: new" and headers[8] == "# resnet20 ce seed1: new"
    first = commands[0]
    assert first[:2] == [sys.executable, str(ROOT / "train.py")]
    assert first[2:] == [
        f"--flagfile={QUICKSTART}", "--epochs=3", "--train_examples=64", "--data_dir=/data",
        "--method=ce", "--model=resnet20", "--seed=0",
        f"--output_dir={root / 'resnet20' / 'ce' / 'seed0'}",
    ]
    assert commands[3][6:9] == ["--method=mrkd_tc", "--copies=3", "--model=resnet20"]
    assert commands[-1][-1] == f"--output_dir={root / 'resnet32' / 'mrkd3_tc' / 'seed1'}"
    assert not root.exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods=ce", "--model=resnet20"], "--models"),
        (["--methods=ce", "--seed=1"], "--seeds"),
        (["--methods=ce", "--output_dir=x"], "--output_root"),
        (["--methods=ce", "--overwrite"], "delete"),
        (["--methods=ce,lsr", "--alpha=0.1"], "does not apply to column ce"),
        (["--methods=ce", "--models=resnet21"], "not a network"),
        (["--methods=ce", "--flagfile=no/such.flags"], "no such file"),
        (["--methods=ce,ce"], "distinct"),
        (["--methods=ce", "stray"], "unexpected argument"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert grid.main([*args, f"--output_root={tmp_path}", "--dry_run"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_text_presets_and_local_preset_folders_are_models_with_a_folder_each(tmp_path, capsys):
    # What train.py --dataset=<GLUE task> builds: a local preset directory, an hf:// handle, a
    # KerasHub preset; each cell's folder is the name's last part.
    preset = tmp_path / "presets" / "my_roberta"
    preset.mkdir(parents=True)
    hub = pytest.importorskip("keras_hub")
    known = sorted(hub.models.TextClassifier.presets)[0]
    root = tmp_path / "runs"
    models = [str(preset), "hf://distilbert/distilroberta-base", known, "bert_tiny_scratch"]
    code = grid.main(["--methods=ce", f"--models={','.join(models)}", "--seeds=0",
                      f"--output_root={root}", "--dataset=sst2", "--dry_run"])
    assert code == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()[1::2]]
    assert [command[-3] for command in commands] == [f"--model={model}" for model in models]
    assert [command[-1] for command in commands] == [
        f"--output_dir={root / folder / 'ce' / 'seed0'}"
        for folder in ("my_roberta", "distilroberta-base", known, "bert_tiny_scratch")
    ]


def test_models_that_would_share_a_folder_or_are_unknown_are_refused(tmp_path, capsys):
    first, second = tmp_path / "a" / "preset", tmp_path / "b" / "preset"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    for models, message in [(f"{first},{second}", "share output folders"),
                            ("roberta_larg_en", "not a network"),
                            (str(tmp_path / "no_such_folder"), "local preset directory")]:
        assert grid.main(["--methods=ce", f"--models={models}", "--dry_run",
                          f"--output_root={tmp_path / 'runs'}"]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error


# -- skipping, resuming, conflicts -------------------------------------------------------------


def test_completed_cells_are_skipped_and_the_rest_run(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    cells = grid.plan(["ce", "lsr", "mrkd1", "mrkd3_tc"], ["resnet20"], [0], root,
                      train_args=["--epochs=2"])
    done, resumable, broken, new = cells
    fake_finished_run(done)
    (resumable.output_dir / "checkpoint").mkdir(parents=True)
    (resumable.output_dir / "checkpoint" / "state.json").write_text('{"epoch": 1}')
    fake_finished_run(broken, completed=False)
    assert [cell.state()[0] for cell in cells] == ["done", "resume", "broken", "new"]
    assert resumable.state()[1] == "from epoch 1"

    ran = []

    def fake_run_cell(cell, runner):
        ran.append(cell.column.name)
        fake_finished_run(cell)
        return 0

    monkeypatch.setattr(grid.local, "_run_cell", fake_run_cell)
    assert grid.run(cells, root) == 1  # the broken cell is reported, not overwritten
    assert ran == ["lsr", "mrkd3_tc"]  # resumed and new; done and broken left alone
    report = (root / "report.md").read_text()
    assert "Baseline" in report and "LSR" in report and "MrKD-3-TC" in report
    assert "MrKD-1" not in report and "1 incomplete run(s) skipped" in report
    assert (root / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # Everything done now: a second run starts no process and succeeds.
    fake_finished_run(broken)
    ran.clear()
    assert grid.run(cells, root) == 0 and ran == []


def test_a_cell_started_with_other_arguments_is_a_conflict(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    (cell,) = grid.plan(["ce"], ["resnet20"], [0], root, train_args=["--epochs=30"])
    cell.output_dir.mkdir(parents=True)
    (cell.output_dir / grid.CELL_FILE).write_text(json.dumps(cell.setting()))
    (cell.output_dir / "checkpoint").mkdir()
    (cell.output_dir / "checkpoint" / "state.json").write_text('{"epoch": 5}')
    assert cell.state() == ("resume", "from epoch 5")
    moved = grid.plan(["ce"], ["resnet20"], [0], root, train_args=["--epochs=30", "--data_dir=/x"])
    assert moved[0].state()[0] == "resume"  # a moved data folder is the same experiment
    (changed,) = grid.plan(["ce"], ["resnet20"], [0], root, train_args=["--epochs=20"])
    state, detail = changed.state()
    assert state == "conflict" and "--epochs=30" in detail and "--epochs=20" in detail
    monkeypatch.setattr(grid.local, "_run_cell", lambda *a: pytest.fail("a conflicting cell ran"))
    assert grid.run([changed], root, report=False) == 1


# -- several cells at once ---------------------------------------------------------------------

# A stand-in for train.py: notes when it ran, with which thread settings, then finishes the cell
# (or, with SLEEP_FOREVER set, waits to be stopped).
FAKE_TRAIN = """
import json, os, pathlib, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
out = pathlib.Path(args["output_dir"]); out.mkdir(parents=True, exist_ok=True)
start = time.time()
(out / "started.json").write_text(json.dumps({"pid": os.getpid(), "env": {
    k: os.environ.get(k) for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}}))
if os.environ.get("SLEEP_FOREVER"):
    if args["method"] == "ce":  # a checkpoint, as train.py's after its second epoch
        (out / "checkpoint").mkdir(exist_ok=True)
        (out / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 2}))
    time.sleep(600)
time.sleep(1.0)
(out / "results.json").write_text(json.dumps({
    "method": args["method"], "dataset": "cifar10", "model": args["model"], "seed": int(args["seed"]),
    "epochs": 1, "hyperparameters": {}, "test_error": 0.5, "test_nll": 1.5, "test_ece": 0.05,
    "completed": True, "span": [start, time.time()]}))
print("fake run done")
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "SLEEP_FOREVER"):
        monkeypatch.delenv(name, raising=False)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return script


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_jobs_run_that_many_cells_at_once_each_with_a_share_of_the_cores(tmp_path, fake_train, jobs, capsys):
    root = tmp_path / "runs"
    args = ["--methods=ce,lsr,lsrkd", "--seeds=0-1", f"--output_root={root}", "--no_report",
            f"--train_script={fake_train}", f"--jobs={jobs}"]
    assert grid.main(args) == 0
    assert "6 cells: 0 already done, 6 run, 0 failed." in capsys.readouterr().out
    folders = sorted((root / "resnet20").glob("*/seed*"))
    assert len(folders) == 6
    spans = [json.loads((f / "results.json").read_text())["span"] for f in folders]
    # Most cells running at one moment (sampled at every start).
    running = max(sum(s[0] <= start < s[1] for s in spans) for start, _ in spans)
    assert running == jobs
    cores = len(grid.local.os.sched_getaffinity(0))
    expected = None if jobs == 1 else str(max(1, cores // jobs))
    for folder in folders:
        env = json.loads((folder / "started.json").read_text())["env"]
        assert env == dict.fromkeys(env, expected)
    with pytest.raises(ValueError, match=r"`jobs` must be an integer >= 1; got jobs=0"):
        grid.run([], root, jobs=0)
    assert grid.main([*args[:-1], "--jobs=0"]) == 2
    assert "--jobs must be an integer >= 1; got --jobs=0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_every_running_cell_with_one_line(tmp_path, fake_train, signame):
    """Ctrl-C or SIGTERM: every running cell stopped, none started, one line naming the epoch
    each stopped cell's checkpoint holds, 130 / 143."""
    import os
    import signal
    import time

    signum = getattr(signal, signame)
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "keras_softkd.grid", "--methods=ce,lsr,lsrkd", f"--output_root={root}",
               "--no_report", f"--train_script={fake_train}", "--jobs=2"]
    # The driver gets SIGINT's default disposition: a test started in the background of a shell
    # without job control (CI) inherits SIGINT ignored, as nohup wants it.
    grid_process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "SLEEP_FOREVER": "1"},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = [root / "resnet20" / m / "seed0" / "started.json" for m in ("ce", "lsr", "lsrkd")]
    deadline = time.monotonic() + 120
    while not (started[0].exists() and started[1].exists()):
        assert time.monotonic() < deadline and grid_process.poll() is None, grid_process.communicate()
        time.sleep(0.2)
    time.sleep(0.5)
    pids = [json.loads(path.read_text())["pid"] for path in started[:2]]
    grid_process.send_signal(signum)
    output, errors = grid_process.communicate(timeout=60)
    assert grid_process.returncode == 128 + signum, output + errors
    assert "Traceback" not in output + errors
    lines = errors.strip().splitlines()
    assert len(lines) == 1, errors
    assert lines[0] == (
        f"python -m keras_softkd.grid: interrupted by {signame}{' (Ctrl-C)' * (signame == 'SIGINT')}; "
        "stopped 2 running cells (resnet20 ce seed0: its checkpoint holds epoch 2; resnet20 lsr seed0: "
        "no checkpoint yet, starts again from epoch 1), 1 not started: run the same command to resume.")
    assert not started[2].exists()  # the third cell never started
    for pid in pids:  # both running cells were stopped (and reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for method in ("ce", "lsr"):
        assert "stopped by the grid runner" in (root / "resnet20" / method / "seed0" / "train.log").read_text()


# -- one real grid ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_tiny_grid_finishes_and_reports(tmp_path, monkeypatch, capsys):
    data = write_tiny_cifar(tmp_path / "data")
    root = tmp_path / "runs"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = [
        "--methods=ce,lsr", "--models=resnet20", "--seeds=0", f"--output_root={root}",
        "--epochs=1", "--train_examples=64", "--batch_size=32", f"--data_dir={data}",
    ]
    assert grid.main(args) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "2 cells: 0 already done, 2 run, 0 failed." in out
    for column in ("ce", "lsr"):
        run_dir = root / "resnet20" / column / "seed0"
        results = json.loads((run_dir / "results.json").read_text())
        assert results["completed"] and results["method"] == column and results["epochs"] == 1
        log = (run_dir / "train.log").read_text()
        assert log.startswith("=== ") and "test error" in log
    report = (root / "report.md").read_text()
    assert "| cifar10 | resnet20 | " in report and "Baseline" in report and "LSR" in report
    assert (root / "curves.png").stat().st_size > 1000

    # Run again: both cells are skipped, no process starts.
    def no_process(*args, **kwargs):
        raise AssertionError("a completed cell was run again")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    assert grid.main(args) == 0
    assert "2 cells: 2 already done, 0 run, 0 failed." in capsys.readouterr().out


def test_a_finished_grid_without_matplotlib_still_reports_and_succeeds(tmp_path, monkeypatch):
    """matplotlib missing (the `plots` extra): the tables are printed and report.md written, one
    line names the extra, no curves file, and the status is 0 (a SLURM job under set -e goes on)."""
    import io
    import shutil

    from keras_softkd.grid import progress

    root = tmp_path / "runs"
    source = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    shutil.copytree(source / "reproduction_cifar10_resnet20_10k_15ep_issue17", root)
    for written in ("report.md", "curves.png"):
        (root / written).unlink(missing_ok=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = io.StringIO()
    assert progress.write_report(root, out) == 0
    text = out.getvalue()
    assert "Top-1 test error" in text
    assert "Top-1 test error" in (root / "report.md").read_text()
    assert not (root / "curves.png").exists()
    last = text.strip().splitlines()[-1]
    assert "report.md" in last and "keras-softkd[plots]" in last, last
    # With matplotlib the curves are written too: test_real_tiny_grid_finishes_and_reports.

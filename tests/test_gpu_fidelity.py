"""benchmarks/gpu_fidelity.py: W Table 2's queue, the data's lossless parts, packing what a
device call returns and collecting it, the report beside W's numbers, and the whole device
command end to end on JAX's CPU without TensorFlow (stopped mid-cell, resumed, then skipped)."""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_fidelity.py"
_spec = importlib.util.spec_from_file_location("gpu_fidelity", SCRIPT)
gpu_fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_fidelity)


def smooth_images(count: int, seed: int) -> np.ndarray:
    """CIFAR-shaped uint8 images of 8 x 8-pixel blocks (WebP encodes them in milliseconds)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    return coarse.repeat(8, axis=1).repeat(8, axis=2)


def tiny_arrays(train: int = 150, test: int = 50) -> dict:
    return {
        "train": (smooth_images(train, 0), np.arange(train) % 10),
        "test": (smooth_images(test, 1), (np.arange(test) * 7) % 10),
    }


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """``(arrays, parts)``: :func:`tiny_arrays` packed as 2 parts of 2 chunks each (read-only)."""
    arrays = tiny_arrays()
    parts = gpu_fidelity.pack_data(arrays, tmp_path_factory.mktemp("packed"), part_mib=0.006,
                                   chunk=50, workers=1)
    assert len(parts) == 2
    return arrays, parts


# -- the queue -----------------------------------------------------------------------------------


def test_queue_is_w_table2_protocol_in_the_issue_order():
    from keras_softkd import grid

    command = gpu_fidelity.grid_command("benchmarks/results/gpu_w_table2", "/data")
    assert command[1:3] == ["-m", "keras_softkd.grid"]
    assert "--methods=ce,lsr,lsrkd,mrkd1,mrkd3,mrkd3_tc,lsrkd_tc" in command
    assert "--seeds=0,1,2" in command and "--models=resnet20" in command
    flagfile = (ROOT / "flags/w_table2/cifar10/resnet20_ce.flags").read_text().splitlines()
    protocol = [line for line in flagfile if line.startswith("--") and line.split("=")[0] not in
                ("--method", "--model", "--output_dir")]
    assert protocol == ["--dataset=cifar10", "--epochs=200", "--batch_size=128", "--lr=0.1",
                        "--lr_schedule=cosine", "--weight_decay=5e-4"]
    assert command[-8:] == [*protocol, "--precision=float32", "--teacher_precision=same"]
    assert "--epochs=2" in gpu_fidelity.grid_command("r", "d", epochs=2)
    # The grid runs the cells in the order (and folders) the script reports and packs.
    cells = grid.plan(gpu_fidelity.COLUMNS, ["resnet20"], gpu_fidelity.SEEDS, "root")
    assert [c.output_dir.relative_to("root") for c in cells] == gpu_fidelity.cell_folders()
    assert [str(f) for f in gpu_fidelity.cell_folders()[:7]] == [
        f"resnet20/{c}/seed0" for c in ("ce", "lsr", "lsrkd", "mrkd1", "mrkd3", "mrkd3_tc", "lsrkd_tc")]
    assert sorted(gpu_fidelity.W_TABLE2) == sorted(gpu_fidelity.COLUMNS)


# -- data ----------------------------------------------------------------------------------------


def test_data_parts_are_lossless_and_staged_over_several_calls(tmp_path, packed):
    arrays, parts = packed
    stage = tmp_path / "stage"
    # First call: part 1 alone is carried: staged, and the rest named.
    first = tmp_path / "call1" / "data"
    shutil.copytree(parts[0], first / "part1")
    data, missing = gpu_fidelity.stage_data(first, stage)
    assert data is None and "part(s) [2]" in missing
    # Next call: part 2; the machine kept part 1.
    second = tmp_path / "call2" / "data"
    shutil.copytree(parts[1], second / "part2")
    data, missing = gpu_fidelity.stage_data(second, stage)
    assert missing == ""
    for split in ("train", "test"):
        with np.load(data / f"cifar10_{split}.npz") as npz:
            np.testing.assert_array_equal(npz["x"], arrays[split][0])
            np.testing.assert_array_equal(npz["y"], arrays[split][1])
            assert npz["y"].dtype == np.int32
    assert gpu_fidelity.stage_data(tmp_path / "none", stage) == (data, "")  # staged once


def test_webp_chunk_round_trip_is_exact_with_noise_and_a_partial_row():
    images = smooth_images(51, 2)  # a full mosaic row of 50 and one image in a padded row
    images[-3:] = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(gpu_fidelity.decode_chunk(gpu_fidelity.encode_chunk(images), 51),
                                  images)


def test_damaged_or_mixed_parts_are_refused(tmp_path, packed):
    _, parts = packed
    damaged = tmp_path / "damaged"
    shutil.copytree(parts[0], damaged / "part1")
    chunk = next((damaged / "part1").glob("*.webp"))
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    with pytest.raises(gpu_fidelity.DataError, match="is damaged"):
        gpu_fidelity.stage_data(damaged, tmp_path / "stage1")
    # Part 1 of one preparation and part 2 of another (of other images): refused.
    stage = tmp_path / "stage2"
    first = tmp_path / "first"
    shutil.copytree(parts[0], first / "part1")
    gpu_fidelity.stage_data(first, stage)
    other = tmp_path / "other"
    shutil.copytree(parts[1], other / "part2")
    manifest = json.loads((other / "part2" / "manifest.json").read_text())
    manifest["source"]["train"]["x_sha256"] = "0" * 64
    (other / "part2" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(gpu_fidelity.DataError, match="different data"):
        gpu_fidelity.stage_data(other, stage)


# -- what comes back -----------------------------------------------------------------------------


def fake_cell(root: pathlib.Path, cell: str, *, done: bool, epoch: int = 0, error: float = 0.08,
              seed: int = 0) -> pathlib.Path:
    folder = root / cell
    folder.mkdir(parents=True)
    (folder / "grid_cell.json").write_text('{"train_args": []}')
    (folder / "train.log").write_text("log\n")
    (folder / "history.csv").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n0,0.3,2.0,0.4,1.9\n1,0.5,1.5,0.5,1.6\n")
    checkpoint = folder / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"epoch": epoch}))
    (checkpoint / "weights.weights.h5").write_bytes(os.urandom(3000))
    (checkpoint / ".tmp-abc-weights.weights.h5").write_bytes(b"partial")
    if done:
        column = pathlib.Path(cell).parts[1]
        method = {"mrkd1": "mrkd", "mrkd3": "mrkd", "mrkd3_tc": "mrkd_tc"}.get(column, column)
        copies = {"mrkd1": 1, "mrkd3": 3, "mrkd3_tc": 3}.get(column)
        (folder / "results.json").write_text(json.dumps({
            "method": method, "dataset": "cifar10", "model": "resnet20", "seed": seed, "epochs": 200,
            "hyperparameters": {"copies": copies, "lr": 0.1}, "test_error": error, "test_nll": 0.3,
            "test_ece": 0.04, "completed": True}))
        (folder / "model.keras").write_bytes(os.urandom(2000))
    return folder


def test_pack_and_collect_round_trip(tmp_path):
    device_root = tmp_path / "device"
    fake_cell(device_root, "resnet20/ce/seed0", done=True, epoch=200)
    fake_cell(device_root, "resnet20/lsr/seed0", done=False, epoch=3)
    (device_root / "sessions.json").write_text("[]")
    out = tmp_path / "out"
    files = gpu_fidelity.pack_results(device_root, out, since=0, piece_bytes=2500)
    assert len(files) >= 2 and all(f.stat().st_size <= 2500 for f in files)
    assert {f.name for f in out.iterdir()} == {f.name for f in files}
    root, work = tmp_path / "repo_results", tmp_path / "work"
    fake_cell(work / "resume", "resnet20/ce/seed0", done=False, epoch=150)  # an older checkpoint
    states = gpu_fidelity.collect(out, root, work)
    assert states == {"resnet20/ce/seed0": "done", "resnet20/lsr/seed0": "epoch 3"}
    assert sorted(p.name for p in (root / "resnet20/ce/seed0").iterdir()) == [
        "grid_cell.json", "history.csv", "results.json", "train.log"]
    assert (work / "models/resnet20/ce/seed0/model.keras").stat().st_size == 2000
    assert not (work / "resume/resnet20/ce/seed0").exists()
    resumed = sorted(p.name for p in (work / "resume/resnet20/lsr/seed0/checkpoint").iterdir())
    assert resumed == ["state.json", "weights.weights.h5"]
    assert not (root / "resnet20/lsr/seed0/checkpoint").exists()
    assert (root / "sessions.json").read_text() == "[]"
    # The next session's device tree: the text files travel, the checkpoint is carried in.
    next_device = tmp_path / "next"
    shutil.copytree(root, next_device)
    assert gpu_fidelity.restore_checkpoints(next_device, work) == ["resnet20/lsr/seed0: epoch 3"]
    assert gpu_fidelity.cell_state(next_device / "resnet20/lsr/seed0") == "epoch 3"
    # Too much for what the device returns: refused.
    with pytest.raises(ValueError, match="pieces"):
        gpu_fidelity.pack_results(device_root, tmp_path / "out2", since=0, piece_bytes=400)


def test_report_sets_the_runs_beside_w_table2(tmp_path):
    for seed, error in ((0, 0.0760), (1, 0.0740)):
        fake_cell(tmp_path, f"resnet20/ce/seed{seed}", done=True, error=error, seed=seed)
    fake_cell(tmp_path, "resnet20/mrkd3/seed0", done=True, error=0.0700)
    fake_cell(tmp_path, "resnet20/lsr/seed0", done=False, epoch=120)
    # Here, between sessions, an unfinished cell's checkpoint is kept in work/resume.
    fake_cell(tmp_path / "work" / "resume", "resnet20/lsr/seed1", done=False, epoch=40)
    (tmp_path / "sessions.json").write_text(json.dumps([{
        "date": "2026-12-08T00:00:00+00:00", "device": "NVIDIA H100 80GB HBM3", "jobs": 1,
        "wall_seconds": 500, "versions": {"jax": "0.11.2", "keras": "3.15.1"},
        "cells": [{"cell": "resnet20/ce/seed0", "before": "epoch 120", "after": "done"}]}]))
    text = gpu_fidelity.write_report(tmp_path, tmp_path / "work")
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert lines["| Baseline"].startswith("| Baseline | 7.50 | 7.50 ± 0.14 (2) | +0.00 | s0 7.60, s1 7.40")
    assert lines["| MrKD-3"].startswith("| MrKD-3 | 7.37 | 7.00 (1) | -0.37 |")
    assert "s0 epoch 120, s1 epoch 40, s2 new" in lines["| LSR"]
    assert lines["| MrKD-3-TC"].startswith("| MrKD-3-TC | 7.17 | — | — |")
    assert "NVIDIA H100 80GB HBM3 | 0.11.2 / 3.15.1 | 1 | 500 | resnet20/ce/seed0 epoch 120 -> done" in text
    assert "### Top-1 test error (%)" in text  # the package's tables follow
    assert (tmp_path / "report.md").read_text() == text


def test_the_budget_stops_a_running_grid():
    import threading

    start = time.monotonic()
    code, stopped = gpu_fidelity._run_until(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], dict(os.environ),
        deadline=time.monotonic() + 0.3, stop=threading.Event(), reserve=15)
    assert stopped and code == -signal.SIGTERM and time.monotonic() - start < 10


# -- the device command, end to end on the CPU ---------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _train_py(pid: int):
    for child in _descendants(pid):
        try:
            if b"train.py" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            pass
    return None


#: The end-to-end test's epochs. It is stopped once the first checkpoint exists; an epoch of 512
#: images takes about a second, and on JAX the stop lands up to a second after it is sent (Keras
#: swallows the first interrupt there; train.py raises it again), so the run has room to stop
#: in any epoch before its last.
EPOCHS = 6


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_device_command_end_to_end_on_cpu(tmp_path, capsys):
    """The data in two calls, the second running CE (6 epochs, 512 images) on JAX's CPU without
    TensorFlow, stopped in one of its epochs; collected, carried back and run again, the cell resumes
    from there and finishes; the next call's grid skips it."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[backends]')")
    from keras_softkd import grid

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    arrays = {"train": (smooth_images(512, 0), np.arange(512) % 10),
              "test": (smooth_images(128, 1), np.arange(128) % 10)}
    parts = gpu_fidelity.pack_data(arrays, tmp_path / "prepared", part_mib=0.02, chunk=128, workers=1)
    assert len(parts) >= 2
    repo, local_work, stage = tmp_path / "repo_results", tmp_path / "work", tmp_path / "stage"
    repo.mkdir()

    def call(name, work):
        # A fresh device tree holding what travels (the repository's text files), at one path:
        # the cells' --output_dir, which the grid compares on resuming, is the same every time.
        device_root = tmp_path / "device"
        shutil.rmtree(device_root, ignore_errors=True)
        shutil.copytree(repo, device_root)
        command = [sys.executable, str(SCRIPT), "device", f"--out={tmp_path / ('out_' + name)}",
                   f"--root={device_root}", f"--work={work}", f"--stage_dir={stage}", "--allow_cpu",
                   "--hide_tensorflow", "--methods=ce", "--seeds=0", f"--epochs={EPOCHS}"]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True), device_root

    def finish(process, name):
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0, output[-4000:]
        session = json.loads((tmp_path / f"out_{name}" / "session.json").read_text())
        return output, session

    # Call 1 carries every part but the last: staged, nothing run.
    carried = tmp_path / "carried1"
    for part in parts[:-1]:
        shutil.copytree(part, carried / "data" / part.name)
    output, session = finish(call("staged", carried)[0], "staged")
    assert "Not run yet" in output and f"part(s) [{len(parts)}]" in session["staged_only"]
    # Call 2, same machine, carries the last part: the data is complete and the queue runs;
    # it is stopped after the first epoch.
    carried = tmp_path / "carried2"
    shutil.copytree(parts[-1], carried / "data" / parts[-1].name)
    process, device_root = call("interrupted", carried)
    state = device_root / "resnet20/ce/seed0/checkpoint/state.json"
    deadline = time.monotonic() + 600
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), process.communicate()[0][-4000:]
    trainer = _train_py(process.pid)
    assert trainer is not None
    os.kill(trainer, signal.SIGSTOP)  # frozen mid-cell
    process.send_signal(signal.SIGTERM)  # what the budget's deadline does
    time.sleep(1.0)
    os.kill(trainer, signal.SIGCONT)
    output, session = finish(process, "interrupted")
    assert "SHA-256 equal to the source's" in output
    assert session["stopped"] and "time budget reached" in output
    stopped = session["cells"][0]["after"]  # the epoch the last checkpoint holds
    assert stopped in [f"epoch {epoch}" for epoch in range(1, EPOCHS)], session["cells"]
    assert session["cells"] == [{"cell": "resnet20/ce/seed0", "before": "new", "after": stopped}]
    assert "TensorFlow is not installed" in (device_root / "resnet20/ce/seed0/train.log").read_text()
    assert gpu_fidelity.collect(tmp_path / "out_interrupted", repo, local_work) == {
        "resnet20/ce/seed0": stopped}
    assert (local_work / "resume/resnet20/ce/seed0/checkpoint/weights.weights.h5").exists()

    process, device_root = call("resumed", local_work)  # carries local_work/resume back
    output, session = finish(process, "resumed")
    assert f"resuming resnet20/ce/seed0: {stopped}" in output and f"resuming from {stopped}" in output
    assert session["cells"] == [{"cell": "resnet20/ce/seed0", "before": stopped, "after": "done"}]
    assert gpu_fidelity.collect(tmp_path / "out_resumed", repo, local_work) == {
        "resnet20/ce/seed0": "done"}
    results = json.loads((repo / "resnet20/ce/seed0/results.json").read_text())
    assert results["completed"] and results["epochs"] == EPOCHS and results["train_examples_used"] == 512
    assert results["versions"]["keras_backend"] == "jax"
    history = (repo / "resnet20/ce/seed0/history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == [str(e) for e in range(EPOCHS)]
    assert not (local_work / "resume/resnet20/ce/seed0").exists()
    assert (local_work / "models/resnet20/ce/seed0/model.keras").exists()
    report = (repo / "report.md").read_text()
    assert "| Baseline | 7.50 |" in report and "s0 done" in report
    assert [s["cells"][0]["after"] for s in json.loads((repo / "sessions.json").read_text())] == [
        stopped, "done"]

    # The next call's grid (same command, the collected folder as it travels) skips the cell:
    # its dry run, here, instead of a fourth call.
    shutil.rmtree(device_root)
    shutil.copytree(repo, device_root)
    command = gpu_fidelity.grid_command(device_root, stage / "data", columns=["ce"], seeds=[0],
                                        epochs=EPOCHS)
    assert grid.main([*command[3:], "--dry_run"]) == 0
    assert "# resnet20 ce seed0: done" in capsys.readouterr().out

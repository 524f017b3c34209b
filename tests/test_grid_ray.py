"""The grid on a Ray cluster (``--ray_address``): real two-node clusters on this machine.

The cluster is Ray's own multi-node test cluster (``ray.cluster_utils.Cluster``), one head
started for the file, to which each test adds and then kills its worker nodes:
each node a real raylet with its own ports, workers and object store, every
address on the loopback interface. Their cells are real ``train.py`` runs of a
tiny ResNet-20 on 192 random images; the local runner's results for the same
cells and seeds are the reference.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_tiny_cifar
from keras_softkd import grid

# One worker runs this file's tests: each starts Ray clusters, which must not meet another's.
pytestmark = pytest.mark.xdist_group("ray")

ROOT = pathlib.Path(__file__).resolve().parents[1]
RAY_VERSION = "2.60.0"  # setup.py's [cluster] extra

# One thread per cell everywhere, so the local and the Ray runs compute in the same order.
THREADS = dict.fromkeys(("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"), "1")
ENV = {
    **THREADS,
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "CUDA_VISIBLE_DEVICES": "",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's addresses on the loopback interface only
    "RAY_AUTH_MODE": "disabled",  # a throwaway loopback cluster: no token written to ~/.ray
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}
EPOCHS = 4


def grid_command(root: pathlib.Path, data: pathlib.Path, methods: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "keras_softkd.grid", f"--methods={methods}", "--models=resnet20",
        "--seeds=0", f"--output_root={root}", f"--epochs={EPOCHS}", "--batch_size=32",
        f"--data_dir={data}", *extra,
    ]


def run_grid(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=timeout)


def ray_nodes_of(cell_dir: pathlib.Path) -> list[str]:
    """The Ray node ids of the cell's attempts, from its ``train.log``."""
    return [line.split()[4] for line in (cell_dir / "train.log").read_text().splitlines()
            if line.startswith("=== ") and " Ray node " in line]


def assert_same_run(a: pathlib.Path, b: pathlib.Path, weights: bool = False) -> None:
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert rb["completed"] and rb["epochs"] == EPOCHS
    for key in ("test_error", "test_top5_error", "test_nll", "test_ece"):
        assert rb[key] == pytest.approx(ra[key], abs=1e-6), key
    ha, hb = ((d / "history.csv").read_text().splitlines() for d in (a, b))
    assert ha[0] == hb[0] and len(ha) == len(hb) == EPOCHS + 1
    for row_a, row_b in zip(ha[1:], hb[1:]):
        np.testing.assert_allclose(np.array(row_a.split(","), float),
                                   np.array(row_b.split(","), float), atol=1e-5)
    if weights:
        import keras

        for wa, wb in zip(keras.models.load_model(a / "model.keras").get_weights(),
                          keras.models.load_model(b / "model.keras").get_weights()):
            np.testing.assert_allclose(wa, wb, atol=1e-5)


# -- without Ray: no import, usage errors -------------------------------------------------------


@pytest.mark.slow
def test_the_local_grid_never_imports_ray(tmp_path):
    script = (
        "import sys\nfrom keras_softkd import grid\n"
        f"code = grid.main(['--methods=ce,lsr', '--output_root={tmp_path}', '--dry_run'])\n"
        "assert code == 0, code\nprint('ray' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **ENV},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gpus_per_cell=1"], "--gpus_per_cell applies to cells on a Ray cluster only"),
        (["--max_retries=2"], "--max_retries applies to cells on a Ray cluster only"),
        (["--ray_address=h:6379", "--jobs=2"], "--jobs is for cells on this machine"),
        (["--ray_address=h:6379", "--stream"], "--stream is for cells on this machine"),
        (["--ray_address=h:6379", "--cpus_per_cell=0"], "--cpus_per_cell must be a number > 0"),
        (["--ray_address=h:6379", "--gpus_per_cell=-1"], "--gpus_per_cell must be a number >= 0"),
        (["--ray_address=h:6379", "--max_retries=-1"], "--max_retries must be an integer >= 0"),
        (["--ray_address="], "--ray_address: give HEAD:PORT"),
    ],
)
def test_cluster_flag_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert grid.main(["--methods=ce", f"--output_root={tmp_path}", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_a_node_that_cannot_see_the_output_root_fails_the_cell_at_once(tmp_path):
    from keras_softkd.grid import on_ray as _grid_ray

    seen = tmp_path / "shared"
    seen.mkdir()
    (seen / ".grid-ray-abc").write_text("abc\n")
    args = dict(token_name=".grid-ray-abc", token="abc", cwd=str(tmp_path))
    assert _grid_ray.check_output_root(str(seen), **args) == ""
    # The same path without the driver's token: another machine's local folder, not shared storage.
    local = tmp_path / "local"
    local.mkdir()
    for root in (local, tmp_path / "missing"):
        cell_dir = root / "resnet20" / "ce" / "seed0"
        started = time.perf_counter()
        result = _grid_ray.cell_task(
            [sys.executable, str(ROOT / "train.py"), f"--output_dir={cell_dir}"], str(cell_dir),
            str(root), env={}, threads=1, **args)
        assert time.perf_counter() - started < 1
        assert result["code"] is None and "\n" not in result["error"]
        assert f"cannot see --output_root={root}" in result["error"]
        assert "every node mounts at the same path" in result["error"]
        assert not cell_dir.exists()  # nothing trained, nothing written


def test_the_cell_task_reaches_the_workers_without_keras(tmp_path):
    """Ray sends the task by value: a worker runs it without importing keras_softkd (nor Keras)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    import ray.cloudpickle
    from keras_softkd.grid import on_ray as _grid_ray

    ray.cloudpickle.register_pickle_by_value(_grid_ray)
    (tmp_path / "task.pkl").write_bytes(ray.cloudpickle.dumps(_grid_ray.cell_task))
    worker = (
        "import pickle, sys\n"
        "sys.modules['keras_softkd'] = None  # importing it fails\n"
        f"task = pickle.loads(open({str(tmp_path / 'task.pkl')!r}, 'rb').read())\n"
        "result = task(['python', 'train.py'], 'runs/a', '/no/such/root', '.t', 't', '/', {}, 1)\n"
        "print(result['error'])\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.startswith(('keras', 'tensorflow')) and sys.modules[m]))\n"
    )
    result = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    error, modules = result.stdout.strip().splitlines()
    assert "cannot see --output_root=/no/such/root" in error
    assert modules == "[]"


def test_an_unreachable_head_is_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    code = grid.main(["--methods=ce", f"--output_root={tmp_path}", "--ray_address=127.0.0.1:9"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "--ray_address=127.0.0.1:9: no Ray head answers there" in error and "\n" not in error


# -- on real clusters ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local runner's ce and lsr cells (seed 0) and their data folder."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    base = tmp_path_factory.mktemp("ray_grid")
    data = write_tiny_cifar(base / "data", train=192, test=32)
    root = base / "local"
    result = run_grid(grid_command(root, data, "ce,lsr", "--jobs=2", "--no_report"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base, data, root


@pytest.fixture(scope="module")
def ray_head():
    """The head node of this file's cluster, started once (a start costs tens of CPU-seconds):
    no CPUs, so it runs no cell; each test adds the worker nodes it needs (:func:`ray_cluster`)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():  # the nodes (and their workers) inherit this environment
            patch.setenv(name, value)
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, include_dashboard=False, **NODE,
            _system_config={"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                            "health_check_failure_threshold": 3},
        ))
        try:
            yield cluster
        finally:
            cluster.shutdown()
            ray.shutdown()


@pytest.fixture
def ray_cluster(ray_head):
    """``(cluster, add_node)``: the shared head, and ``add_node(cpus)`` adding a worker node
    that is removed (killed) after the test."""
    added = []

    def add_node(cpus: int):
        node = ray_head.add_node(num_cpus=cpus, **NODE)
        added.append(node)
        return node

    yield ray_head, add_node
    for node in added:
        if node in ray_head.worker_nodes:
            ray_head.remove_node(node, allow_graceful=False)


NODE = dict(object_store_memory=80 * 2**20, node_ip_address="127.0.0.1")


@pytest.mark.slow
def test_a_two_node_cluster_runs_the_grid_like_the_local_runner(reference, ray_cluster):
    base, data, local = reference
    cluster, add_node = ray_cluster
    first, second = add_node(1), add_node(1)
    root = base / "ray"
    result = run_grid(grid_command(root, data, "ce,lsr", f"--ray_address={cluster.address}"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "2 cells sent to the Ray cluster (3 nodes, 2 CPUs, 0 GPUs)" in result.stdout  # the head
    assert "2 cells: 0 already done, 2 run, 0 failed." in result.stdout
    assert "1 left, about" in result.stdout and "0 left" in result.stdout
    assert (root / "report.md").exists()
    nodes = [ray_nodes_of(root / "resnet20" / column / "seed0") for column in ("ce", "lsr")]
    assert sorted(n for attempts in nodes for n in attempts) == sorted(
        [first.node_id, second.node_id])  # one attempt each, one cell per node
    for column in ("ce", "lsr"):
        assert_same_run(local / "resnet20" / column / "seed0", root / "resnet20" / column / "seed0")
    assert not list(root.glob(".grid-ray-*"))  # the driver's token file is gone


def _train_processes(cell_dir: pathlib.Path) -> list[int]:
    """The pids of the processes training into ``cell_dir``."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--output_dir={cell_dir}".encode() in command:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_cell_whose_node_dies_is_rerun_elsewhere_and_resumes_to_the_same_result(
        reference, ray_cluster):
    base, data, local = reference
    cluster, add_node = ray_cluster
    first = add_node(1)  # the head runs no cell: the first node must take it
    root = base / "killed"
    cell_dir = root / "resnet20" / "ce" / "seed0"
    driver = subprocess.Popen(
        grid_command(root, data, "ce", f"--ray_address={cluster.address}", "--no_report"),
        cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = cell_dir / "checkpoint" / "state.json"
        deadline = time.monotonic() + 180
        while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
            assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()[0]
            time.sleep(0.05)
        assert not (cell_dir / "results.json").exists()
        cluster.remove_node(first, allow_graceful=False)  # the machine is lost mid-training
        deadline = time.monotonic() + 60
        while _train_processes(cell_dir):  # its train.py dies with the node's worker
            assert time.monotonic() < deadline, "train.py outlived its node"
            time.sleep(0.1)
        assert not (cell_dir / "results.json").exists(), "the cell finished before its node died"
        second = add_node(1)  # somewhere for Ray to run it again
        output, _ = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, output[-4000:]
    assert "1 cells: 0 already done, 1 run, 0 failed." in output
    # Its line gives the time over both attempts; Ray's notes of the lost node come without
    # colour codes (not a terminal) and without hints that need ray[default].
    assert " over 2 attempts, the last on " in output, output[-4000:]
    assert "\x1b[" not in output and "ray list" not in output and "[state-dump]" not in output
    assert ray_nodes_of(cell_dir) == [first.node_id, second.node_id]
    assert "Resuming from" in (cell_dir / "train.log").read_text()
    assert_same_run(local / "resnet20" / "ce" / "seed0", cell_dir, weights=True)


# A stand-in for train.py: notes its pid and a checkpoint of epoch 1, then waits to be stopped,
# or finishes at once when the file `finish` exists beside the cells.
WAITING_TRAIN = """
import json, os, pathlib, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
out = pathlib.Path(args["output_dir"]); out.mkdir(parents=True, exist_ok=True)
(out / "checkpoint").mkdir(exist_ok=True)
(out / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 1}))
(out / "started.json").write_text(json.dumps({"pid": os.getpid()}))
if not (out.parents[2] / "finish").exists():
    time.sleep(600)
(out / "results.json").write_text(json.dumps({
    "method": args["method"], "dataset": "cifar10", "model": args["model"], "seed": int(args["seed"]),
    "epochs": 1, "hyperparameters": {}, "test_error": 0.5, "test_nll": 1.5, "test_ece": 0.05,
    "completed": True}))
"""


@pytest.mark.slow
def test_ctrl_c_and_sigterm_cancel_the_running_cells_and_the_next_start_goes_on(tmp_path, ray_cluster):
    """Ctrl-C, then SIGTERM on the next start (the same cluster): each cancels the running cells
    (their train.py ends), starts no other and ends the driver with one line naming each stopped
    cell's checkpoint, 130 / 143; the third start finishes the grid."""
    import signal

    cluster, add_node = ray_cluster
    add_node(2)  # two cells at a time; the third waits
    script = tmp_path / "waiting_train.py"
    script.write_text(WAITING_TRAIN)
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "keras_softkd.grid", "--methods=ce,lsr,lsrkd",
               f"--output_root={root}", f"--train_script={script}", "--no_report",
               f"--ray_address={cluster.address}"]
    started = [root / "resnet20" / m / "seed0" / "started.json" for m in ("ce", "lsr", "lsrkd")]
    for signame in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, signame)
        for path in started:
            path.unlink(missing_ok=True)
        # Ctrl-C reaches a foreground process whose SIGINT is the default. A shell without job
        # control starts background commands with SIGINT ignored, and Python keeps it ignored
        # (so does the driver, as nohup expects): CI runs the suite that way, so the driver is
        # given the default disposition here.
        driver = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ENV},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while sum(path.exists() for path in started) < 2:
                assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()
                time.sleep(0.1)
            time.sleep(0.5)
            pids = [json.loads(path.read_text())["pid"] for path in started if path.exists()]
            driver.send_signal(signum)
            output, errors = driver.communicate(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert driver.returncode == 128 + signum, (output + errors)[-3000:]
        assert "Traceback" not in output + errors and "SystemError" not in errors
        last = errors.strip().splitlines()[-1]
        assert last.startswith(f"python -m keras_softkd.grid: interrupted by {signame}"), errors
        assert "stopped 2 running cells (" in last and "1 not started" in last, last
        assert last.count("its checkpoint holds epoch 1") == 2, last
        deadline = time.monotonic() + 30
        for pid in pids:  # each running cell's train.py was ended with its task
            while os.path.exists(f"/proc/{pid}") and "Z" not in _proc_state(pid):
                assert time.monotonic() < deadline, f"train.py {pid} outlived the cancelled grid"
                time.sleep(0.1)
        assert sum(path.exists() for path in started) == 2  # the queued cell never started
        logs = [(path.parent / "train.log").read_text() for path in started if path.exists()]
        assert all("stopped by the grid runner (Ray task cancelled)" in log for log in logs)

    (root / "finish").write_text("")
    again = run_grid(command)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "3 cells: 0 already done, 3 run, 0 failed." in again.stdout


def _proc_state(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = grid.main(["--methods=ce", f"--output_root={tmp_path}", "--ray_address=auto"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "--ray_address needs Ray: pip install 'keras-softkd[cluster]'" in error and "\n" not in error
    assert not list(tmp_path.iterdir())  # nothing started, nothing written

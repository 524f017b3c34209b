"""keras_softkd.distribute: strategies by name, the chief, and fit with two real worker processes.

The multi-worker tests start two Python processes with ``TF_CONFIG`` for a
two-worker cluster on 127.0.0.1 (free ports), each running ``WORKER`` (written
into ``tmp_path``). They are separate processes: the two logical CPU devices
of ``conftest.py`` do not apply to them. Their result is compared with one
in-process run of the same model on the whole batch.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import two_replicas
from keras_softkd import MrKDModel, distribute

TIMEOUT = 120  # seconds for both workers together
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXAMPLES, GLOBAL_BATCH, EPOCHS = 64, 8, 2
STEPS = EPOCHS * EXAMPLES // GLOBAL_BATCH
PREDICT_EXAMPLES = 61  # the last batch (5) does not split evenly over the workers


# -- make_strategy ----------------------------------------------------------------


def test_make_strategy_rejects_unknown_names():
    with pytest.raises(ValueError, match="auto, one_device, mirrored, multi_worker"):
        distribute.make_strategy("tpu")


def test_auto_on_one_device_is_the_default_strategy():
    strategy = distribute.make_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_one_device_uses_the_cpu_without_gpus():
    strategy = distribute.make_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.extended.worker_devices[0].endswith("CPU:0")


class _RecordMirrored:
    """Stands in for ``tf.distribute.MirroredStrategy``: records the devices, returns the shared one.

    A second MirroredStrategy in this process would break the collectives of
    the session's shared one (conftest.two_replicas).
    """

    def __init__(self):
        self.devices = []
        self.shared = two_replicas()  # created (once) before MirroredStrategy is patched

    def __call__(self, devices=None):
        self.devices.append(list(devices))
        return self.shared


def test_mirrored_without_gpus_uses_the_logical_cpus(monkeypatch):
    record = _RecordMirrored()
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", record)
    strategy = distribute.make_strategy("mirrored")
    names = [device.rsplit("/", 1)[-1] for device in record.devices[0]]
    assert names == ["device:CPU:0", "device:CPU:1"]
    assert strategy.num_replicas_in_sync == 2


def test_the_real_mirrored_strategy_spans_the_two_logical_cpus(mirrored_strategy):
    assert isinstance(mirrored_strategy, tf.distribute.MirroredStrategy)
    assert mirrored_strategy.num_replicas_in_sync == 2


@pytest.mark.parametrize("name", ["auto", "mirrored"])
def test_gpus_come_before_cpus(monkeypatch, name):
    gpus = [
        tf.config.LogicalDevice(f"/job:localhost/replica:0/task:0/device:GPU:{i}", "GPU") for i in range(2)
    ]
    real = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config, "list_logical_devices", lambda kind=None: gpus if kind == "GPU" else real(kind)
    )
    record = _RecordMirrored()
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", record)
    distribute.make_strategy(name)
    assert record.devices == [[device.name for device in gpus]]


CLUSTER = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
WORKER_0 = {"type": "worker", "index": 0}


def config(cluster=CLUSTER, task=WORKER_0):
    return json.dumps({"cluster": cluster, "task": task})


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "TF_CONFIG environment variable, which is not set"),
        ("", "is not set"),
        ("{cluster", "TF_CONFIG is not valid JSON"),
        ("[]", "Malformed TF_CONFIG: not a JSON object"),
        (json.dumps({"task": WORKER_0}), 'no "cluster"'),
        (json.dumps({"cluster": CLUSTER}), 'no "task"'),
        (config({"worker": "127.0.0.1:1"}), "not a non-empty list"),
        (config({"worker": ["localhost"]}), '"host:port"'),
        (config(task={"type": "chief", "index": 0}), "task type 'chief' is not a job"),
        (config(task={"type": "worker", "index": 2}), r"task index 2 is not in 0\.\.1"),
        (config(task={"type": "worker", "index": "0"}), "task index '0'"),
        (config({**CLUSTER, "ps": ["127.0.0.1:3"]}), "parameter servers"),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message):
        distribute.make_strategy("multi_worker")


# -- the chief and where each worker writes ------------------------------------------


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        (CLUSTER, ("worker", 0), True),
        (CLUSTER, ("worker", 1), False),
        ({"chief": ["127.0.0.1:3"], **CLUSTER}, ("chief", 0), True),
        ({"chief": ["127.0.0.1:3"], **CLUSTER}, ("worker", 0), False),
        ({**CLUSTER, "evaluator": ["127.0.0.1:4"]}, ("evaluator", 0), False),
    ],
)
def test_is_chief_follows_tf_config(monkeypatch, tmp_path, cluster, task, chief):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TF_CONFIG", config(cluster, {"type": task[0], "index": task[1]}))
    assert distribute.is_chief() is chief
    folder = distribute.output_dir(tmp_path / "run")
    assert os.path.isdir(folder)
    if chief:
        assert folder == str(tmp_path / "run")
    else:
        assert folder.startswith(str(tmp_path / "tmp"))
        assert f"keras_softkd_{task[0]}_{task[1]}" in folder
        assert folder == distribute.output_dir(tmp_path / "run")  # the same after a restart


def test_without_a_cluster_every_process_is_its_own_chief(monkeypatch, tmp_path, mirrored_strategy):
    monkeypatch.setenv("TF_CONFIG", config(task={"type": "worker", "index": 1}))
    assert distribute.is_chief(mirrored_strategy)  # not a multi-worker strategy
    assert distribute.is_chief(tf.distribute.get_strategy())
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.is_chief()
    assert distribute.output_dir(tmp_path / "run") == str(tmp_path / "run")


def test_prepare_model_is_a_no_op_for_other_strategies(mirrored_strategy):
    with mirrored_strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss="mse")
    attributes = dict(vars(model))
    assert distribute.prepare_model(model, mirrored_strategy) is model
    assert distribute.prepare_model(model) is model
    assert vars(model) == attributes


# -- two real workers ------------------------------------------------------------------


WORKER = textwrap.dedent(
    f"""
    import json, os, sys
    import numpy as np
    import keras
    import tensorflow as tf
    from keras_softkd import MrKDModel
    from keras_softkd import distribute

    kind, out = sys.argv[1], sys.argv[2]
    strategy = distribute.make_strategy("multi_worker")  # first: MWMS sets up the collectives
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    rng = np.random.RandomState(0)
    x = rng.randn({EXAMPLES}, 5).astype("float32") * 2 + 1
    y = rng.randint(0, 3, {EXAMPLES}).astype("int32")
    # DATA: the arrays are in memory, there are no files to shard by (AUTO would try FILE and
    # fall back to DATA with a warning). Each worker reads every batch of {GLOBAL_BATCH} and keeps
    # its half, so a step's global batch is the same batch as without distribution. OFF would
    # give each worker the same whole batches: identical gradients, and weights identical even
    # without any all-reduce -- the comparison would prove nothing.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch({GLOBAL_BATCH}).with_options(options)
    test = tf.data.Dataset.from_tensor_slices(x[:{PREDICT_EXAMPLES}])
    test = test.batch({GLOBAL_BATCH}).with_options(options)

    with strategy.scope():
        # Different seeds: MWMS broadcasts worker 0's initial values.
        keras.utils.set_random_seed(1 + index)
        student = keras.Sequential([
            keras.Input((5,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(momentum=0.5, synchronized=True),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ])
        if kind == "mrkd":
            model = MrKDModel(student, copies=2, interval=3, alpha=0.5, temperature=3.0)
            model.compile(
                optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["sparse_categorical_accuracy"]
            )
        else:
            model = student
            model.compile(
                optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["sparse_categorical_accuracy"],
            )
        distribute.prepare_model(model, strategy)
    optimizer_built = model.optimizer.built
    run_dir = distribute.output_dir(os.path.join(os.path.dirname(out), "run"), strategy)

    class ChiefSaves(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if distribute.is_chief(strategy):  # alone: saving must not wait for the other worker
                self.model.save_weights(os.path.join(run_dir, f"epoch{{epoch}}.weights.h5"))

    history = model.fit(train, epochs={EPOCHS}, verbose=0, callbacks=[ChiefSaves()])
    evaluation = model.evaluate(train, verbose=0, return_dict=True)
    arrays = {{
        "student": np.array([np.asarray(v.numpy()) for v in student.weights], dtype=object),
        "iterations": int(model.optimizer.iterations.numpy()),
        "loss": np.array(history.history["loss"]),
        "evaluate_loss": evaluation["loss"],
        "predict": student.predict(test, verbose=0),
        "optimizer_built_before_fit": optimizer_built,
        "is_chief": distribute.is_chief(strategy),
        "output_dir": run_dir,
    }}
    if kind == "mrkd":
        memory = [[np.asarray(v.numpy()) for v in copy] for copy in model.memory]
        arrays["memory"] = np.array(memory, dtype=object)
        arrays["step"] = int(model.step.numpy())
    else:
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
        try:
            model.fit(train, epochs=1, verbose=0)
            arrays["steps_per_execution_error"] = ""
        except ValueError as error:
            arrays["steps_per_execution_error"] = str(error)
    np.savez(out, **arrays)
    """
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_two_workers(tmp_path, kind):
    """Runs ``WORKER`` in two processes of one cluster; returns their npz results."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes, logs = [], []
    for index in range(2):
        env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
        env.update(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            KERAS_BACKEND="tensorflow",
            CUDA_VISIBLE_DEVICES="",
            TF_CPP_MIN_LOG_LEVEL="2",
            TMPDIR=str(tmp_path),
            PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
        )
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), kind, str(tmp_path / f"worker{index}.npz")],
                env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + TIMEOUT
    timed_out = False
    try:
        while any(p.poll() is None for p in processes):
            if any(p.returncode not in (None, 0) for p in processes):
                break  # a worker alone waits forever for its peer's collectives
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in processes]
    if codes != [0, 0]:
        tails = "\n".join(
            f"--- worker {i} (exit {code}) ---\n{(tmp_path / f'worker{i}.log').read_text()[-3000:]}"
            for i, code in enumerate(codes)
        )
        why = f"timed out after {TIMEOUT} s" if timed_out else "a worker failed; the others were killed"
        pytest.fail(f"workers exited {codes} ({why}; negative: killed)\n{tails}")
    return [dict(np.load(tmp_path / f"worker{i}.npz", allow_pickle=True)) for i in range(2)]


def reference(kind):
    """The same training in this process, without distribution, on the whole batch of 8."""
    rng = np.random.RandomState(0)
    x = rng.randn(EXAMPLES, 5).astype("float32") * 2 + 1
    y = rng.randint(0, 3, EXAMPLES).astype("int32")
    keras.utils.set_random_seed(1)
    student = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(momentum=0.5, synchronized=True),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ]
    )
    if kind == "mrkd":
        model = MrKDModel(student, copies=2, interval=3, alpha=0.5, temperature=3.0)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    else:
        model = student
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return model, student, history.history["loss"], student.predict(x[:PREDICT_EXAMPLES], verbose=0)


def check_workers_agree(tmp_path, results, student, losses, predictions):
    first, second = results
    for a, b in zip(first["student"], second["student"]):
        np.testing.assert_array_equal(a, b)  # bit for bit: the same all-reduced updates
    for key in ("iterations", "loss", "evaluate_loss", "predict"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first["iterations"] == STEPS
    assert all(bool(r["optimizer_built_before_fit"]) for r in results)
    # Sharded over two workers == one device on the whole batch: the gradients are all-reduced
    # and scaled right (not twice too large), and predict keeps the order of the examples.
    for distributed, single in zip(first["student"], student.weights):
        np.testing.assert_allclose(distributed, single.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first["loss"], losses, rtol=1e-4)
    np.testing.assert_allclose(first["predict"], predictions, rtol=1e-4, atol=1e-5)
    assert [bool(r["is_chief"]) for r in results] == [True, False]
    assert str(first["output_dir"]) == str(tmp_path / "run")
    assert str(second["output_dir"]).startswith(str(tmp_path / "keras_softkd_worker_1"))
    assert sorted(os.listdir(tmp_path / "run")) == [f"epoch{e}.weights.h5" for e in range(EPOCHS)]
    assert os.listdir(str(second["output_dir"])) == []


@pytest.mark.slow
def test_mrkd_fit_with_two_workers(tmp_path):
    results = run_two_workers(tmp_path, "mrkd")
    mrkd, student, losses, predictions = reference("mrkd")
    check_workers_agree(tmp_path, results, student, losses, predictions)
    first, second = results
    assert first["step"] == second["step"] == STEPS
    for copy_a, copy_b, copy_single in zip(first["memory"], second["memory"], mrkd.memory):
        for a, b, single in zip(copy_a, copy_b, copy_single):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, single.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_plain_model_fit_with_two_workers(tmp_path):
    results = run_two_workers(tmp_path, "plain")
    _, student, losses, predictions = reference("plain")
    check_workers_agree(tmp_path, results, student, losses, predictions)
    for result in results:
        message = str(result["steps_per_execution_error"])
        assert "steps_per_execution=2 fails under multi-worker" in message

"""Data-parallel strategies by name, and Keras ``fit`` under ``MultiWorkerMirroredStrategy``.

Strategies
----------
:func:`make_strategy` turns a name into a ``tf.distribute.Strategy`` on the
TensorFlow backend:

* ``auto`` -- ``MirroredStrategy`` over the local GPUs if there are more than
  one, else the default strategy (one device, no distribution);
* ``one_device`` -- ``OneDeviceStrategy`` on the first GPU, or the CPU;
* ``mirrored`` -- ``MirroredStrategy`` over all local GPUs; without GPUs, over
  all logical CPU devices (the tests configure two to stand in for GPUs);
* ``multi_worker`` -- ``MultiWorkerMirroredStrategy`` over the cluster
  described by the ``TF_CONFIG`` environment variable (checked first: a
  missing or malformed ``TF_CONFIG`` is a ``ValueError`` that says so).

On JAX and PyTorch it returns a :class:`KerasDistribution`, the part of the
strategy interface :func:`keras_softkd.experiment.run` uses (``scope()``,
``num_replicas_in_sync``) over Keras's own ``keras.distribution``:

* JAX: ``auto`` -- ``keras.distribution.DataParallel`` over every device if
  there are more than one, else nothing; ``mirrored`` -- ``DataParallel`` over
  every device (the batch is split across them, the variables replicated,
  BatchNorm statistics computed over the global batch); ``one_device`` --
  nothing;
* PyTorch: one device (Keras has no distribution for PyTorch): ``auto`` and
  ``one_device``;
* ``multi_worker`` and, on PyTorch, ``mirrored`` are a ``ValueError`` naming
  the backends that have them. TensorFlow is never imported off its backend.

Keras ``fit`` under ``MultiWorkerMirroredStrategy``
---------------------------------------------------
Stock ``fit`` fails with two or more workers in Keras 3.15
(keras-team/keras#20585), at two places of
``keras/src/backend/tensorflow/trainer.py``, both only taken when
``_collective_all_reduce_multi_worker(strategy)`` (an MWMS with more than one
worker):

1. ``fit`` / ``evaluate`` call ``_maybe_symbolic_build(iterator)``, which
   takes the first distributed batch and, because its leaves are
   ``DistributedValues``, calls ``strategy.reduce("MEAN", batch, axis=None)``
   on the whole ``(x, y)`` structure. The collective implementation
   (``CollectiveAllReduceExtended._reduce_to``) hands the nest to
   ``cross_device_ops.reduce``, which accepts a single value only:
   ``ValueError: Attempt to convert a value (PerReplica:...) ... to a Tensor``.
   The batch is only needed for its shapes (to build metrics, the compiled
   loss and the optimizer), so a cross-worker mean of the data is pointless.
2. Every step's logs go through ``reduce_per_replica(..., "auto")``, which for
   multi-worker calls ``strategy.reduce("MEAN", value, axis=0)``: with the
   scalar logs of every ``train_step`` / ``test_step`` that is
   ``Invalid reduction dimension 0 for input with 0 dimensions``.

:func:`prepare_model` fixes both on one model instance, and only under a
multi-worker MWMS (for any other strategy it returns the model untouched):

1. its ``_maybe_symbolic_build`` builds from this worker's local batch
   (``strategy.experimental_local_results``), inside ``strategy.scope()``, as
   the stock code does for one worker. So the metrics and compiled loss are
   created in the scope before the train function is traced, identically on
   every worker (variable creation under MWMS is itself collective: the
   initial values are broadcast from worker 0). The optimizer's variables are
   built in the scope by ``prepare_model`` itself, so that a checkpoint can be
   loaded before ``fit``.
2. its ``train_step`` and ``test_step`` return every log with a leading axis
   of length 1 (``(1,)`` for a scalar), so the ``axis=0`` mean over workers is
   the mean of the workers' values and the logs come out with their original
   shape. Keras metrics are already summed over all replicas, so every worker
   reports the same, global values.

Both changes are instance attributes: the class, ``get_config`` and saving are
unchanged; ``MrKDModel`` keeps its own ``train_step`` (the memory refresh in
cross-replica context through ``merge_call`` works under MWMS) and is wrapped
like any model. ``predict`` needs nothing: it concatenates the workers' outputs
in order. ``steps_per_execution > 1`` under multi-worker fails inside
TensorFlow ("You must feed a value for placeholder tensor", as with two local
replicas under ``MirroredStrategy``); the prepared model refuses it at the
start of ``fit`` with a ``ValueError`` instead.

Launching multi-worker training on a cluster
--------------------------------------------
Run the **same command** on every machine, each with its own ``TF_CONFIG``
(the same ``cluster``, its own ``task``)::

    # on hostA (on hostB the same, with "index": 1)
    export TF_CONFIG='{"cluster": {"worker": ["hostA:12345", "hostB:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python train.py ...   # a script that follows the rules below, e.g. an
                          # experiment configured with strategy="multi_worker"

The ports must be reachable between the machines. Start all workers within a
few minutes of each other: each waits for the others at the strategy's
creation. A worker that dies leaves the others waiting in a collective: stop
and restart them all.

The training script must:

* create the strategy first, before any other TensorFlow work
  (``strategy = make_strategy("multi_worker")``): MWMS configures the
  collective runtime and blocks until all workers have joined;
* build **and compile** the model inside ``strategy.scope()``, then call
  ``prepare_model(model, strategy)``;
* feed a ``tf.data.Dataset`` batched with the **global** batch size (each
  worker gets ``batch / num_workers``) and an explicit auto-shard policy:
  ``DATA`` for in-memory or single-file data (every worker reads all of it and
  keeps its share of each batch; a shuffle needs the same seed on all
  workers), ``FILE`` when there are at least as many files as workers;
* let only the chief write results: Keras 3 callbacks (``ModelCheckpoint``,
  ``BackupAndRestore``, ``CSVLogger``, ``TensorBoard``) and ``model.save`` have
  no notion of a chief and write on every worker, so on a shared file system
  the workers would overwrite each other. :func:`is_chief` tells the chief
  (task ``chief``, else ``worker`` 0); :func:`output_dir` gives the chief the
  real folder and every other worker a fixed folder of its own under the
  temporary directory. Saving needs no collective (Keras 3 reads each
  variable's local copy), so a callback may also save on the chief alone in
  the middle of ``fit`` (tested), while anything that runs collectives
  (``evaluate``, ``predict``) must run on every worker. A resumed run must
  restore the **same** epoch on every worker, or their collectives no longer
  match and training hangs: restore from the chief's checkpoint where the
  file system is shared, else from each worker's own :func:`output_dir`,
  which stays the same across restarts.

BatchNormalization moving statistics are per replica, hence per worker
(``BatchNormalization(synchronized=True)`` keeps them identical); checkpoints
of the chief hold the chief's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import types
from typing import Optional

import keras

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
TF_CONFIG = "TF_CONFIG"
_PREPARED = "_keras_softkd_multi_worker"


# -- strategies ------------------------------------------------------------------


def make_strategy(name: str = "auto"):
    """The strategy called ``name`` (one of :data:`STRATEGIES`) for the Keras backend.

    TensorFlow: a ``tf.distribute.Strategy``; ``multi_worker`` needs
    ``TF_CONFIG`` (see the module docstring) and must be created before any
    other TensorFlow work in the process. JAX and PyTorch: a
    :class:`KerasDistribution`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; valid values: {', '.join(STRATEGIES)}.")
    if keras.backend.backend() != "tensorflow":
        return KerasDistribution.named(name)
    import tensorflow as tf

    if name == "multi_worker":
        tf_config()  # a clear error before TensorFlow's own
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(gpus)
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(gpus or cpus)


class KerasDistribution:
    """A ``keras.distribution.Distribution`` (or none) behind the strategy interface ``run`` uses.

    ``scope()`` makes the distribution current (variables created in it are
    laid out on its devices, and ``fit``/``predict`` inside it split each batch
    across them); ``num_replicas_in_sync`` is its number of devices.
    """

    def __init__(self, distribution=None):
        self.distribution = distribution

    @classmethod
    def named(cls, name: str) -> "KerasDistribution":
        backend = keras.backend.backend()
        if name == "multi_worker":
            raise ValueError(
                "multi_worker (TF_CONFIG, MultiWorkerMirroredStrategy) needs the TensorFlow "
                f"backend; the Keras backend is {backend}."
            )
        if backend != "jax":
            if name == "mirrored":
                raise ValueError(
                    f"mirrored needs the TensorFlow or JAX backend (keras.distribution); "
                    f"the Keras backend is {backend}, which trains on one device."
                )
            return cls()
        devices = keras.distribution.list_devices()
        if name == "one_device" or (name == "auto" and len(devices) == 1):
            return cls()
        return cls(keras.distribution.DataParallel(devices=devices))

    @property
    def num_replicas_in_sync(self) -> int:
        if self.distribution is None:
            return 1
        return int(self.distribution.device_mesh.devices.size)

    def scope(self):
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()


def tf_config() -> dict:
    """``TF_CONFIG`` parsed and checked: ``{"cluster": {job: [host:port, ...]}, "task": {...}}``.

    Raises ``ValueError`` naming ``TF_CONFIG`` if it is unset, not JSON, or
    inconsistent (unknown task type, index out of range, parameter servers).
    """
    text = os.environ.get(TF_CONFIG, "").strip()
    example = (
        '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not text:
        raise ValueError(
            f"Multi-worker training reads the cluster from the {TF_CONFIG} environment variable, "
            f"which is not set. Set it on every machine, e.g. {TF_CONFIG}='{example}' "
            "(the same cluster everywhere, each machine its own task index)."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG} is not valid JSON ({error}); expected e.g. {example}") from None

    def bad(why):
        return ValueError(f"Malformed {TF_CONFIG}: {why}; expected e.g. {example}")

    if not isinstance(config, dict):
        raise bad("not a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise bad('no "cluster" object of jobs')
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise bad(f'cluster job "{job}" is not a non-empty list of "host:port" addresses')
        for address in addresses:
            if not isinstance(address, str) or ":" not in address:
                raise bad(f'cluster job "{job}" has the address {address!r}, not "host:port"')
    if "ps" in cluster:
        raise bad('the cluster has "ps" jobs: MultiWorkerMirroredStrategy has no parameter servers')
    if not isinstance(task, dict):
        raise bad('no "task" object with "type" and "index"')
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise bad(f'task type {task_type!r} is not a job of the cluster ({", ".join(cluster)})')
    last = len(cluster[task_type]) - 1
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= last:
        raise bad(f'task index {index!r} is not in 0..{last} for job "{task_type}"')
    return config


def _is_mwms(strategy) -> bool:
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` (never, if TensorFlow was not imported)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_multi_worker(strategy) -> bool:
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` with more than one worker."""
    return _is_mwms(strategy) and bool(strategy.extended._in_multi_worker_mode())


def _task(strategy) -> tuple[Optional[str], Optional[int], dict]:
    """``(task type, task index, cluster)`` of this process; ``(None, None, {})`` if not in a cluster."""
    if strategy is not None:
        if not _is_mwms(strategy):
            return None, None, {}
        resolver = strategy.cluster_resolver
        cluster = resolver.cluster_spec().as_dict() if resolver.task_type else {}
        return resolver.task_type, resolver.task_id, cluster
    if not os.environ.get(TF_CONFIG, "").strip():
        return None, None, {}
    config = tf_config()
    return config["task"]["type"], config["task"]["index"], config["cluster"]


def is_chief(strategy: Optional[object] = None) -> bool:
    """Whether this process writes the run's results.

    The chief is task ``chief``, or ``worker`` 0 in a cluster without a
    ``chief`` job (from the strategy's cluster resolver, or ``TF_CONFIG`` when
    no strategy is given). Any strategy other than ``MultiWorkerMirroredStrategy``,
    and a process outside a cluster, is its own chief.
    """
    task_type, index, cluster = _task(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)


def output_dir(path, strategy: Optional[object] = None, create: bool = True) -> str:
    """Where this process writes what would go to ``path``, created if missing (``create``).

    ``path`` itself on the chief (:func:`is_chief`); on any other worker a
    folder of its own under the temporary directory, derived from the task and
    ``path`` (the same after a restart, so a worker finds its own backups).
    """
    path = os.fspath(path)
    if not is_chief(strategy):
        task_type, index, _ = _task(strategy)
        root = os.path.join(tempfile.gettempdir(), f"keras_softkd_{task_type}_{index}")
        path = os.path.join(root, os.path.abspath(path).lstrip(os.sep).replace(":", ""))
    if create:
        os.makedirs(path, exist_ok=True)
    return path


# -- fit under MultiWorkerMirroredStrategy -------------------------------------------------


def prepare_model(model, strategy: Optional[object] = None):
    """Makes Keras ``fit``, ``evaluate``, ``train_on_batch`` work under multi-worker MWMS.

    Call it after building and compiling the model inside ``strategy.scope()``.
    It also builds the optimizer's variables there, so that a checkpoint with
    optimizer state can be loaded before ``fit`` (building them outside the
    scope raises ``Need to be inside "with strategy.scope()"``). A no-op for
    every other strategy, and when called again. Returns ``model``. See the
    module docstring for what it changes and why.
    """
    strategy = model.distribute_strategy if strategy is None else strategy
    if not is_multi_worker(strategy) or getattr(model, _PREPARED, False):
        return model
    if getattr(model, "_distribute_strategy", None) is not strategy:
        raise ValueError(
            "Under MultiWorkerMirroredStrategy the model must be created inside "
            "`strategy.scope()` of the same strategy before prepare_model(model, strategy)."
        )
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and model.built and not optimizer.built:
        with strategy.scope():  # so that a checkpoint can be restored into it before fit
            optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = types.MethodType(_build_from_local_batch, model)
    model.train_step = _logs_with_worker_axis(model.train_step)
    model.test_step = _logs_with_worker_axis(model.test_step)
    model.train_function = model.test_function = None  # traced again with the new steps
    setattr(model, _PREPARED, True)
    return model


def _build_from_local_batch(self, iterator=None, data_batch=None):
    """``Trainer._maybe_symbolic_build`` without the cross-worker mean of a data batch."""
    if self.steps_per_execution > 1:
        raise ValueError(
            f"steps_per_execution={self.steps_per_execution} fails under multi-worker "
            "MultiWorkerMirroredStrategy in TensorFlow 2.21 / Keras 3.15 ('You must feed a value "
            "for placeholder tensor'); compile with steps_per_execution=1."
        )
    import tensorflow as tf

    strategy = self.distribute_strategy
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: (
                    strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                next(batches),
            )
            break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _logs_with_worker_axis(step):
    """``step`` returning every log with a leading axis of 1, for the ``axis=0`` mean over workers."""

    import tensorflow as tf

    def step_with_worker_axis(data):
        return tf.nest.map_structure(lambda value: tf.expand_dims(value, 0), step(data))

    return step_with_worker_axis

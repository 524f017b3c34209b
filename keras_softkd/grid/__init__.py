"""Run a grid of ``train.py`` runs (methods x models x seeds), resuming what is done, then report.

    python -m keras_softkd.grid --methods=ce,lsr,lsrkd,lsrkd_tc,mrkd1,mrkd3,mrkd3_tc,pseudo_kd \
        --models=resnet20 --seeds=0,1,2 --output_root=runs/cifar10_15ep \
        --flagfile=flags/quickstart.flags --epochs=15 --train_examples=50000 --data_dir=data/
    python -m keras_softkd.grid --methods=ce,lsr,mrkd3_tc --models=resnet56 --seeds=0-4 \
        --dataset=cifar100 --output_root=/shared/runs/w_table1 --data_dir=/shared/data \
        --ray_address=HEAD:6379 --gpus_per_cell=1 --cpus_per_cell=8

Every other ``--flag=value`` is passed to each ``train.py`` unchanged (after
the ``--flagfile``s, so it overrides them). ``--dry_run`` prints each cell's
state and command and runs nothing.

Decisions:

* **Columns (``--methods``)** are named as the flagfiles' columns
  (``flags/make_flagfiles.py``), the method table's column names
  (``keras_softkd.methods.parse_name``), and a name is also the column's folder:

  ==================  ============================================
  name                train.py flags
  ==================  ============================================
  ``ce`` ``lsr`` ...  ``--method=<name>`` (any of ``methods.names()``)
  ``mrkd<N>``         ``--method=mrkd --copies=<N>`` (MrKD-N)
  ``mrkd<N>_tc``      ``--method=mrkd_tc --copies=<N>`` (MrKD-N-TC)
  ``mrkd``            ``--method=mrkd`` (the paper's 3 copies)
  ==================  ============================================

  ``mrkd-3`` (the benchmarks' former spelling) is read as ``mrkd3``.

  Any name takes settings of its own after colons, ``name:key=value:...``
  (``lsr:alpha=0.2``, ``mrkd3_tc:gamma=0.5:kappa=2``): each becomes
  ``--key=value`` for that column only, and the folder is
  ``lsr_alpha0.2``, ``mrkd3_tc_gamma0.5_kappa2``. A key must be an
  ``ExperimentConfig`` field, and a method hyper-parameter one the method
  uses (``lsr:gamma=0.1`` is refused before anything runs).
* **Folders**: ``<output_root>/<model>/<column>/seed<seed>``, each holding
  ``train.py``'s files plus ``train.log`` (the run's stdout and stderr,
  appended on every attempt) and ``grid_cell.json`` (the ``train.py``
  arguments the cell was started with).
* **Order**: seed-major (every column and model of seed 0, then seed 1, ...),
  so an interrupted grid already has a one-seed table of everything.
* **Skipping and resuming**: a cell whose ``results.json`` says
  ``"completed": true`` is skipped; a cell with a checkpoint is started again
  with the same ``--output_dir``, which makes ``train.py`` resume from its last
  epoch. A cell started with other ``train.py`` arguments than the grid's
  now (another ``--epochs``, say; ``--data_dir`` and the flagfile's path are
  not compared, the flagfile's content is) is a *conflict*: it is neither
  skipped nor resumed, and the grid says so; use another ``--output_root``.
* **Runs**: each cell is a ``train.py`` subprocess, so a crash or a kill of
  one run loses only that run's current epoch. A failed cell does not stop
  the grid; the exit status is 1 when any cell failed, 130 (Ctrl-C) or 143
  (SIGTERM) when interrupted: every running cell is stopped and one line on
  stderr names the epoch each one's checkpoint holds (run the same command
  again to go on).
* **``--jobs=N``** runs N cells at once (default 1), in the same order, and
  gives each an N-th of the CPU cores: ``TF_NUM_INTRAOP_THREADS``,
  ``TF_NUM_INTEROP_THREADS`` and ``OMP_NUM_THREADS`` (those not already set).
  On a CPU, small networks use cores better as separate runs than as threads
  of one: on 2 cores, two one-thread ResNet-20 runs trained 1.44x the images
  per second of one two-thread run (benchmarks/README.md). On GPUs, start one
  grid per device instead (``CUDA_VISIBLE_DEVICES``, disjoint ``--seeds``).
* **On a Ray cluster** (``--ray_address=HEAD:PORT``, ``pip install
  'keras-softkd[cluster]'``): the same grid, each cell a Ray task that runs the
  same ``train.py`` command on any node with the CPUs and GPUs it asks for
  (``--cpus_per_cell``, default 1; ``--gpus_per_cell``, default 0).
  ``--output_root`` must be on storage every node mounts at the same path: a
  node that cannot see it fails the cell at once. A cell whose node dies is run
  again elsewhere (``--max_retries``, default 3) and resumes from its last
  epoch. One line per finished cell with the cells left and the time left.
  ``keras_softkd.grid.on_ray`` holds it, and Ray is imported only with this flag.
* **Report**: at the end ``keras_softkd.report`` tabulates every completed run
  under ``output_root`` into ``<output_root>/report.md`` (test error, NLL, ECE:
  mean ± std over seeds) and plots ``<output_root>/curves.png``.

Modules: :mod:`~keras_softkd.grid.cells` (the plan: columns, cells, folders,
commands), :mod:`~keras_softkd.grid.progress` (what both runners print and
decide: cells to run, a finished cell's line, the summary and the report),
:mod:`~keras_softkd.grid.local` (the local runner), :mod:`~keras_softkd.grid.on_ray`
(the Ray runner) and :mod:`~keras_softkd.grid.cli` (the command line, which picks
the runner). The runners import the cells and the progress lines, never each other.
"""

from keras_softkd.grid import local
from keras_softkd.grid.cells import (
    CELL_FILE,
    LOG_FILE,
    RESULTS_FILE,
    Cell,
    Column,
    model_folder,
    normalize_train_args,
    parse_column,
    parse_seeds,
    plan,
    prepare_cell,
)
from keras_softkd.grid.cli import main
from keras_softkd.grid.local import run
from keras_softkd.grid.progress import summarize, triage, write_report

__all__ = [
    "CELL_FILE",
    "LOG_FILE",
    "RESULTS_FILE",
    "Cell",
    "Column",
    "local",
    "main",
    "model_folder",
    "normalize_train_args",
    "parse_column",
    "parse_seeds",
    "plan",
    "prepare_cell",
    "run",
    "summarize",
    "triage",
    "write_report",
]

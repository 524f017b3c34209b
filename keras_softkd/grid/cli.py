"""``python -m keras_softkd.grid``: the command line, which picks the runner.

The flags are parsed into :func:`keras_softkd.grid.cells.plan`'s cells; then
``--dry_run`` prints them, ``--ray_address`` runs them on a Ray cluster
(:mod:`keras_softkd.grid.on_ray`, imported only then) and otherwise they run
here (:mod:`keras_softkd.grid.local`). The only module that knows both runners.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional, Sequence

from keras_softkd import methods as method_table
from keras_softkd.errors import UsageError
from keras_softkd.grid import local
from keras_softkd.grid.cells import parse_seeds, plan, split_list

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m keras_softkd.grid --methods=.. --output_root=DIR [--models=..] [flags]``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_softkd.grid",
        description="Run methods x models x seeds as train.py subprocesses (--jobs at a time), "
        "skipping completed cells and resuming interrupted ones; then tabulate them. "
        "Other --flag=value arguments go to every train.py run.",
        epilog=f"Columns: {' '.join(method_table.names())}, "
        f"{' and '.join(method_table.counted_columns())} (N copies), each "
        "optionally with :key=value settings (lsr:alpha=0.2).",
        allow_abbrev=False,  # --model=... must not be taken for --models
    )
    parser.add_argument("--methods", required=True,
                        help="comma-separated columns, e.g. ce,lsr,mrkd1,mrkd3,mrkd3_tc")
    parser.add_argument("--models", default="resnet20", help="comma-separated networks")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds or ranges (0-2)")
    parser.add_argument("--output_root", required=True, help="folder of the grid's runs")
    parser.add_argument("--flagfile", action="append", default=[],
                        help="a train.py flagfile for every run (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print the cells and commands only")
    parser.add_argument("--stream", action="store_true",
                        help="also echo each run's output here (it always goes to train.log)")
    parser.add_argument("--no_report", action="store_true", help="skip the final report")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run at once, each with an equal share of the CPU cores")
    parser.add_argument("--python", default=sys.executable, help="interpreter for train.py")
    parser.add_argument("--train_script", default=None, help="path of train.py")
    cluster = parser.add_argument_group(
        "on a Ray cluster", "each cell a Ray task on any node; --output_root must be on storage "
        "every node mounts at the same path (pip install 'keras-softkd[cluster]')")
    cluster.add_argument("--ray_address", default=None,
                         help="the cluster's HEAD:PORT, 'auto' (the one `ray start` runs here) or "
                         "'local' (start Ray on this machine only)")
    cluster.add_argument("--cpus_per_cell", type=float, default=None,
                         help="CPUs each cell asks Ray for (default 1)")
    cluster.add_argument("--gpus_per_cell", type=float, default=None,
                         help="GPUs each cell asks Ray for (default 0)")
    cluster.add_argument("--max_retries", type=int, default=None,
                         help="times Ray reruns a cell whose node or worker died (default 3); "
                         "the rerun resumes from the cell's last epoch")
    args, train_args = parser.parse_known_args(argv)
    try:
        cells = plan(
            split_list(args.methods), split_list(args.models), parse_seeds(args.seeds),
            args.output_root,
            flagfiles=args.flagfile, train_args=train_args, python=args.python,
            train_script=args.train_script,
        )
    except UsageError as error:
        print(f"python -m keras_softkd.grid: error: {error}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"python -m keras_softkd.grid: error: --jobs must be an integer >= 1; got "
              f"--jobs={args.jobs}.", file=sys.stderr)
        return 2
    problem = _cluster_usage(args)
    if problem:
        print(f"python -m keras_softkd.grid: error: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell in cells:
            state, detail = cell.state()
            print(f"# {cell.model} {cell.column.name} seed{cell.seed}: {state}"
                  + (f" ({detail})" if detail else ""))
            print(shlex.join(cell.command))
        return 0
    if args.ray_address is not None:
        from keras_softkd.grid import on_ray  # imports Ray: only when asked for

        return on_ray.run(
            cells, args.output_root, args.ray_address, report=not args.no_report,
            cpus_per_cell=1.0 if args.cpus_per_cell is None else args.cpus_per_cell,
            gpus_per_cell=args.gpus_per_cell or 0.0,
            max_retries=3 if args.max_retries is None else args.max_retries,
        )
    return local.run(cells, args.output_root, report=not args.no_report, stream=args.stream,
                     jobs=args.jobs)


def _cluster_usage(args: argparse.Namespace) -> str:
    """What is wrong with the Ray flags (one line), or ``""``."""
    given = [f"--{name}" for name in ("cpus_per_cell", "gpus_per_cell", "max_retries")
             if getattr(args, name) is not None]
    if args.ray_address is None:
        if given:
            return (f"{given[0]} applies to cells on a Ray cluster only: add "
                    "--ray_address=HEAD:PORT (or use --jobs to run several cells on this machine).")
        return ""
    if not args.ray_address.strip():
        return "--ray_address: give HEAD:PORT, 'auto' or 'local'; got an empty address."
    if args.jobs != 1:
        return ("--jobs is for cells on this machine; on a Ray cluster each cell asks for "
                "--cpus_per_cell and --gpus_per_cell and Ray runs as many as the cluster holds.")
    if args.stream:
        return ("--stream is for cells on this machine; on a Ray cluster each cell's output is in "
                "its train.log under --output_root.")
    if args.cpus_per_cell is not None and not args.cpus_per_cell > 0:
        return f"--cpus_per_cell must be a number > 0; got --cpus_per_cell={args.cpus_per_cell:g}."
    if args.gpus_per_cell is not None and not args.gpus_per_cell >= 0:
        return f"--gpus_per_cell must be a number >= 0; got --gpus_per_cell={args.gpus_per_cell:g}."
    if args.max_retries is not None and args.max_retries < 0:
        return f"--max_retries must be an integer >= 0; got --max_retries={args.max_retries}."
    return ""

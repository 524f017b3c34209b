"""What both grid runners do around the cells they run: pick the cells to run, one line per
finished cell, the closing summary and the report; the line of an interrupted grid.

Shared by the local runner (:mod:`keras_softkd.grid.local`) and the Ray one
(:mod:`keras_softkd.grid.on_ray`), so that a grid prints and ends alike wherever its
``train.py`` runs.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Sequence

from keras_softkd import _io
from keras_softkd._signals import describe
from keras_softkd.grid.cells import CURVES_FILE, REPORT_FILE, RESULTS_FILE, Cell

__all__ = ["headline", "interrupted", "summarize", "tail", "triage", "write_report"]


def interrupted(signum: int, stopped: Sequence[Cell], not_started: int) -> str:
    """The grid's one line on SIGINT or SIGTERM: the cells it stopped, the epoch each one's
    checkpoint holds (where it resumes), the cells it did not start, how to go on.

    Example:
        >>> interrupted(15, [], 3).split("; ")[1]
        'no cell was running, 3 not started: run the same command to resume.'
    """
    shown = []
    for cell in stopped[:_SHOWN]:
        epoch = cell.checkpoint_epoch()
        label = f"{cell.model} {cell.column.name} seed{cell.seed}"
        if cell.state()[0] == "done":
            shown.append(f"{label}: finished")
        elif epoch:
            shown.append(f"{label}: its checkpoint holds epoch {epoch}")
        elif epoch == 0:
            shown.append(f"{label}: no checkpoint yet, starts again from epoch 1")
        else:
            shown.append(f"{label}: checkpoint unreadable")
    more = f"; and {len(stopped) - _SHOWN} more" if len(stopped) > _SHOWN else ""
    cells = "cell" if len(stopped) == 1 else "cells"
    running = (f"stopped {len(stopped)} running {cells} ({'; '.join(shown)}{more})" if stopped
               else "no cell was running")
    return (f"python -m keras_softkd.grid: interrupted by {describe(signum)}; {running}, "
            f"{not_started} not started: run the same command to resume.")


_SHOWN = 4  # cells named in the line; the rest are counted


def triage(cells: Sequence[Cell], out
           ) -> tuple[dict[str, int], list[str], list[tuple[str, Cell, str]]]:
    """Prints the cells that are done or cannot run; ``(counts, failed, to_run)``.

    ``to_run`` holds ``(where, cell, doing)``: the cell's ``[i/n] model column
    seed`` label and ``"running"`` or ``"resuming from epoch N"``. Shared by the
    local runner and the Ray one (:mod:`keras_softkd.grid.on_ray`).
    """
    counts = {"done": 0, "ran": 0, "failed": 0}
    failed: list[str] = []
    to_run = []
    for index, cell in enumerate(cells, 1):
        state, detail = cell.state()
        where = f"[{index}/{len(cells)}] {cell.model} {cell.column.name} seed{cell.seed}"
        if state == "done":
            counts["done"] += 1
            print(f"{where}: done, skipped", file=out, flush=True)
        elif state in ("conflict", "broken"):
            counts["failed"] += 1
            failed.append(f"{cell.output_dir}: {state}: {detail}")
            print(f"{where}: {state}, not run: {detail}", file=out, flush=True)
        else:
            to_run.append((where, cell, "resuming " + detail if state == "resume" else "running"))
    return counts, failed, to_run


def summarize(cells: Sequence[Cell], counts: dict[str, int], failed: Sequence[str], output_root,
              report: bool, out) -> int:
    """The closing lines and the report; the exit status (0, or 1 if a cell or the report failed)."""
    print(f"\n{len(cells)} cells: {counts['done']} already done, {counts['ran']} run, "
          f"{counts['failed']} failed.", file=out)
    for line in failed:
        print(f"  {line}", file=out)
    status = 1 if failed else 0
    if report:
        status = max(status, write_report(output_root, out))
    out.flush()
    return status


def headline(cell: Cell) -> str:
    results = json.loads((cell.output_dir / RESULTS_FILE).read_text())
    if results.get("diverged") or results.get("test_error") is None:
        return "diverged: no finite test logits (recorded, not run again)"
    glue = (f"dev {results['glue_metric']} {results['glue_score']:.2f} | "
            if results.get("glue_score") is not None else "")  # a GLUE run's headline
    return (f"{glue}test error {100 * results['test_error']:.2f}% | NLL {results['test_nll']:.4f} | "
            f"ECE {100 * results['test_ece']:.2f}%")


def tail(path: pathlib.Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def write_report(output_root, out=None) -> int:
    """Tables and curves of every completed run under ``output_root``; 0 if the tables were written.

    The curves are optional: without matplotlib (the ``plots`` extra) the tables are still
    printed and written, one line names the extra, and the status stays 0, so a finished grid
    never fails (under ``set -e`` in a SLURM job) for a missing plotting library.
    """
    from keras_softkd import report

    out = out or sys.stdout
    root = pathlib.Path(output_root)
    try:
        runs = report.collect([root]) if root.exists() else report.Runs()
        if not runs:
            print(f"No completed run under {root}: no report.", file=out)
            return 1
        text = report.table_all(runs)
        _io.write_text_atomic(root / REPORT_FILE, text)
    except (ValueError, FileNotFoundError) as error:
        print(f"Report failed: {error}", file=out)
        return 1
    try:
        report.plot_curves(runs, root / CURVES_FILE)
        wrote = f"{root / REPORT_FILE} and {root / CURVES_FILE}"
    except ImportError as error:  # matplotlib missing: its message names the extra
        wrote = f"{root / REPORT_FILE}; no curves: {error}"
    except ValueError as error:  # e.g. a history.csv without val_accuracy
        print(f"Report failed: {error}", file=out)
        return 1
    print(f"\n{text}\nWrote {wrote}", file=out)
    return 0

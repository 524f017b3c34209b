#!/usr/bin/env python3
"""W Table 2's ResNet-20 CIFAR-10 row at the papers' full protocol, a borrowed GPU's minutes at a time.

The queue: ResNet-20 on all 50,000 CIFAR-10 training images, 200 epochs, the flags of
``flags/w_table2/cifar10/resnet20_*.flags`` (batch 128, lr 0.1, cosine, weight decay 5e-4), float32
students and teachers, columns ``ce lsr lsrkd mrkd1 mrkd3 mrkd3_tc lsrkd_tc`` then seeds 0, 1, 2
(seed-major: every column of seed 0 first). It runs through ``python -m keras_softkd.grid`` and so
``train.py``, on JAX, the code users run; the grid skips finished cells and resumes a cell from its
checkpoint. Results live in ``benchmarks/results/gpu_w_table2/`` (one folder per cell, ``sessions.json``
with each device session's date, device and versions, ``report.md`` beside W's numbers).

Four subcommands, three places::

    # here, once per checkout (CPU): CIFAR-10 as lossless WebP parts and Keras as wheels
    .venv/bin/python benchmarks/gpu_fidelity.py prepare --data_dir=DIR
    # on the device machine, two calls on the same warm machine (the data travels in two parts):
    python3 benchmarks/gpu_fidelity.py device   # carry .gpu_fidelity/data/part1
    python3 benchmarks/gpu_fidelity.py device   # carry .gpu_fidelity/data/part2, .gpu_fidelity/wheels,
                                                #       .gpu_fidelity/resume
    # here, on what came back: results into the repository, checkpoints kept for the next session
    .venv/bin/python benchmarks/gpu_fidelity.py collect FILES_AT
    .venv/bin/python benchmarks/gpu_fidelity.py report              # report.md again

Decisions (sizes measured 2026-12-08 on the project's CIFAR-10 files):

* **Data.** CIFAR-10 is 184 MB of pixels (154 MB train, 31 MB test); a device call carries at
  most 64 MiB, and nothing reaches the device otherwise. Lossless WebP of 50 x 50-image mosaics
  (Pillow, ``method=4``) is the smallest of the codecs tried (on the first 5,000 training images,
  bits per 8-bit value: WebP mosaic 3.90, WebP one image at a time 4.21, PNG 4.87, lossless
  JPEG 2000 5.18, xz -9e 5.27); on both whole splits it takes 4.39 bits, 96.5 MiB, still over
  64 MiB. So the data travels as parts of at most ``--part_mib`` (52) MiB, 51.9 and 44.6 MiB,
  in successive calls to the same warm machine, which keeps what a call left in
  ``--stage_dir``. A call decodes the parts it carries; once all are there it assembles the two
  ``.npz`` files and checks their SHA-256 against the source's: the device trains on exactly
  the files of here.
* **No TensorFlow there**: on JAX ``train.py`` reads through the NumPy ``PyDataset`` pipeline
  (``keras_softkd.data.py_dataset``), which on a GPU ships uint8 batches and leaves the crop,
  flip and normalisation to the GPU (``augment_on="device"``); Keras, namex and optree travel as
  wheels (``prepare`` downloads them for Python 3.12), installed with ``pip --target`` into the
  stage folder.
* **Time budget**: ``device`` stops the grid ``--reserve`` seconds before ``--budget`` (SIGTERM,
  also on its own SIGTERM): ``train.py`` writes its checkpoint atomically at every epoch's end,
  so a stopped cell loses at most the epoch it was in. Then it packs the results, the unfinished
  cells' checkpoints and the finished cells' models into one ``gpu_w_table2.tar.gz`` under
  ``$OUT`` (split into pieces under 15 MiB if larger), with ``report.md``, ``session.json`` and
  the log beside it: at most 8 files, none in a folder, as the device tool returns them.
* **Between sessions**: ``collect`` puts the text files (results.json, history.csv, train.log,
  grid_cell.json, sessions.json, report.md) in the repository and the checkpoints in the
  ignored ``.gpu_fidelity/resume/``, which the next session carries; finished cells' models go
  to ``.gpu_fidelity/models/``. A cell is resumed only where its checkpoint is carried back.
* **Float32**: the papers' arithmetic (``--precision=float32 --teacher_precision=same``; ``auto``
  would train in bfloat16 on these GPUs). JAX's default lets XLA compute float32 convolutions in
  TF32 on these GPUs, as PyTorch's cuDNN does by default; the runs keep that default.
* **One cell at a time** (``--jobs=1``): whether several runs at once train more images per
  second on one GPU has not been measured; ``--jobs`` sets it, each run then sharing the GPU
  (``XLA_PYTHON_CLIENT_PREALLOCATE=false``). A change of ``--jobs`` does not change a cell.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from typing import Optional, Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The grid's folder, relative to the repository root: the cells' ``--output_dir`` (which the grid
#: compares on resuming) must not depend on where the checkout lies on a machine.
RESULTS = pathlib.Path("benchmarks/results/gpu_w_table2")
WORK = pathlib.Path(".gpu_fidelity")  # ignored (.gitignore): data parts, wheels, checkpoints, models
STAGE = pathlib.Path("/tmp/gpu_fidelity")
MODEL = "resnet20"
#: The queue's columns in the order they run (then the next seed), and W Table 2's test error (%)
#: of each for ResNet-20 on CIFAR-10.
COLUMNS = ("ce", "lsr", "lsrkd", "mrkd1", "mrkd3", "mrkd3_tc", "lsrkd_tc")
SEEDS = (0, 1, 2)
W_TABLE2 = {"ce": 7.50, "lsr": 7.32, "lsrkd": 7.21, "lsrkd_tc": 7.33, "mrkd1": 7.17, "mrkd3": 7.37,
            "mrkd3_tc": 7.17}
W_ORDER = ("ce", "lsr", "lsrkd", "lsrkd_tc", "mrkd1", "mrkd3", "mrkd3_tc")  # the table's rows
LABELS = {"ce": "Baseline", "lsr": "LSR", "lsrkd": "LsrKD", "lsrkd_tc": "LsrKD-TC", "mrkd1": "MrKD-1",
          "mrkd3": "MrKD-3", "mrkd3_tc": "MrKD-3-TC"}
FLAGFILE = pathlib.Path("flags/w_table2/cifar10/resnet20_ce.flags")
_PER_CELL = ("--method", "--model", "--output_dir", "--copies", "--seed")
PRECISION = ("--precision=float32", "--teacher_precision=same")

TAR = "gpu_w_table2.tar.gz"
PIECE_BYTES = 15 * 2**20
MAX_PIECES = 5  # + report.md, session.json, the log: the device returns at most 8 files
TEXT_FILES = ("results.json", "history.csv", "train.log", "grid_cell.json")
ROOT_FILES = ("sessions.json", "report.md", "curves.png")
WHEELS = {"keras": None, "namex": None, "optree": None}  # None: the version installed here
FORMAT = "keras_softkd.gpu_fidelity.data/1"
MOSAIC_COLUMNS = 50
DATASET = "cifar10"
SPLITS = ("train", "test")


def log(*parts) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------


def protocol_flags(epochs: Optional[int] = None) -> list[str]:
    """W Table 2's ``train.py`` flags for ResNet-20 on CIFAR-10 without the per-cell ones (read from
    ``flags/w_table2/cifar10/resnet20_ce.flags``), then float32; ``epochs`` overrides the 200.

    Example:
        >>> protocol_flags()[:2]
        ['--dataset=cifar10', '--epochs=200']
    """
    flags = []
    for line in (ROOT / FLAGFILE).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.split("=")[0] in _PER_CELL:
            continue
        if epochs is not None and line.startswith("--epochs="):
            line = f"--epochs={epochs}"
        flags.append(line)
    return [*flags, *PRECISION]


def grid_command(root, data_dir, *, python: str = sys.executable, columns: Sequence[str] = COLUMNS,
                 seeds: Sequence[int] = SEEDS, epochs: Optional[int] = None, jobs: int = 1) -> list[str]:
    """The ``python -m keras_softkd.grid`` command of the queue (no report: :func:`write_report`)."""
    return [
        python, "-m", "keras_softkd.grid", f"--methods={','.join(columns)}", f"--models={MODEL}",
        f"--seeds={','.join(str(seed) for seed in seeds)}", f"--output_root={root}",
        f"--jobs={jobs}", "--no_report", f"--data_dir={data_dir}", *protocol_flags(epochs),
    ]


def cell_folders(columns: Sequence[str] = COLUMNS, seeds: Sequence[int] = SEEDS) -> list[pathlib.Path]:
    """The cells' folders in queue order, relative to the grid's folder: ``resnet20/<column>/seed<N>``.

    Example:
        >>> [str(folder) for folder in cell_folders()[:2]], str(cell_folders()[-1])
        (['resnet20/ce/seed0', 'resnet20/lsr/seed0'], 'resnet20/lsrkd_tc/seed2')
    """
    return [pathlib.Path(MODEL) / column / f"seed{seed}" for seed in seeds for column in columns]


def cell_state(folder: pathlib.Path) -> str:
    """``"done"``, ``"epoch N"`` (a checkpoint), or ``"new"``: read from the files alone."""
    results = folder / "results.json"
    if results.exists():
        try:
            if json.loads(results.read_text()).get("completed") is True:
                return "done"
        except ValueError:
            pass
    state = folder / "checkpoint" / "state.json"
    if state.exists():
        try:
            return f"epoch {json.loads(state.read_text())['epoch']}"
        except (ValueError, KeyError):
            return "epoch ?"
    return "new"


# ---------------------------------------------------------------------------
# Data: CIFAR-10 as lossless WebP parts
# ---------------------------------------------------------------------------


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _fingerprint(x: np.ndarray, y: np.ndarray) -> dict:
    """What the assembled arrays must equal: count and SHA-256 of the uint8 images and int64 labels."""
    return {"count": int(len(x)), "x_sha256": _sha256(x.astype(np.uint8)),
            "y_sha256": _sha256(np.asarray(y).astype(np.int64))}


def encode_chunk(images: np.ndarray) -> bytes:
    """``(n, 32, 32, 3)`` uint8 images -> one lossless WebP mosaic, :data:`MOSAIC_COLUMNS` wide
    (the last row padded with black images)."""
    from PIL import Image

    count = len(images)
    rows = -(-count // MOSAIC_COLUMNS)
    tiles = np.zeros((rows * MOSAIC_COLUMNS, 32, 32, 3), np.uint8)
    tiles[:count] = images
    mosaic = tiles.reshape(rows, MOSAIC_COLUMNS, 32, 32, 3).transpose(0, 2, 1, 3, 4)
    buffer = io.BytesIO()
    Image.fromarray(mosaic.reshape(rows * 32, MOSAIC_COLUMNS * 32, 3)).save(
        buffer, "WEBP", lossless=True, quality=100, method=4, exact=True)
    return buffer.getvalue()


def decode_chunk(blob: bytes, count: int) -> np.ndarray:
    """:func:`encode_chunk`'s inverse (Pillow, or OpenCV where Pillow lacks WebP)."""
    try:
        from PIL import Image

        mosaic = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    except Exception:  # no Pillow, or one built without WebP
        import cv2

        mosaic = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    rows = mosaic.shape[0] // 32
    tiles = mosaic.reshape(rows, 32, MOSAIC_COLUMNS, 32, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(tiles.reshape(-1, 32, 32, 3)[:count])


def pack_data(arrays: dict, parts_dir: pathlib.Path, *, part_mib: float = 52, chunk: int = 2500,
              workers: int = 2) -> list[pathlib.Path]:
    """Writes ``arrays`` (``{"train": (x, y), "test": (x, y)}``) as WebP chunks in part folders
    ``part1, part2, ...`` of at most ``part_mib`` MiB each, every part with a ``manifest.json``
    (the chunks it holds, their labels, and the fingerprints of the whole splits). Returns the
    part folders."""
    source = {split: _fingerprint(*arrays[split]) for split in SPLITS}
    jobs = [(split, start, min(start + chunk, len(arrays[split][0])))
            for split in SPLITS for start in range(0, len(arrays[split][0]), chunk)]
    pieces = [arrays[split][0][start:stop] for split, start, stop in jobs]
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            blobs = list(pool.map(encode_chunk, pieces))
    else:
        blobs = [encode_chunk(piece) for piece in pieces]
    limit = part_mib * 2**20
    parts: list[list] = [[]]
    size = 0
    for job, blob in zip(jobs, blobs):
        if parts[-1] and size + len(blob) > limit:
            parts.append([])
            size = 0
        if len(blob) > limit:
            raise ValueError(f"--part_mib={part_mib} is smaller than one chunk ({len(blob)} bytes).")
        parts[-1].append((job, blob))
        size += len(blob)
    if parts_dir.exists():
        shutil.rmtree(parts_dir)
    folders = []
    for number, members in enumerate(parts, 1):
        folder = parts_dir / f"part{number}"
        folder.mkdir(parents=True)
        chunks = []
        for (split, start, stop), blob in members:
            name = f"{split}_{start:05d}.webp"
            (folder / name).write_bytes(blob)
            chunks.append({"file": name, "split": split, "start": start, "count": stop - start,
                           "sha256": hashlib.sha256(blob).hexdigest(),
                           "labels": np.asarray(arrays[split][1][start:stop]).astype(int).tolist()})
        manifest = {"format": FORMAT, "dataset": DATASET, "part": number, "parts": len(parts),
                    "source": source, "chunks": chunks}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        folders.append(folder)
    return folders


class DataError(Exception):
    """Parts that do not fit together, or assembled arrays unlike the source."""


def stage_data(parts_dir: pathlib.Path, stage_dir: pathlib.Path) -> tuple[Optional[pathlib.Path], str]:
    """Decodes the parts present in ``parts_dir`` into ``stage_dir`` (kept there between calls to the
    same machine); once every part is staged, assembles ``cifar10_train.npz`` and
    ``cifar10_test.npz`` in ``stage_dir/data`` and checks them against the source's fingerprints.

    Returns:
        ``(data folder, "")`` when the data is complete, else ``(None, what is missing)``.

    Raises:
        DataError: parts of different sources, a damaged chunk, or arrays that differ.
    """
    staged = stage_dir / "parts"
    data = stage_dir / "data"
    staged.mkdir(parents=True, exist_ok=True)
    for manifest_file in sorted(parts_dir.glob("part*/manifest.json")) if parts_dir.exists() else []:
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_file}: not a {FORMAT} manifest.")
        target = staged / f"part{manifest['part']}.npz"
        if (staged / f"part{manifest['part']}.json").exists() and target.exists():
            continue
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            images = list(pool.map(lambda c: _read_chunk(manifest_file.parent, c), manifest["chunks"]))
        np.savez(target, **{f"x{i}": x for i, x in enumerate(images)})
        (staged / f"part{manifest['part']}.json").write_text(json.dumps(manifest))
        log(f"staged part {manifest['part']} of {manifest['parts']} "
            f"({sum(c['count'] for c in manifest['chunks'])} images) in {staged}")
    manifests = [json.loads(f.read_text()) for f in sorted(staged.glob("part*.json"))]
    done = (data / "done.json")
    if done.exists() and manifests and json.loads(done.read_text()) == manifests[0]["source"]:
        return data, ""
    if not manifests:
        return None, f"no data part is staged in {staged} and none was carried ({parts_dir}/part1 ...)"
    sources = {json.dumps(m["source"], sort_keys=True) for m in manifests}
    if len(sources) > 1:
        raise DataError(f"the staged parts in {staged} come from different data; run prepare again "
                        f"and carry every part, or remove {stage_dir}.")
    total = manifests[0]["parts"]
    have = sorted(m["part"] for m in manifests)
    missing = [n for n in range(1, total + 1) if n not in have]
    if missing:
        return None, (f"data parts {have} of {total} are staged on this machine; part(s) {missing} "
                      "are not: carry them in the next call, on this machine while it is warm")
    _assemble(staged, manifests, data)
    return data, ""


def _read_chunk(folder: pathlib.Path, chunk: dict) -> np.ndarray:
    blob = (folder / chunk["file"]).read_bytes()
    if hashlib.sha256(blob).hexdigest() != chunk["sha256"]:
        raise DataError(f"{folder / chunk['file']} is damaged (its SHA-256 differs from the manifest's).")
    return decode_chunk(blob, chunk["count"])


def _assemble(staged: pathlib.Path, manifests: list[dict], data: pathlib.Path) -> None:
    source = manifests[0]["source"]
    arrays = {split: (np.zeros((source[split]["count"], 32, 32, 3), np.uint8),
                      np.full(source[split]["count"], -1, np.int64)) for split in SPLITS}
    for manifest in manifests:
        with np.load(staged / f"part{manifest['part']}.npz") as images:
            for i, chunk in enumerate(manifest["chunks"]):
                x, y = arrays[chunk["split"]]
                stop = chunk["start"] + chunk["count"]
                x[chunk["start"]:stop] = images[f"x{i}"]
                y[chunk["start"]:stop] = chunk["labels"]
    data.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        x, y = arrays[split]
        if _fingerprint(x, y) != source[split]:
            raise DataError(f"the assembled {split} split differs from the source's (SHA-256); "
                            "run prepare again and carry its parts.")
        np.savez(data / f"{DATASET}_{split}.npz", x=x, y=y.astype(np.int32))
    (data / "done.json").write_text(json.dumps(source))
    counts = ", ".join(f"{split} {source[split]['count']}" for split in SPLITS)
    log(f"assembled {counts} images in {data}; SHA-256 equal to the source's")


# ---------------------------------------------------------------------------
# Packing what comes back, and collecting it here
# ---------------------------------------------------------------------------


def pack_results(root: pathlib.Path, out: pathlib.Path, since: float, *,
                 piece_bytes: int = PIECE_BYTES) -> list[pathlib.Path]:
    """The grid folder's text files, the unfinished cells' checkpoints and the models of cells
    finished since ``since`` (a ``time.time()``) -> ``out/gpu_w_table2.tar.gz`` (or pieces
    ``.000``, ``.001``, ... of at most ``piece_bytes``). Returns the files written."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for name in ROOT_FILES:
            if (root / name).is_file():
                tar.add(root / name, arcname=name)
        for results in sorted(root.glob("*/*/seed*/")):
            cell = results.relative_to(root)
            for name in TEXT_FILES:
                if (results / name).is_file():
                    tar.add(results / name, arcname=str(cell / name))
            if cell_state(results) == "done":
                model = results / "model.keras"
                if model.is_file() and model.stat().st_mtime >= since:
                    tar.add(model, arcname=str(cell / "model.keras"))
            elif (results / "checkpoint").is_dir():
                for file in sorted((results / "checkpoint").iterdir()):
                    if file.is_file() and not file.name.startswith(".tmp-"):
                        tar.add(file, arcname=str(cell / "checkpoint" / file.name))
    blob = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    if len(blob) <= piece_bytes:
        (out / TAR).write_bytes(blob)
        return [out / TAR]
    pieces = [blob[i:i + piece_bytes] for i in range(0, len(blob), piece_bytes)]
    if len(pieces) > MAX_PIECES:
        raise ValueError(f"the results are {len(blob)} bytes: more than the {MAX_PIECES} pieces of "
                         f"{piece_bytes} bytes the device returns.")
    files = []
    for index, piece in enumerate(pieces):
        files.append(out / f"{TAR}.{index:03d}")
        files[-1].write_bytes(piece)
    return files


def _read_tar(files_at: pathlib.Path) -> bytes:
    whole = files_at / TAR
    if whole.is_file():
        return whole.read_bytes()
    pieces = sorted(files_at.glob(f"{TAR}.[0-9][0-9][0-9]"))
    if not pieces:
        raise FileNotFoundError(f"{files_at} holds no {TAR} (nor its pieces {TAR}.000 ...).")
    return b"".join(piece.read_bytes() for piece in pieces)


def collect(files_at: pathlib.Path, root: pathlib.Path, work: pathlib.Path) -> dict:
    """Unpacks what a ``device`` call returned: text files into ``root``, checkpoints of unfinished
    cells into ``work/resume`` (replacing older ones; a finished cell's is removed), models into
    ``work/models``. Returns ``{cell: state}`` of the cells it held."""
    states = {}
    with tarfile.open(fileobj=io.BytesIO(_read_tar(files_at)), mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            path = pathlib.PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                raise ValueError(f"unexpected member {member.name!r} in {TAR}")
        cells = sorted({pathlib.Path(*pathlib.PurePosixPath(m.name).parts[:3]) for m in members
                        if len(pathlib.PurePosixPath(m.name).parts) > 3})
        for cell in cells:
            shutil.rmtree(work / "resume" / cell, ignore_errors=True)
        for member in members:
            parts = pathlib.PurePosixPath(member.name).parts
            if len(parts) > 4 and parts[3] == "checkpoint":
                target = work / "resume" / pathlib.Path(*parts)
            elif parts[-1] == "model.keras":
                target = work / "models" / pathlib.Path(*parts)
            else:
                target = root / pathlib.Path(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    for cell in cells:
        shutil.rmtree(root / cell / "checkpoint", ignore_errors=True)  # checkpoints live in work
        states[str(cell)] = cell_status(root, cell, work)
    return states


def restore_checkpoints(root: pathlib.Path, work: pathlib.Path) -> list[str]:
    """Copies the carried checkpoints (``work/resume``) into their unfinished cells under ``root``."""
    restored = []
    for state in sorted((work / "resume").glob("*/*/seed*/checkpoint/state.json")):
        cell = state.parent.parent.relative_to(work / "resume")
        if cell_state(root / cell) == "done":
            continue
        target = root / cell / "checkpoint"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(state.parent, target)
        restored.append(f"{cell}: {cell_state(root / cell)}")
    return restored


# ---------------------------------------------------------------------------
# The report: beside W's numbers
# ---------------------------------------------------------------------------


def _results(root: pathlib.Path) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {}
    for file in sorted(root.glob(f"{MODEL}/*/seed*/results.json")):
        results = json.loads(file.read_text())
        if results.get("completed") is True and results.get("test_error") is not None:
            found.setdefault(file.parent.parent.name, {})[int(results["seed"])] = results
    return found


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} ({len(values)})"


def cell_status(root: pathlib.Path, cell: pathlib.Path, work: Optional[pathlib.Path] = None) -> str:
    """:func:`cell_state` of ``root/cell``, or of its checkpoint kept in ``work/resume`` (here,
    between sessions)."""
    state = cell_state(root / cell)
    if state == "new" and work is not None and (work / "resume" / cell).exists():
        state = cell_state(work / "resume" / cell)
    return state


def w_table(root: pathlib.Path, work: Optional[pathlib.Path] = None) -> str:
    """W Table 2's ResNet-20 CIFAR-10 row beside ours, one line per method, as Markdown."""
    found = _results(root)
    lines = [
        "| method | W Table 2 error (%) | ours: error (%), mean ± std (seeds) | ours − W | "
        "ours per seed | NLL | ECE (%) | cells |",
        "| :-- | --: | --: | --: | :-- | --: | --: | :-- |",
    ]
    for column in W_ORDER:
        runs = found.get(column, {})
        errors = [100 * runs[s]["test_error"] for s in sorted(runs)]
        difference = f"{np.mean(errors) - W_TABLE2[column]:+.2f}" if errors else "—"
        per_seed = ", ".join(f"s{s} {100 * runs[s]['test_error']:.2f}" for s in sorted(runs)) or "—"
        nll = f"{np.mean([runs[s]['test_nll'] for s in runs]):.3f}" if runs else "—"
        ece = f"{100 * np.mean([runs[s]['test_ece'] for s in runs]):.2f}" if runs else "—"
        cells = ", ".join(f"s{seed} {cell_status(root, pathlib.Path(MODEL, column, f'seed{seed}'), work)}"
                          for seed in SEEDS)
        lines.append(f"| {LABELS[column]} | {W_TABLE2[column]:.2f} | {_mean_std(errors)} | "
                     f"{difference} | {per_seed} | {nll} | {ece} | {cells} |")
    return "\n".join(lines)


def _sessions_table(root: pathlib.Path) -> str:
    file = root / "sessions.json"
    sessions = json.loads(file.read_text()) if file.exists() else []
    if not sessions:
        return "No device session has run yet."
    lines = ["| date (UTC) | device | JAX / Keras | jobs | wall (s) | cells advanced |",
             "| :-- | :-- | :-- | --: | --: | :-- |"]
    for session in sessions:
        versions = session.get("versions", {})
        moved = "; ".join(f"{c['cell']} {c['before']} -> {c['after']}" for c in session.get("cells", [])
                          if c["before"] != c["after"]) or "none"
        lines.append(f"| {session.get('date', '?')} | {session.get('device', '?')} | "
                     f"{versions.get('jax')} / {versions.get('keras')} | {session.get('jobs')} | "
                     f"{session.get('wall_seconds', 0):.0f} | {moved} |")
    return "\n".join(lines)


def write_report(root: pathlib.Path, work: Optional[pathlib.Path] = None) -> str:
    """``root/report.md``: W's row beside ours, the device sessions, and the package's tables
    (``keras_softkd.report``: error, NLL, ECE, differences to the baseline on the same seed)."""
    sections = [
        "# W Table 2, ResNet-20 on CIFAR-10, at the papers' protocol",
        "200 epochs on all 50,000 training images, evaluated on the 10,000 test images (the last "
        "epoch's student), batch 128, SGD lr 0.1 with cosine decay, weight decay 5e-4, float32, "
        "the papers' hyper-parameters per method; run by `benchmarks/gpu_fidelity.py` through "
        "`python -m keras_softkd.grid` and `train.py` on JAX. W's figures: the MrKD paper's "
        "Table 2 (test error, %).",
        w_table(root, work),
        "Cells: `done`, `epoch N` (a checkpoint of N of the epochs, resumed in the next device "
        "session), `new` (not started).",
        "## Device sessions",
        _sessions_table(root),
    ]
    if _results(root):
        try:
            from keras_softkd import report

            runs = report.collect([root])
            sections += ["## The package's tables", report.table_all(runs).strip()]
            try:
                report.plot_curves(runs, root / "curves.png")
            except (ImportError, ValueError) as error:
                sections.append(f"No curves: {error}")
        except Exception as error:  # the W table above stands on its own
            sections.append(f"The package's tables failed: {error!r}")
    text = "\n\n".join(sections) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.md").write_text(text)
    return text


# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------


def prepare(args) -> int:
    data_dir = pathlib.Path(args.data_dir or os.environ.get("KERAS_SOFTKD_DATA_DIR", ""))
    work = _here(args.work)
    if not args.skip_data:
        files = {split: data_dir / f"{DATASET}_{split}.npz" for split in SPLITS}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            print(f"gpu_fidelity.py prepare: error: --data_dir needs {' and '.join(missing)} "
                  "(arrays x, y); give --data_dir=DIR or set KERAS_SOFTKD_DATA_DIR.", file=sys.stderr)
            return 2
        arrays = {}
        for split, file in files.items():
            with np.load(file) as npz:
                arrays[split] = (npz["x"], npz["y"])
        start = time.perf_counter()
        folders = pack_data(arrays, work / "data", part_mib=args.part_mib, chunk=args.chunk,
                            workers=args.workers)
        for folder in folders:
            log(f"{folder}: {_size(folder) / 2**20:.1f} MiB")
        log(f"encoded in {time.perf_counter() - start:.0f} s")
    if not args.skip_wheels:
        wheels = work / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        pins = [f"{name}=={version or importlib.metadata.version(name)}"
                for name, version in WHEELS.items()]
        platforms = [f"--platform={p}" for p in (
            "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
            "manylinux2014_x86_64", "manylinux1_x86_64")]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(wheels), *pins]
        if subprocess.run(command).returncode:
            print("gpu_fidelity.py prepare: error: pip could not download "
                  f"{' '.join(pins)} (needs PyPI).", file=sys.stderr)
            return 1
        log(f"{wheels}: {', '.join(sorted(p.name for p in wheels.glob('*.whl')))}")
    parts = sorted((work / "data").glob("part*"), key=lambda part: int(part.name[4:]))
    log("\nThe device calls, each as soon as the one before returns (same warm machine); the last "
        "carries the wheels and the checkpoints too:")
    tree = _tree_size()
    for number, part in enumerate(parts, 1):
        carry = [part] + ([work / "wheels", work / "resume"] if number == len(parts) else [])
        size = sum(_size(c) for c in carry) + tree
        names = [str(c.relative_to(ROOT)) if c.is_relative_to(ROOT) else str(c) for c in carry]
        log(f"  {number}. run(command=\"python3 benchmarks/gpu_fidelity.py device\", "
            f"carry={json.dumps(names)}, timeout_s={540 if number == len(parts) else 180})"
            f"   # {size / 2**20:.1f} MiB with the working tree")
        if size > 60 * 2**20:
            log("     warning: over 60 MiB of the 64 the device takes: prepare again with a "
                "smaller --part_mib (three calls)")
    return 0


def _here(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.is_absolute() else ROOT / path


def _size(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _tree_size() -> int:
    """What the device tool sends besides the carried paths: tracked and untracked, not ignored."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((ROOT / name).stat().st_size for name in listed.decode().split("\0")
               if name and (ROOT / name).is_file())


class _Tee:
    """Prints to the terminal and appends to a log file."""

    def __init__(self, path: pathlib.Path):
        self.file = open(path, "a", buffering=1)
        self.stdout = sys.stdout

    def write(self, text):
        self.stdout.write(text)
        self.file.write(text)

    def flush(self):
        self.stdout.flush()
        self.file.flush()


def device(args) -> int:
    """Stages the carried data; once complete, runs the queue until the budget, then packs $OUT."""
    started, wall_start = time.monotonic(), time.time()
    if not (args.out or os.environ.get("OUT")):
        print("gpu_fidelity.py device: error: give --out=DIR or set $OUT.", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out or os.environ["OUT"]).resolve()
    os.chdir(ROOT)  # the grid's folder is relative to the repository root
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout = _Tee(out / "gpu_fidelity.log")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    root, work, stage = _here(args.root), _here(args.work), pathlib.Path(args.stage_dir)
    session = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "budget_seconds": args.budget, "jobs": args.jobs}
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_PYTHON_CLIENT_PREALLOCATE="false")  # several processes share the GPU
    paths = [str(ROOT)]
    try:
        site = _install_wheels(work / "wheels", stage / "site")
    except subprocess.CalledProcessError as error:
        log(f"gpu_fidelity.py device: error: pip could not install the carried wheels ({error})")
        return 2
    if site:
        paths.insert(0, str(site))
        sys.path.insert(0, str(site))
    if args.hide_tensorflow:  # as a machine without TensorFlow: `import tensorflow` fails
        hide = stage / "no_tensorflow"
        hide.mkdir(parents=True, exist_ok=True)
        (hide / "sitecustomize.py").write_text('import sys\nsys.modules["tensorflow"] = None\n')
        paths.insert(0, str(hide))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])

    if args.data_dir:
        data_dir, missing = pathlib.Path(args.data_dir), ""
    else:
        try:
            data_dir, missing = stage_data(work / "data", stage)
        except DataError as error:
            log(f"gpu_fidelity.py device: error: {error}")
            (out / "session.json").write_text(json.dumps({**session, "error": str(error)}, indent=2))
            return 2
    if data_dir is None:
        log(f"Not run yet: {missing}.")
        (out / "session.json").write_text(json.dumps({**session, "staged_only": missing}, indent=2))
        return 0
    session.update(_describe_device(env, args.python, allow_cpu=args.allow_cpu))
    if not session.pop("ok"):
        log(f"gpu_fidelity.py device: error: {session['error']}")
        (out / "session.json").write_text(json.dumps(session, indent=2))
        return 3
    log(f"device: {session['device']}; JAX devices {session['jax_devices']}")

    root.mkdir(parents=True, exist_ok=True)
    folders = cell_folders(args.columns, args.seeds)
    for line in restore_checkpoints(root, work):
        log(f"resuming {line}")
    for folder in folders:
        if (root / folder / "history.csv").exists() and cell_state(root / folder) == "new":
            log(f"warning: {folder} has a history but no checkpoint was carried "
                f"({work / 'resume' / folder}): it starts again from epoch 0")
    before = {str(f): cell_state(root / f) for f in folders}
    command = grid_command(args.root, data_dir, python=args.python, columns=args.columns,
                           seeds=args.seeds, epochs=args.epochs, jobs=args.jobs)
    session["command"] = " ".join(command[1:])
    deadline = started + args.budget - args.reserve
    code, by_budget = _run_until(command, env, deadline, stop, reserve=args.reserve)
    session.update(
        grid_exit=code, stopped=by_budget, wall_seconds=round(time.monotonic() - started, 1),
        cells=[{"cell": f, "before": before[f], "after": cell_state(root / f)} for f in before],
    )
    sessions_file = root / "sessions.json"
    sessions = json.loads(sessions_file.read_text()) if sessions_file.exists() else []
    sessions_file.write_text(json.dumps([*sessions, session], indent=2) + "\n")
    os.environ["KERAS_BACKEND"] = "jax"  # the report imports keras_softkd (Keras)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        (out / "report.md").write_text(write_report(root))
    except Exception as error:  # the results go back all the same
        log(f"the report failed: {error!r}")
    (out / "session.json").write_text(json.dumps(session, indent=2))
    files = pack_results(root, out, since=wall_start)
    log(f"\n{w_table(root)}\n\nwrote {', '.join(f.name for f in files)}, report.md, session.json, "
        f"gpu_fidelity.log in {out} ({time.monotonic() - started:.0f} s)")
    return 0 if code in (0, 130) or by_budget else code


def _install_wheels(wheels: pathlib.Path, site: pathlib.Path) -> Optional[pathlib.Path]:
    """Installs the carried wheels into ``site`` once per machine; ``site`` if it holds them."""
    found = sorted(wheels.glob("*.whl")) if wheels.exists() else []
    marker = site / "installed.json"
    names = [f.name for f in found]
    if found and not (marker.exists() and json.loads(marker.read_text()) == names):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                        *map(str, found)], check=True)
        marker.write_text(json.dumps(names))
        log(f"installed {', '.join(names)} into {site}")
    return site if marker.exists() else None


def _describe_device(env: dict, python: str, allow_cpu: bool) -> dict:
    """The GPU (nvidia-smi), JAX's devices and the versions; ``ok`` False where JAX sees no GPU."""
    info: dict = {"device": platform.processor() or platform.machine(), "jax_devices": None}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if smi.returncode == 0 and smi.stdout.strip():
            info["device"] = "; ".join(line.strip() for line in smi.stdout.strip().splitlines())
    except (OSError, subprocess.TimeoutExpired):
        pass
    probe = "import jax, json; print(json.dumps([jax.default_backend(), [str(d) for d in jax.devices()]]))"
    versions = {}
    for name in ("keras", "jax", "jaxlib", "numpy", "pillow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    info["versions"] = versions
    if allow_cpu:
        info["ok"] = True
        return info
    result = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    try:
        backend, devices = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        info.update(ok=False, error=f"JAX did not start: {result.stderr.strip()[-500:]}")
        return info
    info["jax_devices"] = devices
    info["ok"] = backend == "gpu"
    if not info["ok"]:
        info["error"] = (f"JAX sees no GPU (backend {backend}, devices {devices}); pass --allow_cpu "
                         "to train on the CPU anyway")
    return info


def _run_until(command: list[str], env: dict, deadline: float, stop: threading.Event,
               reserve: float) -> tuple[int, bool]:
    """Runs the grid, echoing its output, until it ends, ``deadline`` passes or ``stop`` is set;
    then SIGTERM (the grid stops its cells, whose checkpoints stay), SIGKILL after ``reserve``
    - 10 s. Returns ``(exit code, whether it was stopped)``."""
    log(f"$ {' '.join(command)}")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: [log(line.rstrip("\n")) for line in process.stdout],
                              daemon=True)
    reader.start()
    stopped = False
    while process.poll() is None:
        if stop.is_set() or time.monotonic() >= deadline:
            stopped = True
            log(f"\n=== time budget reached: stopping the grid "
                f"({'SIGTERM received' if stop.is_set() else 'deadline'}); checkpoints stay ===")
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=max(5.0, reserve - 10))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            break
        time.sleep(0.2)
    reader.join(timeout=5)
    return process.returncode, stopped


def collect_command(args) -> int:
    states = collect(pathlib.Path(args.files_at), _here(args.root), _here(args.work))
    text = write_report(_here(args.root), _here(args.work))
    print(text)
    for cell, state in states.items():
        print(f"{cell}: {state}")
    print(f"\nResults in {args.root} (commit its text files); checkpoints of unfinished cells in "
          f"{_here(args.work) / 'resume'} (carry it in the next device session).")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_fidelity.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=str(RESULTS), help="the grid's folder (default %(default)s)")
    common.add_argument("--work", default=str(WORK),
                        help="data parts, wheels, checkpoints, models (default %(default)s)")

    p = commands.add_parser("prepare", parents=[common], help="here: the data parts and the wheels")
    p.add_argument("--data_dir", help="folder of cifar10_train.npz and cifar10_test.npz "
                   "(default $KERAS_SOFTKD_DATA_DIR)")
    p.add_argument("--part_mib", type=float, default=52, help="largest data part (default 52 MiB)")
    p.add_argument("--chunk", type=int, default=2500, help="images per WebP file")
    p.add_argument("--workers", type=int, default=2, help="encoding processes")
    p.add_argument("--skip_data", action="store_true")
    p.add_argument("--skip_wheels", action="store_true")

    d = commands.add_parser("device", parents=[common], help="on the device: stage, run, pack $OUT")
    d.add_argument("--out", help="where the results go back (default $OUT)")
    d.add_argument("--budget", type=float, default=510, help="seconds this call may take (default 510)")
    d.add_argument("--reserve", type=float, default=40,
                   help="seconds before --budget at which the grid is stopped (default 40)")
    d.add_argument("--jobs", type=int, default=1, help="cells at once on the GPU (default 1)")
    d.add_argument("--stage_dir", default=str(STAGE), help="kept between calls (default %(default)s)")
    d.add_argument("--data_dir", help="use this folder's cifar10 files instead of the carried parts")
    d.add_argument("--methods", dest="columns", type=lambda s: s.split(","), default=list(COLUMNS),
                   help="columns (default: the queue)")
    d.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=list(SEEDS))
    d.add_argument("--epochs", type=int, help="override the protocol's 200 (tests)")
    d.add_argument("--allow_cpu", action="store_true", help="run where JAX sees no GPU (tests)")
    d.add_argument("--hide_tensorflow", action="store_true",
                   help="make TensorFlow unimportable in the runs, as on the device (tests)")
    d.add_argument("--python", default=sys.executable, help="interpreter of the grid and train.py")

    c = commands.add_parser("collect", parents=[common], help="here: unpack what a device call returned")
    c.add_argument("files_at", help="the folder the device's files came back to")

    commands.add_parser("report", parents=[common], help="here: write report.md again")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "device":
        return device(args)
    if args.command == "collect":
        return collect_command(args)
    print(write_report(_here(args.root), _here(args.work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Atomic file writes: a reader (or a killed run) never sees half a file."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)``, then renames the temporary file onto ``path``.

    The temporary file is in the same folder, so the rename is atomic.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends with the full file name: Keras checks suffixes such
    # as ".weights.h5" and ".keras".
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"-{path.name}")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    write_atomic(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")

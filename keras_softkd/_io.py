"""Atomic file writes: a reader (or a killed run) never sees half a file.

The file ends with the permissions a plain ``open(path, "w")`` would give it:
an existing file keeps its mode, a new one gets ``0o666`` less the umask (so a
group that can read the user's plain files can read results on a shared
cluster filesystem), not the ``0o600`` of a temporary file.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import stat
from typing import Any, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)``, then renames the temporary file onto ``path``.

    The temporary file is in the same folder, so the rename is atomic.

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomic(folder / "a.txt", lambda tmp: pathlib.Path(tmp).write_text("hi"))
        >>> (folder / "a.txt").read_text()
        'hi'
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends with the full file name: Keras checks suffixes such
    # as ".weights.h5" and ".keras". Created with 0o666 so the kernel applies the
    # umask, as it would for a plain write.
    tmp = str(path.parent / f".tmp-{secrets.token_hex(6)}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = _mode_of(path) or stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # the writer may have replaced the file with its own mode
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


def _mode_of(path: pathlib.Path) -> int | None:
    """The permission bits of an existing regular file (a plain write keeps them)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(status.st_mode) if stat.S_ISREG(status.st_mode) else None

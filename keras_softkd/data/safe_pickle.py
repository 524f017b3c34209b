"""A restricted unpickler for the original CIFAR python files.

The CIFAR "python version" files are pickles of a ``dict`` holding lists,
strings and a uint8 NumPy array. A pickle can name *any* importable callable
(``os.system``, ``subprocess.Popen``, ...) and call it while loading, so
``pickle.load`` on a downloaded file runs whatever its author wanted.
:func:`load` refuses every global except the handful that rebuild a NumPy
array (and ``_codecs.encode``, which Python 3 protocol-2 pickles use for
``bytes``); dicts, lists, tuples, strings, bytes and ints need no globals.
"""

from __future__ import annotations

import _codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allow-list."""


def _reconstruct(subtype, shape, dtype):
    """``numpy.core.multiarray._reconstruct`` for plain ``ndarray`` only."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"only numpy.ndarray may be rebuilt; got {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buffer, dtype, shape, order):
    """``numpy.core.numeric._frombuffer`` (protocol-5 pickles of arrays)."""
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape, order=order).copy()


def _encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it."""
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return _codecs.encode(text, encoding)


def _scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar`` for non-object dtypes (numpy scalars)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalars of dtype {dtype!r} are not allowed")
    if isinstance(data, str):
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype
_ALLOWED[("_codecs", "encode")] = _encode_latin1

#: The globals a CIFAR pickle may name, as ``"module.name"`` strings.
ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` allows only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: BinaryIO, *, name: str = "<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self._name = name

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._name}: refused to load the global '{module}.{name}': a CIFAR "
                "pickle holds only dicts, lists, strings, bytes, ints and numpy arrays "
                "(this file may be malicious; allowed globals: "
                f"{', '.join(ALLOWED_GLOBALS)})"
            ) from None

    def persistent_load(self, pid):  # noqa: D102
        raise UnsafePickleError(f"{self._name}: persistent ids are not allowed; got {pid!r}")


def loads(data: bytes, *, name: str = "<pickle>") -> Any:
    """Unpickles ``data`` with :class:`RestrictedUnpickler`.

    Python 2 strings are decoded as latin-1 (as torchvision does for CIFAR), so
    the original files give ``str`` keys and ``str`` file names.

    Example:
        >>> import pickle, numpy as np
        >>> from keras_softkd.data import safe_pickle
        >>> blob = pickle.dumps({"labels": [1, 2], "data": np.zeros((2, 3), np.uint8)}, 2)
        >>> safe_pickle.loads(blob)["data"].shape
        (2, 3)
        >>> import os
        >>> class Evil:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo pwned",))
        >>> safe_pickle.loads(pickle.dumps(Evil()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        keras_softkd.data.safe_pickle.UnsafePickleError: <pickle>: refused to load the global '...system'...
    """
    return RestrictedUnpickler(io.BytesIO(data), name=name, encoding="latin1").load()

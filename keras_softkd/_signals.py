"""Ctrl-C and SIGTERM as a clean end of a command: one line, and the status a shell gives it.

``train.py`` and the grid's runners stop alike on SIGINT (Ctrl-C) and on SIGTERM (``kill``,
a scheduler ending a job): no traceback, one line saying what was stopped and how to go
on, and the exit status 128 + the signal's number (130, 143), as a shell reports a command
that signal ended. Inside a :class:`StopSignals` block the first of these signals is noted
in ``signum`` and later ones are ignored (the line is printed once, though a terminal's
Ctrl-C reaches the grid and its ``train.py`` children, and the grid then sends them SIGTERM);
with ``raise_first=True`` the first is also raised as :class:`Interrupted` in the main thread,
where ``train.py``'s training stops (again every second until the caller says it was caught). The grid's runners only note it and stop at their next
poll: an exception raised inside a blocking call of a C extension (Ray's ``ray.wait``)
surfaces as ``SystemError``. A SIGINT ignored when the process started (a background job of
a shell without job control, ``nohup``) stays ignored. Standard library only.

Example:
    >>> with StopSignals() as stop:
    ...     pass  # a loop that polls ``stop.signum``
    >>> stop.signum is None
    True
    >>> exit_status(signal.SIGTERM), describe(signal.SIGINT)
    (143, 'SIGINT (Ctrl-C)')
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

__all__ = ["Interrupted", "StopSignals", "describe", "exit_status"]

#: The signals that stop a command cleanly.
STOP = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM raised in the main thread (a ``KeyboardInterrupt``, so that what
    cleans up after Ctrl-C cleans up after SIGTERM too); ``signum`` names the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(signum: int) -> int:
    """128 + ``signum``: what a shell reports for a command the signal ended (130, 143)."""
    return 128 + int(signum)


def describe(signum: int) -> str:
    """``"SIGINT (Ctrl-C)"``, ``"SIGTERM"``: the signal as a user knows it."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


class StopSignals:
    """Inside the block, SIGINT and SIGTERM are noted in ``signum`` (the first one; later
    ones are ignored) and, with ``raise_first``, the first raised as :class:`Interrupted`.

    A raised interrupt can be swallowed where it lands (Keras's ``pythonify_logs`` has a bare
    ``except:``, where the main thread waits for JAX's results every batch): with
    ``raise_first``, the signal is raised again every second until :meth:`caught` says it
    arrived. The previous handlers are put back on leaving. Outside the main thread (some
    notebook runners) nothing is installed and ``signum`` stays ``None``: Ctrl-C is then
    Python's ``KeyboardInterrupt``.
    """

    def __init__(self, raise_first: bool = False):
        self.raise_first = raise_first
        self.signum: Optional[int] = None
        self._previous: dict = {}
        self._caught = threading.Event()
        self._repeater: Optional[threading.Thread] = None

    def caught(self) -> None:
        """The :class:`Interrupted` reached its handler: raise no more."""
        self._caught.set()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = int(signum)
            if self.raise_first:
                self._repeater = threading.Thread(target=self._repeat, daemon=True,
                                                  name="keras_softkd_interrupt")
                self._repeater.start()
        if self.raise_first and not self._caught.is_set():
            raise Interrupted(self.signum)

    def _repeat(self) -> None:
        main = threading.main_thread().ident
        while not self._caught.wait(1.0):
            signal.pthread_kill(main, self.signum)  # to the main thread: it wakes from a wait

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP:
                if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._caught.set()
        if self._repeater is not None:
            self._repeater.join()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

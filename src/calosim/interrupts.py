"""SIGINT/SIGTERM handling shared by the command line and the atomic writers (stdlib only).

Kept free of numpy/h5py/torch so the CLI installs the handlers within milliseconds of start-up:
installed after those imports (0.2-1 s on a busy machine), an early Ctrl-C became click's
"Aborted!" (exit 1), and one sent to a background job, whose SIGINT the shell ignores until the
handler is installed, was lost and the run exited 0.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Interrupted", "install_interrupt_handlers", "remove_temp_files", "interrupted_signal", "exit_on_interrupt"]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (``signum``); temporary files have been removed."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


#: Temporary files being written by this process (removed on SIGINT/SIGTERM).
LIVE_TMP: set[Path] = set()
LIVE_LOCK = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
INTERRUPTED = threading.Event()
_last_signal = [int(signal.SIGINT)]


def interrupted_signal() -> int:
    """The number of the last SIGINT/SIGTERM received (SIGINT if none was)."""
    return _last_signal[0]


def remove_temp_files() -> list[Path]:
    """Remove every temporary output file of this process still open; return them."""
    with LIVE_LOCK:
        paths, _ = list(LIVE_TMP), LIVE_TMP.clear()
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass
    return paths


def install_interrupt_handlers() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` (after removing temporary outputs).

    The flag it sets is checked again when an output is finalised, so an interrupt that a
    library swallowed (e.g. inside a ``__del__``) still aborts the write (the CLI exits 130/143).
    Call from the main thread (the CLI does, first thing).
    """
    INTERRUPTED.clear()

    def handler(signum: int, frame: Any) -> None:
        _last_signal[0] = int(signum)
        INTERRUPTED.set()
        remove_temp_files()
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Start-up code (imports) under the handlers: an interrupt exits 130/143 with one line."""
    try:
        yield
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
        remove_temp_files()
        sys.stderr.write(f"Interrupted ({signal.Signals(signum).name}) while starting; nothing was done\n")
        sys.exit(128 + signum)

"""Progress on stderr for every long-running command: one implementation.

* On a terminal: a rich bar per task (description, bar, done/total, elapsed, remaining, and a
  free ``info`` field: losses, a rate).
* Not a terminal (a log file, a batch job), where a live bar would show nothing until the end:
  one plain line per task at most every ``every`` seconds and one when it completes, e.g.
  ``simulating gamma in calogan: 512/1024 showers, 301 s, 1.7 showers/s``.
* Disabled: nothing.

``Progress`` serves several tasks at once (``train``: a stage and its steps); ``progress_bar``
is the one-task form that yields an ``advance(k)`` callable and shows the rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "progress_bar"]


@dataclass
class _Task:
    description: str
    total: int | None
    completed: int
    info: str
    t0: float
    last_print: float = float("-inf")
    printed: int | None = None  # the count last printed (no repeated lines)


class Progress:
    """Tasks with a count each, shown as rich bars (terminal) or periodic lines (log file).

    ``unit`` names what is counted (``"steps"``, ``"showers"``); ``transient`` removes the bars
    when done (terminal only); ``tty`` overrides the terminal check (tests).
    """

    def __init__(self, enabled: bool = True, *, unit: str = "", every: float = 30.0, transient: bool = False,
                 tty: bool | None = None) -> None:
        self.enabled, self.unit, self.every = enabled, unit, float(every)
        self.tasks: list[_Task] = []
        self._rich: Any = None
        if enabled and (sys.stderr.isatty() if tty is None else tty):
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._rich = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                      console=Console(stderr=True), transient=transient, refresh_per_second=4)

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def add_task(self, description: str, total: int | None = None, completed: int = 0, info: str = "") -> int:
        """A new task; returns its id for :meth:`update`."""
        self.tasks.append(_Task(description, total, int(completed), info, time.perf_counter()))
        if self._rich is not None:
            self._rich.add_task(description, total=total, completed=completed, info=info)
        return len(self.tasks) - 1

    def update(self, task: int, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        """Advance task ``task`` by ``advance`` (or set it to ``completed``) and/or set its info."""
        if not self.enabled:
            return
        t = self.tasks[task]
        t.completed = (t.completed + int(advance)) if completed is None else int(completed)
        t.info = t.info if info is None else info
        if self._rich is not None:
            self._rich.update(self._rich.task_ids[task], completed=t.completed, info=t.info)
            return
        now = time.perf_counter()
        if t.printed != t.completed and (now - t.last_print >= self.every or t.completed == t.total):
            t.last_print, t.printed = now, t.completed
            unit = f" {self.unit}" if self.unit else ""
            line = f"{t.description}: {t.completed}/{t.total or '?'}{unit}, {now - t.t0:.0f} s"
            print(f"{line}, {t.info}" if t.info else line, file=sys.stderr, flush=True)

    def advance(self, task: int, n: int = 1) -> None:
        self.update(task, advance=n)

    def elapsed(self, task: int) -> float:
        return time.perf_counter() - self.tasks[task].t0

    def log(self, message: str) -> None:
        """A line of text (above the bars on a terminal); nothing when disabled."""
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(message, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, unit: str = "showers",
                 every: float = 30.0, tty: bool | None = None) -> Iterator[Callable[[int], None]]:
    """One task of ``total`` ``unit``; yields ``advance(k)``, which also shows the rate."""
    with Progress(enabled, unit=unit, every=every, tty=tty) as prog:
        if not enabled:
            yield lambda k: None
            return
        task = prog.add_task(description, total=total)

        def advance(k: int) -> None:
            dt = prog.elapsed(task)
            done = prog.tasks[task].completed + int(k)
            rate = done / dt if dt > 0 else 0.0
            prog.update(task, advance=k, info=f"{rate:,.3g} {unit}/s" if rate < 100 else f"{rate:,.0f} {unit}/s")

        yield advance

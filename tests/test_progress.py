"""Progress on stderr (``calosim.progress``): bars on a terminal, periodic lines in a log file."""

from __future__ import annotations

import pytest

from calosim.progress import Progress, progress_bar


def test_log_file_lines_come_at_most_every_interval_and_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    """No terminal: one line when a task first moves, one at completion, none repeated."""
    with Progress(unit="steps", every=3600.0, tty=False) as p:  # an interval no test reaches
        task = p.add_task("demo", total=5)
        for _ in range(5):
            p.update(task, advance=1, info="loss=0.1")
        p.update(task, advance=0)  # no new count: no repeated line
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("demo: 1/5 steps") and lines[0].endswith("loss=0.1")
    assert lines[1].startswith("demo: 5/5 steps")


def test_progress_bar_counts_and_shows_the_rate(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(1024, "simulating gamma", every=3600.0, tty=False) as advance:
        advance(512)
        advance(512)
    first, last = capsys.readouterr().err.strip().splitlines()
    assert first.startswith("simulating gamma: 512/1024 showers")
    assert last.startswith("simulating gamma: 1024/1024 showers") and last.endswith("showers/s")


def test_disabled_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(10, "quiet", enabled=False) as advance:
        advance(10)
    with Progress(False) as p:
        p.update(p.add_task("quiet", total=3), advance=3)
        p.log("not shown")
    assert capsys.readouterr().err == ""


def test_terminal_bars_track_the_same_counts() -> None:
    """On a terminal the rich bar holds the count and info the line printer would print."""
    with Progress(unit="steps", tty=True, transient=True) as p:
        task = p.add_task("train", total=4, info="")
        p.update(task, advance=3, info="loss=1")
        p.update(task, completed=4)
        rich_task = p._rich.tasks[0]
        assert (rich_task.completed, rich_task.total, rich_task.fields["info"]) == (4, 4, "loss=1")

"""Rich progress bars (samples/s or steps/s and an ETA per phase) that vanish under --quiet, outside a
terminal, and in the Python API unless asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Samples/s for a pass over a split, steps/s for a probe (rich's own speed estimate)."""

    def render(self, task: Task) -> Text:
        unit = "steps" if task.description.startswith("probe") else "samples"
        return Text(f"{task.speed:,.0f} {unit}/s" if task.speed else "", style="progress.data.speed")


class _NoProgress:
    def add_task(self, *a, **k) -> int:
        return 0

    def advance(self, *a, **k) -> None:
        pass

    def update(self, *a, **k) -> None:
        pass

    def remove_task(self, *a, **k) -> None:
        pass


@contextlib.contextmanager
def progress(enabled: bool, console: Console | None = None) -> Iterator[Progress | _NoProgress]:
    """A live progress display on stderr, or a silent stand-in."""
    if not enabled:
        yield _NoProgress()
        return
    console = console or Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        yield bar

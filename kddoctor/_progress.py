"""Rich progress bars that vanish under --quiet (and in the Python API unless asked for)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


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
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with bar:
        yield bar

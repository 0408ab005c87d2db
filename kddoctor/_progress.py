"""Rich progress bars (samples/s or steps/s and an ETA per phase) in a terminal; outside one (a log file,
CI), one line per phase as it starts and ends; nothing under --quiet, nor in the Python API unless asked
for."""

from __future__ import annotations

import contextlib
import time
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
        unit = task.fields.get("unit") or _unit(task.description)
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


class LineProgress:
    """Progress for a log: a line when a pass over a split starts, and one when a pass, a probe of a
    second or more, or a check ends (its count, rate and seconds), so a redirected run is never silent
    for minutes. Same calls as rich's Progress."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tasks: dict[int, dict] = {}
        self.began = time.perf_counter()

    def _say(self, words: str) -> None:
        elapsed = int(time.perf_counter() - self.began)
        self.console.print(f"[{elapsed // 60}:{elapsed % 60:02d}] {words}", markup=False, highlight=False)

    def add_task(self, description: str, total: float | None = None, unit: str | None = None, **_) -> int:
        tid = len(self.tasks)
        unit = unit or _unit(description)
        self.tasks[tid] = {"description": description, "unit": unit, "done": 0, "t0": time.perf_counter()}
        if unit != "steps" and description != "running checks":  # a pass over a split: minutes, maybe
            size = f" ({total:,.0f} {unit})" if total else ""
            self._say(f"{description}{size} ...")
        return tid

    def advance(self, tid: int, n: float = 1) -> None:
        self.tasks[tid]["done"] += n

    def update(self, tid: int, description: str | None = None, **_) -> None:
        task = self.tasks[tid]
        if description is not None and description != task["description"]:
            self._end(task)
            task.update(description=description, t0=time.perf_counter())

    def remove_task(self, tid: int) -> None:
        self._end(self.tasks.pop(tid))

    def _end(self, task: dict) -> None:
        seconds = time.perf_counter() - task["t0"]
        what = task["description"]
        if what == "running checks":  # the checks' task, before its first check
            return
        if what.startswith("check "):
            self._say(f"{what}: done in {seconds:.1f} s")
            return
        if what.startswith("probe") and seconds < 1.0:  # a sweep's many short fits: their check says it
            return
        count = ""
        if task["done"]:  # a loader of unknown length counts too
            count = f" {task['done']:,.0f} {task['unit']}, {task['done'] / max(seconds, 1e-9):,.0f}/s,"
        self._say(f"{what}:{count} done in {seconds:.1f} s")


def _unit(description: str) -> str:
    if description == "running checks":
        return "checks"
    return "steps" if description.startswith("probe") else "samples"


@contextlib.contextmanager
def progress(
    enabled: bool | str, console: Console | None = None
) -> Iterator[Progress | _NoProgress | LineProgress]:
    """A live progress display on stderr (True), one line per phase ("lines": for logs), or a silent
    stand-in (False)."""
    if not enabled:
        yield _NoProgress()
        return
    console = console or Console(stderr=True)
    if enabled == "lines":
        yield LineProgress(console)
        return
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


def progress_mode(quiet: bool) -> bool | str:
    """What the CLI shows: nothing under --quiet, bars in a terminal, one line per phase otherwise."""
    import sys

    return False if quiet else True if sys.stderr.isatty() else "lines"

"""Rich progress for the pipeline's stages: counts, rate and time left, on stderr so stdout stays clean."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def stage_progress(name: str, *, total: int, done: int = 0) -> Iterator[Callable[[int, str], None]]:
    """Yields advance(n, note): one bar per stage, starting from what an earlier run already did."""
    columns = [TextColumn(f"[bold]{name:<9}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(name, total=total, completed=done, note="", rate="")
        fresh = [0]

        def advance(n: int = 1, note: str = "") -> None:
            fresh[0] += n
            elapsed = progress.tasks[0].elapsed or 0
            rate = f"{fresh[0] / elapsed:.2f}/s" if elapsed > 0 else ""
            progress.update(task, advance=n, note=note, rate=rate)

        yield advance

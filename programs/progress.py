"""Progress a person can see, for every long stage (model pull, teach, sampling, judging, training, evaluation).

In a terminal: live rich bars on stderr (counts, rate, time left), as always. Anywhere else (a CI log, `nohup`, a
notebook running the command): rich would print each bar only when it ends, so plain lines go to stderr instead,
one when a stage starts, one every minute with its counts, one when it ends:

    12:03:04 teach: start, 420 inputs
    12:05:04 teach: 120/420 inputs, 2m 0s, 1.00/s, eta 5m 0s
    12:10:04 teach: done, 420/420 inputs in 7m 0s

`log_to(path)` (the pipeline opens `<out>/progress.log`) writes the same lines to a file, terminal or not.
CRITIC_DISTILL_PROGRESS_INTERVAL sets the seconds between lines (default 60). stdout stays clean throughout.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from store.errors import UserError

console = Console(stderr=True)
INTERVAL_ENV = "CRITIC_DISTILL_PROGRESS_INTERVAL"

_logs: list[IO[str]] = []  # open log files that get every line
_lock = threading.Lock()
_live: dict = {"progress": None, "users": 0}  # one rich display shared by nested stages (a pull inside a stage)


class ProgressError(UserError):
    """A bad CRITIC_DISTILL_PROGRESS_INTERVAL (one line)."""


def interval() -> float:
    """Seconds between progress lines when they are lines (CRITIC_DISTILL_PROGRESS_INTERVAL, default 60)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return 60.0
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ProgressError(f"{INTERVAL_ENV}={raw!r}: give the seconds between progress lines as a positive number")
    return value


def live_bars() -> bool:
    """True when stderr is a terminal (rich bars); False for plain lines."""
    return console.is_terminal


@contextmanager
def log_to(path: str | Path) -> Iterator[Path]:
    """Append every progress line to `path` while the block runs (the pipeline's log file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as f:
        with _lock:
            _logs.append(f)
        try:
            yield path
        finally:
            with _lock:
                _logs.remove(f)


def emit(line: str) -> None:
    """One progress line, time-stamped: to stderr when there are no live bars, and to every open log file."""
    stamped = f"{time.strftime('%H:%M:%S')} {line}"
    with _lock:
        if not live_bars():
            sys.stderr.write(stamped + "\n")
            sys.stderr.flush()
        for f in _logs:
            f.write(f"{time.strftime('%Y-%m-%d')} {stamped}\n")


def duration(seconds: float) -> str:
    """2h 3m, 2m 0s, 45s, 0.4s."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class StageProgress:
    """One stage's progress: a bar in a terminal, lines elsewhere and in log files.

    `with stage_progress("teach", total=420, unit="inputs") as advance: advance(1)`; `update(completed=…, note=…)`
    for stages that know where they are rather than how far they moved (training steps); `start()` / `stop()` for
    callers that are not a block (a Trainer callback).
    """

    def __init__(self, name: str, *, total: int | None, done: int = 0, unit: str = "", bytes: bool = False,
                 quiet: bool = False):
        self.name, self.total, self.completed, self.unit, self.bytes = name, total, done, unit, bytes
        self.earlier = done  # done by an earlier run: not counted in the rate
        self.quiet = quiet
        self.note = ""
        self._started = 0.0
        self._task = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running = False

    # -- what a line says --

    def counts(self) -> str:
        if self.bytes:
            return f"{_size(self.completed)}/{_size(self.total)}" if self.total else _size(self.completed)
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.completed}/{self.total}{unit}" if self.total is not None else f"{self.completed}{unit}"

    def _rate(self, elapsed: float) -> float:
        return (self.completed - self.earlier) / elapsed if elapsed > 0 else 0.0

    def _rate_text(self, elapsed: float) -> str:
        rate = self._rate(elapsed)
        if rate <= 0:
            return ""
        return f"{_size(rate)}/s" if self.bytes else f"{rate:.2f}/s"

    def line(self) -> str:
        """`teach: 120/420 inputs, 2m 0s, 1.00/s, eta 5m 0s` (and the note, if any)."""
        elapsed = time.monotonic() - self._started
        parts = [f"{self.name}: {self.counts()}", duration(elapsed)]
        if rate := self._rate_text(elapsed):
            parts.append(rate)
        if self.total and (r := self._rate(elapsed)) > 0 and self.completed < self.total:
            parts.append(f"eta {duration((self.total - self.completed) / r)}")
        return ", ".join(parts) + (f" · {self.note}" if self.note else "")

    # -- lifecycle --

    def start(self) -> StageProgress:
        if self.quiet or self._running:
            return self
        self._every = interval()  # a bad setting fails here, in the caller, not in the ticker thread
        self._running = True
        self._started = time.monotonic()
        earlier = f" ({self.earlier} done before)" if self.earlier and not self.bytes else ""
        total = (_size(self.total) if self.bytes else f"{self.total}{' ' + self.unit if self.unit else ''}") \
            if self.total is not None else "?"
        emit(f"{self.name}: start, {total}{earlier}")
        if live_bars():
            self._task = _bar_task(self)
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name=f"progress-{self.name}", daemon=True)
        self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stopping.wait(self._every):
            emit(self.line())

    def __call__(self, n: int = 1, note: str = "") -> None:
        """Advance by n (the stage's unit), with an optional note (e.g. the latest loss)."""
        self.update(completed=self.completed + n, note=note)

    def update(self, *, completed: int | None = None, total: int | None = None, note: str | None = None,
               name: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if name is not None:
            self.name = name
        if self._task is not None:
            _bar_update(self)

    def stop(self, *, ok: bool = True) -> None:
        if not self._running:
            return
        self._running = False
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self._task is not None:
            _bar_update(self)
            _bar_done(self._task)
            self._task = None
        took = duration(time.monotonic() - self._started)
        note = f" · {self.note}" if self.note else ""
        emit(f"{self.name}: done, {self.counts()} in {took}{note}" if ok
             else f"{self.name}: stopped at {self.counts()} after {took}{note}")

    def __enter__(self) -> StageProgress:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(ok=exc_type is None)


def stage_progress(name: str, *, total: int | None, done: int = 0, unit: str = "", bytes: bool = False,
                   quiet: bool = False) -> StageProgress:
    """A stage's progress as a block that yields `advance(n, note)`, starting from what an earlier run already did."""
    return StageProgress(name, total=total, done=done, unit=unit, bytes=bytes, quiet=quiet)


# -- the rich bars (terminal only) ------------------------------------------------------------------------------------


def _bar_task(stage: StageProgress):
    with _lock:
        if _live["progress"] is None:
            columns = [TextColumn("[bold]{task.description:<9}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                       TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
            _live["progress"] = Progress(*columns, console=console, transient=False)
            _live["progress"].start()
        _live["users"] += 1
        progress = _live["progress"]
    return progress.add_task(stage.name, total=stage.total, completed=stage.completed, counts=stage.counts(),
                             rate="", note="")


def _bar_update(stage: StageProgress) -> None:
    progress = _live["progress"]
    if progress is None:
        return
    elapsed = time.monotonic() - stage._started
    progress.update(stage._task, completed=stage.completed, total=stage.total, description=stage.name,
                    counts=stage.counts(), rate=stage._rate_text(elapsed), note=stage.note)


def _bar_done(task) -> None:
    with _lock:
        progress = _live["progress"]
        if progress is None:
            return
        progress.stop_task(task)
        _live["users"] -= 1
        if _live["users"] <= 0:
            progress.stop()
            _live["progress"], _live["users"] = None, 0

"""The live progress line of long commands (`m3w build`, `m3w export`): one line on stderr, rewritten
in place about twice a second, cleared before the command prints its result. Only on a terminal:
piped or redirected, the command prints exactly what it prints without it.

Other writes to stderr while the line shows (a warning, a log record) first clear the line, so they
start at column 0; the line comes back at the next refresh.
"""
from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Mapping, Optional, TextIO

REFRESH_S = 0.5
RATE_WINDOW_S = 10.0  # rates are over the last seconds, so a slow start does not hide the current speed
CLEAR = "\r\033[K"


def wanted(no_progress: bool = False, stream: Optional[TextIO] = None) -> bool:
    """Whether to show a progress line: stderr is a terminal and the user did not say --no-progress."""
    stream = stream or sys.stderr
    return not no_progress and hasattr(stream, "isatty") and stream.isatty()


def duration(seconds: float) -> str:
    """0:07, 3:25, 1:02:03."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _ClearingStream:
    """stderr while the line shows: anything else written clears the line first."""

    def __init__(self, line: "ProgressLine", stream: TextIO) -> None:
        self._line, self._stream = line, stream

    def write(self, text: str) -> int:
        with self._line.lock:
            self._line.clear_locked()
            return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ProgressLine:
    """`with ProgressLine(render):` shows `render(elapsed seconds)` on stderr every REFRESH_S while the block
    runs (and once more at its end, with the final counts), then clears it. Does nothing when not `enabled`."""

    def __init__(self, render: Callable[[float], str], enabled: bool = True, stream: Optional[TextIO] = None) -> None:
        self.render, self.enabled = render, enabled
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.shown = False
        self._stop = threading.Event()
        self._start = time.monotonic()

    def clear_locked(self) -> None:
        if self.shown:
            self.stream.write(CLEAR)
            self.shown = False

    def draw(self) -> None:
        text = self.render(time.monotonic() - self._start)
        width = shutil.get_terminal_size((100, 24)).columns - 1  # a wrapped line could not be rewritten in place
        with self.lock:
            self.stream.write("\r" + text[:width] + "\033[K")
            self.stream.flush()
            self.shown = True

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self.draw()

    def __enter__(self) -> "ProgressLine":
        if not self.enabled:
            return self
        self._start = time.monotonic()
        self._wrapped = _ClearingStream(self, self.stream)
        self._saved = [sys.stderr]
        sys.stderr = self._wrapped  # type: ignore[assignment]
        self._handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is self.stream]
        for handler in self._handlers:
            handler.setStream(self._wrapped)  # type: ignore[arg-type]
        self.draw()
        self._thread = threading.Thread(target=self._loop, name="m3w-progress-line", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join()
        if kind is None:
            self.draw()  # the final counts, for anyone watching the terminal's raw output
        sys.stderr = self._saved[0]
        for handler in self._handlers:
            handler.setStream(self.stream)
        with self.lock:
            self.clear_locked()
            self.stream.flush()


def _rate(history: deque, now: float, value: int) -> float:
    history.append((now, value))
    while len(history) > 2 and now - history[0][0] > RATE_WINDOW_S:
        history.popleft()
    t0, v0 = history[0]
    return (value - v0) / (now - t0) if now > t0 else 0.0


def _eta(elapsed: float, done: int, total: int) -> str:
    if total and done >= total:
        return "finishing"
    if not done:
        return "ETA --"
    return f"ETA {duration(elapsed * (total - done) / done)}"


class BuildStatus:
    """The build's line from the counting steps' live totals (beam_jobs.progress): WARC files read of all,
    records and pages with their current rates, documents assembled, elapsed time and an ETA from the files."""

    def __init__(self, totals: Callable[[], Mapping[tuple[str, str], int]], files_total: int, read_step: str) -> None:
        self.totals, self.files_total, self.read_step = totals, files_total, read_step
        self.records: deque = deque()
        self.pages: deque = deque()

    def __call__(self, elapsed: float) -> str:
        t = self.totals()
        files = t.get(("@step", self.read_step), 0)
        records, pages, docs = t.get(("records", "in"), 0), t.get(("pages", "in"), 0), t.get(("documents", "in"), 0)
        if not (files or records):
            return f"files 0/{self.files_total} | starting the pipeline | {duration(elapsed)} elapsed"
        return (
            f"files {files}/{self.files_total} | {records:,} records {_rate(self.records, elapsed, records):,.0f}/s"
            f" | {pages:,} pages {_rate(self.pages, elapsed, pages):,.0f}/s | {docs:,} documents"
            f" | {duration(elapsed)} elapsed | {_eta(elapsed, files, self.files_total)}"
        )


class ExportStatus:
    """The export's line: shards and documents done (fed by the exporter's progress callback)."""

    def __init__(self, shards_total: int, documents_total: Optional[int]) -> None:
        self.shards_total, self.documents_total = shards_total, documents_total
        self.shards = self.documents = 0
        self.history: deque = deque()

    def update(self, documents: int, shards: int) -> None:
        self.documents += documents
        self.shards += shards

    def __call__(self, elapsed: float) -> str:
        of = f"/{self.documents_total:,}" if self.documents_total is not None else ""
        rate = _rate(self.history, elapsed, self.documents)
        done, total = (self.documents, self.documents_total) if self.documents_total else (self.shards, self.shards_total)
        return (
            f"shards {self.shards}/{self.shards_total} | {self.documents:,}{of} documents {rate:,.0f}/s"
            f" | {duration(elapsed)} elapsed | {_eta(elapsed, done, total)}"
        )

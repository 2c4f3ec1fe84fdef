"""Extraction under a time budget per page: no page can hold a worker for minutes.

lxml and trafilatura run in C and in deep Python recursion where no signal or thread can stop
them, so the only hard bound is a process. `TimedExtractor` keeps one child process per caller
(started once, warm), sends it each page over a pipe and waits at most `timeout_s`; a page over
budget gets `ExtractTimeout` and the child is killed and restarted. The child runs
`python -m m3w_pipeline.extract.timed`, so it depends on nothing of the caller's `__main__`.
"""
from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO, Optional

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.core.nodes import ExtractedPage

_HEADER = struct.Struct("<Q")
STARTUP_S = 120.0  # importing lxml and trafilatura in the child: not charged to any page


class ExtractTimeout(Exception):
    """The page took longer than the budget; the child that ran it is gone."""


class ExtractCrashed(Exception):
    """The child died on the page (a crash in C code, the memory limit): counted, never raised further."""


def _write_message(stream: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: Optional[float]) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ExtractTimeout
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ExtractCrashed("extraction process ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int, deadline: Optional[float]) -> Any:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


class TimedExtractor:
    """`extract(html, url)` like `extract_page`, in a warm child process, within `config.timeout_s`."""

    def __init__(self, config: ExtractConfig = ExtractConfig()):
        self.config = config
        self._child: Optional[subprocess.Popen] = None
        self.restarts = 0

    def _start(self) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-m", "m3w_pipeline.extract.timed"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        _write_message(child.stdin, self.config)
        try:
            _read_message(child.stdout.fileno(), time.monotonic() + STARTUP_S)  # "ready": imports done
        except (ExtractTimeout, ExtractCrashed):
            child.kill()
            child.wait()
            raise ExtractCrashed("the extraction process did not start") from None
        return child

    def extract(self, html: str | bytes, url: str) -> ExtractedPage:
        if self.config.timeout_s <= 0:
            from m3w_pipeline.extract.page import extract_page

            return extract_page(html, url, self.config)
        if self._child is None or self._child.poll() is not None:
            self._child = self._start()
        try:
            _write_message(self._child.stdin, (html, url))
            ok, value = _read_message(self._child.stdout.fileno(), time.monotonic() + self.config.timeout_s)
        except (ExtractTimeout, ExtractCrashed, BrokenPipeError):
            self._kill()
            raise
        if not ok:
            raise ExtractCrashed(value)
        return value

    def _kill(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None
            self.restarts += 1

    def close(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.stdin.close()
            self._child.wait()
        self._child = None

    def __enter__(self) -> "TimedExtractor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _serve() -> None:
    """The child: read (html, url) pairs, answer (True, page) or (False, error), until stdin closes."""
    from m3w_pipeline.extract.page import extract_page

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    config = _read_message(inp.fileno(), None)
    extract_page("<html><body><article><p>Warm up.</p></article></body></html>", "https://warm.example/", config)  # lazy inits
    _write_message(out, "ready")
    while True:
        try:
            html, url = _read_message(inp.fileno(), None)
        except ExtractCrashed:  # the parent closed the pipe
            return
        try:
            answer = (True, extract_page(html, url, config))
        except Exception as err:  # noqa: BLE001 - an extractor failure is the parent's counted drop
            answer = (False, f"{type(err).__name__}: {err}"[:300])
        _write_message(out, answer)


if __name__ == "__main__":
    _serve()

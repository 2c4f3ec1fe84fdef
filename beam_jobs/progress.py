"""Live counts of a running build, for the CLI's progress line.

Beam's metrics reach the caller only when the job ends (the embedded runner) or not reliably at
all, so the counting base (beam_jobs/counting.py) also reports here: each element's tally while the
step works on it (one WARC file yields its pages for minutes) and, once it is done, the tally summed
into this process's totals, plus one more element done for that step. This is display only: the
manifest never reads it, and without a reader nothing is kept.

Where the counts go:
- the reading process (the CLI; the embedded runner runs the steps in it) sums them in memory;
- any other process (`--direct_running_mode multi_processing`, a local Dask cluster) finds the folder
  named by M3W_PROGRESS_DIR in its environment and rewrites its own small JSON file there every
  FLUSH_S seconds from a daemon thread; the reader sums the files. Workers on other machines do not
  have the variable, so they keep nothing.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Optional

from m3w_pipeline.core.accounting import Tally

ENV = "M3W_PROGRESS_DIR"
STEP = "@step"  # (STEP, step name) -> elements that step finished
FLUSH_S = 0.5
Totals = dict[tuple[str, str], int]


class _Sink:
    """One process's counts: finished elements' tallies summed, and the tallies still being filled."""

    def __init__(self, folder: Optional[str]) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.done: Totals = {}
        self.live: dict[int, Tally] = {}
        if folder:  # not the reader: publish to a file, every FLUSH_S and when the process ends
            path = os.path.join(folder, f"{self.pid}.json")
            atexit.register(self._write, path)
            threading.Thread(target=self._publish, args=(path,), name="m3w-progress", daemon=True).start()

    def totals(self) -> Totals:
        with self.lock:
            totals = dict(self.done)
            live = list(self.live.values())
        for tally in live:
            for key, n in dict(tally.counts).items():  # a C-level copy: safe while the step thread adds to it
                totals[key] = totals.get(key, 0) + n
        return totals

    def _publish(self, path: str) -> None:
        while self._write(path):
            time.sleep(FLUSH_S)

    def _write(self, path: str) -> bool:
        data = json.dumps([[s, o, n] for (s, o), n in self.totals().items()])
        tmp = f"{path}.{threading.get_ident()}.tmp"  # the thread's and the exit's writes never share a file
        try:
            with open(tmp, "w") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError:  # the reader removed the folder: the build is over
            return False
        return True


_sink: Optional[_Sink] = None
_reader_pid: Optional[int] = None
_off_pid: Optional[int] = None  # a process found to have no reader: skip the environment lookup next time


def _current() -> Optional[_Sink]:
    global _sink, _off_pid
    pid = os.getpid()
    if _sink is not None and _sink.pid == pid:
        return _sink
    if _off_pid == pid:
        return None
    folder = os.environ.get(ENV)
    if pid != _reader_pid and not folder:
        _off_pid = pid
        return None
    _sink = _Sink(None if pid == _reader_pid else folder)
    return _sink


class element:
    """`with element(step) as tally:` a fresh Tally for one element of `step`, visible to the reader as it fills."""

    __slots__ = ("step", "tally", "sink")

    def __init__(self, step: str) -> None:
        self.step = step

    def __enter__(self) -> Tally:
        self.tally = Tally()
        self.sink = _current()
        if self.sink is not None:
            with self.sink.lock:
                self.sink.live[id(self.tally)] = self.tally
        return self.tally

    def __exit__(self, kind: Any, *_: Any) -> None:
        sink = self.sink
        if sink is None:
            return
        with sink.lock:
            sink.live.pop(id(self.tally), None)
            if kind is None:
                for key, n in self.tally.counts.items():
                    sink.done[key] = sink.done.get(key, 0) + n
                key = (STEP, self.step)
                sink.done[key] = sink.done.get(key, 0) + 1


class Reader:
    """`with Reader() as reader:` while the block runs, steps in this process and in processes started
    from it report; `reader.totals()` sums them. The folder is removed afterwards."""

    def __enter__(self) -> "Reader":
        global _reader_pid, _sink, _off_pid
        self.folder = tempfile.mkdtemp(prefix="m3w-progress-")
        self.old_env = os.environ.get(ENV)
        os.environ[ENV] = self.folder
        _reader_pid, _sink, _off_pid = os.getpid(), None, None
        return self

    def totals(self) -> Totals:
        sink = _current()
        totals = sink.totals() if sink is not None else {}
        for name in os.listdir(self.folder):
            if not name.endswith(".json") or name == f"{os.getpid()}.json":
                continue
            try:
                with open(os.path.join(self.folder, name)) as f:
                    rows = json.load(f)
            except (OSError, ValueError):
                continue
            for stage, outcome, n in rows:
                totals[(stage, outcome)] = totals.get((stage, outcome), 0) + n
        return totals

    def __exit__(self, *_: Any) -> None:
        global _reader_pid, _sink, _off_pid
        if self.old_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.old_env
        _reader_pid, _sink, _off_pid = None, None, None
        shutil.rmtree(self.folder, ignore_errors=True)

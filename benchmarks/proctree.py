"""Memory and CPU of a process and all its descendants, sampled from outside (psutil, installed with m3w[dask]).

A build on the embedded runner is one process; with multi-processing or Dask it is a tree whose
workers come and go. The kernel's rusage of a reaped tree gives total CPU but only the largest
single RSS, so the benches sample the tree instead: each process's peak RSS and last-seen CPU
time (misses at most one interval of each), and the peak of the tree's summed RSS.
"""
from __future__ import annotations

import threading
import time

import psutil


class ProcessTreeSampler(threading.Thread):
    """Samples process `pid` and its descendants every `every_s` seconds from start() until stop()."""

    def __init__(self, pid: int, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss: dict[int, int] = {}  # pid -> its largest RSS seen, bytes
        self.cpu_s: dict[int, float] = {}  # pid -> its last seen user + system CPU seconds
        self.peak_total_rss = 0  # the largest sum of the tree's RSS at one sample, bytes
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                except psutil.Error:  # gone between listing and reading
                    continue
                total += rss
                self.cpu_s[proc.pid] = times.user + times.system
                self.peak_rss[proc.pid] = max(rss, self.peak_rss.get(proc.pid, 0))
            self.peak_total_rss = max(self.peak_total_rss, total)
            time.sleep(self.every_s)

    def stop(self) -> None:
        """Stop sampling and wait for the last sample to finish."""
        self._done.set()
        self.join()

"""A Dask cluster for one run, and the flags that point the job at it.

`--dask-workers N` starts a `distributed.LocalCluster` of N single-threaded worker processes
(talking TCP to their scheduler, as a real cluster does), runs the job against it with Beam's
`--dask_client_address`, and closes it after. Without it, `--dask_client_address tcp://HOST:PORT`
names a scheduler that is already running; its workers must be able to import m3w.
Nothing here imports Beam or Dask until a Dask run needs them.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional, Sequence

# `--runner DaskRunner` (or Beam's own class path, whose translation loses tagged outputs and
# sinks, see beam_jobs/dask_runner.py) runs on our subclass of Beam's DaskRunner.
DASK_RUNNER = "beam_jobs.dask_runner.DaskRunner"
_DASK_RUNNER_NAMES = ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner", DASK_RUNNER)
INSTALL_HINT = "the Dask runner needs dask and distributed: pip install 'm3w[dask]'"


def is_dask_runner(runner: Optional[str]) -> bool:
    return runner in _DASK_RUNNER_NAMES


def dask_missing() -> Optional[str]:
    """Why the Dask runner cannot run here (its packages are not installed), or None."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as err:
        return f"{INSTALL_HINT} ({err})"
    return None


def wants_dask(runner: Optional[str], beam_args: Sequence[str], workers: Optional[int]) -> bool:
    """Whether this run goes to Dask: --dask-workers, --runner DaskRunner, or any --dask_* flag."""
    return workers is not None or is_dask_runner(runner) or any(a.startswith("--dask_") for a in beam_args)


def runner_flag(beam_args: Sequence[str]) -> Optional[str]:
    """The value of --runner in Beam's flags, in either spelling (--runner X, --runner=X)."""
    args = list(beam_args)
    for i, arg in enumerate(args):
        if arg == "--runner" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--runner="):
            return arg.partition("=")[2]
    return None


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[str]:
    """A LocalCluster of `workers` processes with one thread each, for the duration of the block; yields its address."""
    from distributed import LocalCluster

    # Start-up and shutdown chatter belongs to -v, like Beam's; ":0": no fixed port to collide on.
    level = logging.INFO if logging.getLogger().getEffectiveLevel() <= logging.INFO else logging.WARNING
    quiet_workers = {"preload": [__name__]} if level > logging.INFO else {}
    scheduler_log = logging.getLogger("distributed")  # the scheduler runs in this process
    old_level = scheduler_log.level
    scheduler_log.setLevel(level)
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=level,
                          **quiet_workers) as cluster:
            yield cluster.scheduler_address
    finally:
        scheduler_log.setLevel(old_level)


def _not_beams_import_warning(record: logging.LogRecord) -> bool:
    return "apitools not found" not in record.getMessage()


def dask_setup(worker: object) -> None:
    """Run in each worker process of a cluster started without -v (its preload): Beam's import-time
    warning, printed by every process that imports Beam, stays as quiet there as in the CLI."""
    logging.getLogger().addFilter(_not_beams_import_warning)

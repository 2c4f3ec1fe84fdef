"""The worker process of `--direct_running_mode multi_processing` when the CLI is quiet (no -v).

Beam starts each worker as `python -m apache_beam.runners.worker.sdk_worker_main`; its import-time
apitools warning makes Python set up logging to stderr, and the harness then logs at INFO, so every
worker printed a screen of start-up and shutdown lines. This entry point is the same harness with a
stderr handler installed first that keeps what the CLI keeps without -v (`quiet_beam`).
"""
from __future__ import annotations

import logging
import sys


def quiet_beam(record: logging.LogRecord) -> bool:
    """The CLI's rule without -v: Beam's import-time and per-stage chatter is dropped; our own warnings and every error are kept."""
    if record.levelno >= logging.ERROR:
        return True
    if "apitools not found" in record.getMessage():  # printed by `import apache_beam` in every process
        return False
    return not record.name.startswith("apache_beam")


def main() -> None:
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(quiet_beam)
    logging.getLogger().addHandler(handler)  # before Beam's import: its warning then finds a handler and sets up no other
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()

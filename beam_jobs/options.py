"""Which command-line flags are Beam pipeline options, so a typo is an error instead of a no-op."""
from __future__ import annotations

import argparse
import contextlib
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions


def _option_classes(cls: type = PipelineOptions) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_option_classes(sub))
    return found


def unknown_pipeline_flags(args: Sequence[str]) -> list[str]:
    """The flags in `args` that no registered Beam options class declares (what Beam would silently drop).

    Beam declares its options per class (standard, Google Cloud, portable, worker, ...); a
    runner's own options class registers on import, so import the runner before asking.
    """
    if any(a.startswith("--dask_") or "DaskRunner" in a for a in args):
        with contextlib.suppress(ImportError):  # without dask the flags stay unknown, as they are
            import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions
    # "resolve": a flag declared by two classes (it happens across runners) is one flag, not an error.
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, conflict_handler="resolve")
    for cls in dict.fromkeys(_option_classes()):
        if "_add_argparse_args" in vars(cls):
            cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(args))
    return [a for a in unknown if a.startswith("-")]

"""Accounting events from DoFns: a Beam counter now, and an element the manifest sums later.

Metrics alone are not enough: not every runner reports them back reliably, and the
manifest must reconcile exactly on all of them.
"""
from __future__ import annotations

from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from m3w_pipeline.core.accounting import Count

COUNTS = "counts"  # the output tag every DoFn emits its Count events under


def count(stage: str, outcome: str, n: int = 1) -> TaggedOutput:
    """One accounting event for (stage, outcome), as a Beam metric and as a tagged element."""
    Metrics.counter(f"m3w.{stage}", outcome).inc(n)
    return TaggedOutput(COUNTS, Count(stage, outcome, n))

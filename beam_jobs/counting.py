"""The build's bookkeeping, owned by the wiring: steps record outcomes, this module counts them.

A library step records what became of its input in an `accounting.Tally` (outcomes and
rejects; `in` follows). `CountingFn` (for DoFns) and `counting` (for FlatMap functions) give
each element a fresh tally and, after the step's outputs, emit it: every (stage, outcome) as
a Beam metric and as a `Count` element under the COUNTS tag, every reject under REJECTS.
Metrics alone are not enough: not every runner reports them back reliably, and the manifest
must reconcile exactly on all of them, so the build sums the `Count` elements itself.

`CountedSteps` applies steps and keeps their COUNTS outputs, so a branch of the build lists
its stages and hands on all their counts at once. `SampleRejects` and `WriteRejectsFn` turn
the rejects into the bounded, sorted rejects.jsonl beside the shards.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable, Iterator, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from beam_jobs import fsio, progress
from m3w_pipeline.core.accounting import Count, Tally

COUNTS = "counts"  # the output tag every counting step emits its Count events under
REJECTS = "rejects"  # the output tag of rejected documents and nodes (accounting.Reject)
REJECTS_NAME = "rejects.jsonl"


def count(stage: str, outcome: str, n: int = 1) -> TaggedOutput:
    """One accounting event for (stage, outcome), as a Beam metric and as a tagged element."""
    Metrics.counter(f"m3w.{stage}", outcome).inc(n)
    return TaggedOutput(COUNTS, Count(stage, outcome, n))


def emit(tally: Tally) -> Iterator[TaggedOutput]:
    """A step's tally as counts (metrics + COUNTS elements) and rejects (REJECTS elements)."""
    for (stage, outcome), n in sorted(tally.counts.items()):
        yield count(stage, outcome, n)
    for reject in tally.rejects:
        yield TaggedOutput(REJECTS, reject)


class CountingFn(beam.DoFn):
    """Base of the build's DoFns, like datatrove's PipelineStep: subclasses implement
    `step(element, tally, *side_inputs)`, yielding outputs and recording outcomes in the tally;
    the base emits the tally once the element is done."""

    def step(self, element: Any, tally: Tally, *side_inputs: Any) -> Iterable[Any]:
        raise NotImplementedError

    def process(self, element, *side_inputs):  # no annotations: Beam would type-check the side inputs against them
        with progress.element(type(self).__name__) as tally:  # the CLI's progress line reads the tally as it fills
            yield from self.step(element, tally, *side_inputs)
        yield from emit(tally)


def counting(step: Callable[..., Iterable[Any]]) -> Callable[..., Iterator[Any]]:
    """`step(element, tally, *args)` -> a FlatMap function `(element, *args)` that emits the tally after the outputs."""

    def run(element, *args):  # no annotations: Beam would type-check the extra arguments against them
        with progress.element(step.__name__) as tally:
            yield from step(element, tally, *args)
        yield from emit(tally)

    run.__name__, run.__qualname__, run.__module__, run.__doc__ = step.__name__, step.__qualname__, step.__module__, step.__doc__
    return run


Step = Union[beam.DoFn, Callable[..., Iterable[Any]]]


class CountedSteps:
    """Applies counting steps (a CountingFn or a `counting` function) and keeps each one's COUNTS."""

    def __init__(self) -> None:
        self.counts: list[beam.PCollection] = []

    def __call__(self, pcoll: Any, label: str, step: Step, *tags: str, main: str = "out", args: tuple = ()) -> Any:
        """`pcoll | label >> step` with outputs `main`, `tags` (and COUNTS, kept here)."""
        transform = beam.ParDo(step, *args) if isinstance(step, beam.DoFn) else beam.FlatMap(step, *args)
        out = pcoll | label >> transform.with_outputs(COUNTS, *tags, main=main)
        self.counts.append(out[COUNTS])
        return out

    def add(self, counts: beam.PCollection) -> None:
        """The COUNTS of a composite (dedup, fetch) applied elsewhere."""
        self.counts.append(counts)


class SampleRejects(beam.PTransform):
    """PCollection[Reject] -> the `n` smallest (by key, url, detail) per (stage, reason): deterministic, bounded."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def expand(self, rejects: beam.PCollection) -> beam.PCollection:
        return (
            rejects
            | "ByReason" >> beam.Map(lambda r: ((r.stage, r.reason), r))
            | "Smallest" >> beam.combiners.Top.PerKey(self.n, key=lambda r: (r.key, r.url, r.detail), reverse=True)
            | "Flatten" >> beam.FlatMap(lambda kv: kv[1])
        )


class WriteRejectsFn(beam.DoFn):
    """All reject samples (grouped under one key) -> rejects.jsonl, one JSON object per line, sorted."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element: tuple[None, Iterable[Any]]) -> Iterator[str]:
        rows = [dataclasses.asdict(r) for r in element[1]]
        rows.sort(key=lambda r: (r["stage"], r["reason"], r["key"], r["url"], r["detail"]))
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
        fsio.write_bytes_atomic(fsio.join(self.output_dir, REJECTS_NAME), data)
        yield REJECTS_NAME


def write_rejects(rejects: list[beam.PCollection], output_dir: str) -> beam.PCollection:
    """Reject samples -> rejects.jsonl in output_dir; the file name, once written."""
    return (
        rejects
        | "AllRejects" >> beam.Flatten()
        | "RejectsTogether" >> beam.Map(lambda r: (None, r))
        | "GroupRejects" >> beam.GroupByKey()
        | "WriteRejects" >> beam.ParDo(WriteRejectsFn(output_dir))
    )

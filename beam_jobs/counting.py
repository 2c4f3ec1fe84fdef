"""The build's bookkeeping, owned by the wiring: steps record outcomes, this module counts them.

A library step records what became of its input in an `accounting.Tally` (outcomes and
rejects; `in` follows). `CountingFn` (for DoFns) and `counting` (for FlatMap functions) give
each element a fresh tally and, after the step's outputs, emit it: every (stage, outcome) as
a Beam metric and as a `Count` element under the COUNTS tag, every reject under REJECTS.
Metrics alone are not enough: not every runner reports them back reliably, and the manifest
must reconcile exactly on all of them, so the build sums the `Count` elements itself.

`CountedSteps` applies steps and keeps their COUNTS outputs, so a branch of the build lists
its stages and hands on all their counts at once. Its `group`, `cogroup`, `distinct` and
`reshuffle` apply a grouping and measure what enters it: the payload bytes and elements of
every input, as the Beam counter `m3w.shuffle_bytes/<label>` and as `Count` elements under the
stages SHUFFLE_BYTES and SHUFFLE_ELEMENTS, which the manifest shows as its `shuffle_bytes` block. `SampleRejects` and `WriteRejectsFn` turn
the rejects into the bounded, sorted rejects.jsonl beside the shards.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from typing import Any, Callable, Iterable, Iterator, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import fsio, progress
from m3w_pipeline.core.accounting import Count, Tally

COUNTS = "counts"  # the output tag every counting step emits its Count events under
REJECTS = "rejects"  # the output tag of rejected documents and nodes (accounting.Reject)
REJECTS_NAME = "rejects.jsonl"
SHUFFLE_BYTES = "shuffle_bytes"  # Count stage: payload bytes entering a grouping, outcome = its label
SHUFFLE_ELEMENTS = "shuffle_elements"  # Count stage: elements entering a grouping
SHUFFLE_STAGES = (SHUFFLE_BYTES, SHUFFLE_ELEMENTS)


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


_FIELDS: dict[type, tuple[str, ...]] = {}


def payload_bytes(value: Any) -> int:
    """What an element carries, in bytes: bytes and UTF-8 text at their length, numbers at 8,
    containers and dataclasses as the sum of their parts. Unlike a pickle's length it does not
    depend on object identity (shared references), so every runner reports the same number."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, (tuple, list, set, frozenset)):
        return sum(payload_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(payload_bytes(k) + payload_bytes(v) for k, v in value.items())
    kind = type(value)
    names = _FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(value):
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return sum(payload_bytes(getattr(value, name)) for name in names)
    nbytes = getattr(value, "nbytes", None)  # numpy arrays, memoryviews
    if isinstance(nbytes, int):
        return nbytes
    return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


class MeasureShuffleFn(beam.DoFn):
    """Passes elements through unchanged and, per bundle, counts their payload bytes under `label`."""

    def __init__(self, label: str):
        self.label = label

    def infer_output_type(self, input_type: Any) -> Any:
        """Its input's type, which it passes through. Without this Beam infers it by walking the
        bytecode of `process` and, five calls deep, of the recursive `payload_bytes`: seconds of CPU
        per build at pipeline construction, for a type known in advance."""
        return input_type

    def start_bundle(self) -> None:
        self.elements, self.bytes = 0, 0

    def process(self, element):  # no annotations: Beam would type-check elements against them
        self.elements += 1
        self.bytes += payload_bytes(element)
        yield element

    def finish_bundle(self):
        if self.elements:
            for stage, n in ((SHUFFLE_BYTES, self.bytes), (SHUFFLE_ELEMENTS, self.elements)):
                tagged = count(stage, self.label, n)
                yield TaggedOutput(COUNTS, WindowedValue(tagged.value, GlobalWindow().max_timestamp(), (GlobalWindow(),)))
            self.elements, self.bytes = 0, 0


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

    def measured(self, pcoll: beam.PCollection, label: str) -> beam.PCollection:
        """`pcoll`, its elements and payload bytes counted as entering the grouping `label`."""
        return self(pcoll, f"{label}/MeasureShuffle", MeasureShuffleFn(label)).out

    def group(self, pcoll: beam.PCollection, label: str) -> beam.PCollection:
        """GroupByKey, measured."""
        return self.measured(pcoll, label) | label >> beam.GroupByKey()

    def cogroup(self, inputs: dict[str, beam.PCollection], label: str) -> beam.PCollection:
        """CoGroupByKey of named inputs, each measured (their sum is the join's)."""
        return {name: self.measured(p, f"{label}/{name}") for name, p in inputs.items()} | label >> beam.CoGroupByKey()

    def distinct(self, pcoll: beam.PCollection, label: str) -> beam.PCollection:
        """Distinct, measured."""
        return self.measured(pcoll, label) | label >> beam.Distinct()

    def reshuffle(self, pcoll: beam.PCollection, label: str) -> beam.PCollection:
        """Reshuffle, measured."""
        return self.measured(pcoll, label) | label >> beam.Reshuffle()


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


def write_rejects(rejects: list[beam.PCollection], output_dir: str, steps: CountedSteps) -> beam.PCollection:
    """Reject samples -> rejects.jsonl in output_dir; the file name, once written."""
    together = rejects | "AllRejects" >> beam.Flatten() | "RejectsTogether" >> beam.Map(lambda r: (None, r))
    return steps.group(together, "GroupRejects") | "WriteRejects" >> beam.ParDo(WriteRejectsFn(output_dir))

"""Corpus statistics as a Beam job, for corpora too large for one machine.

    shard refs -> Reshuffle -> shard_stats (per shard, m3w_pipeline.inspect.stats) -> CombineGlobally(merge)
               -> one CorpusStats, written as JSON

The per-shard function and the merge are the library's own, so the numbers equal
`m3w stats` without `--runner` exactly; only the driver's summarize step runs locally.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions

from beam_jobs import fsio
from beam_jobs.runner import pipeline_options
from m3w_pipeline.inspect.corpus import Corpus, ShardRef
from m3w_pipeline.inspect.stats import CorpusStats, StatsConfig, shard_stats

RESULT_NAME = "m3w-stats.json"


def open_with_filesystems(path: str) -> Any:
    """The opener the job hands to `shard_stats`: Beam's filesystems (local, gs://, s3://)."""
    return fsio.open_input(path)


class ShardStatsFn(beam.DoFn):
    """ShardRef -> its mergeable statistics, as JSON-safe dicts (portable across runners)."""

    def __init__(self, config: StatsConfig):
        self.config = config

    def process(self, shard: ShardRef) -> Iterator[dict[str, Any]]:
        stats = shard_stats(shard, open_with_filesystems, self.config)
        Metrics.counter("m3w.stats", "shards").inc()
        Metrics.counter("m3w.stats", "samples").inc(stats.samples)
        yield stats.to_json()


class MergeStatsFn(beam.CombineFn):
    """Merges per-shard partials with `CorpusStats.merge` (associative, so any combine tree works)."""

    def __init__(self, kind: str):
        self.kind = kind

    def create_accumulator(self) -> CorpusStats:
        return CorpusStats(self.kind)

    def add_input(self, acc: CorpusStats, partial: dict[str, Any]) -> CorpusStats:
        return acc.merge(CorpusStats.from_json(partial))

    def merge_accumulators(self, accs: Any) -> CorpusStats:
        total = CorpusStats(self.kind)
        for acc in accs:
            total.merge(acc)
        return total

    def extract_output(self, acc: CorpusStats) -> dict[str, Any]:
        return acc.to_json()


def _write_result(stats: dict[str, Any], path: str) -> None:
    fsio.write_bytes_atomic(path, json.dumps(stats, sort_keys=True).encode("utf-8"))


def build_stats_pipeline(pipeline: beam.Pipeline, corpus: Corpus, config: StatsConfig, result_path: str) -> beam.PCollection:
    """Add the statistics job to `pipeline`; the merged statistics land in `result_path` as JSON."""
    return (
        pipeline
        | "Shards" >> beam.Create(corpus.shards)
        | "SpreadShards" >> beam.Reshuffle()
        | "ShardStats" >> beam.ParDo(ShardStatsFn(config))
        | "Merge" >> beam.CombineGlobally(MergeStatsFn(corpus.kind))
        | "WriteResult" >> beam.Map(_write_result, result_path)
    )


def default_result_path(beam_args: Sequence[str]) -> str:
    """Where the result goes without --stats-output: under --temp_location when the job has one
    (remote workers can write there), else a local temporary directory (embedded runners)."""
    temp = pipeline_options(beam_args).view_as(GoogleCloudOptions).temp_location
    if temp:
        return fsio.join(temp, f"m3w-stats-{uuid.uuid4().hex}.json")
    return os.path.join(tempfile.mkdtemp(prefix="m3w-stats-"), RESULT_NAME)


def run_stats_job(
    corpus: Corpus,
    config: StatsConfig = StatsConfig(),
    beam_args: Sequence[str] = (),
    result_path: Optional[str] = None,
) -> CorpusStats:
    """Run the job (FnApiRunner unless --runner says otherwise) and read back the merged statistics."""
    result_path = result_path or default_result_path(beam_args)
    if not corpus.shards:
        return CorpusStats(corpus.kind)
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        build_stats_pipeline(pipeline, corpus, config, result_path)
    return CorpusStats.from_json(json.loads(fsio.read_bytes(result_path)))

"""Constructing the build graph stays cheap: Beam's type inference must not walk our code deeply.

Beam infers each ParDo's output type by walking the bytecode of its `process` (or lambda) and,
up to five calls deep, of every function it calls. One recursive helper on that path (the shuffle
measure's `payload_bytes`, walked once per grouping) once cost ~11 CPU-s per build, in user time
and in system time (Python 3.11 mapping and unmapping a frame-stack chunk on every call that
crossed its boundary). These tests count walks, not seconds: the count is the same on any machine.
"""
from __future__ import annotations

import collections

import apache_beam as beam
import pytest
from apache_beam.typehints import trivial_inference, typehints

from beam_jobs.counting import CountedSteps, MeasureShuffleFn
from beam_jobs.m3w_job import build_pipeline, corpus_dirs
from beam_jobs.runner import pipeline_options
from m3w_pipeline.core.config import BuildConfig


@pytest.fixture
def walks(monkeypatch) -> collections.Counter:
    """Counts Beam's bytecode walks: ("top", qualname) for a transform's own function, ("nested", qualname)
    for a function walked because a walked function calls it."""
    real = trivial_inference.infer_return_type_func
    counted: collections.Counter = collections.Counter()
    depth = [0]

    def walk(f, *args, **kwargs):
        counted["nested" if depth[0] else "top", f.__qualname__] += 1
        depth[0] += 1
        try:
            return real(f, *args, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(trivial_inference, "infer_return_type_func", walk)
    return counted


def _totals(counted: collections.Counter) -> tuple[int, int]:
    return (sum(n for (kind, _), n in counted.items() if kind == "top"), sum(n for (kind, _), n in counted.items() if kind == "nested"))


@pytest.mark.parametrize("fetch", [False, True])
def test_build_graph_walks_no_deeper_than_its_transforms(walks, tmp_path, fetch):
    config = BuildConfig.from_dict({"fetch": {"enabled": fetch}})
    pipeline = beam.Pipeline(options=pipeline_options([]))
    build_pipeline(pipeline, [str(tmp_path / "x.warc.gz")], corpus_dirs("all", str(tmp_path / "out")), config)
    top, nested = _totals(walks)
    assert top > 50, walks  # inference ran: the graph has well over 50 ParDos
    # Today nested walks are Beam's own Map/MapTuple wrappers looking into their lambda, one each
    # (~93 for ~125 transforms); the regression walked 5,128 functions below 61 shuffle measures.
    assert nested <= top, walks.most_common(10)
    assert not [name for (_, name) in walks if name.startswith("MeasureShuffleFn")]


def test_shuffle_measure_declares_its_input_type(walks):
    """The measure passes elements through, so its output type is its input's, known without a walk."""
    pipeline = beam.Pipeline(options=pipeline_options([]))
    keyed = pipeline | beam.Create([("a", 1), ("b", 2)]).with_output_types(typehints.Tuple[str, int])
    measured = CountedSteps().measured(keyed, "Group")
    assert measured.element_type == typehints.Tuple[str, int]
    assert MeasureShuffleFn("x").infer_output_type(typehints.Tuple[str, int]) == typehints.Tuple[str, int]
    assert not [name for (_, name) in walks if name.startswith("MeasureShuffleFn")]

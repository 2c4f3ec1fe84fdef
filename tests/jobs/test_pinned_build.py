"""The sample build's bytes are pinned: a change to them must be deliberate.

A 60-page sample crawl is generated and built with `m3w build all`, with relative paths so
that provenance does not depend on where the test runs, and every output file's sha256 is
compared with `tests/data/pinned_sample_build.json`. A change that alters the output on
purpose regenerates the pins with `M3W_UPDATE_PINS=1 pytest tests/jobs/test_pinned_build.py`
and commits them beside the change, saying why the bytes moved.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from m3w.cli import main

PINS = Path(__file__).resolve().parents[1] / "data" / "pinned_sample_build.json"
pytestmark = pytest.mark.slow


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_build_bytes_are_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample-crawl", "crawl", "--pages", "60"]) == 0
    assert main(["build", "all", "--input", "crawl/*.warc.gz", "--output", "out"]) == 0
    got = _hashes(tmp_path)
    # WARC + truth, and per corpus: shards, index/ files, manifest, README.md, sizes.json (+ rejects for M3W,
    # NAME_stats.json per pair and video shard)
    assert len(got) == 23, sorted(got)
    if os.environ.get("M3W_UPDATE_PINS") == "1":
        PINS.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINS.read_text())
    changed = sorted(name for name in pinned.keys() | got.keys() if pinned.get(name) != got.get(name))
    assert not changed, f"sample build bytes changed: {changed} (deliberate? see this test's docstring)"

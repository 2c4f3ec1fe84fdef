"""One `m3w build all` of the session's sample crawl, shared by the inspect tests that read a build root.

A plain function with a cache (not a fixture defined here): every module that imports it gets the
same build, where a session fixture imported into two modules would be built twice.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

_BUILT: dict[str, Path] = {}


def build_root(request: pytest.FixtureRequest) -> Path:
    """ROOT holding m3w/, pairs/ and video/ from the session's 120-page sample crawl (small shards, so every corpus has several)."""
    if "root" not in _BUILT:
        from conftest import build

        crawl = request.getfixturevalue("sample_crawl")
        out = request.getfixturevalue("tmp_path_factory").mktemp("build_root") / "out"
        build("all", [str(p) for p in crawl.warc_paths], out, "--samples-per-shard", "25")
        _BUILT["root"] = out
    return _BUILT["root"]


def manifests(root: Path) -> dict[str, dict]:
    return {kind: json.loads((root / kind / "manifest.json").read_text()) for kind in ("m3w", "pairs", "video")}

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def build(corpus: str, inputs: list[str], output: Path, *extra: str) -> dict:
    """Run `m3w build` in-process, as a user would from the shell; returns the manifest."""
    from m3w.cli import main

    rc = main(["build", corpus, "--input", *inputs, "--output", str(output), *extra])
    if corpus == "all":
        manifests = {c: json.loads((output / c / "manifest.json").read_text()) for c in ("m3w", "pairs", "video")}
        assert rc == 0, {c: m.get("reconciliation_errors") for c, m in manifests.items()}
        return manifests
    manifest = json.loads((output / "manifest.json").read_text())
    assert rc == 0, manifest.get("reconciliation_errors")
    return manifest


@pytest.fixture(scope="session")
def corpus_build(tmp_path_factory) -> Path:
    """M3W over every real WARC in the shared corpus, broken ones included."""
    out = tmp_path_factory.mktemp("corpus_build")
    build("m3w", [str(CORPUS / "warc" / "*")], out, "--samples-per-shard", "2")
    return out


@pytest.fixture(scope="session")
def sample_crawl(tmp_path_factory):
    from m3w_pipeline.sample.crawl import write_sample_crawl

    return write_sample_crawl(tmp_path_factory.mktemp("sample_crawl"), pages=120, seed=7)


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory, sample_crawl) -> Path:
    out = tmp_path_factory.mktemp("sample_build")
    build("m3w", [str(p) for p in sample_crawl.warc_paths], out, "--samples-per-shard", "25")
    return out


@pytest.fixture
def loopback_only(monkeypatch):
    """Every TCP connection this process makes must go to loopback (the workplace's network rule);
    anything else fails the test before a packet leaves. Returns the hosts connected to."""
    attempts: list[str] = []
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        host = str(address[0])
        attempts.append(host)
        if not (host.startswith("127.") or host == "::1"):
            raise AssertionError(f"test tried to connect to {host}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return attempts


# `make test-fast` runs `-m "not slow"`: the Beam builds (tests/jobs, and tests that use a built
# corpus) and the training runs are slow; everything else is a unit test of the library.
_BUILD_FIXTURES = {"corpus_build", "sample_build"}
_TRAINING_RUNS = {"test_train_trainer.py", "test_train_resume.py", "test_train_ddp.py", "test_train_demo.py",
                  "test_train_learns.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "jobs" in item.path.parts or _BUILD_FIXTURES & set(item.fixturenames) or item.path.name in _TRAINING_RUNS:
            item.add_marker(pytest.mark.slow)

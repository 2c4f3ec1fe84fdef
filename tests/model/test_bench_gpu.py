"""benchmarks/bench_gpu.py (the prepared GPU script) runs, here on the CPU at the tiny size, so it has
not rotted when an accelerator is lent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_counts_step_flops_and_reports(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = ["--size", "tiny", "--device", "cpu", "--precision", "fp32", "--seq", "64", "--images", "2",
            "--steps", "2", "--warmup", "1"]
    small = bench.main(args + ["--batch", "2"])
    large = bench.main(args + ["--batch", "4", "--checkpointing"])
    assert json.loads((tmp_path / "bench_gpu.json").read_text()) == large
    assert small["flops_per_step"] > 0 and small["tokens_per_s"] > 0 and small["images_per_s"] > 0
    # the same sequences twice as often: twice the model FLOPs (recomputation is not counted)
    assert large["flops_per_step"] == pytest.approx(2 * small["flops_per_step"], rel=0.05)
    assert small["mfu"] is None and small["peak_memory_gib"] is None  # no peak known for a CPU

"""`m3w demo` end to end at a tiny size (the plumbing; the real run's numbers are in the README)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports(tmp_path, capsys):
    from m3w.cli import main

    assert main(["demo", "--workdir", str(tmp_path), "--pages", "40", "--steps", "4", "--lm-steps", "5",
                 "--vit-steps", "5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "blind gap" in out and "tanh(attn gate) per layer" in out and "zero-shot" in out
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    corpora = summary["corpora"]
    assert corpora["train"]["m3w"] > 0 and corpora["train"]["align"] > 0 and corpora["heldout"]["m3w"] > 0
    assert f"m3w    {corpora['train']['m3w']:5d} samples in" in out
    assert set(summary["eval"]) == {"heldout_m3w", "heldout_align"}
    for e in summary["eval"].values():
        assert {"loss", "blind_loss", "blind_gap", "blind_gap_per_image"} <= set(e)
    assert len(summary["gates"]["attn"]) == 4 and summary["few_shot"]
    assert summary["fast_binding"]["separation"]["lessons"] > 0 and "<image> states after cross-attention" in out
    assert (tmp_path / "train.toml").is_file() and summary["checkpoint"].endswith("step-00000004")

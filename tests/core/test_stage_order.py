"""The stage order the CLI's summary lists: every accounted stage once, in a named group."""
from __future__ import annotations

from m3w_pipeline.core.accounting import KEPT_OUTCOMES, STAGE_ORDER


def test_stage_order_lists_every_accounted_stage_once():
    listed = [stage for _, group in STAGE_ORDER for stage in group]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(KEPT_OUTCOMES)
    assert [title for title, _ in STAGE_ORDER] == ["read, extract, images, assemble", "m3w", "pairs", "video"]
    assert listed[:2] == ["records", "pages"] and listed[-1] == "video_samples"

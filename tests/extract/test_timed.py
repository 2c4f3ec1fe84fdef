"""Extraction under a per-page time budget, in a warm child process."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.extract.page import extract_page
from m3w_pipeline.extract.timed import ExtractTimeout, TimedExtractor

HTML = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "html"
BIG = ("<html><body><article>" + "".join(f"<p>Paragraph {i} of a long article about rivers and hills.</p>" for i in range(3000))
       + "</article></body></html>")
# Ten times BIG (about 0.6 s to extract here, BIG 0.03 s): far over the 0.05 s budget on any machine,
# where BIG alone came within it once extraction got faster.
HUGE = BIG.replace("</article>", "".join(f"<p>More of it, part {i}, about rivers and hills.</p>" for i in range(27_000)) + "</article>")


def test_child_gives_the_same_pages_as_in_process():
    pages = [gzip.decompress(p.read_bytes()) for p in sorted(HTML.glob("*.html.gz"))[:8]]
    with TimedExtractor(ExtractConfig(timeout_s=30)) as timed:
        got = [timed.extract(p, "https://example.org/a") for p in pages]
    assert got == [extract_page(p, "https://example.org/a") for p in pages]
    assert sum(len(g.nodes) for g in got) > 50


def test_a_page_over_budget_times_out_and_the_next_page_still_extracts():
    timed = TimedExtractor(ExtractConfig(timeout_s=0.05))
    timed.extract("<html><body><p>warm up</p></body></html>", "https://example.org/")  # child started, imports done
    with pytest.raises(ExtractTimeout):
        timed.extract(HUGE, "https://example.org/big")
    assert timed.restarts == 1
    timed.config = ExtractConfig(timeout_s=30)
    page = timed.extract("<html><body><article><p>After the timeout, a page with enough words to be kept.</p></article></body></html>",
                         "https://example.org/next")
    assert any("After the timeout" in (n.text or "") for n in page.nodes)
    timed.close()


def test_zero_budget_runs_in_process():
    timed = TimedExtractor(ExtractConfig(timeout_s=0))
    assert timed.extract(BIG, "https://example.org/big").nodes
    assert timed._child is None

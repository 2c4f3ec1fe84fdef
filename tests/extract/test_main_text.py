"""`m3w_pipeline.extract.main_text`: trafilatura's cascade driven step by step must give the body
`trafilatura.bare_extraction` gives, and each of our walks the elements trafilatura's XPath selects.

Checked on hand-built pages that hit every branch, the 60 shared corpus pages and the pages of a
generated sample crawl, each as `extract_page` hands it over (parsed, media rewritten).
"""
from __future__ import annotations

import gzip
import os
from copy import copy
from pathlib import Path

import pytest
import trafilatura
from lxml import etree
from trafilatura.settings import BASIC_CLEAN_XPATH
from trafilatura.xpaths import RAW_TREE_PRUNE_XPATH, REMOVE_COMMENTS_AND_LISTS_XPATH

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.extract import main_text
from m3w_pipeline.extract.main_text import basic_clean_targets, main_text_body, raw_prune_targets
from m3w_pipeline.extract.media_refs import rewrite_media
from m3w_pipeline.extract.page import _base_url, _parse
from m3w_pipeline.read.decode import decode_html
from m3w_pipeline.read.warc import Page, iter_warc

ROOT = Path(__file__).resolve().parents[2]
HTML_DIR = Path(os.environ.get("M3W_CORPUS", ROOT.parent / "shared" / "corpus")) / "html"

PARA = "The council voted on Tuesday to extend the river survey for another five years, citing falling nitrate levels. "
EDGE_PAGE = f"""<!DOCTYPE html><html><head><title>t</title><script>var x = 1;</script></head><body>
<div id="infinite-scroll-1"><p>{PARA}appended article</p></div>
<section class="infinite-scroll"><h1>Kept: it holds the page's h1</h1><p>{PARA}</p></section>
<aside class="mvp-post-add-box"><h1>Pruned even with an h1</h1></aside>
<div class="elementor-share-buttons x">share</div>tail after share
<main><article><p>{PARA * 3}</p><p>{PARA * 2}</p>
<figure><img src="http://m3w.invalid/i/0.png"><figcaption>caption</figcaption></figure></article>
<div id="comments"><p>{PARA}a reader comment</p></div>
<ul class="comment-list"><li>{PARA}listed comment</li></ul>
<ol id="disqus_thread"><li>{PARA}an ol with the disqus id: kept</li></ol>
<ul id="Comment-7"><li>comment by id</li></ul>
<details class="commentary"><p>commentary is not comments</p></details></main>
<div class="cookie-banner">We use cookies</div><span id="CookieConsent">consent</span>
<div id="x" class="page-footer">first attribute is the id: kept by the footer test</div>
<div class="site-footer" id="x">first attribute is the class: footer</div>
<footer>foot</footer><svg><text>svg text</text></svg><template><p>t</p></template>
<p>tail text &#x200b;with a zero-width space</p></body></html>"""
# short text on a long page: trafilatura's recall escalation measures the page (html2txt)
ESCALATION_PAGE = (f"<html><body><div class='main-content'><p>{PARA}</p></div>"
                   + "".join(f"<div class='tile'><span>{PARA} tile {i}</span></div>" for i in range(40))
                   + "<div class='cookie-notice'>cookies</div><footer>foot</footer></body></html>")


def _prepared(html: str | bytes, url: str) -> etree._Element | None:
    """The tree as extract_page hands it to trafilatura: one parse, media rewritten."""
    tree = _parse(decode_html(html) if isinstance(html, bytes) else html)
    if tree is not None:
        rewrite_media(tree, url, _base_url(tree, url), ExtractConfig())
    return tree


def _xpath_prunes(tree: etree._Element) -> list[list[etree._Element]]:
    return [*(expr(tree) for expr in RAW_TREE_PRUNE_XPATH), REMOVE_COMMENTS_AND_LISTS_XPATH[0](tree)]


def _bare_body(tree: etree._Element, url: str, fast: bool) -> bytes | None:
    document = trafilatura.bare_extraction(tree, url=url or None, fast=fast, include_comments=False, include_tables=True,
                                           include_images=True, include_formatting=False, include_links=False,
                                           output_format="xml", with_metadata=False)
    return None if document is None or document.body is None else etree.tostring(document.body)


def _our_body(tree: etree._Element, url: str, fast: bool) -> bytes | None:
    before = etree.tostring(tree)
    body = main_text_body(tree, url, ExtractConfig(fast=fast))
    assert etree.tostring(tree) == before, "main_text_body changed its input tree"
    return None if body is None else etree.tostring(body)


def _check_page(tree: etree._Element, url: str, fast_settings: tuple[bool, ...] = (True,)) -> None:
    assert raw_prune_targets(tree) == _xpath_prunes(tree)
    body = tree.find(".//body")
    body = tree if body is None else body
    assert basic_clean_targets(body) == BASIC_CLEAN_XPATH(body)
    assert main_text._page_text_length(tree) == len(trafilatura.html2txt(tree))
    for fast in fast_settings:
        assert _our_body(tree, url, fast) == _bare_body(copy(tree), url, fast), (url, fast)


def test_edge_page_hits_every_prune_and_matches_trafilatura():
    tree = _prepared(EDGE_PAGE, "https://news.example/a")
    scroll, share, comments = raw_prune_targets(tree)
    assert [e.get("id") or e.get("class") for e in scroll] == ["infinite-scroll-1", "mvp-post-add-box"]
    assert [e.get("class") for e in share] == ["elementor-share-buttons x"]
    assert [e.get("id") or e.get("class") for e in comments] == ["comments", "comment-list", "Comment-7"]
    cleaned = basic_clean_targets(tree.find("body"))
    assert [e.tag for e in cleaned] == ["aside", "div", "span", "div", "footer", "svg", "template"]
    assert cleaned[3].get("class") == "site-footer"
    _check_page(tree, "https://news.example/a", (True, False))
    pruned = main_text._raw_pruned(tree, prune_comments=True)
    assert pruned is not tree and tree.find(".//div[@id='comments']") is not None
    text = pruned.text_content()
    assert "appended article" not in text and "a reader comment" not in text and "listed comment" not in text
    assert "Kept: it holds" in text and "disqus id: kept" in text and "tail after share" in text


def test_forum_page_keeps_its_comment_containers():
    forum = EDGE_PAGE.replace("<title>t</title>", '<script type="application/ld+json">{"@type": "DiscussionForumPosting"}</script>')
    tree = _prepared(forum, "https://forum.example/t/1")
    assert raw_prune_targets(tree, prune_comments=False)[2] == []
    for fast in (True, False):
        assert _our_body(tree, "https://forum.example/t/1", fast) == _bare_body(copy(tree), "https://forum.example/t/1", fast)


def test_escalation_page_measures_the_page_like_html2txt(monkeypatch):
    tree = _prepared(ESCALATION_PAGE, "https://tiles.example/")
    assert main_text._page_text_length(tree) == len(trafilatura.html2txt(tree)) > 4000
    _check_page(tree, "https://tiles.example/", (True, False))
    measured = []
    monkeypatch.setattr(main_text, "_page_text_length", lambda t: measured.append(len(trafilatura.html2txt(t))) or measured[-1])
    body = main_text_body(tree, "https://tiles.example/", ExtractConfig())
    assert measured and len(" ".join(body.itertext())) > 4000  # the gate measured the page, the recall retry won


def test_include_comments_runs_trafilaturas_own_path():
    tree = _prepared(EDGE_PAGE, "https://news.example/a")
    config = ExtractConfig(include_comments=True)
    document = trafilatura.bare_extraction(copy(tree), url="https://news.example/a", fast=True, include_comments=True,
                                           include_tables=True, include_images=True, include_formatting=False,
                                           include_links=False, output_format="xml", with_metadata=False)
    assert etree.tostring(main_text_body(tree, "https://news.example/a", config)) == etree.tostring(document.body)


@pytest.mark.skipif(not HTML_DIR.is_dir(), reason="shared corpus not found")
def test_corpus_pages_give_trafilaturas_body_on_both_paths():
    names = sorted(p.name for p in HTML_DIR.iterdir() if p.is_file() and not p.name.endswith(".json"))
    assert len(names) >= 60
    checked = 0
    for name in names:
        data = (HTML_DIR / name).read_bytes()
        tree = _prepared(gzip.decompress(data) if name.endswith(".gz") else data, f"https://corpus.example/{name}")
        if tree is not None:
            _check_page(tree, f"https://corpus.example/{name}", (True, False))
            checked += 1
    assert checked >= 60


def test_sample_crawl_pages_give_trafilaturas_body(sample_crawl):
    checked = 0
    for path in sample_crawl.warc_paths:
        with open(path, "rb") as stream:
            for item in iter_warc(stream, path.name):
                if isinstance(item, Page):
                    tree = _prepared(item.html, item.url)
                    if tree is not None:
                        _check_page(tree, item.url)
                        checked += 1
    assert checked >= 100

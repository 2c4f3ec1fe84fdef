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
from trafilatura.htmlprocessing import convert_tags, tree_cleaning
from trafilatura.settings import BASIC_CLEAN_XPATH, Extractor
from trafilatura.xpaths import BODY_XPATH, OVERALL_DISCARD_XPATH, RAW_TREE_PRUNE_XPATH, REMOVE_COMMENTS_AND_LISTS_XPATH

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.extract import main_text, trafilatura_walks
from m3w_pipeline.extract.main_text import main_text_body
from m3w_pipeline.extract.media_refs import rewrite_media
from m3w_pipeline.extract.page import _base_url, _parse
from m3w_pipeline.extract.trafilatura_walks import basic_clean_targets, first_body, overall_discard_targets, raw_prune_targets
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


def _check_walks_inside_extract_content(tree: etree._Element) -> None:
    """On the cleaned, converted tree (and each region BODY_XPATH finds in it, as _extract prunes
    them): our walks select what BODY_XPATH[0] and OVERALL_DISCARD_XPATH select."""
    for focus in ("balanced", "recall"):
        options = Extractor(output_format="xml", fast=True, comments=False, images=True)
        options.focus = focus
        cleaned = convert_tags(tree_cleaning(copy(tree), options), options)
        assert first_body(cleaned) == BODY_XPATH[0](cleaned)[:1]
        for region in [cleaned, *(found[0] for expr in BODY_XPATH if (found := expr(cleaned)))]:
            assert overall_discard_targets(region) == tuple(expr(region) for expr in OVERALL_DISCARD_XPATH)


def _check_page(tree: etree._Element, url: str, fast_settings: tuple[bool, ...] = (True,)) -> None:
    assert raw_prune_targets(tree) == _xpath_prunes(tree)
    _check_walks_inside_extract_content(tree)
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


DISCARD_PAGE = """<html><body><article class="story"><div class="entry-content"><p>{para}</p>
<div id="share" class="hidden">both: the id comes first</div><div class="hidden" id="share">class first</div>
<span id="x" class="cookie-box">first of id/class is the id: no cookie</span><p class="cookie-box" id="x">cookie: class first</p>
<div role="Navigation">role nav</div><section data-lp-replacement-content="1">lp</section>
<div data-component="MostPopularStories-v2">popular</div><div class="comments-title">t</div><p class="x comments-title">c</p>
<div id="reply-3">reply by id</div><p id="y" class="reply-x">id first: kept</p><div style="display: none">hidden by style</div>
<div id="main" style="x">id before style: kept</div><div style="visibility:hidden" id="main">style first</div>
<div aria-hidden="true">aria</div><div aria-hidden="True">kept: case</div><p class="wrap hide">hide</p><p class="Hide">kept</p>
<div class="ad-slot">ad</div><div class="SIDEBAR">kept: case</div><p id="ad-top">ad id</p><p>{para}</p></div></article>
<main><div class="post">second body candidate</div></main></body></html>""".format(para=PARA)


def test_discard_walks_match_trafilaturas_xpaths_on_attribute_order_and_case():
    tree = _prepared(DISCARD_PAGE, "https://news.example/d")
    options = Extractor(output_format="xml", fast=True, comments=False, images=True)
    cleaned = convert_tags(tree_cleaning(copy(tree), options), options)
    blocks, hidden = overall_discard_targets(cleaned)
    assert len(blocks) == 8 and len(hidden) == 7
    assert "kept" not in " ".join(e.text_content() for e in blocks + hidden)
    assert first_body(cleaned)[0].get("class") == "entry-content"
    _check_page(tree, "https://news.example/d", (True, False))


def test_trafilatura_gets_its_own_xpaths_back_after_our_call():
    tree = _prepared(DISCARD_PAGE, "https://news.example/d")
    main_text_body(tree, "https://news.example/d", ExtractConfig())
    import trafilatura.main_extractor as theirs
    assert theirs.BODY_XPATH is BODY_XPATH and theirs.OVERALL_DISCARD_XPATH is OVERALL_DISCARD_XPATH
    with trafilatura_walks.in_extract_content():
        with trafilatura_walks.in_extract_content():
            assert theirs.BODY_XPATH[0] is first_body
        assert theirs.BODY_XPATH[0] is first_body
    assert theirs.BODY_XPATH is BODY_XPATH and theirs.OVERALL_DISCARD_XPATH is OVERALL_DISCARD_XPATH


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


@pytest.mark.parametrize("body", [
    "<p><script>1</script>tail of a deleted first child</p><div>a<style>x</style>\u200bjoined to a block's text</div>",
    "<span>a<script>x</script>\u200bb</span><span>c</span><footer>f</footer>\u00adafter<div>d</div>",
    "<div class='x'><aside>a</aside></div>t1<aside>b</aside>t2<aside>c</aside>t3<p>p</p>\x85\u2028next",
    "text<br>more<table><tr><td>a</td><td>b<svg>s</svg></td></tr></table>end<template>t</template>",
    "<div id='cookie-notice'>gone</div><div class='Footer'>kept: case</div><div data-x='1' class='footer'>gone</div>",
])
def test_page_text_length_equals_html2txt_on_edge_cases(body):
    tree = _parse(f"<html><head><title>t</title></head><body>{body}<p>{PARA}</p></body></html>")
    assert main_text._page_text_length(tree) == len(trafilatura.html2txt(tree))
    assert main_text._page_text_length(tree.find("body")) == len(trafilatura.html2txt(tree.find("body")))


def test_spaced_runs_lose_control_characters_and_refuse_what_lxml_refuses():
    paragraph = _parse(f"<html><body><p>{PARA}</p></body></html>").find(".//p")
    with pytest.raises(ValueError):
        paragraph.tail = " \x1c"  # what html2txt would set: it raises, bare_extraction discards the page
    with pytest.raises(ValueError):
        main_text._spaced("a\x1cb")
    assert main_text._spaced("a\u200bb\x85") == " ab\x85"  # a format character goes, NEL is whitespace


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

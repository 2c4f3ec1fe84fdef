"""trafilatura's main-text cascade (the pinned 2.3.1), driven step by step with its own functions.

`trafilatura.bare_extraction` runs these same steps; here three wasteful parts are replaced by
equivalent code of ours, so the body it returns is the same, element for element:

* the raw-tree prunes (`RAW_TREE_PRUNE_XPATH`, then `REMOVE_COMMENTS_AND_LISTS_XPATH`) select
  their elements in one Python walk over the few tags they name: their XPaths call EXSLT
  `re:test`, a Python callback, twice per element of the page (~2.3 ms a page);
* whole-tree copies nothing reads are not made: `bare_extraction`'s copy of its input when the
  prunes remove nothing (every later step copies before it changes the tree), and the backup of
  the cleaned tree that only the full path's comparison reads (~0.4 ms each);
* the page-length measure of the recall-escalation gate (`html2txt(tree)`, half the pages) selects
  `BASIC_CLEAN_XPATH`'s elements by the same kind of walk (~2 ms of its ~3).

Each selection is checked against trafilatura's own XPath, and the body against
`bare_extraction`'s, on every corpus and sample-crawl page (tests/extract/test_main_text.py).
Reader comments (`include_comments`) take trafilatura's own path: that setting is not covered.
"""
from __future__ import annotations

import re
from copy import copy
from functools import lru_cache
from typing import Any, Optional

import trafilatura
from lxml.etree import _Element
from lxml.html import HtmlElement
from trafilatura.baseline import _spaced_text, baseline
from trafilatura.core import (
    ESCALATION_ACCEPT_RATIO,
    ESCALATION_JUSTEXT_RATIO,
    ESCALATION_MAX_LENGTH,
    ESCALATION_PAGE_SHARE,
    _forum_thread_page,
)
from trafilatura.external import compare_extraction, justext_rescue
from trafilatura.htmlprocessing import convert_tags, tree_cleaning
from trafilatura.main_extractor import extract_content
from trafilatura.settings import _COOKIE_CONSENT_RE, Extractor
from trafilatura.xml import delete_element
from trafilatura.xpaths import _COMMENTS_CLASS, _COMMENTS_ID

from m3w_pipeline.core.config import ExtractConfig

# RAW_TREE_PRUNE_XPATH[0]: infinite-scroll containers (kept when they hold the <h1>, unless mvp-*)
_SCROLL_TAGS = frozenset({"div", "section", "aside"})
_SCROLL_RE = re.compile(r"mvp-post-add-(?:box|wrap)|infinite-?scroll")
_MVP_RE = re.compile(r"mvp-post-add-(?:box|wrap)")
# RAW_TREE_PRUNE_XPATH[1]: Elementor share bars
_SHARE_BAR = "elementor-share-buttons"
# REMOVE_COMMENTS_AND_LISTS_XPATH: comment containers; <ol>/<ul> without the disqus ids
_COMMENT_TAGS = frozenset({"div", "list", "section", "details", "ol", "ul"})
_COMMENT_ID_RE = re.compile(f"^(?:{_COMMENTS_ID}|disqus_thread|dsq-comments)")
_COMMENT_LIST_ID_RE = re.compile(f"^(?:{_COMMENTS_ID})")
_COMMENT_CLASS_RE = re.compile(_COMMENTS_CLASS)
_RAW_PRUNE_TAGS = tuple(sorted(_SCROLL_TAGS | _COMMENT_TAGS))
# BASIC_CLEAN_XPATH: these tags, a <div> whose first of class/id says footer, cookie banners by class or id
_BASIC_CLEAN_TAGS = frozenset({"aside", "fencedframe", "footer", "script", "style", "svg", "template"})
_COOKIE_RE = re.compile(_COOKIE_CONSENT_RE, re.IGNORECASE)


def main_text_body(tree: HtmlElement, url: str, config: ExtractConfig) -> Optional[_Element]:
    """trafilatura's main-content body (its XML tree) for `tree`, which is left unchanged, or None
    where `bare_extraction` gives none (no text)."""
    if config.include_comments:
        return _bare_extraction_body(tree, url, config)
    options = copy(_options(config.fast, config.include_tables))
    options.url = options.source = url or None
    try:
        body, text = _cascade(tree, options)
    except (TypeError, ValueError):  # bare_extraction's "discarding data"
        return None
    if len(text) < options.min_output_size and 0 < options.min_output_comm_size:  # no comments: length 0
        return None
    return body


@lru_cache(maxsize=8)
def _options(fast: bool, tables: bool) -> Extractor:
    """bare_extraction's options for our call (XML body, images, no comments, links or formatting)."""
    return Extractor(output_format="xml", fast=fast, comments=False, formatting=False, links=False, images=True, tables=tables)


def _bare_extraction_body(tree: HtmlElement, url: str, config: ExtractConfig) -> Any:
    document = trafilatura.bare_extraction(
        tree, url=url or None, fast=config.fast, include_comments=config.include_comments, include_tables=config.include_tables,
        include_images=True, include_formatting=False, include_links=False, output_format="xml", with_metadata=False,
    )
    return getattr(document, "body", None) if document is not None else None


# --------------------------------------------------------------------------- the cascade


def _cascade(tree: HtmlElement, options: Extractor) -> tuple[_Element, str]:
    """trafilatura_sequence with comments off and balanced focus: prune the raw tree, clean and
    extract, the baseline rescue, then the recall escalation."""
    tree = _raw_pruned(tree, prune_comments=not _forum_thread_page(tree))
    body, text = _extract_and_compare(tree, options)
    if len(text) < options.min_extracted_size:  # rescue: the baseline on the raw tree, if it adds text
        b_body, b_text, b_len = baseline(tree)
        if b_len > len(text):
            body, text = b_body, b_text
    if 0 < len(text) < ESCALATION_MAX_LENGTH and len(text) < ESCALATION_PAGE_SHARE * _page_text_length(tree):
        r_options = copy(options)
        r_options.focus = "recall"
        r_text = j_text = ""
        try:
            r_body, r_text = _extract_and_compare(tree, r_options)
        except Exception:  # noqa: BLE001 - as trafilatura: a failed retry keeps the first result
            r_text = ""
        if not options.fast:
            try:
                j_body, j_text = justext_rescue(copy(tree), options)
            except Exception:  # noqa: BLE001 - as trafilatura: a failed candidate is no candidate
                j_text = ""
        if len(j_text) > len(r_text) and len(j_text) > ESCALATION_JUSTEXT_RATIO * len(text):
            body, text = j_body, j_text
        elif len(r_text) >= options.min_extracted_size and len(r_text) > ESCALATION_ACCEPT_RATIO * len(text):
            body, text = r_body, r_text
    return body, text


def _extract_and_compare(tree: HtmlElement, options: Extractor) -> tuple[_Element, str]:
    """Clean a copy, convert its tags, run the main extractor; the full path then compares it with
    readability/jusText on the cleaned tree kept before conversion (a copy only that path reads)."""
    cleaned = tree_cleaning(copy(tree), options)
    backup = None if options.fast else copy(cleaned)
    cleaned = convert_tags(cleaned, options, options.url)
    body, text = extract_content(cleaned, options)
    if not options.fast:
        body, text = compare_extraction(backup, copy(tree), body, text, options)
    return body, text


# --------------------------------------------------------------------------- the XPath selections, as walks


def raw_prune_targets(tree: HtmlElement, prune_comments: bool = True) -> list[list[HtmlElement]]:
    """The elements each raw-tree prune deletes, in document order, as trafilatura evaluates them
    one after the other (`RAW_TREE_PRUNE_XPATH`'s two, then `REMOVE_COMMENTS_AND_LISTS_XPATH`).
    Every test reads only the element's own tag and attributes, except the infinite-scroll one's
    `<h1>` inside (it runs first), so one walk of the unpruned tree finds them all; an element
    inside one deleted earlier is listed too, like trafilatura's later XPath would not, but deleting
    it from the already detached subtree changes nothing."""
    scroll: list[HtmlElement] = []
    share: list[HtmlElement] = []
    comments: list[HtmlElement] = []
    for elem in tree.iter(*_RAW_PRUNE_TAGS):
        elem_class, elem_id = elem.get("class"), elem.get("id")
        if elem_class is None and elem_id is None:
            continue
        elem_class, elem_id, tag = elem_class or "", elem_id or "", elem.tag
        if tag in _SCROLL_TAGS:
            if (_SCROLL_RE.search(elem_id) or _SCROLL_RE.search(elem_class)) and (
                next(elem.iter("h1"), None) is None or _MVP_RE.search(elem_id) or _MVP_RE.search(elem_class)
            ):
                scroll.append(elem)
            if _SHARE_BAR in elem_class:
                share.append(elem)
        if prune_comments and tag in _COMMENT_TAGS:
            by_class = _COMMENT_CLASS_RE.search(elem_class)
            if tag == "ol" or tag == "ul":
                if by_class or _COMMENT_LIST_ID_RE.search(elem_id):
                    comments.append(elem)
            elif by_class or _COMMENT_ID_RE.search(elem_id):
                comments.append(elem)
    return [scroll, share, comments]


def _raw_pruned(tree: HtmlElement, prune_comments: bool) -> HtmlElement:
    """The raw tree after trafilatura's raw-tree prunes: `tree` itself when they delete nothing
    (most pages), else a pruned copy."""
    if not any(raw_prune_targets(tree, prune_comments)):
        return tree
    tree = copy(tree)
    for targets in raw_prune_targets(tree, prune_comments):
        for elem in targets:
            delete_element(elem)
    return tree


def basic_clean_targets(body: HtmlElement) -> list[HtmlElement]:
    """`BASIC_CLEAN_XPATH(body)` in document order: the named tags, a <div> whose first class or id
    attribute (in source order, as XPath's string of `@class|@id`) holds "footer", and any element
    whose class or id names a cookie banner."""
    found: list[HtmlElement] = []
    walk = body.iter()
    next(walk, None)  # ".//": the descendants only
    for elem in walk:
        tag = elem.tag
        if tag in _BASIC_CLEAN_TAGS:
            found.append(elem)
            continue
        elem_class, elem_id = elem.get("class"), elem.get("id")
        if elem_class is None and elem_id is None:
            continue
        if tag == "div":
            first = elem_class if elem_id is None else elem_id if elem_class is None else _first_of(elem, elem_class, elem_id)
            if "footer" in first:
                found.append(elem)
                continue
        if (elem_class is not None and _COOKIE_RE.search(elem_class)) or (elem_id is not None and _COOKIE_RE.search(elem_id)):
            found.append(elem)
    return found


def _first_of(elem: HtmlElement, elem_class: str, elem_id: str) -> str:
    for name in elem.keys():
        if name == "class":
            return elem_class
        if name == "id":
            return elem_id
    return elem_class


def _page_text_length(tree: HtmlElement) -> int:
    """len(trafilatura.html2txt(tree)): the text of the page's body after BASIC_CLEAN_XPATH's
    elements are deleted, block boundaries spaced, whitespace collapsed (on a copy)."""
    tree = copy(tree)
    body = tree.find(".//body")
    if body is None:
        body = tree
    for elem in basic_clean_targets(body):
        delete_element(elem)
    return len(_spaced_text(body))

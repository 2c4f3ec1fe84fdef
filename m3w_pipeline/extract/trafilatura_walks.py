"""trafilatura's XPath selections as Python walks: the same elements, in the same order.

trafilatura (the pinned 2.3.1) selects boilerplate with XPaths whose EXSLT `re:test` is a Python
callback per element tested, and libxml2 tests every element of `.//*` against a long predicate:
~0.5-3 ms per expression per page. A walk over the element tags an expression names, reading the
attributes it tests once, selects the same elements for a fraction of that. Each function here
states the XPath it stands for; tests/extract/test_main_text.py checks each one against
trafilatura's own expression on every corpus and sample-crawl page and on edge cases (attribute
order, case, nesting).

Semantics kept: `re:test(@a, p)` searches p in the first `a` attribute's value ("" when absent);
`re:test(@a|@b, p)` and `contains(@a|@b, s)` read whichever of the two attributes comes first in
the element's source order (XPath's string of a node-set); `.//*` is the descendants only.

Used by `main_text`: the raw-tree prunes and the page measure directly; `BODY_XPATH[0]` and
`OVERALL_DISCARD_XPATH`, which trafilatura's `extract_content` reads from its module, are put in
its place for the duration of our call (`in_extract_content`) and restored after.
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import trafilatura.main_extractor
from lxml.html import HtmlElement
from trafilatura.settings import _COOKIE_CONSENT_RE
from trafilatura.xpaths import (
    _ARTICLE_CONTENT_CLASS_TOKENS,
    _ARTICLE_CONTENT_ID_TOKENS,
    _COMMENTS_CLASS,
    _COMMENTS_ID,
    _CONSENT_ID_CLASS_TOKENS,
    _OVERALL_DISCARD_BOTH_TOKENS,
    _OVERALL_DISCARD_CLASS_TOKENS,
    _OVERALL_DISCARD_ID_TOKENS,
    BODY_XPATH,
    OVERALL_DISCARD_XPATH,
    _alt,
)

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
BASIC_CLEAN_TAGS = frozenset({"aside", "fencedframe", "footer", "script", "style", "svg", "template"})
_COOKIE_RE = re.compile(_COOKIE_CONSENT_RE, re.IGNORECASE)
_COOKIE_WORDS = ("cookie", "consent", "borlabs", "cmplz", "onetrust", "moove")  # each alternative holds one
# BODY_XPATH[0]: the first article/div/main/section named as the article's content
_BODY_TAGS = ("article", "div", "main", "section")
_BODY_CLASSES = frozenset({"post", "entry"})
_BODY_ID_RE = re.compile(_alt(_ARTICLE_CONTENT_ID_TOKENS))
_BODY_CLASS_RE = re.compile(_alt(_ARTICLE_CONTENT_CLASS_TOKENS))
# OVERALL_DISCARD_XPATH[0]: boilerplate blocks by role, data attributes, id and class words
_DISCARD_TAGS = frozenset({"div", "item", "list", "p", "section", "span"})
_DISCARD_BOTH_RE = re.compile(_alt(_CONSENT_ID_CLASS_TOKENS))  # on the first of id and class
_DISCARD_ID_RE = re.compile(_alt(_OVERALL_DISCARD_BOTH_TOKENS + _OVERALL_DISCARD_ID_TOKENS))
_DISCARD_CLASS_RE = re.compile(_alt(_OVERALL_DISCARD_BOTH_TOKENS + _OVERALL_DISCARD_CLASS_TOKENS))
# OVERALL_DISCARD_XPATH[1]: hidden elements and comment furniture, any tag
_HIDDEN_ID_RE = re.compile("reader-comments|akismet")
_HIDDEN_CLASS_RE = re.compile(
    "^hide-|comments-title|nocomments|-reply-|message|akismet|suggest-links|-hide-|hide-print| hidden| hide|noprint|notloaded"
)


def _first_value(items: list[tuple[str, str]], one: str, other: str) -> str:
    """XPath's string of `@one|@other`: the value of whichever comes first in source order, or ""."""
    for name, value in items:
        if name == one or name == other:
            return value
    return ""


# --------------------------------------------------------------------------- raw tree (main_text)


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


def basic_clean_targets(body: HtmlElement) -> list[HtmlElement]:
    """`BASIC_CLEAN_XPATH(body)` in document order: the named tags, a <div> whose first class or id
    attribute (in source order, as XPath's string of `@class|@id`) holds "footer", and any element
    whose class or id names a cookie banner."""
    walk = body.iter()
    next(walk, None)  # ".//": the descendants only
    return [elem for elem in walk if basic_cleaned(elem)]


def basic_cleaned(elem: HtmlElement) -> bool:
    """Whether BASIC_CLEAN_XPATH selects this (descendant) element."""
    tag = elem.tag
    if tag in BASIC_CLEAN_TAGS:
        return True
    elem_class, elem_id = elem.get("class"), elem.get("id")
    if elem_class is None and elem_id is None:
        return False
    if tag == "div":
        first = elem_class if elem_id is None else elem_id if elem_class is None else _first_value(elem.items(), "class", "id")
        if "footer" in first:
            return True
    return (elem_class is not None and _names_cookie_banner(elem_class)) or (elem_id is not None and _names_cookie_banner(elem_id))


def _names_cookie_banner(value: str) -> bool:
    """The cookie-banner regex (case-insensitive); an ASCII value that holds none of the words
    every match holds (`_COOKIE_WORDS`) is refused without it (most of this check's time)."""
    if value.isascii():
        low = value.lower()
        if not ("cookie" in low or "consent" in low or "borlabs" in low or "cmplz" in low or "onetrust" in low or "moove" in low):
            return False
    return _COOKIE_RE.search(value) is not None


# --------------------------------------------------------------------------- inside extract_content


def first_body(tree: HtmlElement) -> list[HtmlElement]:
    """`BODY_XPATH[0](tree)` as `_extract` reads it (its first element): the first article, div,
    main or section whose class is post or entry, itemprop articleBody, id articleContent, or
    whose id or class names article content. (The XPath's `[1]` keeps each parent's first such
    child; the first of those in document order is the first such element.)"""
    for elem in tree.iter(*_BODY_TAGS):
        if elem is tree:
            continue
        elem_class, elem_id = elem.get("class"), elem.get("id")
        if (
            elem_class in _BODY_CLASSES
            or elem_id == "articleContent"
            or elem.get("itemprop") == "articleBody"
            or (elem_id is not None and _BODY_ID_RE.search(elem_id))
            or (elem_class is not None and _BODY_CLASS_RE.search(elem_class))
        ):
            return [elem]
    return []


def overall_discard_targets(tree: HtmlElement) -> tuple[list[HtmlElement], list[HtmlElement]]:
    """`OVERALL_DISCARD_XPATH`'s two selections of `tree`'s descendants, in one walk. Every test
    reads an attribute, so an element without any is never selected."""
    blocks: list[HtmlElement] = []
    hidden: list[HtmlElement] = []
    walk = tree.iter()
    next(walk, None)
    for elem in walk:
        items = elem.items()
        if not items:
            continue
        attrs = dict(items)
        elem_class, elem_id, style = attrs.get("class"), attrs.get("id"), attrs.get("style")
        if elem.tag in _DISCARD_TAGS and (
            "data-lp-replacement-content" in attrs
            or "nav" in (attrs.get("role") or "").replace("N", "n")
            or "MostPopularStories" in (attrs.get("data-component") or "")
            or ((elem_id is not None or elem_class is not None) and _DISCARD_BOTH_RE.search(_first_value(items, "id", "class")))
            or (elem_id is not None and _DISCARD_ID_RE.search(elem_id))
            or (elem_class is not None and _DISCARD_CLASS_RE.search(elem_class))
        ):
            blocks.append(elem)
        if (
            elem_class == "comments-title"
            or attrs.get("aria-hidden") == "true"
            or ((elem_id is not None or elem_class is not None) and _first_value(items, "id", "class").startswith("reply-"))
            or ((elem_id is not None or style is not None) and "hidden" in _first_value(items, "id", "style"))
            or (style is not None and ("display:none" in style or "display: none" in style))
            or (elem_id is not None and _HIDDEN_ID_RE.search(elem_id))
            or (elem_class is not None and _HIDDEN_CLASS_RE.search(elem_class))
        ):
            hidden.append(elem)
    return blocks, hidden


class _OverallDiscard:
    """The two expressions trafilatura's prune calls one after the other on the same tree: the
    first walks once for both, the second returns the memo (or walks, for any other tree)."""

    def __init__(self) -> None:
        self._memo: Optional[tuple[HtmlElement, list[HtmlElement]]] = None

    def blocks(self, tree: HtmlElement) -> list[HtmlElement]:
        blocks, hidden = overall_discard_targets(tree)
        self._memo = (tree, hidden)
        return blocks

    def hidden(self, tree: HtmlElement) -> list[HtmlElement]:
        memo, self._memo = self._memo, None
        return memo[1] if memo is not None and memo[0] is tree else overall_discard_targets(tree)[1]


_LOCK = threading.Lock()
_users = 0
_MODULE: Any = trafilatura.main_extractor
_OURS = {"BODY_XPATH": [first_body, *BODY_XPATH[1:]]}
_THEIRS = {"BODY_XPATH": BODY_XPATH, "OVERALL_DISCARD_XPATH": OVERALL_DISCARD_XPATH}


@contextmanager
def in_extract_content() -> Iterator[None]:
    """Our walks in place of `BODY_XPATH[0]` and `OVERALL_DISCARD_XPATH` in trafilatura's
    main_extractor while the block runs (the first caller in puts them, the last out restores
    trafilatura's; a thread calling trafilatura meanwhile gets the same selections)."""
    global _users
    with _LOCK:
        if _users == 0:
            discard = _OverallDiscard()
            _MODULE.BODY_XPATH = _OURS["BODY_XPATH"]
            _MODULE.OVERALL_DISCARD_XPATH = [discard.blocks, discard.hidden]
        _users += 1
    try:
        yield
    finally:
        with _LOCK:
            _users -= 1
            if _users == 0:
                _MODULE.BODY_XPATH = _THEIRS["BODY_XPATH"]
                _MODULE.OVERALL_DISCARD_XPATH = _THEIRS["OVERALL_DISCARD_XPATH"]

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

from copy import copy
from functools import lru_cache
from typing import Any, Optional

import trafilatura
from lxml.etree import _Element, iterwalk
from lxml.html import HtmlElement
from trafilatura.baseline import _BLOCK_ELEMS, baseline
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
from trafilatura.settings import Extractor
from trafilatura.utils import remove_control_characters
from trafilatura.xml import delete_element

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.extract.trafilatura_walks import BASIC_CLEAN_TAGS, basic_cleaned, in_extract_content, raw_prune_targets

# html2txt's block elements: a space before their text and their tail
_SPACED_BLOCKS = frozenset(_BLOCK_ELEMS)
_XML_FORBIDDEN_SPACES = "\x0b\x0c\x1c\x1d\x1e\x1f"  # whitespace to str.isspace(), refused by lxml


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
    with in_extract_content():
        body, text = extract_content(cleaned, options)
    if not options.fast:
        body, text = compare_extraction(backup, copy(tree), body, text, options)
    return body, text


# --------------------------------------------------------------------------- raw-tree prunes and the page measure


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


def _page_text_length(tree: HtmlElement) -> int:
    """len(trafilatura.html2txt(tree)), without its copy of the page: the text of the body less
    BASIC_CLEAN_XPATH's elements (each one's tail stays, joined to the text before it), with a space
    before the text and the tail of every block element (whose text and tail, joined tails
    included, lose their control characters), whitespace collapsed.

    The text is read as runs, one per place html2txt's copy holds text (an element's text, or its
    tail): a deleted element's tail joins the run before it, as `delete_element` joins it."""
    body = tree.find(".//body")
    if body is None:
        body = tree
    out: list[str] = []
    run = ""
    run_in_block = False  # the run is a block element's text or tail: spaced and cleaned
    deleted = None
    walker = iterwalk(body, events=("start", "end"))
    for event, elem in walker:  # flat: a call per element only for those with a class or id
        tag = elem.tag
        if event == "start":
            if tag.__class__ is not str:  # a comment or processing instruction: no text of its own
                text = None
            elif elem is not body and (
                tag in BASIC_CLEAN_TAGS or ((elem.get("class") is not None or elem.get("id") is not None) and basic_cleaned(elem))
            ):
                walker.skip_subtree()
                deleted = elem
                continue
            else:
                text = elem.text
        elif elem is deleted:
            tail = elem.tail
            if tail:
                run += tail
            continue
        elif elem is body:
            continue
        else:
            text = elem.tail
        if run_in_block:
            out.append(" " + run if run.isprintable() else _spaced(run))
        elif run:
            out.append(run)
        run = text or ""
        run_in_block = tag in _SPACED_BLOCKS
    if run_in_block:
        out.append(" " + run if run.isprintable() else _spaced(run))
    else:
        out.append(run)
    return len(" ".join("".join(out).split()))


def _spaced(text: str) -> str:
    """A block element's text or tail as html2txt sets it: a space, then the text less its control
    characters; lxml refuses the whitespace controls XML forbids (html2txt then raises)."""
    if text.isprintable():
        return " " + text
    text = remove_control_characters(text)
    if any(char in text for char in _XML_FORBIDDEN_SPACES):
        raise ValueError("text with characters XML forbids")
    return " " + text

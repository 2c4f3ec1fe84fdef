"""Document and node filters: small named checks, each giving its drop reason or None.

This is the extension point for the quality suite. A filter is a `Check`: a name (the drop
reason it reports) and `passes(x)`, True for what stays. Lists of checks, in the order they run:

* `document_filters(config)`: cheap counts first, then the quality scores (computed once per
  document and shared through one `ScoreCache`); the first failing check names the drop.
* `text_node_filters(config)` / `image_node_filters(config)`: `filter_nodes` removes text nodes
  and images that fail them, keeping `texts`/`images` aligned and video positions valid.

`M3WFilters` runs them for the build (nodes, then the document) and records every outcome
in a Tally: stages `text_nodes`, `image_nodes` and `documents` (kept, or the failing check's
name); `enough_images_after_dedup` is the last check, stage `post_dedup`.
Thresholds are fields of `FilterConfig`; a check whose threshold disables it is not listed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

from m3w_pipeline.core.accounting import KEPT, Tally
from m3w_pipeline.core.config import FilterConfig
from m3w_pipeline.core.document import DocImage, Document, count_words, remove_positions, words
from m3w_pipeline.extract.lang import primary_subtag
from m3w_pipeline.filter.quality import ScoreCache, char_repetition_ratio, flagged_word_ratio, special_char_ratio

TEXT_NODES = "text_nodes"
IMAGE_NODES = "image_nodes"
DOCUMENTS = "documents"
POST_DEDUP = "post_dedup"


@dataclass(frozen=True)
class Check:
    """A named check: `passes(*item)` is True for what stays; calling it gives the drop reason or None."""

    name: str  # also the drop reason it reports
    passes: Callable[..., bool]

    def __call__(self, *item: Any) -> Optional[str]:
        return None if self.passes(*item) else self.name


def first_failure(checks: Sequence[Check], *item: Any) -> Optional[str]:
    """The name of the first check `item` fails, or None when it passes all."""
    for check in checks:
        reason = check(*item)
        if reason is not None:
            return reason
    return None


# ----------------------------------------------------------------------------- document level


def min_images_check(config: FilterConfig) -> Check:
    """Also run after dedup, which may remove images (`enough_images_after_dedup`)."""
    return Check("no-image", lambda doc: doc.n_images >= config.min_images_per_document)


def _score_at_most(scores: ScoreCache, name: str, limit: float, min_words: int) -> Callable[[Document], bool]:
    """Passes a score <= limit, a score that does not apply (None), and documents of fewer than
    `min_words` words (repetition statistics of a few dozen words are noise)."""

    def passes(doc: Document) -> bool:
        s = scores(doc)
        return s[name] is None or s["n_words"] < min_words or s[name] <= limit  # type: ignore[operator]

    return passes


def _score_at_least(scores: ScoreCache, name: str, limit: float) -> Callable[[Document], bool]:
    def passes(doc: Document) -> bool:
        value = scores(doc)[name]
        return value is None or value >= limit  # type: ignore[operator]

    return passes


def quality_filters(config: FilterConfig, scores: Optional[ScoreCache] = None) -> list[Check]:
    """Document-level quality checks, in order; all read one shared ScoreCache."""
    s = scores or ScoreCache(config)
    checks: list[Check] = []
    if config.languages:
        allowed = frozenset(primary_subtag(code) or code for code in config.languages)
        checks.append(Check("wrong-language", lambda doc: s(doc)["lang_id"] in allowed))
    if config.min_language_score > 0:
        checks.append(Check("low-language-score", _score_at_least(s, "lang_id_score", config.min_language_score)))
    repetition = config.min_words_for_repetition_filters
    at_most = (
        ("duplicate-lines", "dup_line_fraction", config.max_dup_line_fraction, repetition),
        ("duplicate-paragraphs", "dup_para_fraction", config.max_dup_para_fraction, repetition),
        ("duplicate-line-chars", "dup_line_char_fraction", config.max_dup_line_char_fraction, repetition),
        ("duplicate-paragraph-chars", "dup_para_char_fraction", config.max_dup_para_char_fraction, repetition),
        ("top-2gram", "top_2gram_char_fraction", config.max_top_2gram_char_fraction, repetition),
        ("top-3gram", "top_3gram_char_fraction", config.max_top_3gram_char_fraction, repetition),
        ("top-4gram", "top_4gram_char_fraction", config.max_top_4gram_char_fraction, repetition),
        ("duplicate-5grams", "dup_5gram_char_fraction", config.max_dup_5gram_char_fraction, repetition),
        ("duplicate-10grams", "dup_10gram_char_fraction", config.max_dup_10gram_char_fraction, repetition),
        ("char-repetition", "char_repetition_ratio", config.max_char_repetition_ratio, repetition),
        ("word-repetition", "word_repetition_ratio", config.max_word_repetition_ratio, repetition),
        ("flagged-words", "flagged_word_ratio", config.max_flagged_word_ratio, 0),
        ("special-chars", "special_char_ratio", config.max_special_char_ratio, 0),
    )
    for name, score, limit, min_words in at_most:
        if limit < 1.0:
            checks.append(Check(name, _score_at_most(s, score, limit, min_words)))
    at_least = (
        ("few-stopwords", "stopword_ratio", config.min_stopword_ratio),
        ("little-punctuation", "punctuation_ratio", config.min_punctuation_ratio),
    )
    for name, score, limit in at_least:
        if limit > 0.0:
            checks.append(Check(name, _score_at_least(s, score, limit)))
    return checks


def document_filters(config: FilterConfig, scores: Optional[ScoreCache] = None) -> list[Check]:
    """Every document-level check, cheapest first; the first failure names the drop.

    Pass `scores` to read the quality scores of a kept document afterwards without recomputing.
    """
    return [
        Check("too-few-words", lambda doc: doc.n_words >= config.min_words_per_document),
        min_images_check(config),
        Check("too-many-images", lambda doc: doc.n_images + doc.n_missing_images <= config.max_images_per_document),
        Check("too-many-words", lambda doc: doc.n_words <= config.max_words_per_document),
        *quality_filters(config, scores),
    ]


# ----------------------------------------------------------------------------- text nodes


def text_node_filters(config: FilterConfig) -> list[Check]:
    """Paragraph-level checks of (text, declared page language) (OBELICS node filters). The
    declared language picks the flagged-word list: node filters run before language identification."""
    low, high = config.min_words_per_text_node, config.max_words_per_text_node
    checks = [Check("text-node-word-count", lambda text, lang: low <= count_words(text) <= high)]
    if config.max_text_node_char_repetition_ratio < 1.0:
        n, limit = config.char_repetition_n, config.max_text_node_char_repetition_ratio
        checks.append(Check("text-node-char-repetition", lambda text, lang: char_repetition_ratio(text, n) <= limit))
    if config.max_text_node_special_char_ratio < 1.0:
        special = config.max_text_node_special_char_ratio
        checks.append(Check("text-node-special-chars", lambda text, lang: special_char_ratio(text) <= special))
    if config.max_text_node_flagged_word_ratio < 1.0:
        flagged = config.max_text_node_flagged_word_ratio
        checks.append(Check("text-node-flagged-words", lambda text, lang: flagged_word_ratio(words(text), lang) <= flagged))
    return checks


# ----------------------------------------------------------------------------- images


@lru_cache(maxsize=1)
def image_url_blocklist() -> tuple[re.Pattern[str], ...]:
    """Patterns from m3w_pipeline/data/image_url_blocklist.txt (documented there)."""
    text = resources.files("m3w_pipeline").joinpath("data", "image_url_blocklist.txt").read_text(encoding="utf-8")
    return tuple(re.compile(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def url_host_path(url: str) -> str:
    """'https://CDN.x.com/a/Logo.png?w=1' -> 'cdn.x.com/a/logo.png': what blocklist patterns see."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip().lower()
    return f"{(parts.hostname or '').lower()}{parts.path.lower()}"


def blocked_image_url(url: str) -> Optional[str]:
    """The first blocklist pattern matching `url`, or None."""
    target = url_host_path(url)
    for pattern in image_url_blocklist():
        if pattern.search(target):
            return pattern.pattern
    return None


def _resolved(test: Callable[[Any], bool]) -> Callable[[DocImage], bool]:
    """A check of the image bytes' properties: a missing image (no bytes yet) passes."""
    return lambda image: image.image is None or test(image.image)


def image_node_filters(config: FilterConfig) -> list[Check]:
    """Image checks: URL blocklist on every image; largest side and format on resolved ones (original
    sizes). The minimum side and the aspect ratio were checked once, before decoding (ImageConfig)."""
    checks = []
    if config.use_image_url_blocklist:
        checks.append(Check("image-url-blocklist", lambda image: blocked_image_url(image.ref.url) is None))
    high = config.max_image_side
    checks.append(Check("image-too-large", _resolved(lambda im: max(im.original_width, im.original_height) <= high)))
    if config.allowed_image_formats:
        allowed = frozenset(f.upper() for f in config.allowed_image_formats)
        checks.append(Check("image-format", _resolved(lambda im: im.original_format.upper() in allowed)))
    return checks


# ----------------------------------------------------------------------------- running them


def filter_nodes(
    doc: Document,
    config: FilterConfig,
    tally: Tally,
    text_checks: Optional[Sequence[Check]] = None,
    image_checks: Optional[Sequence[Check]] = None,
) -> Document:
    """`doc` without its failing text nodes and images; every node's outcome recorded in `tally`."""
    text_checks = text_node_filters(config) if text_checks is None else text_checks
    image_checks = image_node_filters(config) if image_checks is None else image_checks
    drop: set[int] = set()
    for i, (text, image) in enumerate(zip(doc.texts, doc.images)):
        if text is not None:
            reason = first_failure(text_checks, text, doc.lang)
            if reason is None:
                tally.add(TEXT_NODES, KEPT)
            else:
                drop.add(i)
                tally.drop(TEXT_NODES, reason, doc.key, doc.url, text[:200])
        elif image is not None:
            reason = first_failure(image_checks, image)
            if reason is None:
                tally.add(IMAGE_NODES, KEPT)
            else:
                drop.add(i)
                tally.drop(IMAGE_NODES, reason, doc.key, image.ref.url)
    return remove_positions(doc, drop)


class M3WFilters:
    """Every M3W filter of one worker, built once: node checks, document checks, one ScoreCache."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self.scores = ScoreCache(config)
        self.text_checks = text_node_filters(config)
        self.image_checks = image_node_filters(config)
        self.document_checks = document_filters(config, self.scores)

    def __call__(self, doc: Document, tally: Tally) -> Optional[Document]:
        """Nodes, then the document: the kept document with its quality scores, or None (recorded)."""
        doc = filter_nodes(doc, self.config, tally, self.text_checks, self.image_checks)
        reason = first_failure(self.document_checks, doc)
        if reason is not None:
            tally.drop(DOCUMENTS, reason, doc.key, doc.url)
            return None
        tally.add(DOCUMENTS, KEPT)
        doc.scores = self.scores(doc)
        return doc


def enough_images_after_dedup(doc: Document, config: FilterConfig, tally: Tally) -> bool:
    """After dedup removed hot and repeated images, a document may no longer have enough."""
    reason = min_images_check(config)(doc)
    if reason is not None:
        tally.drop(POST_DEDUP, reason, doc.key, doc.url)
        return False
    tally.add(POST_DEDUP, KEPT)
    return True

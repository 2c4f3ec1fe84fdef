"""Document and node filters: small named checks, each returning its drop reason or None.

This is the extension point for the quality suite.

* Document level: a filter is any callable `Document -> Optional[str]` with a `name`;
  `document_filters(config)` lists the active ones in the order they run (cheap counts
  first, then the quality scores, computed once per document and shared), and the first
  failing one names the drop.
* Node level: `filter_nodes(doc, config)` removes text nodes and images that fail
  `text_node_filters` / `image_node_filters`, keeping `texts`/`images` aligned and video
  positions valid, and reports every node's outcome under the stages `text_nodes` and
  `image_nodes` (in, kept, or the failing filter's name).

Thresholds are fields of `FilterConfig`; a check whose threshold disables it is not listed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Callable, Optional, Sequence
from urllib.parse import urlsplit

from m3w_pipeline.core.config import FilterConfig
from m3w_pipeline.core.document import DocImage, Document, DocVideo, count_words
from m3w_pipeline.extract.lang import primary_subtag
from m3w_pipeline.filter.quality import ScoreCache, char_repetition_ratio, flagged_word_ratio, special_char_ratio, words

TEXT_NODES = "text_nodes"
IMAGE_NODES = "image_nodes"
KEPT = "kept"
IN = "in"


@dataclass(frozen=True)
class Reject:
    """One rejected document or node, for the sample written beside the output."""

    stage: str
    reason: str
    key: str  # document key
    url: str  # document URL (image URL for image rejects)
    detail: str = ""  # e.g. the kept duplicate's key, the score, the start of a text node


# ----------------------------------------------------------------------------- document level


@dataclass(frozen=True)
class DocumentFilter:
    name: str  # also the drop reason it reports
    check: Callable[[Document], bool]  # True keeps the document

    def __call__(self, doc: Document) -> Optional[str]:
        return None if self.check(doc) else self.name


@dataclass(frozen=True)
class _MinWords:
    n: int

    def __call__(self, doc: Document) -> bool:
        return doc.n_words >= self.n


@dataclass(frozen=True)
class _MaxWords:
    n: int

    def __call__(self, doc: Document) -> bool:
        return doc.n_words <= self.n


@dataclass(frozen=True)
class _MinImages:
    n: int

    def __call__(self, doc: Document) -> bool:
        return doc.n_images >= self.n


@dataclass(frozen=True)
class _MaxImages:
    n: int

    def __call__(self, doc: Document) -> bool:
        return doc.n_images + doc.n_missing_images <= self.n


@dataclass(frozen=True)
class _ScoreAtMost:
    """Keeps a document whose score is <= limit, not applicable (None), or that has fewer
    than `min_words` words (repetition statistics of a few dozen words are noise)."""

    scores: ScoreCache = field(compare=False)
    score: str
    limit: float
    min_words: int = 0

    def __call__(self, doc: Document) -> bool:
        scores = self.scores(doc)
        value = scores[self.score]
        if value is None or scores["n_words"] < self.min_words:  # type: ignore[operator]
            return True
        return value <= self.limit  # type: ignore[operator]


@dataclass(frozen=True)
class _ScoreAtLeast:
    scores: ScoreCache = field(compare=False)
    score: str
    limit: float

    def __call__(self, doc: Document) -> bool:
        value = self.scores(doc)[self.score]
        return value is None or value >= self.limit  # type: ignore[operator]


@dataclass(frozen=True)
class _LanguageIn:
    scores: ScoreCache = field(compare=False)
    languages: frozenset[str]

    def __call__(self, doc: Document) -> bool:
        return self.scores(doc)["lang_id"] in self.languages


def quality_filters(config: FilterConfig, scores: Optional[ScoreCache] = None) -> list[DocumentFilter]:
    """Document-level quality checks, in order; all read one shared ScoreCache."""
    s = scores or ScoreCache(config)
    filters: list[DocumentFilter] = []
    if config.languages:
        allowed = frozenset(primary_subtag(code) or code for code in config.languages)
        filters.append(DocumentFilter("wrong-language", _LanguageIn(s, allowed)))
    if config.min_language_score > 0:
        filters.append(DocumentFilter("low-language-score", _ScoreAtLeast(s, "lang_id_score", config.min_language_score)))
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
            filters.append(DocumentFilter(name, _ScoreAtMost(s, score, limit, min_words)))
    at_least = (
        ("few-stopwords", "stopword_ratio", config.min_stopword_ratio),
        ("little-punctuation", "punctuation_ratio", config.min_punctuation_ratio),
    )
    for name, score, limit in at_least:
        if limit > 0.0:
            filters.append(DocumentFilter(name, _ScoreAtLeast(s, score, limit)))
    return filters


def document_filters(config: FilterConfig, scores: Optional[ScoreCache] = None) -> list[DocumentFilter]:
    """Every document-level filter, cheapest first; the first failure names the drop.

    Pass `scores` to read the quality scores of a kept document afterwards without recomputing.
    """
    return [
        DocumentFilter("too-few-words", _MinWords(config.min_words_per_document)),
        DocumentFilter("no-image", _MinImages(config.min_images_per_document)),
        DocumentFilter("too-many-images", _MaxImages(config.max_images_per_document)),
        DocumentFilter("too-many-words", _MaxWords(config.max_words_per_document)),
        *quality_filters(config, scores),
    ]


def first_failure(doc: Document, filters: Sequence[DocumentFilter]) -> Optional[str]:
    for f in filters:
        reason = f(doc)
        if reason is not None:
            return reason
    return None


# ----------------------------------------------------------------------------- text nodes


@dataclass(frozen=True)
class TextNodeFilter:
    name: str  # the node's drop reason
    check: Callable[[str, Optional[str]], bool]  # (text, declared language) -> keep?

    def __call__(self, text: str, lang: Optional[str] = None) -> Optional[str]:
        return None if self.check(text, lang) else self.name


@dataclass(frozen=True)
class _NodeWordsBetween:
    low: int
    high: int

    def __call__(self, text: str, lang: Optional[str]) -> bool:
        return self.low <= count_words(text) <= self.high


@dataclass(frozen=True)
class _NodeCharRepetition:
    n: int
    limit: float

    def __call__(self, text: str, lang: Optional[str]) -> bool:
        return char_repetition_ratio(text, self.n) <= self.limit


@dataclass(frozen=True)
class _NodeSpecialChars:
    limit: float

    def __call__(self, text: str, lang: Optional[str]) -> bool:
        return special_char_ratio(text) <= self.limit


@dataclass(frozen=True)
class _NodeFlaggedWords:
    limit: float

    def __call__(self, text: str, lang: Optional[str]) -> bool:
        return flagged_word_ratio(words(text), lang) <= self.limit


def text_node_filters(config: FilterConfig) -> list[TextNodeFilter]:
    """Paragraph-level checks (OBELICS node filters). The declared page language picks the
    flagged-word list: node filters run before language identification."""
    filters = [
        TextNodeFilter(
            "text-node-word-count", _NodeWordsBetween(config.min_words_per_text_node, config.max_words_per_text_node)
        )
    ]
    if config.max_text_node_char_repetition_ratio < 1.0:
        filters.append(
            TextNodeFilter(
                "text-node-char-repetition",
                _NodeCharRepetition(config.char_repetition_n, config.max_text_node_char_repetition_ratio),
            )
        )
    if config.max_text_node_special_char_ratio < 1.0:
        filters.append(TextNodeFilter("text-node-special-chars", _NodeSpecialChars(config.max_text_node_special_char_ratio)))
    if config.max_text_node_flagged_word_ratio < 1.0:
        filters.append(TextNodeFilter("text-node-flagged-words", _NodeFlaggedWords(config.max_text_node_flagged_word_ratio)))
    return filters


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


@dataclass(frozen=True)
class ImageNodeFilter:
    name: str
    check: Callable[[DocImage], bool]

    def __call__(self, image: DocImage) -> Optional[str]:
        return None if self.check(image) else self.name


def _not_blocked(image: DocImage) -> bool:
    return blocked_image_url(image.ref.url) is None


@dataclass(frozen=True)
class _ImageSides:
    low: int
    high: int
    check_low: bool

    def __call__(self, image: DocImage) -> bool:
        if image.image is None:  # missing: no size known yet
            return True
        w, h = image.image.original_width, image.image.original_height
        return min(w, h) >= self.low if self.check_low else max(w, h) <= self.high


@dataclass(frozen=True)
class _ImageAspect:
    limit: float

    def __call__(self, image: DocImage) -> bool:
        if image.image is None:
            return True
        w, h = image.image.original_width, image.image.original_height
        return min(w, h) > 0 and max(w, h) / min(w, h) <= self.limit


@dataclass(frozen=True)
class _ImageFormat:
    allowed: frozenset[str]

    def __call__(self, image: DocImage) -> bool:
        return image.image is None or image.image.original_format.upper() in self.allowed


def image_node_filters(config: FilterConfig) -> list[ImageNodeFilter]:
    """Image checks: URL blocklist on every image; size, aspect and format on resolved ones."""
    filters = []
    if config.use_image_url_blocklist:
        filters.append(ImageNodeFilter("image-url-blocklist", _not_blocked))
    filters += [
        ImageNodeFilter("image-too-small", _ImageSides(config.min_image_side, config.max_image_side, True)),
        ImageNodeFilter("image-too-large", _ImageSides(config.min_image_side, config.max_image_side, False)),
        ImageNodeFilter("image-bad-aspect", _ImageAspect(config.max_image_aspect_ratio)),
    ]
    if config.allowed_image_formats:
        allowed = frozenset(f.upper() for f in config.allowed_image_formats)
        filters.append(ImageNodeFilter("image-format", _ImageFormat(allowed)))
    return filters


# ----------------------------------------------------------------------------- node removal


def remove_positions(doc: Document, positions: set[int]) -> Document:
    """A copy of `doc` without the given positions; texts/images stay aligned and each
    video keeps its place relative to the nodes that remain."""
    if not positions:
        return doc
    keep = [i for i in range(len(doc.texts)) if i not in positions]
    videos = [DocVideo(v.position - sum(1 for p in positions if p < v.position), v.ref) for v in doc.videos]
    return replace(doc, texts=[doc.texts[i] for i in keep], images=[doc.images[i] for i in keep], videos=videos)


@dataclass
class NodeFilterResult:
    doc: Document
    counts: dict[tuple[str, str], int]  # (stage, outcome) -> n, stages text_nodes and image_nodes
    rejects: list[Reject]


def filter_nodes(
    doc: Document,
    config: FilterConfig,
    text_filters: Optional[Sequence[TextNodeFilter]] = None,
    image_filters: Optional[Sequence[ImageNodeFilter]] = None,
) -> NodeFilterResult:
    """Remove failing text nodes and images; every node counted under its outcome."""
    text_filters = text_node_filters(config) if text_filters is None else text_filters
    image_filters = image_node_filters(config) if image_filters is None else image_filters
    counts: dict[tuple[str, str], int] = {}
    rejects: list[Reject] = []
    drop: set[int] = set()

    def add(stage: str, outcome: str) -> None:
        counts[(stage, outcome)] = counts.get((stage, outcome), 0) + 1

    for i, (text, image) in enumerate(zip(doc.texts, doc.images)):
        if text is not None:
            add(TEXT_NODES, IN)
            reason = next((r for r in (f(text, doc.lang) for f in text_filters) if r is not None), None)
            if reason is not None:
                drop.add(i)
                rejects.append(Reject(TEXT_NODES, reason, doc.key, doc.url, text[:200]))
        elif image is not None:
            add(IMAGE_NODES, IN)
            reason = next((r for r in (f(image) for f in image_filters) if r is not None), None)
            if reason is not None:
                drop.add(i)
                rejects.append(Reject(IMAGE_NODES, reason, doc.key, image.ref.url))
        else:
            continue
        add(TEXT_NODES if text is not None else IMAGE_NODES, reason or KEPT)
    return NodeFilterResult(remove_positions(doc, drop), counts, rejects)

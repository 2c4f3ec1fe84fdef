"""Document filters: small named checks, each returning its drop reason or None.

This is the extension point for the quality suite: a filter is any callable
`Document -> Optional[str]` with a `name`; `document_filters(config)` lists the
active ones in the order they run, and the first failing one names the drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from m3w_pipeline.config import FilterConfig
from m3w_pipeline.document import Document


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
class _MinImages:
    n: int

    def __call__(self, doc: Document) -> bool:
        return doc.n_images >= self.n


@dataclass(frozen=True)
class _MaxImages:
    n: int

    def __call__(self, doc: Document) -> bool:
        return doc.n_images + doc.n_missing_images <= self.n


def document_filters(config: FilterConfig) -> list[DocumentFilter]:
    return [
        DocumentFilter("too-few-words", _MinWords(config.min_words_per_document)),
        DocumentFilter("no-image", _MinImages(config.min_images_per_document)),
        DocumentFilter("too-many-images", _MaxImages(config.max_images_per_document)),
    ]


def first_failure(doc: Document, filters: Sequence[DocumentFilter]) -> Optional[str]:
    for f in filters:
        reason = f(doc)
        if reason is not None:
            return reason
    return None

"""An M3W document: the extracted page with its images resolved, ready for filters and shards.

Positions follow the OBELICS layout: `texts[i]` and `images[i]` are aligned and
exactly one of them is set at each position, so page order is the list order.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Optional

from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, VideoRef
from m3w_pipeline.media.images import ImageResult, ProcessedImage
from m3w_pipeline.read.warc import Provenance, url_domain

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class DocImage:
    ref: ImageRef
    status: str  # "ok" (bytes present) or "missing" (not resolved yet: the fetch step may fill it)
    image: Optional[ProcessedImage] = None


@dataclass
class DocVideo:
    position: int  # index in texts/images before which the video stood
    ref: VideoRef


@dataclass
class Document:
    key: str
    url: str
    domain: str
    title: Optional[str]
    lang: Optional[str]
    provenance: Provenance
    texts: list[Optional[str]] = field(default_factory=list)
    images: list[Optional[DocImage]] = field(default_factory=list)
    videos: list[DocVideo] = field(default_factory=list)
    # Quality scores of the kept document (m3w_pipeline.filter.quality.document_scores), for the index.
    scores: dict = field(default_factory=dict)

    @property
    def n_words(self) -> int:
        return sum(count_words(t) for t in self.texts if t)

    @property
    def n_images(self) -> int:
        return sum(1 for im in self.images if im is not None and im.status == "ok")

    @property
    def n_missing_images(self) -> int:
        return sum(1 for im in self.images if im is not None and im.status == "missing")

    @property
    def n_text_nodes(self) -> int:
        return sum(1 for t in self.texts if t is not None)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def document_key(url: str, provenance: Provenance) -> str:
    """Stable across runs and machines; no dots, so webdataset splits KEY.N.jpg correctly."""
    basename = provenance.warc_file.rstrip("/").rsplit("/", 1)[-1]
    digest = hashlib.sha1(f"{basename}\n{provenance.offset}\n{url}".encode("utf-8")).hexdigest()
    return digest[:24]


def assemble_document(
    key: str, page: ExtractedPage, provenance: Provenance, image_results: dict[int, Optional[ImageResult]]
) -> tuple[Document, dict[str, int]]:
    """Place resolved images into the page order.

    `image_results[node_index]` is the outcome for that image node, or None when
    no bytes were found (the image stays, as missing). Images dropped by media
    checks leave the document. Returns the document and how many image nodes
    ended under each outcome, for the accounting.
    """
    doc = Document(key, page.url, url_domain(page.url), page.title, page.lang, provenance)
    outcomes: dict[str, int] = {}
    for index, node in enumerate(page.nodes):
        if node.type == "text" and node.text:
            doc.texts.append(node.text)
            doc.images.append(None)
        elif node.type == "image" and node.image is not None:
            result = image_results.get(index)
            if result is None:
                outcome = "missing"
                doc.texts.append(None)
                doc.images.append(DocImage(node.image, "missing"))
            elif result.image is not None:
                outcome = "resolved"
                doc.texts.append(None)
                doc.images.append(DocImage(node.image, "ok", result.image))
            else:
                outcome = result.reason
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        elif node.type == "video" and node.video is not None:
            doc.videos.append(DocVideo(len(doc.texts), node.video))
    return doc, outcomes

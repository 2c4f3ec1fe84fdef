"""An M3W document: the extracted page with its images resolved, ready for filters and shards.

Positions follow the OBELICS layout: `texts[i]` and `images[i]` are aligned and
exactly one of them is set at each position, so page order is the list order.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable, Optional, Sequence, TypeVar

from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, VideoRef
from m3w_pipeline.core.web import Provenance, url_domain
from m3w_pipeline.media.images import ImageResult, ProcessedImage

# A word is a maximal run of Unicode word characters. Every word count and word list of the
# pipeline (filters, quality scores, dedup keys and shingles, the shards' n_words) uses it.
WORD = re.compile(r"\w+", re.UNICODE)


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

    @cached_property
    def n_words(self) -> int:
        """Words in the text nodes (what the shards record); counted once per Document object
        (`dataclasses.replace`, which node removal uses, makes a new one)."""
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
    """Words in `text` as written: the count the shards record and word-count limits apply to."""
    return len(WORD.findall(text))


def words(text: str) -> list[str]:
    """The words of the lower-cased text: the tokens of the quality scores and of dedup.

    len(words(t)) == count_words(t) except for U+0130 (capital I with dot): lower-casing
    turns it into "i" + U+0307 (a combining mark, not a word character), which splits a word
    the original spelling keeps whole ("İstanbul": 1 word as written, "i" + "stanbul" here).
    Both counts are kept as they were so that outputs stay byte-identical.
    """
    return WORD.findall(text.lower())


def remove_positions(doc: Document, positions: set[int]) -> Document:
    """A copy of `doc` without the given positions; texts/images stay aligned and each
    video keeps its place relative to the nodes that remain."""
    if not positions:
        return doc
    keep = [i for i in range(len(doc.texts)) if i not in positions]
    videos = [DocVideo(v.position - sum(1 for p in positions if p < v.position), v.ref) for v in doc.videos]
    return replace(doc, texts=[doc.texts[i] for i in keep], images=[doc.images[i] for i in keep], videos=videos)


def document_key(url: str, provenance: Provenance) -> str:
    """Stable across runs and machines; no dots, so webdataset splits KEY.N.jpg correctly."""
    basename = provenance.warc_file.rstrip("/").rsplit("/", 1)[-1]
    digest = hashlib.sha1(f"{basename}\n{provenance.offset}\n{url}".encode("utf-8")).hexdigest()
    return digest[:24]


Record = TypeVar("Record")


def choose_record(records: Sequence[Record], referenced: bool, stage: str, tally: Tally) -> Record:
    """The one capture of a media URL to use, from its records in capture order: the most recent.

    The others are counted as `duplicate-url`, the chosen one as `used`, or `unreferenced`
    when no page refers to the URL."""
    *duplicates, chosen = records
    tally.add(stage, "duplicate-url", len(duplicates))
    tally.add(stage, "used" if referenced else "unreferenced")
    return chosen


def image_candidates(ref: ImageRef) -> list[str]:
    """Every URL of the picture, best first, without repeats: the join and the fetcher try them in this order."""
    return list(dict.fromkeys([ref.url, *ref.candidates]))


def choose_candidates(page: ExtractedPage, entries: Iterable[tuple[int, int, ImageResult]]) -> tuple[ExtractedPage, dict[int, ImageResult]]:
    """(node index, candidate rank, result) for whatever candidates the crawl or the fetcher had ->
    one result per image node: the best-ranked candidate that decoded, else the best-ranked failure.

    A node resolved through a candidate other than its first takes that candidate's URL, so the
    document names the bytes it holds (an archive often has only the variant the browser loaded).
    """
    best: dict[int, tuple[bool, int, ImageResult]] = {}
    for index, rank, result in entries:
        option = (result.image is None, rank, result)
        if index not in best or option[:2] < best[index][:2]:
            best[index] = option
    nodes = list(page.nodes)
    for index, (_, rank, _) in best.items():
        if rank > 0 and nodes[index].image is not None:
            image = nodes[index].image
            nodes[index] = replace(nodes[index], image=replace(image, url=image_candidates(image)[rank]))
    return replace(page, nodes=nodes), {index: result for index, (_, _, result) in best.items()}


def assemble_document(
    key: str, page: ExtractedPage, provenance: Provenance, image_results: dict[int, Optional[ImageResult]],
    images_opted_out: Optional[str] = None,
) -> tuple[Document, dict[str, int]]:
    """Place resolved images into the page order.

    `image_results[node_index]` is the outcome for that image node, or None when
    no bytes were found (the image stays, as missing). Images dropped by media
    checks leave the document, and so do all images of a page that opted them out
    (`images_opted_out` names the reason). Returns the document and how many image
    nodes ended under each outcome, for the accounting.
    """
    if images_opted_out:
        image_results = {i: ImageResult(None, images_opted_out) for i, n in enumerate(page.nodes) if n.type == "image"}
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

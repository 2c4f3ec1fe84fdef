"""Image-text pairs (ALIGN, LTIP) from assembled Documents, and the dedup of every sample kind.

Why from Documents: each page is read and parsed once (extract), each image decoded and
resized once (media); pairs reuse the `ProcessedImage` already in a `DocImage`. Pairs are
taken from EVERY assembled document, before the M3W document filters (too few words, no
image, too many images, quality): a page too short to be an M3W document can still hold a
good image with a good caption. The M3W node/document filters and dedup do not apply.

ALIGN (Jia et al. 2021): the image and its alt text.
LTIP ("long text & image pairs", Alayrac et al. 2022): the image and a longer description,
  from the first of `PairConfig.ltip_sources` that yields a valid caption:
  * figcaption: the caption of the <figure> around the image;
  * context: adjacent text that points at the image (`captions.context_caption`, with the
    media nouns of `PairConfig.context_cues`): "The picture above shows ...", "Below you
    can see ...", but not "We restored the photograph".
  An LTIP caption identical to the image's ALIGN caption is dropped (ltip-same-as-alt):
  the pair is already in ALIGN.

Captions of both kinds are cleaned and checked by `captions`, as video captions are.
Outcomes: "<kind>-no-alt", "<kind>-no-description", "<kind>-caption-<problem>".

Each (image, kind) is one candidate. A candidate with a valid caption whose image did not
resolve becomes a failed row, as img2dataset writes failed rows: status
"failed_to_download" for an image not in the crawl (outcome <kind>-image-missing) or
that the fetch stage could not fetch (<kind>-image-fetch-<status>), and
"failed_to_resize" for an image that did not decode or pass the media checks
(<kind>-image-<media reason>) or is smaller than `min_image_side` (<kind>-image-too-small).
Failed rows go to the Parquet index only, never to the tar.

Dedup: a pair's key is a hash of (kind, stored image sha256, caption), so identical pairs share
a key and land in the same shard, where the first by (page URL, doc key, position) is kept;
video samples (`video_samples`) are deduplicated the same way.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Optional, Protocol, Sequence, TypeVar

from m3w_pipeline.core.config import PairConfig
from m3w_pipeline.core.document import DocImage, Document, assemble_document
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.media.images import ImageResult, ProcessedImage
from m3w_pipeline.write.captions import caption_problem, clean_caption, context_caption

PAIR_KINDS: tuple[str, ...] = ("align", "ltip")
STATUS_SUCCESS = "success"
STATUS_FAILED_TO_DOWNLOAD = "failed_to_download"  # not in the crawl / not fetchable
STATUS_FAILED_TO_RESIZE = "failed_to_resize"  # image bytes did not decode or pass the checks


# ----------------------------------------------------------------------------- inputs


@dataclass
class FailedImage:
    """An image node whose bytes were found but dropped by the media checks (it left the Document)."""

    ref: ImageRef
    position: int  # index in doc.texts/images before which it stood
    reason: str  # an IMAGE_DROP_REASONS value
    detail: str = ""


@dataclass
class PairInput:
    """One assembled document plus the images that failed (pairs write failed rows for them)."""

    doc: Document
    failed_images: list[FailedImage] = field(default_factory=list)
    # The page's images may not be used (optout.PageOptOut.images, e.g. "opt-out-noimageai"):
    # no image pairs, and no video frames either.
    opted_out: Optional[str] = None


def assemble_pair_input(
    key: str, page: ExtractedPage, provenance: Provenance, image_results: dict[int, Optional[ImageResult]],
    opted_out: Optional[str] = None,
) -> PairInput:
    """`assemble_document`, keeping where each image that failed the media checks stood."""
    if opted_out:
        doc, _ = assemble_document(key, page, provenance, {})
        return PairInput(doc, [], opted_out)
    doc, _ = assemble_document(key, page, provenance, image_results)
    failed: list[FailedImage] = []
    position = 0
    for index, node in enumerate(page.nodes):  # the same walk as assemble_document
        if node.type == "text" and node.text:
            position += 1
        elif node.type == "image" and node.image is not None:
            result = image_results.get(index)
            if result is None or result.image is not None:
                position += 1
            else:
                failed.append(FailedImage(node.image, position, result.reason, result.detail))
    return PairInput(doc, failed)

# ----------------------------------------------------------------------------- image-text pairs


@dataclass
class Pair:
    """One image-text pair (status success), or a failed row for the index (image is None)."""

    key: str
    kind: str  # align | ltip
    status: str  # success | failed_to_download | failed_to_resize
    caption: str
    caption_source: str  # alt | figcaption | context
    url: str  # image URL
    page_url: str
    doc_key: str
    position: int  # index in doc.texts/images (failed images: before which they stood)
    lang: Optional[str]
    alt: Optional[str]
    title: Optional[str]
    provenance: Provenance
    image: Optional[ProcessedImage] = None
    error_message: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SUCCESS


@dataclass
class _ImageEntry:
    ref: ImageRef
    position: int
    before: int  # doc.texts index of the text before it
    after: int  # ... and after it
    image: Optional[ProcessedImage]
    reason: str  # ok | missing | a media drop reason
    detail: str = ""


def _image_entries(doc: Document, failed: Sequence[FailedImage]) -> list[_ImageEntry]:
    """Resolved, missing and failed images in page order."""
    entries: list[tuple[tuple[int, int], _ImageEntry]] = []
    for position, im in enumerate(doc.images):
        if isinstance(im, DocImage):
            reason = "ok" if im.status == "ok" and im.image is not None else "missing"
            entries.append(((position, 1), _ImageEntry(im.ref, position, position - 1, position + 1, im.image, reason)))
    for f in failed:  # stood just before doc position f.position
        entries.append(((f.position, 0), _ImageEntry(f.ref, f.position, f.position - 1, f.position, None, f.reason, f.detail)))
    return [entry for _, entry in sorted(entries, key=lambda e: e[0])]


def pair_key(kind: str, sha256: str, caption: str) -> str:
    """Equal for identical (kind, image, caption): the dedup key and the webdataset key."""
    return hashlib.sha1(f"{kind}\n{sha256}\n{caption}".encode("utf-8")).hexdigest()[:24]


def _failed_key(kind: str, doc_key: str, ordinal: int) -> str:
    return hashlib.sha1(f"{kind}\nfailed\n{doc_key}\n{ordinal}".encode("utf-8")).hexdigest()[:24]


def _align_caption(entry: _ImageEntry, config: PairConfig) -> tuple[str, str, Optional[str]]:
    """(caption, source, problem)."""
    if not entry.ref.alt or not entry.ref.alt.strip():
        return "", "alt", "no-alt"
    caption = clean_caption(entry.ref.alt, config)
    problem = caption_problem(caption, config.align_min_words, config.align_max_words, config, entry.ref.url)
    return caption, "alt", (f"caption-{problem}" if problem else None)


def _ltip_caption(doc: Document, entry: _ImageEntry, config: PairConfig) -> tuple[str, str, Optional[str]]:
    """The first valid description from ltip_sources; else the first source's problem."""
    first_problem: Optional[str] = None
    for source in config.ltip_sources:
        if source == "figcaption":
            text = entry.ref.caption
        elif source == "context":
            text = context_caption(doc, entry.before, entry.after, entry.ref.caption, config.context_cues, config)
        else:
            raise ValueError(f"unknown PairConfig.ltip_sources entry {source!r}")
        caption = clean_caption(text, config)
        if not caption:
            continue
        problem = caption_problem(caption, config.ltip_min_words, config.ltip_max_words, config, entry.ref.url)
        if problem is None:
            return caption, source, None
        first_problem = first_problem or f"caption-{problem}"
    return "", "", first_problem or "no-description"


def _image_failure(entry: _ImageEntry, config: PairConfig) -> Optional[tuple[str, str, str]]:
    """(outcome suffix, status, error message) when the image cannot make a pair."""
    if entry.reason == "missing":
        return "image-missing", STATUS_FAILED_TO_DOWNLOAD, "missing: the image is not in the crawl"
    if entry.reason.startswith("fetch-"):  # the fetch stage's failures (beam_jobs.fetch_stage)
        return f"image-{entry.reason}", STATUS_FAILED_TO_DOWNLOAD, f"{entry.reason}: {entry.detail}".rstrip(": ")
    if entry.image is None:
        return f"image-{entry.reason}", STATUS_FAILED_TO_RESIZE, f"{entry.reason}: {entry.detail}".rstrip(": ")
    side = min(entry.image.original_width, entry.image.original_height)
    if side < config.min_image_side:
        return "image-too-small", STATUS_FAILED_TO_RESIZE, f"too-small: min side {side} < {config.min_image_side}"
    return None


def extract_pairs(
    doc: Document, config: PairConfig = PairConfig(), failed_images: Sequence[FailedImage] = ()
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs (successes and failed rows) of one document and the outcome of every candidate.

    Candidates are (image, kind) for each image node (resolved, missing, or failed when
    `failed_images` is given) and each enabled kind; outcomes: kept-<kind> or
    <kind>-<drop reason> (see the module doc). sum(outcomes) == candidates.
    """
    kinds = [k for k in PAIR_KINDS if getattr(config, k)]
    pairs: list[Pair] = []
    outcomes: dict[str, int] = {}
    for ordinal, entry in enumerate(_image_entries(doc, failed_images)):
        align_caption = ""
        for kind in kinds:
            if kind == "align":
                caption, source, problem = _align_caption(entry, config)
                align_caption = "" if problem else caption
            else:
                caption, source, problem = _ltip_caption(doc, entry, config)
                if problem is None and align_caption and caption.casefold() == align_caption.casefold():
                    problem = "same-as-alt"
            pair, outcome = _candidate(doc, entry, ordinal, kind, caption, source, problem, config)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if pair is not None:
                pairs.append(pair)
    return pairs, outcomes


def _candidate(
    doc: Document, entry: _ImageEntry, ordinal: int, kind: str, caption: str, source: str,
    problem: Optional[str], config: PairConfig,
) -> tuple[Optional[Pair], str]:
    if problem is not None:
        return None, f"{kind}-{problem}"
    common = dict(kind=kind, caption=caption, caption_source=source, url=entry.ref.url, page_url=doc.url,
                  doc_key=doc.key, position=entry.position, lang=doc.lang, alt=entry.ref.alt,
                  title=entry.ref.title, provenance=doc.provenance)
    failure = _image_failure(entry, config)
    if failure is not None:
        outcome, status, message = failure
        return Pair(key=_failed_key(kind, doc.key, ordinal), status=status, error_message=message, **common), f"{kind}-{outcome}"
    assert entry.image is not None
    key = pair_key(kind, entry.image.sha256, caption)
    return Pair(key=key, status=STATUS_SUCCESS, image=entry.image, **common), f"kept-{kind}"


# ----------------------------------------------------------------------------- dedup


class DedupSample(Protocol):
    """What dedup reads of a sample: a `Pair` or a `video_samples.VideoSample`."""

    @property
    def key(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def page_url(self) -> str: ...
    @property
    def doc_key(self) -> str: ...
    @property
    def position(self) -> int: ...


Sample = TypeVar("Sample", bound=DedupSample)


def dedup_samples(samples: Iterable[Sample]) -> tuple[list[Sample], int]:
    """Successful samples with distinct keys (first by page URL, doc key, position) and the
    number of duplicates removed; failed rows pass through untouched."""
    best: dict[str, Sample] = {}
    failed: list[Sample] = []
    duplicates = 0
    for sample in samples:
        if not sample.ok:
            failed.append(sample)
            continue
        current = best.get(sample.key)
        if current is not None:
            duplicates += 1
            if _rank(sample) >= _rank(current):
                continue
        best[sample.key] = sample
    return list(best.values()) + failed, duplicates


def _rank(sample: Sample) -> tuple[str, str, int]:
    return (sample.page_url, sample.doc_key, sample.position)

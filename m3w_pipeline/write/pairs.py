"""Image-text (ALIGN, LTIP) and video-text (VTP) candidates from assembled Documents.

Why from Documents: each page is read and parsed once (extract), each image decoded and
resized once (media); pairs reuse the `ProcessedImage` already in a `DocImage`. Pairs are
taken from EVERY assembled document, before the M3W document filters (too few words, no
image, too many images, quality): a page too short to be an M3W document can still hold a
good image with a good caption. The M3W node/document filters and dedup do not apply.

ALIGN (Jia et al. 2021): the image and its alt text.
LTIP ("long text & image pairs", Alayrac et al. 2022): the image and a longer description,
  from the first of `PairConfig.ltip_sources` that yields a valid caption:
  * figcaption: the caption of the <figure> around the image;
  * context: the text node right after the image, then the one right before it
    (`context_order`), skipping the image's own figcaption text node. With
    `context_requires_cue`, only sentences that point at an image count: two of {a media
    noun (`context_cues`), a pointer ("this", "shows", "see"), a direction ("above",
    "below")}, or a strong cue ("pictured"): "The picture above shows ...", "Below you can
    see ...", but not "We restored the photograph". A sentence after the image that only
    points forward ("below") belongs to the next image, one before it that only points
    back ("above") to the previous one. `context_scope` keeps the pointing sentences
    ("sentence") or the whole text node ("paragraph").
  An LTIP caption identical to the image's ALIGN caption is dropped (ltip-same-as-alt):
  the pair is already in ALIGN.

Caption cleaning (both kinds, and video captions): NFC, control and zero-width characters
removed, whitespace collapsed, wrapping quotes removed, photo credits ("Photo: X",
"(Foto: dpa)", "Illustration by X.") and figure labels ("Figure 3:") stripped. A caption
is then dropped when it is a URL, a file name (or the stem of the image's own file name),
a placeholder ("image", "Logo", "IMG_1234", "photo 2"), not language (mostly digits and
symbols), too short or too long for its kind, or (when `languages` is set) in another
language. Outcomes: "<kind>-no-alt", "<kind>-no-description", "<kind>-caption-<problem>".

Each (image, kind) is one candidate. A candidate with a valid caption whose image did not
resolve becomes a failed row, as img2dataset writes failed rows: status
"failed_to_download" for an image not in the crawl (outcome <kind>-image-missing) or
that the fetch stage could not fetch (<kind>-image-fetch-<status>), and
"failed_to_resize" for an image that did not decode or pass the media checks
(<kind>-image-<media reason>) or is smaller than `min_image_side` (<kind>-image-too-small).
Failed rows go to the Parquet index only, never to the tar.

Dedup: a pair's key is a hash of (kind, image sha256, caption), so identical pairs share
a key and land in the same shard, where the first by (page URL, doc key, position) is kept.

Video candidates: every DocVideo is a candidate. Its sources that can be fetched from the
crawl (http(s) files; not HLS/DASH manifests, embed players, blob: or data: URLs) are joined
with the crawl's records by normalised URL; a candidate with none is recorded as a failed
row with its reason. Its caption is the first valid of `VideoConfig.caption_sources`:
figcaption, title (the title or aria-label attribute), context (adjacent text pointing at
the video, `VideoConfig.context_cues`, same rule as LTIP), track (WebVTT cue text, when a
<track> file is in the crawl), page-title.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union
from urllib.parse import unquote, urlsplit

from m3w_pipeline.core.config import PairConfig, VideoConfig
from m3w_pipeline.core.document import DocImage, Document, assemble_document, count_words
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, VideoRef
from m3w_pipeline.media.images import ImageResult, ProcessedImage
from m3w_pipeline.media.video import ProcessedVideo, VideoProbe, VideoResult
from m3w_pipeline.read.warc import Provenance

PAIR_KINDS: tuple[str, ...] = ("align", "ltip")
STATUS_SUCCESS = "success"
STATUS_FAILED_TO_DOWNLOAD = "failed_to_download"  # not in the crawl / not fetchable
STATUS_FAILED_TO_RESIZE = "failed_to_resize"  # image bytes did not decode or pass the checks
STATUS_FAILED_TO_SUBSAMPLE = "failed_to_subsample"  # video bytes did not decode or pass the checks
VIDEO_CANDIDATE = "candidate"

_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028\u2029\u2060\ufeff]")
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u201e": "\u201c", "\u2018": "\u2019", "\u00ab": "\u00bb", "\u201d": "\u201d"}
_CREDIT_TAIL = re.compile(
    r"(?:^|(?<=[.;|])\s*|\s[-\u2013\u2014]\s*|\s*(?=\()|\s+(?=\u00a9))\(?\s*"
    r"(?:(?:photo(?:graph)?|image|picture|foto|bild|credit|source|quelle|fuente|illustration|courtesy)s?"
    r"(?:\s*:|\s+by\b|\s+credit\s*:?)|\u00a9|\(c\))"
    r"[^.()]{1,80}\)?\.?\s*$",
    re.IGNORECASE,
)
_FIGURE_LABEL = re.compile(r"^(?:fig(?:ure)?|abb(?:ildung)?|plate|image|photo)\.?\s*\d+[a-z]?\s*[:.)\u2013\u2014-]\s*", re.IGNORECASE)
_URLISH = re.compile(r"(?:[a-z][a-z0-9+.-]*:|www\.|//)\S+", re.IGNORECASE)
_MEDIA_EXT = r"(?:jpe?g|png|gif|webp|bmp|svg|tiff?|heic|avif|ico|mp4|m4v|webm|mov|ogv|avi|mkv)"
_FILENAME = re.compile(r"[\w\-.,()+~ ]*\." + _MEDIA_EXT, re.IGNORECASE)
_CAMERA = re.compile(r"(?:img|dsc[nf]?|pxl|mvimg|vid|pano|gopr|dji|sam|wp|p|image|photo|pic|scan|screenshot)[-_ ]?\d[\d_ .-]*", re.IGNORECASE)
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_EMBED_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com", "vimeo.com", "dailymotion.com", "dai.ly",
                "facebook.com", "twitch.tv", "tiktok.com", "instagram.com", "brightcove.net", "jwplayer.com",
                "wistia.com", "streamable.com")
_MANIFESTS = {".m3u8": "hls-manifest", ".m3u": "hls-manifest", ".mpd": "dash-manifest", ".f4m": "stream-manifest",
              ".ism": "stream-manifest", ".isml": "stream-manifest"}


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


# ----------------------------------------------------------------------------- captions


def clean_caption(text: Optional[str], config: PairConfig = PairConfig()) -> str:
    """One spelling of a caption: see the module doc. Empty when nothing is left."""
    if not text:
        return ""
    text = " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", text)).split())
    text = _strip_quotes(text)
    if config.strip_figure_labels:
        text = _FIGURE_LABEL.sub("", text)
    if config.strip_credits:
        stripped = _CREDIT_TAIL.sub("", text).strip()
        text = stripped if stripped else ""
    return _strip_quotes(text.strip(" \t-\u2013\u2014|:;,"))


def _strip_quotes(text: str) -> str:
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def caption_problem(
    text: str, min_words: int, max_words: int, config: PairConfig = PairConfig(), url: Optional[str] = None
) -> Optional[str]:
    """Why a cleaned caption is not a caption (url, filename, placeholder, not-language,
    too-short, too-long, language), or None when it is one."""
    if not text:
        return "empty"
    if _URLISH.fullmatch(text) or (" " not in text and "/" in text and "." in text):
        return "url"
    if _FILENAME.fullmatch(text) or (url is not None and _is_file_stem(text, url)):
        return "filename"
    if _CAMERA.fullmatch(text) or _only_placeholders(text, config):
        return "placeholder"
    if not _looks_like_language(text, config):
        return "not-language"
    words = count_words(text)
    if words < min_words:
        return "too-short"
    if words > max_words or len(text) > config.max_caption_chars:
        return "too-long"
    if config.languages and not _in_languages(text, config):
        return "language"
    return None


def _is_file_stem(text: str, url: str) -> bool:
    """Alt text that merely repeats the file name ("kumara4" for .../Kumara4.jpg)."""
    stem = unquote(urlsplit(url).path.rsplit("/", 1)[-1]).rsplit(".", 1)[0]
    squash = lambda s: re.sub(r"[\W_]+", "", s.lower())  # noqa: E731
    return bool(stem) and squash(text) == squash(stem)


def _only_placeholders(text: str, config: PairConfig) -> bool:
    tokens = _LETTERS.findall(text.lower())
    return bool(tokens) and len(tokens) <= 3 and all(t in config.placeholder_words for t in tokens)


def _looks_like_language(text: str, config: PairConfig) -> bool:
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if not chars or letters / len(chars) < config.min_letter_ratio:
        return False
    tokens = text.split()
    wordlike = [t for t in tokens if sum(c.isalpha() for c in t) >= 2 and not any(c.isdigit() for c in t)]
    return len(wordlike) / len(tokens) >= config.min_word_token_ratio


def _in_languages(text: str, config: PairConfig) -> bool:
    from m3w_pipeline.extract.lang import identify_language, primary_subtag

    guess = identify_language(text)
    wanted = {primary_subtag(code) for code in config.languages}
    return guess.lang in wanted and guess.score >= config.min_language_score


def describing_text(
    text: str, direction: str, cues: Sequence[str], config: PairConfig, requires_cue: Optional[bool] = None
) -> Optional[str]:
    """The part of an adjacent text node that describes the media next to it, or None.

    `direction` says where the text stands relative to the media: "after" or "before".
    """
    requires_cue = config.context_requires_cue if requires_cue is None else requires_cue
    if not requires_cue:
        return text
    nouns, pointers, strong = set(cues), set(config.context_pointers), set(config.context_strong_cues)
    forward, backward = set(config.context_forward_cues), set(config.context_backward_cues)
    hits = []
    for sentence in _SENTENCE_END.split(text):
        words = {w.lower() for w in _WORD.findall(sentence)}
        kinds = sum(bool(words & group) for group in (nouns, pointers, forward | backward))
        if kinds < 2 and not words & strong:
            continue
        if direction == "after" and words & forward and not words & backward:
            continue
        if direction == "before" and words & backward and not words & forward:
            continue
        hits.append(sentence.strip())
    if not hits:
        return None
    return " ".join(hits) if config.context_scope == "sentence" else text


def _neighbour(doc: Document, index: int, step: int, skip: str) -> Optional[str]:
    """The text at `index` (moving by `step` past the media's own figcaption node), or None at an image."""
    while 0 <= index < len(doc.texts):
        text = doc.texts[index]
        if text is None:
            return None
        if skip and clean_caption(text) == skip:
            index += step
            continue
        return text
    return None


def context_caption(
    doc: Document, before: int, after: int, own_caption: Optional[str], cues: Sequence[str], config: PairConfig
) -> Optional[str]:
    """The first describing adjacent text (see the module doc); `before`/`after` index doc.texts."""
    skip = clean_caption(own_caption, config) if own_caption else ""
    for direction in config.context_order:
        index, step = (after, 1) if direction == "after" else (before, -1)
        text = _neighbour(doc, index, step, skip)
        if text:
            found = describing_text(text, direction, cues, config)
            if found:
                return found
    return None


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


Sample = Union[Pair, "VideoSample"]


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


# ----------------------------------------------------------------------------- video-text


@dataclass
class VideoCandidate:
    """One <video>/og:video of a document: where its bytes may be, and its text (no bytes)."""

    key: str  # unique per (document, video)
    doc_key: str
    index: int  # in doc.videos
    position: int  # the DocVideo position (doc.texts index before which the video stood)
    page_url: str
    origin: str  # video-tag | og-video | iframe
    sources: list[str]  # as on the page, best first
    fetchable: list[str]  # the sources worth joining with the crawl, best first
    poster: Optional[str]
    tracks: list[str]
    captions: dict[str, str]  # caption source -> valid cleaned caption (no "track" yet)
    lang: Optional[str]
    provenance: Provenance
    reason: str = VIDEO_CANDIDATE  # or why no source can be fetched


@dataclass
class VideoSample:
    """A video-text sample (status success) or a failed row (video is None)."""

    key: str
    status: str  # success | failed_to_download | failed_to_subsample
    candidate: VideoCandidate
    url: Optional[str]  # the source whose bytes were used (or tried)
    caption: Optional[str]
    caption_source: Optional[str]
    video: Optional[ProcessedVideo] = None
    probe: Optional[VideoProbe] = None
    error_message: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SUCCESS

    @property
    def page_url(self) -> str:
        return self.candidate.page_url

    @property
    def doc_key(self) -> str:
        return self.candidate.doc_key

    @property
    def position(self) -> int:
        return self.candidate.position


def unfetchable_reason(url: str) -> Optional[str]:
    """Why a video source URL is not a file we can take from the crawl, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "bad-url"
    scheme = parts.scheme.lower()
    if scheme == "blob":
        return "blob-url"
    if scheme == "data":
        return "data-url"
    if scheme not in ("http", "https"):
        return "unsupported-scheme"
    host = (parts.hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in _EMBED_HOSTS):
        return "embed-player"
    path = parts.path.lower()
    for ext, reason in _MANIFESTS.items():
        if path.endswith(ext):
            return reason
    return None


def video_key(sha256: str, caption: str) -> str:
    return hashlib.sha1(f"video\n{sha256}\n{caption}".encode("utf-8")).hexdigest()[:24]


def video_candidates(
    doc: Document, config: VideoConfig = VideoConfig(), caption_config: PairConfig = PairConfig()
) -> list[VideoCandidate]:
    """One candidate per DocVideo, with its fetchable sources and its non-track captions."""
    out = []
    for index, dv in enumerate(doc.videos):
        ref = dv.ref
        reasons = [unfetchable_reason(u) for u in ref.sources]
        fetchable = [u for u, r in zip(ref.sources, reasons) if r is None]
        reason = VIDEO_CANDIDATE if fetchable else (next((r for r in reasons if r), None) or "no-source")
        key = hashlib.sha1(f"{doc.key}\nvideo\n{index}".encode("utf-8")).hexdigest()[:24]
        out.append(VideoCandidate(
            key=key, doc_key=doc.key, index=index, position=dv.position, page_url=doc.url, origin=ref.origin,
            sources=list(ref.sources), fetchable=fetchable, poster=ref.poster, tracks=list(ref.tracks),
            captions=_video_captions(doc, dv.position, ref, config, caption_config), lang=doc.lang,
            provenance=doc.provenance, reason=reason,
        ))
    return out


def _video_captions(doc: Document, position: int, ref: VideoRef, config: VideoConfig, caption_config: PairConfig) -> dict[str, str]:
    """Valid cleaned captions by source (see the module doc)."""
    raw = {
        "figcaption": ref.caption,
        "title": ref.title,
        "context": context_caption(doc, position - 1, position, ref.caption, config.context_cues, caption_config),
        "page-title": doc.title,
    }
    url = ref.sources[0] if ref.sources else None
    out = {}
    for source, text in raw.items():
        caption = clean_caption(text, caption_config)
        if caption and caption_problem(caption, config.caption_min_words, config.caption_max_words, caption_config, url) is None:
            out[source] = caption
    return out


def track_caption(text: Optional[str], config: VideoConfig, caption_config: PairConfig) -> Optional[str]:
    """A cleaned WebVTT cue text, when it passes the caption checks."""
    caption = clean_caption(text, caption_config)
    ok = caption and caption_problem(caption, config.caption_min_words, config.caption_max_words, caption_config) is None
    return caption if ok else None


def choose_video_caption(candidate: VideoCandidate, track: Optional[str], config: VideoConfig) -> tuple[Optional[str], Optional[str]]:
    """(caption, source) by `config.caption_sources`, or (None, None)."""
    captions = dict(candidate.captions)
    if track:
        captions["track"] = track
    for source in config.caption_sources:
        if captions.get(source):
            return captions[source], source
    return None, None


def unfetchable_sample(candidate: VideoCandidate, config: VideoConfig) -> VideoSample:
    """The failed row of a candidate with no source to fetch (HLS, embed player, blob:, none)."""
    caption, source = choose_video_caption(candidate, None, config)
    return VideoSample(candidate.key, STATUS_FAILED_TO_DOWNLOAD, candidate, candidate.sources[0] if candidate.sources else None,
                       caption, source, error_message=f"{candidate.reason}: not fetched")


def build_video_sample(
    candidate: VideoCandidate,
    results: Sequence[tuple[int, str, VideoResult]],
    tracks: Sequence[tuple[int, str]],
    config: VideoConfig,
) -> tuple[Optional[VideoSample], str]:
    """The sample of a fetchable candidate from its sources' results (rank, url, result) and
    track texts (rank, valid caption); returns (sample or failed row or None, outcome).

    The best-ranked source that processed ok wins; with none ok, the best-ranked failure
    names the outcome (a VIDEO_DROP_REASONS value, or fetch-<status> for a fetch that failed:
    then the row is failed_to_download); with no record for any source,
    "not-in-crawl". A video without any valid caption is dropped as "no-caption".
    """
    track = min(tracks)[1] if tracks else None
    caption, source = choose_video_caption(candidate, track, config)
    ok = sorted((r for r in results if r[2].video is not None), key=lambda r: r[0])
    if ok:
        _, url, result = ok[0]
        assert result.video is not None
        if caption is None:
            return None, "no-caption"
        key = video_key(result.video.sha256, caption)
        return VideoSample(key, STATUS_SUCCESS, candidate, url, caption, source, result.video, result.video.probe,
                           result.video.decode_error or None), "kept"
    if results:
        _, url, result = min(results, key=lambda r: r[0])
        message = f"{result.reason}: {result.detail}".rstrip(": ")
        status = STATUS_FAILED_TO_DOWNLOAD if result.reason.startswith("fetch-") else STATUS_FAILED_TO_SUBSAMPLE
        return VideoSample(candidate.key, status, candidate, url, caption, source,
                           probe=result.probe, error_message=message), result.reason
    url = candidate.fetchable[0] if candidate.fetchable else None
    return VideoSample(candidate.key, STATUS_FAILED_TO_DOWNLOAD, candidate, url, caption, source,
                       error_message="not-in-crawl: no record for any source"), "not-in-crawl"

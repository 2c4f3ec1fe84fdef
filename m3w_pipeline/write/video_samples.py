"""Video-text (VTP) samples from assembled Documents: candidates, captions, and the sample of each.

Every DocVideo is a candidate. Its sources that can be fetched from the crawl (http(s) files;
not HLS/DASH manifests, embed players, blob: or data: URLs) are joined with the crawl's
records by normalised URL; a candidate with none is recorded as a failed row with its
reason. Its caption is the first valid of `VideoConfig.caption_sources`: figcaption, title
(the title or aria-label attribute), context (adjacent text pointing at the video,
`VideoConfig.context_cues`, the same rule as LTIP: `captions.context_caption`), track (WebVTT
cue text, when a <track> file is in the crawl), page-title. Statuses and dedup are those of
the image-text pairs (`pairs.STATUS_*`, `pairs.dedup_samples`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence
from urllib.parse import urlsplit

from m3w_pipeline.core.config import PairConfig, VideoConfig
from m3w_pipeline.core.document import Document
from m3w_pipeline.core.nodes import VideoRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.media.video import ProcessedVideo, VideoProbe, VideoResult
from m3w_pipeline.write.captions import caption_problem, clean_caption, context_caption
from m3w_pipeline.write.pairs import STATUS_FAILED_TO_DOWNLOAD, STATUS_SUCCESS

STATUS_FAILED_TO_SUBSAMPLE = "failed_to_subsample"  # video bytes did not decode or pass the checks
VIDEO_CANDIDATE = "candidate"
_EMBED_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com", "vimeo.com", "dailymotion.com", "dai.ly",
                "facebook.com", "twitch.tv", "tiktok.com", "instagram.com", "brightcove.net", "jwplayer.com",
                "wistia.com", "streamable.com")
_MANIFESTS = {".m3u8": "hls-manifest", ".m3u": "hls-manifest", ".mpd": "dash-manifest", ".f4m": "stream-manifest",
              ".ism": "stream-manifest", ".isml": "stream-manifest"}


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

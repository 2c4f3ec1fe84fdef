"""Corpus statistics: counts, distributions, quality scores, top domains and languages.

One library function, `shard_stats`, turns one shard into a mergeable `CorpusStats`
partial; `compute_stats` merges them locally and `beam_jobs/stats_job.py` merges the
very same partials with a CombineFn, so both paths give identical numbers. The quality
scores come from the Parquet index whatever the source (the tars do not hold them).
`inspect.summary` turns merged statistics and the manifest (funnel, limits) into the report.

Files are read through an `Opener` (path -> binary stream) that the caller supplies:
plain `open` for local paths here, Beam's FileSystems (gs://, s3://) in the CLI and
Beam layers; finding shards and walking tars is `inspect.corpus`. This module never
imports apache_beam.
"""
from __future__ import annotations

import io
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Sequence

import pyarrow.parquet as pq

from m3w_pipeline.core.document import count_words
from m3w_pipeline.core.web import url_domain
from m3w_pipeline.inspect.corpus import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    Corpus,
    Opener,
    Sample,
    ShardRef,
    group_samples,
    iter_tar_members,
    open_local,
    read_member_at,
    sample_json,
    sample_text,
    seekable,
)
from m3w_pipeline.write.shards import SCORE_COLUMNS

TokenCounter = Callable[[str], int]


# ----------------------------------------------------------------------------- mergeable statistics


@dataclass
class ValueCounts:
    """Exact counts of (quantised) values: a mergeable histogram, so shard partials add up exactly."""

    counts: Counter = field(default_factory=Counter)

    def add(self, value: float, n: int = 1) -> None:
        self.counts[value] += n

    def merge(self, other: "ValueCounts") -> None:
        self.counts.update(other.counts)

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> float:
        return sum(v * c for v, c in self.counts.items())

    def quantile(self, q: float) -> Optional[float]:
        """The smallest value with at least q of the mass at or below it (exact on the quantised values)."""
        n = self.n
        if n == 0:
            return None
        need = max(1, math.ceil(q * n))
        seen = 0
        for v in sorted(self.counts):
            seen += self.counts[v]
            if seen >= need:
                return v
        return max(self.counts)

    def summary(self) -> dict[str, Any]:
        n = self.n
        if n == 0:
            return {"n": 0}
        return {
            "n": n,
            "sum": _num(self.total),
            "mean": round(self.total / n, 4),
            "min": min(self.counts),
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": max(self.counts),
        }

    def to_pairs(self) -> list[list[float]]:
        return [[v, c] for v, c in sorted(self.counts.items())]

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[float]]) -> "ValueCounts":
        return cls(Counter({v: int(c) for v, c in pairs}))


def _num(x: float) -> float:
    return int(x) if float(x).is_integer() else round(x, 4)


# Distributions, by name: what each one counts (for plots and the report).
DISTRIBUTIONS: dict[str, str] = {
    "images_per_sample": "images per document",
    "words_per_sample": "words per document",
    "text_nodes_per_sample": "text nodes per document",
    "tokens_per_sample": "tokens per document",
    "image_width": "stored image width (px)",
    "image_height": "stored image height (px)",
    "original_width": "original image width (px)",
    "original_height": "original image height (px)",
    "aspect_ratio": "image aspect ratio (width / height)",
    "caption_words": "caption / alt-text length (words)",
    "video_duration": "video duration (s)",
}
# Distributions that need each image's record (M3W JSON): an index-only pass does not have them.
IMAGE_LEVEL = frozenset(
    {"image_width", "image_height", "original_width", "original_height", "aspect_ratio", "caption_words", "tokens_per_sample"}
)
# The index's numeric quality-score columns (lang_id is a label: counted in `identified_languages`).
QUALITY_SCORES = tuple(c for c in SCORE_COLUMNS if c != "lang_id")
_COUNTERS = ("samples", "images", "missing_images", "videos", "words", "text_nodes", "tokens", "captioned_images")


@dataclass
class CorpusStats:
    """Mergeable statistics of some shards: `merge` is associative and commutative."""

    kind: str
    shards: int = 0
    samples: int = 0  # documents (m3w), pairs, or videos
    images: int = 0  # stored images (M3W: status ok; video: key frames)
    missing_images: int = 0  # M3W images kept as URL only
    videos: int = 0
    words: int = 0
    text_nodes: int = 0
    tokens: int = 0
    captioned_images: int = 0  # images with alt text / caption
    image_level: bool = True  # False when some shard was read from its index only
    dists: dict[str, ValueCounts] = field(default_factory=lambda: {k: ValueCounts() for k in DISTRIBUTIONS})
    domains: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    image_formats: Counter = field(default_factory=Counter)
    scores: dict[str, ValueCounts] = field(default_factory=lambda: {k: ValueCounts() for k in QUALITY_SCORES})  # from the index
    identified_languages: Counter = field(default_factory=Counter)  # the index's lang_id

    def merge(self, other: "CorpusStats") -> "CorpusStats":
        if other.kind != self.kind:
            raise ValueError(f"cannot merge {other.kind} statistics into {self.kind}")
        self.shards += other.shards
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.image_level = self.image_level and other.image_level
        for k, v in other.dists.items():
            self.dists.setdefault(k, ValueCounts()).merge(v)
        self.domains.update(other.domains)
        self.languages.update(other.languages)
        self.image_formats.update(other.image_formats)
        for k, v in other.scores.items():
            self.scores.setdefault(k, ValueCounts()).merge(v)
        self.identified_languages.update(other.identified_languages)
        return self

    def to_json(self) -> dict[str, Any]:
        """Lossless, JSON-safe form (for files and Beam results)."""
        return {
            "kind": self.kind,
            "shards": self.shards,
            **{name: getattr(self, name) for name in _COUNTERS},
            "image_level": self.image_level,
            "dists": {k: v.to_pairs() for k, v in self.dists.items()},
            "domains": dict(self.domains),
            "languages": dict(self.languages),
            "image_formats": dict(self.image_formats),
            "scores": {k: v.to_pairs() for k, v in self.scores.items()},
            "identified_languages": dict(self.identified_languages),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CorpusStats":
        s = cls(kind=data["kind"], shards=data["shards"], image_level=data["image_level"])
        for name in _COUNTERS:
            setattr(s, name, data[name])
        s.dists = {k: ValueCounts.from_pairs(v) for k, v in data["dists"].items()}
        s.domains, s.languages = Counter(data["domains"]), Counter(data["languages"])
        s.image_formats = Counter(data["image_formats"])
        s.scores.update({k: ValueCounts.from_pairs(v) for k, v in data.get("scores", {}).items()})
        s.identified_languages = Counter(data.get("identified_languages", {}))
        return s


@dataclass(frozen=True)
class StatsConfig:
    """What to read and how finely to bin."""

    source: str = "auto"  # auto: index + JSON members by offset when indexes exist, tar scan otherwise
    #                       index: Parquet only (fast; no image-level distributions) | tar: full scan
    aspect_ratio_step: float = 0.01  # aspect ratios are binned to this step
    duration_step: float = 0.1  # video durations (s) are binned to this step
    score_step: float = 0.001  # quality scores (fractions) are binned to this step: fine enough for min_punctuation_ratio=0.001
    top_n: int = 20  # domains / languages / formats shown
    unknown_language: str = "unknown"

    def __post_init__(self) -> None:
        if self.source not in ("auto", "index", "tar"):
            raise ValueError(f"source must be auto, index or tar, not {self.source!r}")


def _bin(x: float, step: float) -> float:
    return round(round(x / step) * step, 6)


# ----------------------------------------------------------------------------- per-sample accumulation


def add_m3w_document(stats: CorpusStats, doc: Mapping[str, Any], config: StatsConfig, count_tokens: Optional[TokenCounter] = None) -> None:
    """One M3W KEY.json: counts measured on the content itself, not on its `metadata` block."""
    texts = [t for t in doc.get("texts", []) if t is not None]
    images = [im for im in doc.get("images", []) if im is not None]
    ok = [im for im in images if im.get("status") == "ok"]
    words = sum(count_words(t) for t in texts)
    stats.samples += 1
    stats.images += len(ok)
    stats.missing_images += len(images) - len(ok)
    stats.videos += len(doc.get("videos", []))
    stats.words += words
    stats.text_nodes += len(texts)
    d = stats.dists
    d["images_per_sample"].add(len(ok))
    d["words_per_sample"].add(words)
    d["text_nodes_per_sample"].add(len(texts))
    if count_tokens is not None:
        tokens = sum(count_tokens(t) for t in texts)
        stats.tokens += tokens
        d["tokens_per_sample"].add(tokens)
    stats.domains[doc.get("domain") or ""] += 1
    stats.languages[doc.get("lang") or config.unknown_language] += 1
    for im in ok:
        _add_image(stats, im.get("width"), im.get("height"), im.get("original_width"), im.get("original_height"), config)
        stats.image_formats[im.get("original_format") or "unknown"] += 1
        caption = im.get("caption") or im.get("alt")
        if caption:
            stats.captioned_images += 1
            d["caption_words"].add(count_words(caption))


def _add_image(stats: CorpusStats, w: Any, h: Any, ow: Any, oh: Any, config: StatsConfig) -> None:
    d = stats.dists
    if w and h:
        d["image_width"].add(int(w))
        d["image_height"].add(int(h))
    if ow and oh:
        d["original_width"].add(int(ow))
        d["original_height"].add(int(oh))
    rw, rh = (ow, oh) if ow and oh else (w, h)
    if rw and rh:
        d["aspect_ratio"].add(_bin(int(rw) / int(rh), config.aspect_ratio_step))


def add_m3w_index_row(stats: CorpusStats, row: Mapping[str, Any], config: StatsConfig) -> None:
    """One index row: the document-level numbers (the JSON has the same ones, `validate` checks)."""
    stats.samples += 1
    stats.images += row["n_images"]
    stats.missing_images += row["n_missing_images"]
    stats.videos += row["n_videos"]
    stats.words += row["n_words"]
    stats.text_nodes += row["n_text_nodes"]
    stats.dists["images_per_sample"].add(row["n_images"])
    stats.dists["words_per_sample"].add(row["n_words"])
    stats.dists["text_nodes_per_sample"].add(row["n_text_nodes"])
    stats.domains[row["domain"] or ""] += 1
    stats.languages[row["lang"] or config.unknown_language] += 1


def add_m3w_scores(stats: CorpusStats, row: Mapping[str, Any], config: StatsConfig) -> None:
    """One index row's quality scores (the tars do not hold them); None = the score does not apply."""
    for name in QUALITY_SCORES:
        value = row.get(name)
        if value is not None:
            stats.scores[name].add(_bin(float(value), config.score_step))
    if row.get("lang_id") is not None:
        stats.identified_languages[row["lang_id"]] += 1


def add_m3w_images_only(stats: CorpusStats, doc: Mapping[str, Any], config: StatsConfig, count_tokens: Optional[TokenCounter]) -> None:
    """The image-level part of `add_m3w_document` (document-level numbers came from the index)."""
    scratch = CorpusStats(stats.kind)
    add_m3w_document(scratch, doc, config, count_tokens)
    _copy_image_level(stats, scratch)


def add_pair_sample(stats: CorpusStats, sample: Sample, config: StatsConfig, count_tokens: Optional[TokenCounter] = None) -> None:
    """One img2dataset-style pair: KEY.jpg + KEY.txt (+ KEY.json with url, width, height, ...)."""
    meta = sample_json(sample)
    caption = sample_text(sample)
    if caption is None:
        caption = meta.get("caption") or ""
    has_image = any(s.lower() in IMAGE_EXTS for s in sample.suffixes)
    words = count_words(caption)
    stats.samples += 1
    stats.images += int(has_image)
    stats.words += words
    stats.text_nodes += int(bool(caption))
    stats.dists["images_per_sample"].add(int(has_image))
    stats.dists["words_per_sample"].add(words)
    if caption:
        stats.captioned_images += 1
        stats.dists["caption_words"].add(words)
    if count_tokens is not None:
        tokens = count_tokens(caption)
        stats.tokens += tokens
        stats.dists["tokens_per_sample"].add(tokens)
    _add_image(stats, meta.get("width"), meta.get("height"), meta.get("original_width"), meta.get("original_height"), config)
    if has_image:
        ext = next(s for s in sample.suffixes if s.lower() in IMAGE_EXTS)
        stats.image_formats[str(meta.get("original_format") or ext).upper()] += 1
    stats.domains[_page_domain(meta)] += 1
    stats.languages[meta.get("lang") or config.unknown_language] += 1


def _page_domain(meta: Mapping[str, Any]) -> str:
    """The site a pair/video came from: its `domain`, else the host of its page (or media) URL."""
    return str(meta.get("domain") or url_domain(meta.get("page_url") or meta.get("url") or ""))


def video_duration(meta: Mapping[str, Any]) -> Optional[float]:
    """Duration in seconds from a video2dataset-style JSON (top level, or its ffprobe metadata)."""
    for holder in (meta, meta.get("video_metadata") or {}, (meta.get("video_metadata") or {}).get("format") or {}):
        for name in ("duration", "duration_s", "duration_seconds"):
            value = holder.get(name) if isinstance(holder, Mapping) else None
            if value is not None:
                try:
                    return float(value)
                except (TypeError, ValueError):
                    return None
    return None


def add_video_sample(stats: CorpusStats, sample: Sample, config: StatsConfig, count_tokens: Optional[TokenCounter] = None) -> None:
    """One video2dataset-style sample: KEY.mp4 + KEY.txt + KEY.json (+ KEY.NNN.jpg key frames)."""
    meta = sample_json(sample)
    caption = sample_text(sample)
    if caption is None:
        caption = meta.get("caption") or ""
    frames = sum(1 for s in sample.suffixes if s.rsplit(".", 1)[-1].lower() in IMAGE_EXTS)
    has_video = any(s.rsplit(".", 1)[-1].lower() in VIDEO_EXTS for s in sample.suffixes)
    words = count_words(caption)
    stats.samples += 1
    stats.videos += int(has_video)
    stats.images += frames
    stats.words += words
    stats.text_nodes += int(bool(caption))
    stats.dists["images_per_sample"].add(frames)
    stats.dists["words_per_sample"].add(words)
    if caption:
        stats.dists["caption_words"].add(words)
    if count_tokens is not None:
        tokens = count_tokens(caption)
        stats.tokens += tokens
        stats.dists["tokens_per_sample"].add(tokens)
    duration = video_duration(meta)
    if duration is not None:
        stats.dists["video_duration"].add(_bin(duration, config.duration_step))
    _add_image(stats, meta.get("width"), meta.get("height"), meta.get("original_width"), meta.get("original_height"), config)
    stats.domains[_page_domain(meta)] += 1
    stats.languages[meta.get("lang") or config.unknown_language] += 1


_SAMPLE_ADDERS = {"pairs": add_pair_sample, "video": add_video_sample}


# ----------------------------------------------------------------------------- one shard


def shard_stats(
    shard: ShardRef,
    opener: Opener = open_local,
    config: StatsConfig = StatsConfig(),
    count_tokens: Optional[TokenCounter] = None,
) -> CorpusStats:
    """The statistics of one shard: the unit both the local loop and the Beam job merge."""
    stats = CorpusStats(shard.kind, shards=1)
    source = _source_for(shard, config, count_tokens)
    table = _read_index(shard, opener) if shard.kind == "m3w" and shard.index is not None else None
    rows = table.to_pylist() if table is not None else []
    for row in rows:  # every source: only the index holds the quality scores
        add_m3w_scores(stats, row, config)
    if source == "tar":
        _scan_tar(stats, shard, opener, config, count_tokens)
    else:
        assert table is not None
        for row in rows:
            add_m3w_index_row(stats, row, config)
        if source == "index":
            stats.image_level = False
        else:  # index+json: image-level numbers from the JSON members, found by offset
            _read_jsons_by_offset(stats, shard, table.column("offset").to_pylist(), opener, config, count_tokens)
    return stats


def _source_for(shard: ShardRef, config: StatsConfig, count_tokens: Optional[TokenCounter]) -> str:
    if shard.kind != "m3w" or shard.index is None or config.source == "tar":
        return "tar"
    if config.source == "index" and count_tokens is None:
        return "index"
    return "index+json"


def _read_index(shard: ShardRef, opener: Opener) -> Any:
    assert shard.index is not None
    with opener(shard.index) as f:
        return pq.read_table(io.BytesIO(f.read()))


def _scan_tar(stats: CorpusStats, shard: ShardRef, opener: Opener, config: StatsConfig, count_tokens: Optional[TokenCounter]) -> None:
    with opener(shard.tar) as f:
        _scan_samples(stats, f, shard.kind, config, count_tokens)


def _scan_samples(stats: CorpusStats, f: BinaryIO, kind: str, config: StatsConfig, count_tokens: Optional[TokenCounter]) -> None:
    """Every sample of an open tar, front to back (seeking past unread members where the stream can)."""
    want = (lambda n: n.endswith(".json")) if kind == "m3w" else (lambda n: n.endswith((".json", ".txt")))
    for sample in group_samples(iter_tar_members(f, want=want, seek=seekable(f))):
        if kind == "m3w":
            add_m3w_document(stats, sample_json(sample), config, count_tokens)
        else:
            _SAMPLE_ADDERS[kind](stats, sample, config, count_tokens)


def _read_jsons_by_offset(
    stats: CorpusStats, shard: ShardRef, offsets: list[int], opener: Opener, config: StatsConfig, count_tokens: Optional[TokenCounter]
) -> None:
    with opener(shard.tar) as f:
        if not seekable(f):  # no random access: walk the tar instead (same numbers)
            scratch = CorpusStats(shard.kind)
            _scan_samples(scratch, f, shard.kind, config, count_tokens)
            _copy_image_level(stats, scratch)
            return
        for offset in sorted(offsets):
            member = read_member_at(f, offset)
            add_m3w_images_only(stats, json.loads(member.data or b"{}"), config, count_tokens)


def _copy_image_level(stats: CorpusStats, scratch: CorpusStats) -> None:
    """Add the image-level numbers of `scratch` (the ones an index row does not have) to `stats`."""
    stats.captioned_images += scratch.captioned_images
    stats.tokens += scratch.tokens
    stats.image_formats.update(scratch.image_formats)
    for name in IMAGE_LEVEL:
        stats.dists[name].merge(scratch.dists[name])


# ----------------------------------------------------------------------------- the corpus


def compute_stats(
    corpus: Corpus,
    opener: Opener = open_local,
    config: StatsConfig = StatsConfig(),
    count_tokens: Optional[TokenCounter] = None,
    progress: Optional[bool] = None,
) -> CorpusStats:
    """Merge `shard_stats` over every shard (the local path; the Beam job does the same merge)."""
    from tqdm import tqdm

    total = CorpusStats(corpus.kind)
    for shard in tqdm(corpus.shards, desc="stats", unit="shard", file=sys.stderr, disable=_tqdm_disable(progress)):
        total.merge(shard_stats(shard, opener, config, count_tokens))
    return total


def _tqdm_disable(progress: Optional[bool]) -> Optional[bool]:
    """tqdm's `disable`: None lets tqdm hide the bar when stderr is not a terminal."""
    return None if progress is None else not progress

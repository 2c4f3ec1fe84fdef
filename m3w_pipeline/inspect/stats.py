"""Corpus statistics: counts, distributions, top domains, languages and the drop funnel.

One library function, `shard_stats`, turns one shard into a mergeable `CorpusStats`
partial; `compute_stats` merges them locally and `beam_jobs/stats_job.py` merges the
very same partials with a CombineFn, so both paths give identical numbers.

Files are read through an `Opener` (path -> binary stream) that the caller supplies:
plain `open` for local paths here, Beam's FileSystems (gs://, s3://) in the CLI and
Beam layers. This module never imports apache_beam.

The corpus access helpers (opening a corpus, walking tar members, grouping samples) live
here too; `validate` and `export` reuse them.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import pyarrow.parquet as pq

from m3w_pipeline.core.document import count_words
from m3w_pipeline.read.warc import url_domain

Opener = Callable[[str], BinaryIO]  # path -> readable binary stream (a context manager)
Lister = Callable[[str], list[str]]  # directory -> names of the files directly in it
TokenCounter = Callable[[str], int]

MANIFEST_NAME = "manifest.json"
KINDS = ("m3w", "pairs", "video")
# Names another builder may write in manifest["corpus"] -> the kind of shard layout.
_KIND_ALIASES = {
    "m3w": "m3w",
    "pairs": "pairs",
    "pair": "pairs",
    "align": "pairs",
    "ltip": "pairs",
    "image_text": "pairs",
    "image-text": "pairs",
    "video": "video",
    "videos": "video",
    "vtp": "video",
    "video_text": "video",
}
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
VIDEO_EXTS = frozenset({"mp4", "mov", "webm", "mkv", "ogv", "avi", "flv", "ts", "mpg"})  # = video_sample.schema.json formats
# Stage order of the funnel (the M3W build); stages other builders add follow, sorted.
# Stages in the order a build runs them (m3w_pipeline.core.accounting lists what each keeps).
FUNNEL_ORDER = (
    "records", "media_kind", "pages", "fetch", "image_refs", "media_records", "text_nodes", "image_nodes", "documents",
    "images_in_document", "dedup_url", "dedup_text_exact", "dedup_text_near", "images_hot", "dedup_image_sets",
    "post_dedup", "pair_documents", "pair_candidates", "align_samples", "ltip_samples", "video_refs",
    "video_media_records", "video_candidates", "video_samples",
)
_BLOCK = tarfile.BLOCKSIZE
SAMPLE_UNITS = {"m3w": "documents", "pairs": "pairs", "video": "videos"}


# ----------------------------------------------------------------------------- paths and openers


def local_path(path: str) -> str:
    """`file:///x` -> `/x`; other paths unchanged (local openers accept both spellings)."""
    return path[len("file://") :] if path.startswith("file://") else path


def open_local(path: str) -> BinaryIO:
    """The default opener: local files, `file://` URLs included."""
    return open(local_path(path), "rb")


def list_local(directory: str) -> list[str]:
    """The default lister: file names directly in a local directory."""
    d = local_path(directory)
    return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n)))


def join_path(root: str, name: str) -> str:
    """Join with '/', which local paths and gs:// / s3:// URLs all accept."""
    return f"{root.rstrip('/')}/{name}" if root else name


def is_remote(path: str) -> bool:
    """Anything with a scheme other than file:// needs a filesystem other than the local one."""
    return "://" in path and not path.startswith("file://")


# ----------------------------------------------------------------------------- tar members


class TarDamage(Exception):
    """The tar is not a complete archive at `offset` (truncated, bad header, no end marker)."""

    def __init__(self, offset: int, message: str, member: Optional[str] = None):
        super().__init__(f"at byte {offset}: {message}")
        self.offset = offset
        self.message = message
        self.member = member  # the member being read when the data ran out, if any


@dataclass
class TarMember:
    name: str
    header_offset: int  # first byte of the member's (first) header block
    size: int
    end: int  # offset after the member's data padding: the next header starts here
    data: Optional[bytes] = None  # None when the caller did not ask for this member's bytes


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to n bytes; shorter only at end of stream (streams may return short reads)."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _skip(stream: BinaryIO, n: int, seek: bool) -> int:
    """Skip n bytes; returns how many were skipped (fewer only when reading hits the end)."""
    if seek:
        stream.seek(n, io.SEEK_CUR)
        return n
    skipped = 0
    while skipped < n:
        chunk = stream.read(min(1 << 20, n - skipped))
        if not chunk:
            break
        skipped += len(chunk)
    return skipped


def _pax_path(data: bytes) -> Optional[str]:
    """The `path` record of a pax extended header, if any."""
    for line in data.decode("utf-8", "replace").splitlines():
        _, _, record = line.partition(" ")
        if record.startswith("path="):
            return record[len("path=") :]
    return None


def iter_tar_members(
    stream: BinaryIO,
    want: Optional[Callable[[str], bool]] = None,
    seek: bool = False,
) -> Iterator[TarMember]:
    """Walk a tar's members in order, reading the data of those `want` accepts.

    A strict reader (unlike `tarfile`, which stops silently at a truncated header): a
    header cut short, a member whose data runs past the end, or an archive without its
    end-of-archive marker raises TarDamage with the byte offset. `seek=True` skips
    unwanted data with seeks (fast on local and object-store files) and then cannot
    notice truncation inside skipped data; validation reads everything instead.
    """
    pos = 0
    long_name: Optional[str] = None
    header_start: Optional[int] = None
    while True:
        header = _read_exact(stream, _BLOCK)
        if not header:
            raise TarDamage(pos, "archive ends without its end-of-archive marker")
        if len(header) < _BLOCK:
            raise TarDamage(pos, f"truncated header ({len(header)} of {_BLOCK} bytes)")
        if header == b"\0" * _BLOCK:
            second = _read_exact(stream, _BLOCK)
            if second != b"\0" * _BLOCK:
                raise TarDamage(pos + _BLOCK, "incomplete end-of-archive marker")
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise TarDamage(pos, f"invalid header: {err}") from None
        data_start = pos + _BLOCK
        padded = info.size + (-info.size % _BLOCK)
        if header_start is None:
            header_start = pos
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
            meta = _read_exact(stream, padded)
            if len(meta) < padded:
                raise TarDamage(data_start, "extended header cut short")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = meta[: info.size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XHDTYPE:
                long_name = _pax_path(meta[: info.size]) or long_name
            pos = data_start + padded
            continue
        name = long_name or info.name
        data: Optional[bytes] = None
        if info.isreg() and (want is None or want(name)):
            data = _read_exact(stream, info.size)
            if len(data) < info.size:
                raise TarDamage(data_start, f"member cut short: {len(data)} of {info.size} bytes", name)
            if _skip(stream, padded - info.size, False) < padded - info.size:
                raise TarDamage(data_start + info.size, "member padding cut short", name)
        elif _skip(stream, padded, seek) < padded:
            raise TarDamage(data_start, "member cut short (data runs past the end of the file)", name)
        yield TarMember(name, header_start, info.size, data_start + padded, data)
        pos = data_start + padded
        long_name, header_start = None, None


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/KEY.N.jpg` -> (`dir/KEY`, `N.jpg`): webdataset's rule, the key ends at the first dot of the basename."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


@dataclass
class Sample:
    """One webdataset sample: the consecutive members sharing a key."""

    key: str
    members: list[TarMember]
    offset: int  # header offset of the first member (the index's `offset`)
    end: int  # end of the last member's padding (offset + the index's `size`)

    def get(self, suffix: str) -> Optional[TarMember]:
        for m in self.members:
            if split_member_name(m.name)[1] == suffix:
                return m
        return None

    @property
    def suffixes(self) -> list[str]:
        return [split_member_name(m.name)[1] for m in self.members]


def group_samples(members: Iterable[TarMember]) -> Iterator[Sample]:
    """Consecutive members with the same key form a sample (webdataset's grouping); a suffix
    seen twice starts a new sample, so two adjacent copies of a key stay two samples."""
    current: Optional[Sample] = None
    for m in members:
        key, suffix = split_member_name(m.name)
        if current is not None and key == current.key and suffix not in current.suffixes:
            current.members.append(m)
            current.end = m.end
            continue
        if current is not None:
            yield current
        current = Sample(key, [m], m.header_offset, m.end)
    if current is not None:
        yield current


def read_member_at(stream: BinaryIO, offset: int) -> TarMember:
    """The member whose header starts at `offset` (random access through the index)."""
    stream.seek(offset)
    return next(iter_tar_members(stream, want=None, seek=True))


# ----------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class ShardRef:
    name: str  # base name, e.g. m3w-00003
    tar: str  # path of NAME.tar
    index: Optional[str]  # path of NAME.parquet, when the corpus has indexes
    kind: str  # m3w | pairs | video


@dataclass
class Corpus:
    root: str
    kind: str
    manifest: Optional[dict[str, Any]]
    shards: list[ShardRef]


def read_manifest(root: str, opener: Opener = open_local) -> Optional[dict[str, Any]]:
    """ROOT/manifest.json, or None when there is none."""
    try:
        with opener(join_path(root, MANIFEST_NAME)) as f:
            return json.loads(f.read())
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError as err:  # remote filesystems raise their own "not found" errors
        if "not found" in str(err).lower() or "no such" in str(err).lower():
            return None
        raise


def kind_from_manifest(manifest: Optional[Mapping[str, Any]]) -> Optional[str]:
    if not manifest:
        return None
    return _KIND_ALIASES.get(str(manifest.get("corpus", "")).lower())


def kind_from_suffixes(suffixes: Sequence[str], first_json: Optional[Mapping[str, Any]] = None) -> str:
    """Sniff the layout from one sample's members: M3W has KEY.json + KEY.N.jpg,
    pairs KEY.jpg + KEY.txt (+ KEY.json), video KEY.mp4 (+ KEY.txt, KEY.json, KEY.NNN.jpg)."""
    exts = {s.rsplit(".", 1)[-1].lower() for s in suffixes}
    if exts & VIDEO_EXTS:
        return "video"
    if first_json is not None and str(first_json.get("schema", "")).startswith("m3w.document"):
        return "m3w"
    if any(s.lower() in IMAGE_EXTS for s in suffixes) or "txt" in suffixes:
        return "pairs"
    return "m3w"


def sniff_kind(tar_path: str, opener: Opener = open_local) -> str:
    """The corpus kind from the first sample of a shard (when no manifest says it)."""
    with opener(tar_path) as f:
        samples = group_samples(iter_tar_members(f, want=lambda n: n.endswith(".json"), seek=_seekable(f)))
        first = next(samples, None)
    if first is None:
        return "m3w"
    js = first.get("json")
    doc = json.loads(js.data) if js is not None and js.data is not None else None
    return kind_from_suffixes(first.suffixes, doc)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError):
        return False


def open_corpus(
    root: str,
    opener: Opener = open_local,
    lister: Optional[Lister] = list_local,
    kind: Optional[str] = None,
) -> Corpus:
    """Find a corpus's shards: from the manifest, or from the directory listing without one.

    The kind comes from `kind`, else the manifest's `corpus` field, else the first sample's members.
    """
    manifest = read_manifest(root, opener)
    names: list[str]
    files: Optional[set[str]] = None
    if lister is not None:
        try:
            files = set(lister(root))
        except (FileNotFoundError, NotADirectoryError, OSError):
            files = None
    if manifest is not None and manifest.get("shards") is not None:
        names = [s["name"] for s in manifest["shards"]]
    elif files is not None:
        names = sorted(n[: -len(".tar")] for n in files if n.endswith(".tar"))
    else:
        raise FileNotFoundError(f"{root}: no {MANIFEST_NAME} and no way to list the shards")
    kind = kind or kind_from_manifest(manifest)
    if kind is None:
        kind = sniff_kind(join_path(root, f"{names[0]}.tar"), opener) if names else "m3w"
    has_index = _has_indexes(root, names, manifest, files, opener)
    shards = [
        ShardRef(n, join_path(root, f"{n}.tar"), join_path(root, f"{n}.parquet") if has_index else None, kind)
        for n in names
    ]
    return Corpus(root, kind, manifest, shards)


def _has_indexes(
    root: str, names: list[str], manifest: Optional[Mapping[str, Any]], files: Optional[set[str]], opener: Opener
) -> bool:
    """Every shard has NAME.parquet: the manifest records it, or the listing shows it, or it opens."""
    if not names:
        return False
    if manifest is not None and manifest.get("shards") and all(s.get("parquet_sha256") for s in manifest["shards"]):
        return True
    if files is not None:
        return all(f"{n}.parquet" in files for n in names)
    try:
        with opener(join_path(root, f"{names[0]}.parquet")):
            return True
    except OSError:
        return False


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
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CorpusStats":
        s = cls(kind=data["kind"], shards=data["shards"], image_level=data["image_level"])
        for name in _COUNTERS:
            setattr(s, name, data[name])
        s.dists = {k: ValueCounts.from_pairs(v) for k, v in data["dists"].items()}
        s.domains, s.languages = Counter(data["domains"]), Counter(data["languages"])
        s.image_formats = Counter(data["image_formats"])
        return s


@dataclass(frozen=True)
class StatsConfig:
    """What to read and how finely to bin."""

    source: str = "auto"  # auto: index + JSON members by offset when indexes exist, tar scan otherwise
    #                       index: Parquet only (fast; no image-level distributions) | tar: full scan
    aspect_ratio_step: float = 0.01  # aspect ratios are binned to this step
    duration_step: float = 0.1  # video durations (s) are binned to this step
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


def add_m3w_images_only(stats: CorpusStats, doc: Mapping[str, Any], config: StatsConfig, count_tokens: Optional[TokenCounter]) -> None:
    """The image-level part of `add_m3w_document` (document-level numbers came from the index)."""
    scratch = CorpusStats(stats.kind)
    add_m3w_document(scratch, doc, config, count_tokens)
    stats.captioned_images += scratch.captioned_images
    stats.tokens += scratch.tokens
    stats.image_formats.update(scratch.image_formats)
    for name in IMAGE_LEVEL:
        stats.dists[name].merge(scratch.dists[name])


def _sample_json(sample: Sample) -> dict[str, Any]:
    m = sample.get("json")
    if m is None or m.data is None:
        return {}
    try:
        value = json.loads(m.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _sample_text(sample: Sample, suffix: str = "txt") -> Optional[str]:
    m = sample.get(suffix)
    return m.data.decode("utf-8", "replace") if m is not None and m.data is not None else None


def add_pair_sample(stats: CorpusStats, sample: Sample, config: StatsConfig, count_tokens: Optional[TokenCounter] = None) -> None:
    """One img2dataset-style pair: KEY.jpg + KEY.txt (+ KEY.json with url, width, height, ...)."""
    meta = _sample_json(sample)
    caption = _sample_text(sample)
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
    meta = _sample_json(sample)
    caption = _sample_text(sample)
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
    if source == "tar":
        _scan_tar(stats, shard, opener, config, count_tokens)
    else:
        table = _read_index(shard, opener)
        for row in table.to_pylist():
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
    want = (lambda n: n.endswith(".json")) if shard.kind == "m3w" else (lambda n: n.endswith((".json", ".txt")))
    with opener(shard.tar) as f:
        for sample in group_samples(iter_tar_members(f, want=want, seek=_seekable(f))):
            if shard.kind == "m3w":
                add_m3w_document(stats, _sample_json(sample), config, count_tokens)
            else:
                _SAMPLE_ADDERS[shard.kind](stats, sample, config, count_tokens)


def _read_jsons_by_offset(
    stats: CorpusStats, shard: ShardRef, offsets: list[int], opener: Opener, config: StatsConfig, count_tokens: Optional[TokenCounter]
) -> None:
    with opener(shard.tar) as f:
        if not _seekable(f):  # no random access: walk the tar instead (same numbers)
            scratch = CorpusStats(shard.kind)
            _scan_tar_stream(scratch, f, config, count_tokens)
            _copy_image_level(stats, scratch)
            return
        for offset in sorted(offsets):
            member = read_member_at(f, offset)
            add_m3w_images_only(stats, json.loads(member.data or b"{}"), config, count_tokens)


def _scan_tar_stream(stats: CorpusStats, f: BinaryIO, config: StatsConfig, count_tokens: Optional[TokenCounter]) -> None:
    for sample in group_samples(iter_tar_members(f, want=lambda n: n.endswith(".json"))):
        add_m3w_document(stats, _sample_json(sample), config, count_tokens)


def _copy_image_level(stats: CorpusStats, scratch: CorpusStats) -> None:
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


def funnel(manifest: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's stages in pipeline order: in, kept and dropped (by reason) per stage."""
    if not manifest or not manifest.get("stages"):
        return []
    stages = manifest["stages"]
    order = [s for s in FUNNEL_ORDER if s in stages] + sorted(s for s in stages if s not in FUNNEL_ORDER)
    rows = []
    for name in order:
        s = stages[name]
        kept, dropped = dict(s.get("kept", {})), dict(s.get("dropped", {}))
        rows.append(
            {
                "stage": name,
                "in": s.get("in", 0),
                "kept": kept,
                "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
                "kept_total": sum(kept.values()),
                "dropped_total": sum(dropped.values()),
            }
        )
    return rows


def summarize(
    stats: CorpusStats,
    corpus: Optional[Corpus] = None,
    config: StatsConfig = StatsConfig(),
    source: Optional[str] = None,
) -> dict[str, Any]:
    """The report: counts, distribution summaries (and histograms), top domains, languages, funnel."""
    manifest = corpus.manifest if corpus is not None else None
    dists = {}
    for name, label in DISTRIBUTIONS.items():
        vc = stats.dists.get(name, ValueCounts())
        if vc.n == 0:
            continue
        dists[name] = {"label": label, **vc.summary(), "histogram": vc.to_pairs()}
    return {
        "root": corpus.root if corpus is not None else None,
        "kind": stats.kind,
        "sample_unit": SAMPLE_UNITS[stats.kind],
        "source": source or config.source,
        "image_level": stats.image_level,
        "counts": {
            "shards": stats.shards,
            "samples": stats.samples,
            "images": stats.images,
            "missing_images": stats.missing_images,
            "videos": stats.videos,
            "words": stats.words,
            "text_nodes": stats.text_nodes,
            "tokens": stats.tokens if stats.dists["tokens_per_sample"].n else None,
            "captioned_images": stats.captioned_images if stats.image_level else None,
        },
        "distributions": dists,
        "top_domains": _top(stats.domains, config.top_n),
        "n_domains": len(stats.domains),
        "languages": _top(stats.languages, config.top_n),
        "image_formats": _top(stats.image_formats, config.top_n) if stats.image_level else [],
        "funnel": funnel(manifest),
        "broken_files": list((manifest or {}).get("broken_files", [])),
        "manifest_totals": (manifest or {}).get("totals"),
    }


def _top(counter: Counter, n: int) -> list[list[Any]]:
    return [[k, v] for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]


# ----------------------------------------------------------------------------- terminal table


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text report for the terminal."""
    lines = [f"corpus {summary['root'] or ''} ({summary['kind']}, read from: {summary['source']})", ""]
    lines.append("counts")
    for name, value in summary["counts"].items():
        if value is not None:
            lines.append(f"  {name:<18} {value:>12,}")
    if summary["distributions"]:
        lines += ["", "distributions"]
        lines.append(f"  {'':<36} {'n':>8} {'mean':>9} {'min':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        for d in summary["distributions"].values():
            lines.append(
                f"  {d['label']:<36} {d['n']:>8} {d['mean']:>9.2f} {_fmt(d['min']):>8} {_fmt(d['p50']):>8} "
                f"{_fmt(d['p90']):>8} {_fmt(d['p99']):>8} {_fmt(d['max']):>8}"
            )
    if not summary["image_level"]:
        lines.append("  (index only: image sizes, aspect ratios and captions need --source auto or tar)")
    for title, rows in (("top domains", summary["top_domains"]), ("languages", summary["languages"]), ("image formats", summary["image_formats"])):
        if rows:
            lines += ["", title]
            lines += [f"  {k or '(none)':<40} {v:>10,}" for k, v in rows]
    if summary["funnel"]:
        lines += ["", "funnel (manifest)"]
        for s in summary["funnel"]:
            kept = ", ".join(f"{k}={v}" for k, v in s["kept"].items())
            dropped = ", ".join(f"{k}={v}" for k, v in s["dropped"].items()) or "-"
            lines.append(f"  {s['stage']:<14} in={s['in']:<8} kept: {kept}; dropped: {dropped}")
    for b in summary["broken_files"]:
        lines.append(f"  broken file {b.get('warc_file')}: {b.get('reason')}")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


# ----------------------------------------------------------------------------- whole documents (export, report)


@dataclass
class M3WDocument:
    """An M3W sample with its stored media: the JSON, and member suffix (`N.jpg`) -> bytes."""

    key: str
    doc: dict[str, Any]
    media: dict[str, bytes]
    shard: str

    def image_bytes(self, position: int) -> Optional[bytes]:
        im = self.doc["images"][position]
        if not im or im.get("status") != "ok" or not im.get("file"):
            return None
        return self.media.get(im["file"])


def iter_m3w_documents(shard: ShardRef, opener: Opener = open_local, with_media: bool = True) -> Iterator[M3WDocument]:
    """Every document of an M3W shard in tar order, with its image bytes when `with_media`."""
    want = None if with_media else (lambda n: n.endswith(".json"))
    with opener(shard.tar) as f:
        for sample in group_samples(iter_tar_members(f, want=want, seek=_seekable(f) and not with_media)):
            media = {
                split_member_name(m.name)[1]: m.data
                for m in sample.members
                if m.data is not None and not m.name.endswith(".json")
            }
            yield M3WDocument(sample.key, _sample_json(sample), media, shard.name)

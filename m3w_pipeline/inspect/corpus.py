"""Reading a written corpus: find its shards, walk its tars strictly, group members into samples.

A corpus is a directory (local, or gs:// / s3:// through the caller's `Opener`) holding
NAME.tar shards, optional Parquet indexes (index/NAME.parquet: `write.layout`) and usually a manifest.json. Its kind (m3w,
pairs, video) comes from the caller, the manifest, or the first sample's members.
`stats`, `validate`, `export` and `report` read corpora only through this module, which
never imports apache_beam.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from m3w_pipeline.write.layout import index_dir, index_path, legacy_index_path

Opener = Callable[[str], BinaryIO]  # path -> readable binary stream (a context manager)
Lister = Callable[[str], list[str]]  # directory -> names of the files directly in it

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
_BLOCK = tarfile.BLOCKSIZE


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
    index: Optional[str]  # path of its index (`write.layout.index_path`), when the corpus has indexes
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
        samples = group_samples(iter_tar_members(f, want=lambda n: n.endswith(".json"), seek=seekable(f)))
        first = next(samples, None)
    if first is None:
        return "m3w"
    js = first.get("json")
    doc = json.loads(js.data) if js is not None and js.data is not None else None
    return kind_from_suffixes(first.suffixes, doc)


def seekable(stream: BinaryIO) -> bool:
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
    index_of = _index_locator(root, names, manifest, files, lister, opener)
    shards = [ShardRef(n, join_path(root, f"{n}.tar"), index_of(n) if index_of else None, kind) for n in names]
    return Corpus(root, kind, manifest, shards)


# ----------------------------------------------------------------------------- what a path holds

EXPORT_LAYOUTS = ("mmc4", "obelics")  # folders `m3w export` writes
OBELICS_COLUMNS = ("images", "metadata", "general_metadata", "texts")


class NotACorpus(ValueError):
    """A path holds nothing the inspect commands read; the message is one line for the user."""


@dataclass(frozen=True)
class Location:
    """What a path holds: one corpus, a `build all` root (kind -> corpus path), or an export."""

    path: str
    layout: str  # corpus | root | mmc4 | obelics
    corpora: Mapping[str, str]  # root: kind -> corpus path, in KINDS order; else empty

    def describe(self) -> str:
        if self.layout == "root":
            return f"a build root holding {', '.join(self.corpora)}"
        return {"mmc4": "an MMC4 export", "obelics": "an OBELICS-style Parquet export"}.get(self.layout, "a corpus")


def locate(path: str, opener: Opener = open_local, lister: Optional[Lister] = list_local) -> Location:
    """Tell a corpus (manifest or .tar shards) from a `build all` root (m3w/, pairs/, video/ corpora)
    and from what `m3w export` writes; NotACorpus for an empty or unrecognised folder."""
    files = _files_in(path, lister)
    if read_manifest(path, opener) is not None:
        return Location(path, "corpus", {})
    tars = sorted(n for n in files or () if n.endswith(".tar"))
    if tars:
        first = _first_json(join_path(path, tars[0]), opener)
        return Location(path, "mmc4" if _is_mmc4_json(first) else "corpus", {})
    parquets = sorted(n for n in files or () if n.endswith(".parquet"))
    if parquets and _is_obelics(join_path(path, parquets[0]), opener):
        return Location(path, "obelics", {})
    corpora = {kind: join_path(path, kind) for kind in KINDS if _is_corpus_dir(join_path(path, kind), opener, lister)}
    if corpora:
        return Location(path, "root", corpora)
    if files is None:
        raise NotACorpus(f"{path}: cannot list it and it has no {MANIFEST_NAME}")
    found = f"{len(parquets)} .parquet files that are not an OBELICS export and no" if parquets else "no"
    raise NotACorpus(f"{path}: not a corpus: {found} {MANIFEST_NAME}, .tar shards or m3w/ pairs/ video/ corpora in it")


def _files_in(path: str, lister: Optional[Lister]) -> Optional[list[str]]:
    if lister is None:
        return None
    try:
        return lister(path)
    except OSError:
        return None


def _is_corpus_dir(path: str, opener: Opener, lister: Optional[Lister]) -> bool:
    if read_manifest(path, opener) is not None:
        return True
    return any(n.endswith(".tar") for n in _files_in(path, lister) or ())


def _first_json(tar_path: str, opener: Opener) -> Optional[dict[str, Any]]:
    """The first sample's KEY.json of a tar (None when it has none or the tar is unreadable)."""
    try:
        with opener(tar_path) as f:
            first = next(group_samples(iter_tar_members(f, want=lambda n: n.endswith(".json"), seek=seekable(f))), None)
    except (OSError, TarDamage):
        return None
    if first is None:
        return None
    value = sample_json(first)
    return value or None


def _is_mmc4_json(doc: Optional[Mapping[str, Any]]) -> bool:
    return doc is not None and "text_list" in doc and "image_info" in doc and "schema" not in doc


def _is_obelics(parquet_path: str, opener: Opener) -> bool:
    import pyarrow.parquet as pq

    try:
        with opener(parquet_path) as f:  # the footer only, where the stream can seek
            names = pq.ParquetFile(f if seekable(f) else io.BytesIO(f.read())).schema_arrow.names
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for what is not Parquet
        return False
    return set(OBELICS_COLUMNS) <= set(names)


def _index_locator(
    root: str, names: list[str], manifest: Optional[Mapping[str, Any]], files: Optional[set[str]],
    lister: Optional[Lister], opener: Opener,
) -> Optional[Callable[[str], str]]:
    """Where the shards' indexes are: index/NAME.parquet (`write.layout.index_path`), or beside
    the tar as corpora written before the index/ folder had them; None when a shard has none."""
    if not names:
        return None
    if manifest is not None and manifest.get("shards") and all(s.get("parquet_sha256") for s in manifest["shards"]):
        if files is not None and all(f"{n}.parquet" in files for n in names):
            return lambda n: legacy_index_path(root, n)  # an older build's manifest
        return lambda n: index_path(root, n)
    for locate, listing in ((index_path, _listing(lister, index_dir(root))), (legacy_index_path, files)):
        if listing is not None:
            if all(f"{n}.parquet" in listing for n in names):
                return lambda n, locate=locate: locate(root, n)
            continue
        try:
            with opener(locate(root, names[0])):
                return lambda n, locate=locate: locate(root, n)
        except OSError:
            continue
    return None


def _listing(lister: Optional[Lister], directory: str) -> Optional[set[str]]:
    if lister is None:
        return None
    try:
        return set(lister(directory))
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError:
        return None


# ----------------------------------------------------------------------------- sample contents


def sample_json(sample: Sample) -> dict[str, Any]:
    """The sample's KEY.json as a dict; {} when it is missing, unread or not a JSON object."""
    m = sample.get("json")
    if m is None or m.data is None:
        return {}
    try:
        value = json.loads(m.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def sample_text(sample: Sample, suffix: str = "txt") -> Optional[str]:
    """The sample's KEY.txt (or KEY.<suffix>) as text, or None when it is missing or unread."""
    m = sample.get(suffix)
    return m.data.decode("utf-8", "replace") if m is not None and m.data is not None else None


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
        for sample in group_samples(iter_tar_members(f, want=want, seek=seekable(f) and not with_media)):
            media = {
                split_member_name(m.name)[1]: m.data
                for m in sample.members
                if m.data is not None and not m.name.endswith(".json")
            }
            yield M3WDocument(sample.key, sample_json(sample), media, shard.name)


# ----------------------------------------------------------------------------- rejects (report)

REJECTS_NAME = "rejects.jsonl"  # = beam_jobs.counting.REJECTS_NAME: the build's sample of rejected items


@dataclass
class RejectSample:
    """A few rejects per (stage, reason), read from the front of ROOT/rejects.jsonl."""

    by_reason: dict[tuple[str, str], list[dict[str, str]]]  # (stage, reason) -> first `per_reason` rejects
    seen: Counter  # (stage, reason) -> rejects of it read (the file holds a bounded sample; the manifest has all counts)
    complete: bool  # False when the byte cap stopped the read


def sample_rejects(
    root: str, opener: Opener = open_local, per_reason: int = 3, max_bytes: int = 4 << 20, max_chars: int = 240
) -> Optional[RejectSample]:
    """Up to `per_reason` rejects of each (stage, reason), reading at most `max_bytes`; None without the file."""
    try:
        stream = opener(join_path(root, REJECTS_NAME))
    except OSError:
        return None
    out = RejectSample({}, Counter(), True)
    read = 0
    with stream:
        while line := stream.readline(1 << 16):  # a line longer than 64 KiB is cut (and then fails to parse)
            read += len(line)
            if read > max_bytes:
                out.complete = False
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            reason = (str(row.get("stage", "")), str(row.get("reason", "")))
            out.seen[reason] += 1
            kept = out.by_reason.setdefault(reason, [])
            if len(kept) < per_reason:
                kept.append({k: str(row.get(k) or "")[:max_chars] for k in ("url", "key", "detail")})
    return out

"""Webdataset tar shards and their Parquet indexes, written deterministically.

We write the tar ourselves rather than through `webdataset.TarWriter` because
its member headers carry the wall-clock time: the same corpus built twice must
give byte-identical shards. The layout is plain webdataset (members grouped by
KEY, in order), so `webdataset`, `tarfile` and any tar tool read it.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from m3w_pipeline.core.document import Document
from m3w_pipeline.filter.quality import DOCUMENT_SCORE_COLUMNS
from schemas import load_arrow_schema, load_json_schema

DOCUMENT_SCHEMA_ID = "m3w.document/1"
# Quality-score columns of the index, in schema order (schemas/m3w_index.arrow.json declares them;
# tests/test_quality.py checks that the two agree).
SCORE_COLUMNS = tuple(name for name, _, _ in DOCUMENT_SCORE_COLUMNS)
_BLOCK = tarfile.BLOCKSIZE  # 512


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


# ----------------------------------------------------------------------------- documents


def document_to_json(doc: Document) -> dict[str, Any]:
    images = []
    for position, im in enumerate(doc.images):
        if im is None:
            images.append(None)
            continue
        p = im.image
        images.append(
            {
                "status": im.status,
                "url": im.ref.url,
                "file": f"{position}.{p.ext}" if p is not None else None,
                "alt": im.ref.alt,
                "title": im.ref.title,
                "caption": im.ref.caption,
                "width": p.width if p else None,
                "height": p.height if p else None,
                "original_width": p.original_width if p else None,
                "original_height": p.original_height if p else None,
                "original_format": p.original_format if p else None,
                "original_bytes": p.original_bytes if p else None,
                "sha256": p.sha256 if p else None,
                "phash": p.phash if p else None,
            }
        )
    return {
        "schema": DOCUMENT_SCHEMA_ID,
        "key": doc.key,
        "url": doc.url,
        "domain": doc.domain,
        "title": doc.title,
        "lang": doc.lang,
        "texts": list(doc.texts),
        "images": images,
        "videos": [
            {
                "position": v.position,
                "sources": list(v.ref.sources),
                "poster": v.ref.poster,
                "tracks": list(v.ref.tracks),
                "title": v.ref.title,
                "caption": v.ref.caption,
                "origin": v.ref.origin,
            }
            for v in doc.videos
        ],
        "provenance": {
            "warc_file": doc.provenance.warc_file,
            "offset": doc.provenance.offset,
            "length": doc.provenance.length,
            "record_id": doc.provenance.record_id,
            "capture_date": doc.provenance.capture_date,
        },
        "metadata": {
            "n_words": doc.n_words,
            "n_text_nodes": doc.n_text_nodes,
            "n_images": doc.n_images,
            "n_missing_images": doc.n_missing_images,
            "n_videos": len(doc.videos),
        },
    }


def canonical_json(obj: Any) -> bytes:
    """One spelling per value, so equal documents give equal bytes."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def document_members(doc: Document) -> list[tuple[str, bytes]]:
    """Tar members of one sample, in write order: KEY.json then KEY.N.<ext> by position."""
    members = [(f"{doc.key}.json", canonical_json(document_to_json(doc)))]
    for position, im in enumerate(doc.images):
        if im is not None and im.image is not None:
            members.append((f"{doc.key}.{position}.{im.image.ext}", im.image.data))
    return members


# ----------------------------------------------------------------------------- tar writing


class _HashingWriter:
    """Counts and hashes what passes through, so the checksum needs no second read."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)


@dataclass
class ShardInfo:
    name: str  # shard base name, e.g. m3w-00003 (files NAME.tar and NAME.parquet)
    samples: int
    tar_bytes: int
    tar_sha256: str
    parquet_bytes: int = 0
    parquet_sha256: str = ""
    images: int = 0  # images stored in the tar: M3W documents' images, pair images, video frames


class DeterministicTarWriter:
    """USTAR members with fixed metadata; tracks each member's byte offset."""

    def __init__(self, stream: BinaryIO):
        self._out = _HashingWriter(stream)

    @property
    def position(self) -> int:
        return self._out.bytes

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        self._out.write(header)
        self._out.write(data)
        pad = (-len(data)) % _BLOCK
        if pad:
            self._out.write(b"\0" * pad)

    def close(self) -> tuple[int, str]:
        """End-of-archive marker, padded to tarfile's record size as `tar` expects."""
        self._out.write(b"\0" * (2 * _BLOCK))
        pad = (-self._out.bytes) % tarfile.RECORDSIZE
        if pad:
            self._out.write(b"\0" * pad)
        return self._out.bytes, self._out.sha256.hexdigest()


def index_row(doc: Document, shard: str, offset: int, size: int) -> dict[str, Any]:
    return {
        "key": doc.key,
        "url": doc.url,
        "domain": doc.domain,
        "title": doc.title,
        "lang": doc.lang,
        "texts": list(doc.texts),
        "images": [im.ref.url if im is not None else None for im in doc.images],
        "n_text_nodes": doc.n_text_nodes,
        "n_images": doc.n_images,
        "n_missing_images": doc.n_missing_images,
        "n_videos": len(doc.videos),
        "n_words": doc.n_words,
        "warc_file": doc.provenance.warc_file,
        "warc_offset": doc.provenance.offset,
        "warc_length": doc.provenance.length,
        "warc_record_id": doc.provenance.record_id,
        "capture_date": doc.provenance.capture_date,
        "shard": shard,
        "offset": offset,
        "size": size,
        **{name: doc.scores.get(name) for name in SCORE_COLUMNS},
    }


def write_m3w_shard(docs: Iterable[Document], name: str, tar_stream: BinaryIO) -> tuple[ShardInfo, pa.Table]:
    """Write documents (sorted by key here, so input order never matters) as one tar.

    Returns the shard's info and its index table; the caller writes the index
    with `write_parquet` and owns the temp-then-rename of both files.
    """
    writer = DeterministicTarWriter(tar_stream)
    rows, images = [], 0
    for doc in sorted(docs, key=lambda d: d.key):
        start = writer.position
        for member, data in document_members(doc):
            writer.add(member, data)
        rows.append(index_row(doc, name, start, writer.position - start))
        images += doc.n_images
    size, digest = writer.close()
    table = pa.Table.from_pylist(rows, schema=load_arrow_schema("m3w_index"))
    return ShardInfo(name=name, samples=len(rows), tar_bytes=size, tar_sha256=digest, images=images), table


def parquet_bytes(table: pa.Table) -> bytes:
    """The index as Parquet bytes (indexes are small; bytes make the checksum and atomic write simple)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_document_json(sample: dict[str, Any], validator: Optional[Any] = None) -> list[str]:
    """Schema errors plus the aligned-list invariant the schema cannot express."""
    import jsonschema

    validator = validator or jsonschema.Draft202012Validator(load_json_schema("m3w_document"))
    errors = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(sample)]
    texts, images = sample.get("texts", []), sample.get("images", [])
    if len(texts) != len(images):
        errors.append(f"texts has {len(texts)} positions but images has {len(images)}")
    for i, (t, im) in enumerate(zip(texts, images)):
        if (t is None) == (im is None):
            errors.append(f"position {i}: exactly one of texts/images must be set")
        if im is not None and im.get("status") == "ok" and im.get("file") != _expected_file(i, im):
            errors.append(f"position {i}: image file should be {i}.<ext>, got {im.get('file')}")
    return errors


def _expected_file(position: int, image: dict[str, Any]) -> Optional[str]:
    f = image.get("file")
    if not f:
        return None
    return f"{position}.{f.rsplit('.', 1)[-1]}"

"""File access through Beam's filesystems, so local, gs:// and s3:// paths work unchanged."""
from __future__ import annotations

import uuid
from typing import BinaryIO, Callable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from m3w_pipeline.read import warc


def open_input(path: str) -> BinaryIO:
    """Raw bytes of an input (never auto-decompressed: WARC gzip members are the reader's business)."""
    if path.startswith(("http://", "https://")):
        return warc.open_http(path)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def expand_inputs(patterns: list[str], listing_base_url: str = warc.COMMON_CRAWL_BASE_URL) -> list[str]:
    """Globs, plain paths, URLs and Common Crawl `*.paths.gz` listings -> sorted input list."""
    found: set[str] = set()
    for pattern in patterns:
        if pattern.startswith(("http://", "https://")) and not warc.is_listing(pattern):
            found.add(pattern)
            continue
        if warc.is_listing(pattern):
            with open_input(pattern) as stream:
                found.update(warc.expand_listing(warc.read_listing(stream, pattern), listing_base_url))
            continue
        matches = FileSystems.match([pattern])[0].metadata_list
        if not matches:
            raise FileNotFoundError(f"no input matches {pattern!r}")
        found.update(m.path for m in matches)
    return sorted(found)


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write under a temporary name, then rename: readers never see a half-written file."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED) as out:
        write(out)
    try:
        FileSystems.rename([tmp], [path])
    except Exception:  # noqa: BLE001 - some filesystems refuse to rename over an existing file
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])


def write_bytes_atomic(path: str, data: bytes) -> None:
    write_atomic(path, lambda out: out.write(data))


def read_bytes(path: str) -> bytes:
    with open_input(path) as stream:
        return stream.read()


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def mkdirs(path: str) -> None:
    if not FileSystems.exists(path):
        try:
            FileSystems.mkdirs(path)
        except Exception:  # noqa: BLE001 - object stores have no directories
            pass


def delete_matching(pattern: str, keep: set[str]) -> list[str]:
    """Delete files matching `pattern` whose path is not in `keep`; returns what was deleted."""
    matches = FileSystems.match([pattern])[0].metadata_list
    stale = sorted(m.path for m in matches if m.path not in keep)
    if stale:
        FileSystems.delete(stale)
    return stale

"""Streaming WARC reading: every record ends as a page, a media record, or a named drop.

The reader never raises on bad input. A file that breaks part-way yields the
records before the break, then a `BrokenFile` naming the file and the reason, so
a job over thousands of files loses only what is really unreadable.
"""
from __future__ import annotations

import gzip
import io
import urllib.request
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Optional, Union
from urllib.parse import urljoin

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from m3w_pipeline.core.config import WarcConfig
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.read.decode import charset_from_content_type, decode_html

# Record types we never turn into documents, each counted under its own reason.
SKIPPED_RECORD_TYPES = ("request", "metadata", "warcinfo", "revisit", "conversion", "continuation")

# Every reason a record can be dropped for (counters are pre-declared from this).
RECORD_DROP_REASONS = (
    "request",
    "metadata",
    "warcinfo",
    "revisit",
    "conversion",
    "continuation",
    "other-record-type",
    "http-status",
    "not-html-or-media",
    "too-large",
    "corrupt-record",
)

COMMON_CRAWL_BASE_URL = "https://data.commoncrawl.org/"

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_MEDIA_PREFIXES = ("image/", "video/")


@dataclass
class Page:
    url: str
    html: str
    provenance: Provenance
    http_status: Optional[int]
    content_type: str
    headers: dict[str, str]  # selected HTTP headers (lower-case names) later steps need


@dataclass
class MediaRecord:
    url: str
    data: bytes
    content_type: str
    provenance: Provenance


def capture_order(record: MediaRecord) -> tuple[str, str, int]:
    """Sort key putting captures of one URL oldest first (ties broken by file and offset)."""
    p = record.provenance
    return p.capture_date, p.warc_file, p.offset


@dataclass
class DroppedRecord:
    reason: str  # one of RECORD_DROP_REASONS
    url: Optional[str]
    warc_file: str
    offset: int
    detail: str = ""


@dataclass
class BrokenFile:
    """A file that could not be read to its end (or at all); what came before is kept."""

    warc_file: str
    reason: str  # unreadable | not-per-record-gzip | invalid-record | record-cut-short | content-encoding
    detail: str
    records_read: int


WarcItem = Union[Page, MediaRecord, DroppedRecord, BrokenFile]

# HTTP headers worth carrying with a page (opt-out and language signals for later filters).
_KEPT_HEADERS = ("content-type", "content-language", "x-robots-tag", "tdm-reservation", "tdm-policy", "last-modified")


def iter_warc(stream: BinaryIO, name: str, config: WarcConfig = WarcConfig()) -> Iterator[WarcItem]:
    """Yield one item per record in `stream`, then at most one BrokenFile.

    Never raises on bad input: whatever stops the read (warcio, gzip, our decoding) ends the file
    as one BrokenFile that counts the records before the break, and a record cut anywhere, of any
    type, is reported, including a gzip member that ends before its trailer.
    """
    records_read = 0
    problem: Optional[BrokenFile] = None
    try:
        iterator = ArchiveIterator(stream, arc2warc=True)
        for record in iterator:
            declared = record.rec_headers.get_header("Content-Length") or ""
            if not declared.strip().isdigit():  # warcio parses garbage lines as ARC headers
                yield BrokenFile(name, "invalid-record", f"record header without a numeric length: {declared[:40]!r}", records_read)
                return
            records_read += 1
            item = _classify(record, iterator, name, config)
            # Offsets and the member's end are only final once the record has been consumed.
            if problem is None:
                cut = _cut_detail(record, iterator)
                if isinstance(item, DroppedRecord) and item.reason == "corrupt-record":
                    problem = BrokenFile(name, _problem_reason(item.detail), item.detail, records_read)
                elif cut:
                    problem = BrokenFile(name, "record-cut-short", cut, records_read)
            yield item
        # warcio ends quietly when the file stops inside a record's headers: bytes it consumed
        # after the last whole record are a cut too.
        leftover = iterator.fh.tell() - iterator.offset
        if problem is None and leftover > 0:
            problem = BrokenFile(name, "record-cut-short", f"{leftover} bytes after the last whole record do not form a record", records_read)
    except ArchiveLoadFailed as err:
        text = " ".join(str(err).split())
        reason = "not-per-record-gzip" if "non-chunked gzip" in text else "invalid-record"
        yield BrokenFile(name, reason, text[:300], records_read)
        return
    except (OSError, EOFError, zlib.error) as err:
        yield BrokenFile(name, "unreadable", f"{type(err).__name__}: {err}"[:300], records_read)
        return
    except Exception as err:  # noqa: BLE001 - warcio raises AttributeError, OverflowError, ValueError... on hostile headers
        yield BrokenFile(name, "invalid-record", f"{type(err).__name__}: {err}"[:300], records_read)
        return
    if problem is not None:
        yield problem


def _cut_detail(record, iterator) -> str:
    """Why this consumed record is cut short, or "": its declared body ran past the end of the
    file, or its gzip member ended before the gzip trailer (warcio raises on neither)."""
    missing = getattr(record.raw_stream, "limit", 0)
    if missing > 0:
        return f"record cut short: {missing} of its declared bytes missing"
    decompressor = getattr(iterator.reader, "decompressor", None)
    if decompressor is not None and not getattr(decompressor, "eof", True):
        return "record cut short: its gzip member ends before the gzip trailer"
    return ""


def _problem_reason(detail: str) -> str:
    return "record-cut-short" if detail.startswith("record cut short") else "content-encoding"


def _classify(record, iterator, name: str, config: WarcConfig) -> WarcItem:
    rec_type = record.rec_type
    url = _target_uri(record)
    if rec_type not in ("response", "resource"):
        _drain(record)
        reason = rec_type if rec_type in SKIPPED_RECORD_TYPES else "other-record-type"
        if getattr(record.raw_stream, "limit", 0) > 0:  # cut inside a request/metadata/warcinfo record
            reason = "corrupt-record"
        offset = iterator.get_record_offset()
        return DroppedRecord(reason, url, name, offset, "record cut short: body ends early" if reason == "corrupt-record" else "")

    raw = record.raw_stream.read(max(config.max_page_bytes, config.max_media_bytes) + 1)
    too_large_stream = len(raw) > max(config.max_page_bytes, config.max_media_bytes)
    if too_large_stream:
        _drain(record)
    cut_short = getattr(record.raw_stream, "limit", 0) > 0 and not too_large_stream
    iterator.read_to_end(record)
    prov = Provenance(
        warc_file=name,
        offset=iterator.get_record_offset(),
        length=iterator.get_record_length(),
        record_id=record.rec_headers.get_header("WARC-Record-ID") or "",
        capture_date=record.rec_headers.get_header("WARC-Date") or "",
    )

    def drop(reason: str, detail: str = "") -> DroppedRecord:
        return DroppedRecord(reason, url, name, prov.offset, detail)

    if cut_short:
        return drop("corrupt-record", f"record cut short: {len(raw)} of its declared bytes read")

    http = record.http_headers if rec_type == "response" else None
    status = None
    headers: dict[str, str] = {}
    if http is not None:
        try:
            status = int(http.get_statuscode() or 0)
        except ValueError:
            status = 0
        headers = {h: v for h in _KEPT_HEADERS if (v := http.get_header(h)) is not None}
        if status != 200:
            return drop("http-status", str(status))
        content_type = headers.get("content-type", "")
    else:
        content_type = record.rec_headers.get_header("Content-Type") or ""
    if too_large_stream:
        return drop("too-large", "larger than max_media_bytes and max_page_bytes")

    try:
        payload = decode_http_body(raw, http, max(config.max_page_bytes, config.max_media_bytes))
    except BodyTooLarge as err:
        return drop("too-large", str(err))
    except ValueError as err:
        return drop("corrupt-record", str(err))

    kind = classify_payload(content_type, payload)
    if kind == "html":
        if len(payload) > config.max_page_bytes:
            return drop("too-large", f"{len(payload)} bytes > max_page_bytes")
        return Page(url, decode_html(payload, charset_from_content_type(content_type)), prov, status, content_type, headers)
    if kind == "media":
        if len(payload) > config.max_media_bytes:
            return drop("too-large", f"{len(payload)} bytes > max_media_bytes")
        return MediaRecord(url, payload, content_type, prov)
    return drop("not-html-or-media", content_type.split(";")[0].strip() or "no content type")


def _target_uri(record) -> Optional[str]:
    uri = record.rec_headers.get_header("WARC-Target-URI")
    if uri and uri.startswith("<") and uri.endswith(">"):  # WARC/0.17-era brackets
        uri = uri[1:-1]
    return uri


def _drain(record) -> None:
    while record.raw_stream.read(1 << 16):
        pass


class BodyTooLarge(ValueError):
    """A Content-Encoding body inflates past the cap: counted as too-large, never held in memory whole."""


def decode_http_body(raw: bytes, http_headers, max_bytes: int = 25_000_000) -> bytes:
    """Undo Transfer-Encoding: chunked and every Content-Encoding (gzip, deflate, br, chained).

    Each decoding step stops at `max_bytes` of output (BodyTooLarge), so a few hundred bytes of
    compressed input cannot expand to gigabytes; a body cut short raises ValueError.
    """
    if http_headers is None:
        return raw
    if "chunked" in (http_headers.get_header("Transfer-Encoding") or "").lower():
        raw = _dechunk(raw)
    encodings = [e.strip().lower() for e in (http_headers.get_header("Content-Encoding") or "").split(",") if e.strip()]
    for encoding in reversed(encodings):  # listed in the order they were applied
        if encoding in ("gzip", "x-gzip"):
            raw = _inflate(raw, 16 + zlib.MAX_WBITS, "gzip", max_bytes)
        elif encoding == "deflate":
            try:
                raw = _inflate(raw, zlib.MAX_WBITS, "deflate", max_bytes)
            except BodyTooLarge:
                raise
            except ValueError:
                raw = _inflate(raw, -zlib.MAX_WBITS, "deflate", max_bytes)  # raw deflate, as some servers send
        elif encoding == "br":
            raw = _unbrotli(raw, max_bytes)
    return raw


def _inflate(raw: bytes, wbits: int, label: str, max_bytes: int) -> bytes:
    # Crawlers sometimes store the body already decoded while keeping the header.
    if label == "gzip" and not raw.startswith(b"\x1f\x8b"):
        return raw
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(raw, max_bytes + 1)
        if len(out) > max_bytes or d.unconsumed_tail:
            raise BodyTooLarge(f"{label} content-encoding inflates past {max_bytes} bytes")
        out += d.flush()
    except zlib.error as err:
        raise ValueError(f"{label} content-encoding: {err}") from err
    if not d.eof:
        raise ValueError(f"{label} content-encoding ends early ({len(raw)} compressed bytes)")
    return out


def _unbrotli(raw: bytes, max_bytes: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    try:
        out = d.process(raw, output_buffer_limit=max_bytes + 1)
    except brotli.error as err:
        raise ValueError(f"br content-encoding: {err}") from err
    if len(out) > max_bytes or not d.can_accept_more_data():
        raise BodyTooLarge(f"br content-encoding inflates past {max_bytes} bytes")
    if not d.is_finished():
        raise ValueError(f"br content-encoding ends early ({len(raw)} compressed bytes)")
    return out


def _dechunk(raw: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        if end < 0:
            break
        size_text = raw[pos:end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return raw  # not really chunked: the header lied (or warcio already de-chunked)
        if size == 0:
            break
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def classify_payload(content_type: str, payload: bytes) -> str:
    """'html', 'media' or 'other', by Content-Type and, when it is missing or lies, by sniffing."""
    from m3w_pipeline.media.images import sniff_image_type

    ctype = content_type.split(";")[0].strip().lower()
    if sniff_image_type(payload[:64]) not in (None, "svg"):
        return "media"
    if ctype.startswith(_MEDIA_PREFIXES):
        return "media"
    if ctype in _HTML_TYPES:
        return "html"
    if ctype in ("", "application/octet-stream", "text/plain") and _looks_like_html(payload):
        return "html"
    return "other"


def _looks_like_html(payload: bytes) -> bool:
    head = payload[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:512]


# ----------------------------------------------------------------------------- inputs


def expand_listing(lines: Iterable[str], base_url: str = COMMON_CRAWL_BASE_URL) -> list[str]:
    """A Common Crawl `warc.paths.gz` listing -> full URLs (or paths under any base)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return [urljoin(base, line.strip().lstrip("/")) for line in lines if line.strip() and not line.startswith("#")]


def read_listing(stream: BinaryIO, name: str) -> list[str]:
    data = stream.read()
    if name.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def is_listing(path: str) -> bool:
    return path.endswith((".paths.gz", ".paths", ".paths.txt"))


def open_http(url: str, timeout: float = 60.0) -> BinaryIO:
    """Stream a WARC over HTTP(S); the body is read as it is parsed, never held whole."""
    request = urllib.request.Request(url, headers={"User-Agent": "m3w-pipeline (+https://github.com/m3w)"})
    return urllib.request.urlopen(request, timeout=timeout)


def open_local(path: str) -> BinaryIO:
    return io.open(path, "rb")

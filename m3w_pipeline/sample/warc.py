"""Writing captures as Common Crawl-like WARC.gz files: one gzip member per record.

Why by hand: the same seed must give byte-identical files, so every byte that could depend
on the clock or the platform is fixed here: WARC-Date values come from a crawl-wide tick
counter, record ids are uuid5 of a counter, and each gzip member has a hand-written header
with mtime 0 (`gzip_member`). Records are built with warcio's WARCWriter (gzip=False).
(warcio's own gzip=True would also be deterministic -- its zlib header carries mtime 0 --
but always uses level 9; here media records use stored deflate blocks because their bytes
are already compressed and deflating them was a large share of generation time.)
"""
from __future__ import annotations

import io
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CRAWL_START = datetime(2024, 3, 4, 10, 0, 0, tzinfo=timezone.utc)
RECORD_ID_NAMESPACE = uuid.UUID("6f1c7d0e-5b8a-4c3e-9a51-3d2f1e0b7a11")
CRAWLER_IP = "192.0.2.10"  # TEST-NET-1, never routable
USER_AGENT = "CCBot/2.0 (https://commoncrawl.org/faq/)"
# Deflate levels per record. Image bytes are already compressed (deflate saves ~2%) and
# compressing them dominated generation time, so media members use stored deflate blocks
# (level 0): still standard gzip members that every reader accepts.
TEXT_GZIP_LEVEL = 6
MEDIA_GZIP_LEVEL = 0
# magic, deflate, no flags, mtime 0, no extra flags, OS 255 (unknown)
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
MEDIA_CACHE_HEADERS: tuple[tuple[str, str], ...] = (("Cache-Control", "max-age=31536000"),)


@dataclass
class Capture:
    """One fetch: written as request + response (+ metadata), or as a revisit."""

    url: str
    status: int
    body: bytes
    content_type: Optional[str]
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    is_media: bool = False
    with_metadata: bool = False
    revisit_of: Optional[str] = None  # URL of an earlier response with the same payload


def media_capture(url: str, body: bytes, content_type: Optional[str]) -> Capture:
    """An image or video response: long-cached, and stored without deflate (see MEDIA_GZIP_LEVEL)."""
    return Capture(url, 200, body, content_type, list(MEDIA_CACHE_HEADERS), is_media=True)


def _status_line(status: int) -> str:
    return {200: "200 OK", 301: "301 Moved Permanently", 404: "404 Not Found"}[status]


@dataclass
class BrokenRecord:
    """Where the deliberately truncated gzip member is, so tests can check readers report it.

    Note for readers: warcio 1.8.1 yields this record WITHOUT raising; its WARC headers
    parse and only the payload comes back shorter than its Content-Length. A reader must
    compare lengths (or walk gzip members itself) to notice.
    """

    warc_path: Path
    offset: int  # start of the cut member
    full_length: int  # length the member had before truncation
    kept_length: int  # bytes of it left in the file (it ends the file)
    url: str


@dataclass
class CrawlState:
    """Crawl-wide counters shared by all files: record ids and fetch times never repeat."""

    records: int = 0
    seconds: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # WARC-Type -> records written
    responses: dict[str, tuple[str, str]] = field(default_factory=dict)  # url -> (date, digest)
    media_files: dict[str, str] = field(default_factory=dict)  # media url -> WARC file name

    def tick(self) -> datetime:
        self.seconds += 1
        return CRAWL_START + timedelta(seconds=self.seconds)


def write_warc_file(
    path: Path, seed: int, state: CrawlState, captures: list[Capture], truncated: Optional[Capture] = None
) -> Optional[BrokenRecord]:
    """Write one WARC; if `truncated` is given it is written last and its member cut in half."""
    warc = _WarcFile(path, seed, state)
    try:
        warc.write_warcinfo()
        for capture in captures:
            warc.write_capture(capture)
        if truncated is None:
            return None
        warc.write_capture(truncated)
        offset, length = warc.last_offset, warc.last_length
    finally:
        warc.close()
    kept = length // 2
    with open(path, "r+b") as fh:
        fh.truncate(offset + kept)
    return BrokenRecord(path, offset, length, kept, truncated.url)


class _WarcFile:
    """Writes one gzip member per record; ids and dates come from the crawl-wide counter."""

    def __init__(self, path: Path, seed: int, state: CrawlState) -> None:
        self.path = path
        self.state = state
        self.seed = seed
        self._fh = open(path, "wb")
        self._buffer = io.BytesIO()
        self._writer = WARCWriter(self._buffer, gzip=False, warc_version="1.0")
        self.warcinfo_id = ""
        self.last_offset = 0
        self.last_length = 0

    def close(self) -> None:
        self._fh.close()

    def _record_id(self) -> str:
        self.state.records += 1
        return f"<urn:uuid:{uuid.uuid5(RECORD_ID_NAMESPACE, f'{self.seed}:{self.state.records}')}>"

    def _emit(self, record: Any, level: int) -> str:
        self._buffer.seek(0)
        self._buffer.truncate(0)
        self._writer.write_record(record)
        member = gzip_member(self._buffer.getvalue(), level)
        self.last_offset = self._fh.tell()
        self.last_length = len(member)
        self._fh.write(member)
        rec_type = record.rec_headers.get_header("WARC-Type")
        self.state.counts[rec_type] = self.state.counts.get(rec_type, 0) + 1
        return record.rec_headers.get_header("WARC-Record-ID")

    def write_warcinfo(self) -> None:
        fields = [
            ("software", "m3w sample-crawl (synthetic)"),
            ("format", "WARC File Format 1.0"),
            ("conformsTo", "http://bibnum.bnf.fr/WARC/WARC_ISO_28500_version1_latestdraft.pdf"),
            ("isPartOf", "M3W-SAMPLE"),
            ("description", f"Synthetic Common Crawl-like sample, seed {self.seed}"),
            ("robots", "checked via crawler-commons"),
        ]
        payload = "".join(f"{k}: {v}\r\n" for k, v in fields).encode()
        date = _warc_date(self.state.tick())
        self.warcinfo_id = self._record_id()
        record = self._writer.create_warc_record(
            "", "warcinfo", payload=io.BytesIO(payload), length=len(payload),
            warc_headers_dict={"WARC-Type": "warcinfo", "WARC-Record-ID": self.warcinfo_id, "WARC-Date": date,
                               "WARC-Filename": self.path.name},
            warc_content_type="application/warc-fields",
        )
        self._emit(record, TEXT_GZIP_LEVEL)

    def write_capture(self, capture: Capture) -> None:
        when = self.state.tick()
        date = _warc_date(when)
        response_id = self._record_id()
        request_id = self._record_id()
        self._emit(self._request(capture.url, date, request_id, response_id), TEXT_GZIP_LEVEL)
        if capture.revisit_of:
            self._emit(self._revisit(capture, date, response_id), TEXT_GZIP_LEVEL)
            return
        level = MEDIA_GZIP_LEVEL if capture.is_media else TEXT_GZIP_LEVEL
        response = self._response(capture, when, date, response_id)
        self._emit(response, level)
        self.state.responses[capture.url] = (date, response.rec_headers.get_header("WARC-Payload-Digest"))
        if capture.is_media:
            self.state.media_files[capture.url] = self.path.name
        if capture.with_metadata:
            self._emit(self._metadata(capture, date, response_id), TEXT_GZIP_LEVEL)

    def _common(self, rec_type: str, url: str, date: str, record_id: str) -> dict[str, str]:
        # WARC-Type first, as Common Crawl writes it (warcio replaces the value in place).
        return {"WARC-Type": rec_type, "WARC-Record-ID": record_id, "WARC-Date": date,
                "WARC-Target-URI": url, "WARC-Warcinfo-ID": self.warcinfo_id}

    def _request(self, url: str, date: str, record_id: str, response_id: str) -> Any:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = [("Host", parts.netloc), ("User-Agent", USER_AGENT),
                   ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                   ("Accept-Encoding", "br,gzip"), ("Connection", "Keep-Alive")]
        warc_headers = self._common("request", url, date, record_id) | {"WARC-Concurrent-To": response_id,
                                                             "WARC-IP-Address": CRAWLER_IP}
        return self._writer.create_warc_record(
            url, "request", payload=io.BytesIO(b""), length=0, warc_headers_dict=warc_headers,
            http_headers=StatusAndHeaders(f"GET {target} HTTP/1.1", headers, is_http_request=True),
        )

    def _response(self, capture: Capture, when: datetime, date: str, record_id: str) -> Any:
        headers = [("Date", format_datetime(when, usegmt=True)), ("Server", "nginx")]
        if capture.content_type:
            headers.append(("Content-Type", capture.content_type))
        headers.append(("Content-Length", str(len(capture.body))))
        headers.extend(capture.extra_headers)
        warc_headers = self._common("response", capture.url, date, record_id) | {"WARC-IP-Address": CRAWLER_IP}
        return self._writer.create_warc_record(
            capture.url, "response", payload=io.BytesIO(capture.body), length=len(capture.body),
            warc_headers_dict=warc_headers,
            http_headers=StatusAndHeaders(_status_line(capture.status), headers, protocol="HTTP/1.1"),
        )

    def _revisit(self, capture: Capture, date: str, record_id: str) -> Any:
        original = capture.revisit_of or capture.url
        refers_date, digest = self.state.responses[original]
        headers = [("Date", "Mon, 04 Mar 2024 12:00:00 GMT"), ("Server", "nginx"),
                   ("Content-Type", capture.content_type or "text/html")]
        return self._writer.create_revisit_record(
            capture.url, digest, original, refers_date,
            http_headers=StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1"),
            warc_headers_dict=self._common("revisit", capture.url, date, record_id),
        )

    def _metadata(self, capture: Capture, date: str, response_id: str) -> Any:
        payload = (f"fetchTimeMs: {len(capture.body) % 900 + 40}\r\n"
                   "charset-detected: UTF-8\r\n"
                   'languages-cld2: {"reliable":true,"text-bytes":1000,"languages":[{"code":"en","code-iso-639-3":"eng",'
                   '"text-covered":0.99,"score":900.0,"name":"ENGLISH"}]}\r\n'
                   ).encode()
        record_id = self._record_id()
        warc_headers = self._common("metadata", capture.url, date, record_id) | {"WARC-Concurrent-To": response_id}
        return self._writer.create_warc_record(
            capture.url, "metadata", payload=io.BytesIO(payload), length=len(payload),
            warc_headers_dict=warc_headers, warc_content_type="application/warc-fields",
        )


def gzip_member(data: bytes, level: int) -> bytes:
    """One complete gzip member with a fixed header (mtime 0, OS 'unknown').

    Written by hand rather than with gzip/warcio so that no header byte depends on the
    clock or the platform (zlib writes its build OS into the header).
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    return GZIP_HEADER + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def _warc_date(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


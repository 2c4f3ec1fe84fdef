"""Hostile and broken WARCs: a bad file never raises, every cut is reported, bodies cannot inflate without bound."""
from __future__ import annotations

import gzip
import io
import random
import zlib
from pathlib import Path

import brotli
import pytest
from warcio.archiveiterator import ArchiveIterator

from m3w_pipeline.core.config import WarcConfig
from m3w_pipeline.read import warc

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "warc"
CUTS_PER_FILE = 25


def _intact_files() -> list[Path]:
    return [p for p in sorted(CORPUS.glob("*"))
            if not any(isinstance(i, warc.BrokenFile) for i in warc.iter_warc(io.BytesIO(p.read_bytes()), p.name))]


def _record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record in the file's own bytes (compressed offsets for .gz), from an intact read."""
    spans = []
    iterator = ArchiveIterator(io.BytesIO(data))
    for record in iterator:
        record.content_stream().read()
        iterator.read_to_end(record)
        spans.append((iterator.get_record_offset(), iterator.get_record_offset() + iterator.get_record_length()))
    return spans


@pytest.mark.parametrize("path", _intact_files(), ids=lambda p: p.name)
def test_every_cut_inside_a_record_is_reported_and_no_cut_between_records_is(path):
    """The sweep of issue 11: cut at random offsets and at record boundaries, compare with the intact read."""
    data = path.read_bytes()
    spans = _record_spans(data)
    rng = random.Random(path.name)
    cuts = sorted({rng.randrange(1, len(data)) for _ in range(CUTS_PER_FILE)} | {end for _, end in spans[:-1][:CUTS_PER_FILE]})
    for cut in cuts:
        items = list(warc.iter_warc(io.BytesIO(data[:cut]), "cut.warc"))
        broken = [i for i in items if isinstance(i, warc.BrokenFile)]
        whole = sum(1 for _, end in spans if end <= cut)
        inside = any(start < cut < end for start, end in spans)
        assert len(broken) == int(inside), (cut, spans, items)
        # every record that ended before the cut is still there, as a page, media record or named drop
        assert len(items) - len(broken) >= whole, (cut, whole, items)
        if inside:  # a cut in a record's headers can read as a header without its length
            assert broken[0].reason in ("record-cut-short", "invalid-record") and broken[0].records_read <= whole + 1


def _warc_record(headers: list[str], body: bytes) -> bytes:
    return ("WARC/1.0\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body + b"\r\n\r\n"


def _response(body: bytes, encoding: str, *, url: str = "https://example.org/x") -> bytes:
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: {encoding}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return _warc_record(["WARC-Type: response", f"WARC-Target-URI: {url}", "WARC-Date: 2024-01-01T00:00:00Z",
                         "WARC-Record-ID: <urn:uuid:1>", "Content-Type: application/http; msgtype=response",
                         f"Content-Length: {len(http)}"], http)


GOOD = _response(b"<html><body><p>fine</p></body></html>", "identity")


@pytest.mark.parametrize("name, data", [
    ("response without WARC-Target-URI", _warc_record(["WARC-Type: response", "Content-Length: 40"], b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 21)),
    ("huge Content-Length", _warc_record(["WARC-Type: resource", "WARC-Target-URI: https://e.org/", "Content-Length: 99999999999999999999999"],
                                         b"abc")),
    ("negative Content-Length", _warc_record(["WARC-Type: resource", "WARC-Target-URI: https://e.org/", "Content-Length: -5"], b"abc")),
    ("headers cut mid-line", b"WARC/1.0\r\nWARC-Type: resp"),
    ("gzip member without its trailer", gzip.compress(GOOD, mtime=0)[:-6]),
])
def test_hostile_records_end_as_one_broken_file_after_the_good_records(name, data):
    items = list(warc.iter_warc(io.BytesIO(GOOD + data), "hostile.warc"))
    assert isinstance(items[0], warc.Page), items
    broken = [i for i in items if isinstance(i, warc.BrokenFile)]
    assert len(broken) == 1 and items[-1] is broken[0], items
    assert broken[0].records_read >= 1


def test_whirlwind_cut_at_byte_1201_is_a_broken_file():
    data = (CORPUS / "cc-whirlwind__whirlwind.warc.gz").read_bytes()[:1201]
    items = list(warc.iter_warc(io.BytesIO(data), "whirlwind.warc.gz"))
    assert [type(i).__name__ for i in items][-1] == "BrokenFile"


@pytest.mark.parametrize("encoding, compress", [
    ("br", lambda raw: brotli.compress(raw, quality=11)),
    ("gzip", lambda raw: gzip.compress(raw, compresslevel=9, mtime=0)),
    ("deflate", lambda raw: zlib.compress(raw, 9)),
    ("gzip, br", lambda raw: brotli.compress(gzip.compress(raw, compresslevel=9, mtime=0), quality=11)),
])
def test_compression_bombs_are_too_large_drops_without_inflating(encoding, compress):
    bomb = compress(b"\0" * 200_000_000)  # 200 MB of zeros: a few hundred bytes to ~200 KB compressed
    config = WarcConfig(max_page_bytes=1_000_000, max_media_bytes=1_000_000)
    items = list(warc.iter_warc(io.BytesIO(_response(bomb, encoding) + GOOD), "bomb.warc", config))
    assert [getattr(i, "reason", type(i).__name__) for i in items] == ["too-large", "Page"], items
    assert "inflates past 1000000 bytes" in items[0].detail


def test_chained_encodings_decode_in_reverse_order():
    html = b"<html><body><p>" + b"words " * 1000 + b"</p></body></html>"
    body = brotli.compress(gzip.compress(html, mtime=0))
    page = next(warc.iter_warc(io.BytesIO(_response(body, "gzip, br")), "chain.warc"))
    assert isinstance(page, warc.Page) and page.html.startswith("<html><body><p>words")

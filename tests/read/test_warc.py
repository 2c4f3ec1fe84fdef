"""WARC reading on the real corpus files: every record accounted, broken files reported, bodies decoded."""
from __future__ import annotations

import gzip
import io
import zlib
from collections import Counter
from pathlib import Path

import pytest

from m3w_pipeline.core import web
from m3w_pipeline.core.config import WarcConfig
from m3w_pipeline.read import warc

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "warc"


def read_all(name: str, config: WarcConfig = WarcConfig()):
    path = CORPUS / name
    with open(path, "rb") as f:
        return list(warc.iter_warc(f, str(path), config))


def kinds(items) -> Counter:
    out: Counter = Counter()
    for it in items:
        if isinstance(it, warc.Page):
            out["page"] += 1
        elif isinstance(it, warc.MediaRecord):
            out["media"] += 1
        elif isinstance(it, warc.DroppedRecord):
            out[it.reason] += 1
        else:
            out["broken:" + it.reason] += 1
    return out


def test_common_crawl_slice_counts_every_record_by_type():
    c = kinds(read_all("resiliparse__warcfile.warc.gz"))
    # README inventory: warcinfo 1, request 17, response 16 (text/html), metadata 16
    assert c == Counter({"warcinfo": 1, "request": 17, "page": 16, "metadata": 16})


def test_gov_uk_heritrix_crawl_yields_pages_and_images():
    items = read_all("ukwa__BL-20140325121225068-00000-32090_opera_8443.warc.gz")
    c = kinds(items)
    assert sum(c.values()) == 190  # every record ends somewhere
    assert c["page"] == 36 - c["http-status"] or c["page"] > 0
    media = [i for i in items if isinstance(i, warc.MediaRecord)]
    assert len(media) >= 6  # 5 JPEG + 1 PNG (+ the icon)
    assert {m.content_type.split(";")[0] for m in media} >= {"image/jpeg", "image/png"}
    for m in media:
        assert m.provenance.offset >= 0 and m.provenance.length > 0 and m.provenance.record_id.startswith("<urn:")


def test_provenance_points_at_the_record():
    path = CORPUS / "resiliparse__warcfile.warc.gz"
    pages = [i for i in read_all(path.name) if isinstance(i, warc.Page)]
    data = path.read_bytes()
    first = pages[3].provenance
    member = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[first.offset : first.offset + first.length])
    assert member.startswith(b"WARC/1.0")
    assert f"WARC-Target-URI: {pages[3].url}".encode() in member
    assert first.capture_date.startswith("2020-")


def test_chunked_body_is_dechunked():
    pages = [i for i in read_all("warcio__example-iana.org-chunked.warc") if isinstance(i, warc.Page)]
    assert len(pages) == 1
    html = pages[0].html
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "\r\n1000\r\n" not in html and html.rstrip().endswith("</html>")


def test_gzip_content_encoding_is_decoded_and_matches_plain_twin():
    gz = [i for i in read_all("ukwa__transfer_compression_gzip.warc") if isinstance(i, warc.Page)]
    plain = [i for i in read_all("ukwa__transfer_compression_none.warc") if isinstance(i, warc.Page)]
    assert len(gz) == len(plain) == 1
    assert gz[0].html == plain[0].html and "<html" in gz[0].html.lower()


def test_revisits_requests_and_json_are_dropped_with_their_type():
    c = kinds(read_all("pywb__dupes.warc.gz"))
    assert c["revisit"] == 9 and c["request"] == 12 and c["warcinfo"] == 1
    c = kinds(read_all("warcio__post-test.warc.gz"))
    assert c == Counter({"request": 3, "not-html-or-media": 3})


@pytest.mark.parametrize(
    "name, reason, before",
    [
        ("warcio__example-bad.warc.gz.bad", "not-per-record-gzip", 1),
        ("warcio__example-wrong-chunks.warc.gz", "invalid-record", 1),
        ("resiliparse__clipped.warc.gz", "record-cut-short", 1),
        ("warcio__example-trunc.warc", "content-encoding", 3),
    ],
)
def test_broken_files_are_reported_and_records_before_the_break_kept(name, reason, before):
    items = read_all(name)
    broken = [i for i in items if isinstance(i, warc.BrokenFile)]
    assert len(broken) == 1, items
    assert broken[0].reason == reason and broken[0].warc_file.endswith(name)
    assert broken[0].records_read == before
    assert isinstance(items[-1], warc.BrokenFile)  # reported once, at the end


def test_truncated_file_keeps_records_before_the_break():
    items = read_all("warcio__example-trunc.warc")
    c = kinds(items)
    # warcinfo x2 before the cut record, the cut record dropped as corrupt, the request after it still read
    assert c["warcinfo"] == 2 and c["corrupt-record"] == 1 and c["request"] == 1


def test_garbage_and_empty_files_never_raise(tmp_path):
    for data in (b"", b"this is not a warc file at all\n" * 10, gzip.compress(b"garbage" * 100)):
        items = list(warc.iter_warc(io.BytesIO(data), "x.warc.gz"))
        assert all(isinstance(i, warc.BrokenFile) for i in items)
        assert len(items) == (0 if data == b"" else 1)


def test_size_limit_drops_large_pages():
    c = kinds(read_all("resiliparse__warcfile.warc.gz", WarcConfig(max_page_bytes=20_000)))
    assert c["too-large"] > 0 and c["page"] + c["too-large"] == 16


def test_normalize_url_makes_equal_urls_equal():
    n = web.normalize_url
    assert n("HTTP://Example.COM:80/a%20b?x=1#frag") == n("http://example.com/a b?x=1")
    assert n("https://example.com") == "https://example.com/"
    assert n("https://example.com/a") != n("https://example.com/b")


def test_cc_listing_expands_against_base_url():
    listing = gzip.compress(b"crawl-data/CC-MAIN-2024-22/segments/1/warc/a.warc.gz\n\ncrawl-data/x/b.warc.gz\n")
    lines = warc.read_listing(io.BytesIO(listing), "warc.paths.gz")
    assert warc.expand_listing(lines, "https://data.commoncrawl.org") == [
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-22/segments/1/warc/a.warc.gz",
        "https://data.commoncrawl.org/crawl-data/x/b.warc.gz",
    ]

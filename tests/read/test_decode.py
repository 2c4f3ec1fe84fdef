"""The one page decoder (`read.decode.decode_html`): header charset, then BOM, <meta>, UTF-8, detection.

Both callers use it: the WARC reader with the HTTP header's charset, `extract_page` on raw bytes.
"""
from __future__ import annotations

import io

import pytest

from helpers.warc_builder import response, write_warc
from m3w_pipeline.read import warc
from m3w_pipeline.read.decode import charset_from_content_type, decode_html

PROSE = "Die Größe der Straße überrascht: ein Café, eine Bäckerei und große Gärten. " * 20


def test_decode_html_prefers_header_then_meta_then_detection():
    text = "Größe café"
    assert decode_html(text.encode("utf-8"), "utf-8") == text
    assert decode_html(f'<meta charset="iso-8859-1"><p>{text}'.encode("latin-1")).endswith(text)
    assert decode_html(PROSE.encode("cp1252")) == PROSE  # no declaration, not utf-8: detection


def test_header_charset_wins_over_the_meta_declaration_while_the_bytes_fit_it():
    page = f'<meta charset="utf-8"><p>{PROSE}</p>'
    assert decode_html(page.encode("cp1252"), "windows-1252") == page
    # Bytes that are not valid under the header's charset: the page's own rules decide.
    assert decode_html(page.encode("cp1252"), "utf-8") == page.encode("cp1252").decode("utf-8", errors="replace")
    # A label Python does not know is ignored, and so is an empty one.
    latin = f'<meta charset="iso-8859-1"><p>{PROSE}</p>'
    assert decode_html(latin.encode("cp1252"), "x-no-such-charset") == latin
    assert decode_html(latin.encode("cp1252"), "") == latin


def test_latin1_and_ascii_labels_read_as_windows_1252_in_header_and_meta():
    quote = "\u201cquoted\u201d \u2013 \u20ac5"  # bytes 0x93 0x94 0x96 0x80: C1 controls in ISO-8859-1
    for label in ("iso-8859-1", "ISO-8859-1", " latin1 ", "us-ascii"):
        assert decode_html(quote.encode("cp1252"), label) == quote
        assert decode_html(f'<meta charset="{label.strip()}">{quote}'.encode("cp1252")).endswith(quote)


def test_bom_and_undeclared_pages():
    assert decode_html(b"\xef\xbb\xbf<p>bom</p>") == "<p>bom</p>"
    assert decode_html("\ufeff<p>\u00e9t\u00e9</p>".encode("utf-16-le")) == "<p>\u00e9t\u00e9</p>"
    assert decode_html('<meta charset="utf-16"><p>x</p>'.encode("ascii")) == '<meta charset="utf-16"><p>x</p>'
    japanese = "これは日本語の文章です。川の水質は改善しました。" * 20
    assert decode_html(f"<html><body><p>{japanese}</p></body></html>".encode("shift_jis")).count("川の水質") == 20
    assert decode_html(b"") == ""


def test_charset_from_content_type():
    assert charset_from_content_type("text/html; charset=Shift_JIS") == "Shift_JIS"
    assert charset_from_content_type('text/html;CHARSET="utf-8"; foo=bar') == "utf-8"
    assert charset_from_content_type("text/html") is None
    assert charset_from_content_type("") is None


def test_warc_pages_are_decoded_with_their_header_charset(tmp_path):
    body = f'<html><head><meta charset="utf-8"></head><body><p>{PROSE}</p></body></html>'
    path = write_warc(tmp_path / "cs.warc.gz", [
        response("https://a.example/1", body.encode("cp1252"), "text/html; charset=windows-1252"),
        response("https://a.example/2", body.encode("cp1252"), "text/html"),  # no header charset: the <meta> says utf-8
    ])
    with open(path, "rb") as f:
        pages = [item for item in warc.iter_warc(io.BytesIO(f.read()), str(path)) if isinstance(item, warc.Page)]
    assert [p.url for p in pages] == ["https://a.example/1", "https://a.example/2"]
    assert pages[0].html == body
    assert pages[1].html == body.encode("cp1252").decode("utf-8", errors="replace") != body


@pytest.mark.parametrize("label", ["idna", "punycode", "base64", "rot13", "hex", "zlib", "a\x00b"])
def test_labels_that_are_not_text_encodings_are_skipped(label):
    page = f"<html><p>{PROSE}</p></html>"
    assert decode_html(page.encode("cp1252"), label) == page
    assert decode_html(f'<meta charset="{label}"><p>{PROSE}</p>'.encode("cp1252")) == f'<meta charset="{label}"><p>{PROSE}</p>'


def test_a_page_declaring_a_codec_that_is_no_text_encoding_loses_nothing_else(tmp_path):
    """Such a page once raised out of decode_html: the WARC read as broken after it (idna) or the reader crashed (base64)."""
    good = b"<html><body><p>A fine page.</p></body></html>"
    path = write_warc(tmp_path / "labels.warc.gz", [
        response("https://a.example/1", good),
        response("https://a.example/2", b"<html><meta charset=idna><p>caf\xe9</p></html>", "text/html"),
        response("https://a.example/3", b"<html><meta charset=base64><p>caf\xe9</p></html>", "text/html"),
        response("https://a.example/4", b"<html><p>caf\xe9</p></html>", "text/html; charset=punycode"),
        response("https://a.example/5", good),
    ])
    with open(path, "rb") as f:
        items = list(warc.iter_warc(f, str(path)))
    assert [type(i).__name__ for i in items] == ["Page"] * 5
    assert [p.html for p in items][1:4] == [
        "<html><meta charset=idna><p>café</p></html>",
        "<html><meta charset=base64><p>café</p></html>",
        "<html><p>café</p></html>",
    ]

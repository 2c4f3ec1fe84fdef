"""Page bytes -> text: the one charset decision, for pages read from a WARC and for raw bytes.

Order: the HTTP header's charset (when there is one, Python knows it and the bytes decode
strictly under it); then the page's own rules: a BOM, the <meta> charset declaration,
strict UTF-8, detection by charset-normalizer, and UTF-8 with replacement at last.
Never raises: a label naming a codec that is not a text encoding (base64, idna, ...) or
that cannot replace bad bytes is skipped like an unknown one.
"""
from __future__ import annotations

import codecs
import re
from typing import Optional

from charset_normalizer import from_bytes

# Browsers treat these labels as windows-1252 (WHATWG encoding standard); Python is strict.
_WINDOWS_1252_LABELS = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252"}
_HEADER_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?([^\s;\"']+)", re.IGNORECASE)
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_DETECTION_SAMPLE = 10_000  # bytes from each end of a long page that charset-normalizer reads


def charset_from_content_type(content_type: str) -> Optional[str]:
    """The `charset=` parameter of a Content-Type header, as written, or None."""
    match = _HEADER_CHARSET_RE.search(content_type)
    return match.group(1) if match else None


def decode_html(payload: bytes, header_charset: Optional[str] = None) -> str:
    """Text of an HTML page; `header_charset` is the HTTP header's charset, when the page came with one.

    The header wins when Python knows it and the bytes decode strictly under it. Then the
    page's declaration wins over detection, because detectors misjudge short Latin pages;
    strict UTF-8 is tried before charset-normalizer because it is exact and about free.
    """
    if header_charset:
        try:
            return payload.decode(_python_label(header_charset))
        except (LookupError, ValueError):  # unknown or not a text codec; bytes that do not fit (UnicodeError)
            pass
    for bom, codec in _BOMS:
        if payload.startswith(bom):
            return payload[len(bom) :].decode(codec, errors="replace")
    declared = _declared_charset(payload)
    if declared is not None:
        try:
            return payload.decode(declared, errors="replace")
        except (LookupError, ValueError):  # base64, rot13 (not text), idna, punycode (no errors="replace")
            pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        sample = payload if len(payload) <= 2 * _DETECTION_SAMPLE else payload[:_DETECTION_SAMPLE] + payload[-_DETECTION_SAMPLE:]
        best = from_bytes(sample).best()
        if best is not None and best.encoding:
            return payload.decode(best.encoding, errors="replace")
    except Exception:  # noqa: BLE001 -- detection is best effort: any failure falls through to UTF-8
        pass
    return payload.decode("utf-8", errors="replace")


def _python_label(label: str) -> str:
    """A charset label as Python should read it (lower case, windows-1252 for its aliases)."""
    label = label.strip().lower()
    return _WINDOWS_1252_LABELS.get(label, label)


def _declared_charset(payload: bytes) -> Optional[str]:
    """Codec of the <meta charset> / http-equiv content-type in the first 4 KiB, if Python knows it."""
    match = _META_CHARSET_RE.search(payload[:4096])
    if match is None:
        return None
    try:
        codec = codecs.lookup(_python_label(match.group(1).decode("ascii", "ignore"))).name
    except LookupError:
        return None
    # A page that says utf-16 in ASCII bytes is not utf-16.
    return None if codec.startswith("utf-16") or codec.startswith("utf-32") else codec

"""Write small WARC.gz files for tests: pages and media at chosen URLs, with chosen HTTP headers."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Optional

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter


def response(url: str, body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK",
             headers: Optional[dict[str, str]] = None) -> tuple[str, bytes, list[tuple[str, str]], str]:
    h = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list((headers or {}).items())
    return url, body, h, status


def write_warc(path: Path, records: Iterable[tuple[str, bytes, list[tuple[str, str]], str]]) -> Path:
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i, (url, body, headers, status) in enumerate(records):
            http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
            record = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=http,
                warc_headers_dict={"WARC-Date": f"2024-01-01T00:00:{i % 60:02d}Z", "WARC-Record-ID": f"<urn:uuid:00000000-0000-0000-0000-{i:012d}>"},
            )
            writer.write_record(record)
    return path


def article(title: str, paragraphs: list[str], images: list[str], head: str = "") -> bytes:
    """An article page whose paragraphs and images alternate in the given order."""
    body = [f"<h1>{title}</h1>"]
    for i, p in enumerate(paragraphs):
        body.append(f"<p>{p}</p>")
        if i < len(images):
            body.append(f'<figure><img src="{images[i]}" alt="figure {i}"><figcaption>Figure {i} of {title}.</figcaption></figure>')
    html = (f"<!doctype html><html lang=en><head><title>{title}</title>{head}</head><body><nav><a href=/>Home</a></nav>"
            f"<main><article>{''.join(body)}</article></main><footer>Copyright</footer></body></html>")
    return html.encode("utf-8")

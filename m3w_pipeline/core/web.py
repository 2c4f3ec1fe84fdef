"""Where things are on the web and in archives: a record's provenance, join keys for URLs, domains.

Shared by reading (provenance of every record), joining (media by normalised URL), dedup and the
shards, so it lives in core and none of them imports another for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit


@dataclass(frozen=True)
class Provenance:
    """Where a record came from, precise enough to fetch it again with a range request."""

    warc_file: str
    offset: int
    length: int
    record_id: str
    capture_date: str


def normalize_url(url: str) -> str:
    """Join key for media: lower-case scheme/host, no fragment, default port dropped, path quoted once."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets (RFC 3986)
    port = parts.port if parts.port not in (None, 80 if scheme == "http" else 443 if scheme == "https" else None) else None
    netloc = host + (f":{port}" if port else "")
    path = quote(unquote(parts.path or "/"), safe="/%:@!$&'()*+,;=-._~")
    query = quote(unquote(parts.query), safe="=&%:@!$'()*+,;/?-._~")
    return urlunsplit((scheme, netloc, path, query, ""))


def url_domain(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""

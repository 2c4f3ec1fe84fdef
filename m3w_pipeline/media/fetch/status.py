"""What a fetch can end as: the fixed status names, the per-URL result, and which failures are retried.

Shared by the policy, transport and retry-loop modules: each of them ends an attempt by
raising `FetchFailure` with one of `FETCH_STATUSES`, and the `Fetcher` turns the last one
into the URL's `FetchResult`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Iterable, Optional

OK = "ok"
# Every URL ends with exactly one of these (stable names: they are counters and table values).
FETCH_STATUSES: tuple[str, ...] = (
    "ok",  # a complete body whose magic bytes are an image or a video
    "bad-url",  # unparsable, not http(s), no host, bad port; also a redirect to such a URL
    "blocked-address",  # resolves to a private/loopback/link-local/multicast/reserved address
    "dns",  # the host name does not resolve (or gives no answer within dns_timeout_s)
    "connect",  # connection refused or network unreachable
    "timeout",  # connect, read or whole-request timeout (after retries)
    "tls",  # certificate or TLS handshake failure
    "reset",  # connection reset or closed before a complete response head (after retries)
    "truncated",  # body ended before its Content-Length / last chunk (after retries)
    "http-4xx",  # final response 4xx (429 after retries)
    "http-5xx",  # final response 5xx (after retries)
    "http-other",  # 1xx, 3xx without a Location, or a status code outside 100-599
    "too-many-redirects",  # more than max_redirects redirects
    "too-large",  # Content-Length or the streamed body exceeds max_bytes
    "not-media",  # magic bytes of no image, video or WebVTT track (whatever Content-Type says), or not the kind the URL needs
    "opt-out",  # X-Robots-Tag noai/noimageai or tdm-reservation: 1 (body not read)
    "robots",  # the origin's robots.txt disallows the path for our user-agent token (nothing requested)
    "error",  # protocol violation or anything unexpected; the detail says what
)

_RETRY_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})


@dataclass
class FetchResult:
    """What happened to one URL; `data` holds the body only when status is ok."""

    url: str
    status: str  # one of FETCH_STATUSES
    http_status: Optional[int] = None
    final_url: Optional[str] = None  # after redirects (the last URL requested)
    content_type: Optional[str] = None  # as the server declared it (not trusted)
    sniffed_type: Optional[str] = None  # from magic bytes: jpeg, png, ..., mp4, mov, webm, mkv, ogv, ..., vtt
    media_kind: Optional[str] = None  # image | video | track (WebVTT)
    bytes: int = 0  # body bytes read (0 when the body was not read)
    # Tries on the network (connection or request): retries, redirect hops and re-sends on a
    # stale keep-alive connection included; 0 when refused before (bad-url, blocked-address, dns).
    attempts: int = 0
    redirects: int = 0
    elapsed_s: float = 0.0
    address: Optional[str] = None  # ip:port of the last connection (the proxy's when proxied http)
    error: str = ""  # human-readable detail for every status but ok
    data: Optional[bytes] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_row(self) -> dict[str, Any]:
        """One row of the fetch status table (everything but the body)."""
        return {
            "url": self.url,
            "status": self.status,
            "http_status": self.http_status,
            "final_url": self.final_url,
            "content_type": self.content_type,
            "sniffed_type": self.sniffed_type,
            "media_kind": self.media_kind,
            "bytes": self.bytes,
            "attempts": self.attempts,
            "redirects": self.redirects,
            "elapsed_s": round(self.elapsed_s, 6),
            "address": self.address,
            "error": self.error or None,
        }


def status_table(results: Iterable[FetchResult | dict[str, Any]]):
    """Results (or their rows) -> a pyarrow Table with schemas/fetch_status.arrow.json."""
    import pyarrow as pa

    from schemas import load_arrow_schema

    rows = [r.to_row() if isinstance(r, FetchResult) else r for r in results]
    return pa.Table.from_pylist(rows, schema=load_arrow_schema("fetch_status"))


class FetchFailure(Exception):
    """Ends one attempt with a status; `retryable` ones are tried again after a pause."""

    def __init__(
        self,
        status: str,
        detail: str,
        retryable: bool = False,
        http_status: Optional[int] = None,
        retry_after: Optional[float] = None,
        bytes_read: int = 0,
    ):
        super().__init__(f"{status}: {detail}")
        self.bytes_read = bytes_read
        self.status = status
        self.detail = detail
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after = retry_after


def http_failure(code: int, retry_after: Optional[str]) -> FetchFailure:
    """Non-2xx, non-redirect status -> failure; 408, 429 and most 5xx are retried."""
    if 400 <= code < 500:
        status = "http-4xx"
    elif 500 <= code < 600:
        status = "http-5xx"
    else:
        status = "http-other"
    retryable = code in _RETRY_HTTP_CODES
    wait = retry_after_seconds(retry_after) if retryable else None
    return FetchFailure(status, f"HTTP {code}", retryable=retryable, http_status=code, retry_after=wait)


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())

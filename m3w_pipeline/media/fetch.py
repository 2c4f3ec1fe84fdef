"""Fetch media referenced by crawled pages: polite, bounded, safe, and accounted for.

Common Crawl WARCs hold the HTML of a page but almost never the images it shows,
so the M3W build fetches them itself. Every URL handed to a `Fetcher` ends with
exactly one status from `FETCH_STATUSES` (never an exception), so the job can
count outcomes per status and write them as a status table (`status_table`).

One request, in order:
  parse URL (http/https only) -> the origin's robots.txt allows the path for our agent token
  (fetched once per origin and `robots_cache_s`, through the same checks) -> resolve the host ourselves (or take a host_overrides
  address) -> refuse the name if any address is non-public -> take a per-host slot
  (concurrency limit + politeness delay) -> connect to exactly the checked IPs (no second
  DNS lookup, so DNS rebinding cannot swap them) -> send GET with our User-Agent -> read the head
  -> redirect (checked again from the top) | retryable failure (backoff, Retry-After)
  | opt-out headers (stop before the body) | Content-Length over the cap
  -> stream the body, stopping at max_bytes + 1 -> sniff magic bytes: media or not-media.

Opt-out, decided here: `X-Robots-Tag` directives `noai` / `noimageai` opt a URL out
whether unscoped (`X-Robots-Tag: noai`), scoped to us or `*`, or - with the default
`opt_out_any_agent=True` - scoped to any other crawler (`X-Robots-Tag: CCBot: noai`):
the directive states a wish about AI use of the content rather than about one
crawler's indexing, and our pages come from CCBot's crawl. Set it False to follow
the robots scoping rules strictly. TDMRep's `tdm-reservation: 1` also opts out.
Both are read from the response head; the body is never read.

Through a proxy (`proxy="http://host:port"`), https goes through a CONNECT tunnel to
the checked IP (so the guarantees above hold). Plain http is sent to the proxy in
absolute form with the URL's own host name, because a compliant proxy must take
the Host from the request target; the proxy then does its own DNS lookup, so the
address check is ours but the final connection is the proxy's.
"""
from __future__ import annotations

import errno
import http.client
import ipaddress
import random
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence
from urllib.parse import quote, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from m3w_pipeline.core.config import FetchConfig
from m3w_pipeline.media.images import is_webvtt, sniff_image_type, sniff_video_type

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
MEDIA_KINDS = ("image", "video")

_REDIRECT_CODES = (301, 302, 303, 307, 308)
_RETRY_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
_OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that carry a value after a colon (so "name:" is not a user agent).
_VALUED_ROBOTS_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_SNIFF_BYTES = 4096  # enough for every magic we know (SVG looks this far for <svg)
_READ_CHUNK = 65536
_DNS_CACHE_MAX = 100_000
_ROBOTS_MAX_REDIRECTS = 5  # RFC 9309: follow at least five
_ROBOTS_CACHE_MAX = 100_000  # origins whose rules are kept; past it the cache starts over
_GATES_PRUNE_AT = 10_000
_MAX_IDLE_CONNECTIONS = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~-._"

Resolver = Callable[[str, int], Sequence[str]]


# ----------------------------------------------------------------------------- results


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

    from m3w_pipeline.write.shards import load_arrow_schema

    rows = [r.to_row() if isinstance(r, FetchResult) else r for r in results]
    return pa.Table.from_pylist(rows, schema=load_arrow_schema("fetch_status"))


# ----------------------------------------------------------------------------- sniffing


def sniff_media_type(data: bytes) -> tuple[Optional[str], Optional[str]]:
    """(media kind, type) from magic bytes; (None, None) for anything that is not media.

    Images via `sniff_image_type`, videos via `sniff_video_type` (the containers the video
    corpus knows), WebVTT caption tracks as ("track", "vtt").
    """
    image = sniff_image_type(data)
    if image is not None:
        return "image", image
    if is_webvtt(data):
        return "track", "vtt"
    video = sniff_video_type(data)
    return ("video", video) if video else (None, None)


# ----------------------------------------------------------------------------- opt-out


def opt_out_reason(headers: http.client.HTTPMessage | dict[str, str], agent_token: str, any_agent: bool = True) -> str:
    """Why response headers opt the content out of AI use, or "" when they do not."""
    for value in _header_values(headers, "tdm-reservation"):
        if value.strip() == "1":
            return "tdm-reservation: 1"
    for value in _header_values(headers, "x-robots-tag"):
        for agent, directive in _robots_directives(value):
            applies = agent in (None, "*", agent_token) or any_agent
            if applies and directive in _OPT_OUT_DIRECTIVES:
                return f"x-robots-tag: {value.strip()}"
    return ""


def _header_values(headers: Any, name: str) -> list[str]:
    """All values of a (possibly repeated) header, from an HTTPMessage or a dict."""
    if hasattr(headers, "get_all"):
        return list(headers.get_all(name) or [])
    return [v for k, v in headers.items() if k.lower() == name]


def _robots_directives(value: str) -> Iterator[tuple[Optional[str], str]]:
    """X-Robots-Tag value -> (user agent or None, directive), lower-cased.

    "otherbot: noai, noimageai" scopes both directives to otherbot; a later
    "bot2: none" starts a new scope. "unavailable_after: <date>" is a directive.
    """
    agent: Optional[str] = None
    for piece in value.lower().split(","):
        piece = piece.strip()
        name, colon, rest = piece.partition(":")
        if colon and name.strip() not in _VALUED_ROBOTS_DIRECTIVES and " " not in name.strip():
            agent, piece = name.strip(), rest.strip()
        directive = piece.split(":", 1)[0].strip()
        if directive:
            yield agent, directive


def agent_token(user_agent: str) -> str:
    """Product token robots rules name us by: "m3w-bot" for "m3w-bot/0.1 (+...)"."""
    return user_agent.split("/", 1)[0].split()[0].lower() if user_agent.strip() else ""


# ----------------------------------------------------------------------------- addresses


def is_public_address(ip: str) -> bool:
    """True only for globally routable unicast addresses (IPv4 embedded in IPv6 checked too).

    Python 3.11's `is_global` misses IPv4-mapped (::ffff:127.0.0.1), NAT64 (64:ff9b::/96),
    6to4 and Teredo forms of private addresses, so those are unwrapped first.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    embedded = _embedded_ipv4(addr)
    if embedded is not None:
        return is_public_address(str(embedded))
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified)


def _embedded_ipv4(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses getaddrinfo gives for host (IPv4 and IPv6), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


def parse_host_overrides(overrides: dict[str, str]) -> dict[str, tuple[str, Optional[int]]]:
    """{"name": "ip" | "ip:port" | "[v6]:port"} -> {name: (ip, port or None)}; bad entries raise."""
    parsed = {}
    for name, value in overrides.items():
        value = value.strip()
        if value.startswith("["):
            ip, _, port = value[1:].partition("]")
            port = port.lstrip(":")
        elif value.count(":") == 1:
            ip, port = value.split(":")
        else:
            ip, port = value, ""
        ipaddress.ip_address(ip)  # raises ValueError: overrides name addresses, not hosts
        parsed[name.lower().rstrip(".")] = (ip, int(port) if port else None)
    return parsed


# ----------------------------------------------------------------------------- internals


class _Failure(Exception):
    """Ends one attempt with a status; `retryable` ones are tried again after a pause."""

    def __init__(self, status: str, detail: str, retryable: bool = False, http_status: Optional[int] = None, retry_after: Optional[float] = None, bytes_read: int = 0):
        super().__init__(f"{status}: {detail}")
        self.bytes_read = bytes_read
        self.status = status
        self.detail = detail
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # lower-case, no brackets
    port: int
    path: str  # path + query, what goes on the request line
    authority: str  # Host header value


@dataclass
class _Response:
    """One completed HTTP exchange: a redirect (location) or a 2xx body."""

    http_status: int
    content_type: Optional[str]
    address: str
    location: Optional[str] = None
    body: bytes = b""
    sniffed: tuple[Optional[str], Optional[str]] = (None, None)


def _parse_target(url: str) -> _Target:
    """Split and validate a URL; anything we cannot request is bad-url."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise _Failure("bad-url", str(err)) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Failure("bad-url", f"scheme {scheme!r} is not http(s)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _Failure("bad-url", "no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as err:
        raise _Failure("bad-url", f"host {host!r}: {err}") from None
    if any(c in host for c in " \t\r\n/\\@"):
        raise _Failure("bad-url", f"host {host!r}")
    port = port or _DEFAULT_PORTS[scheme]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    path = quote(path, safe=_PATH_SAFE)  # spaces, controls, non-ASCII; existing %XX stay
    host_for_header = f"[{host}]" if ":" in host else host
    authority = host_for_header if port == _DEFAULT_PORTS[scheme] else f"{host_for_header}:{port}"
    return _Target(url=url, scheme=scheme, host=host.lower(), port=port, path=path, authority=authority)


def _retry_after_seconds(value: Optional[str]) -> Optional[float]:
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


class _HostGate:
    """Per-host concurrency limit plus a minimum gap between request starts."""

    def __init__(self, limit: int, delay_s: float):
        self._slots = threading.BoundedSemaphore(max(1, limit))
        self._lock = threading.Lock()
        self._delay_s = delay_s
        self._next_start = 0.0
        self.in_use = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        self._slots.acquire()
        try:
            with self._lock:
                self.in_use += 1
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + self._delay_s
            if start > now:
                time.sleep(start - now)
            yield
        finally:
            with self._lock:
                self.in_use -= 1
            self._slots.release()

    def defer(self, seconds: float) -> None:
        """Nobody starts a request to this host for `seconds` (the server asked us to wait)."""
        with self._lock:
            self._next_start = max(self._next_start, time.monotonic() + seconds)

    def idle(self, now: float) -> bool:
        return self.in_use == 0 and self._next_start <= now


class _ConnectionPool:
    """Idle keep-alive connections by (scheme, host, address, port, proxy), newest first."""

    def __init__(self, per_key: int, idle_s: float):
        self._idle: dict[tuple, deque] = {}
        self._lock = threading.Lock()
        self._per_key = max(1, per_key)
        self._idle_s = idle_s
        self._count = 0

    def take(self, key: tuple) -> Optional[http.client.HTTPConnection]:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn, since = idle.pop()
                self._count -= 1
                if now - since <= self._idle_s:
                    return conn
                conn.close()
        return None

    def give(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, deque())
            if len(idle) >= self._per_key or self._count >= _MAX_IDLE_CONNECTIONS:
                conn.close()
                return
            idle.append((conn, time.monotonic()))
            self._count += 1

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for conn, _ in idle:
                    conn.close()
            self._idle.clear()
            self._count = 0


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to fixed, checked IPs (tried in order): Host header and request line keep the name."""

    def __init__(self, host: str, port: int, ips: Sequence[str], connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=read_timeout)
        self._ips = ips
        self._connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = _open_socket(self._ips, self.port, self._connect_timeout, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to fixed, checked IPs, verifying the certificate (and sending SNI) for the host name."""

    def __init__(self, host: str, port: int, ips: Sequence[str], connect_timeout: float, read_timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=read_timeout, context=context)
        self._ips = ips
        self._connect_timeout = connect_timeout

    def connect(self) -> None:
        sock = _open_socket(self._ips, self.port, self._connect_timeout, self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _TunnelHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS through a proxy: CONNECT ip:port (first checked IP), then TLS for the host name inside."""

    def __init__(self, host: str, port: int, ips: Sequence[str], proxy: tuple[str, int], connect_timeout: float, read_timeout: float, context: ssl.SSLContext, user_agent: str):
        super().__init__(host, port, timeout=read_timeout, context=context)
        self._ip = ips[0]
        self._proxy = proxy
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent

    def connect(self) -> None:
        sock = _open_socket([self._proxy[0]], self._proxy[1], self._connect_timeout, self.timeout)
        try:
            _connect_tunnel(sock, self._ip, self.port, self.host, self._user_agent)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _open_socket(ips: Sequence[str], port: int, connect_timeout: float, read_timeout: Optional[float]) -> socket.socket:
    """TCP connection to the first of these addresses that answers; errors become _Failure.

    Trying the next address matters on workers without IPv6 routes, where a host's
    AAAA address fails at once and its A address works.
    """
    failure: Optional[_Failure] = None
    for ip in ips:
        try:
            sock = socket.create_connection((ip, port), timeout=connect_timeout)
        except socket.timeout:
            failure = _Failure("timeout", f"connect to {ip}:{port} timed out after {connect_timeout}s", retryable=True)
            continue
        except OSError as err:
            failure = _Failure("connect", f"connect to {ip}:{port}: {err.strerror or err}")
            continue
        sock.settimeout(read_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure or _Failure("connect", "no address to connect to")


def _connect_tunnel(sock: socket.socket, ip: str, port: int, host: str, user_agent: str) -> None:
    """Send CONNECT for ip:port and read the proxy's answer; anything but 2xx fails."""
    target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {user_agent}\r\n\r\n".encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise _Failure("connect", f"proxy closed the connection during CONNECT {target}")
        head += chunk
        if len(head) > 65536:
            raise _Failure("error", "proxy CONNECT response head too long")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].startswith("2"):
        raise _Failure("connect", f"proxy refused CONNECT {target} for {host}: {status_line}")


# ----------------------------------------------------------------------------- fetcher


class Fetcher:
    """Fetches media URLs with retries, limits and address checks; one per worker.

    Thread-safe. `fetch` runs in the caller's thread; `fetch_many` runs up to
    `config.workers` fetches at once. `resolve` replaces DNS (tests, custom resolvers);
    it maps (host, port) to IP strings. Use as a context manager or call `close()`.
    """

    def __init__(self, config: FetchConfig = FetchConfig(), resolve: Optional[Resolver] = None):
        self.config = config
        self._resolve = resolve or system_resolver
        self._overrides = parse_host_overrides(dict(config.host_overrides))
        self._proxy = self._parse_proxy(config.proxy)
        self._agent_token = agent_token(config.user_agent)
        self._ssl = self._ssl_context(config.ca_file)
        self._gates: dict[str, _HostGate] = {}
        self._gates_lock = threading.Lock()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._dns_lock = threading.Lock()
        self._pool = _ConnectionPool(config.per_host_concurrency, config.idle_connection_s)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._executor_lock = threading.Lock()
        self._robots: dict[str, tuple[float, RobotFileParser]] = {}  # origin -> (fetched at, rules)
        self._robots_locks: dict[str, threading.Lock] = {}  # one robots.txt fetch per origin at a time
        self._robots_lock = threading.Lock()
        # Lookups run here so a fetch can stop waiting for one (a hung lookup keeps only its thread).
        self._dns_executor = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="m3w-dns")

    # -- lifecycle

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close idle connections."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        self._dns_executor.shutdown(wait=False, cancel_futures=True)  # a hung lookup may still be running
        self._pool.close()

    def _pool_executor(self) -> ThreadPoolExecutor:
        """The worker threads, started on first use (a Fetcher used only via fetch() has none)."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=max(1, self.config.workers), thread_name_prefix="m3w-fetch")
            return self._executor

    @staticmethod
    def _parse_proxy(proxy: str) -> Optional[tuple[str, int]]:
        if not proxy:
            return None
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FetchConfig.proxy must be http://host:port, got {proxy!r}")
        return parts.hostname, parts.port or 8080

    @staticmethod
    def _ssl_context(ca_file: str) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        return context

    # -- public API

    def fetch(self, url: str) -> FetchResult:
        """Fetch one URL to its final status; never raises for anything the network or server does."""
        started = time.monotonic()
        result = FetchResult(url=url, status="error")
        try:
            self._fetch_into(url, result)
        except _Failure as failure:
            self._fail(result, failure)
        except Exception as err:  # noqa: BLE001 - one odd server must not fail a bundle
            result.status, result.error = "error", f"{type(err).__name__}: {err}"[:500]
        result.elapsed_s = time.monotonic() - started
        return result

    def fetch_many(self, urls: Iterable[str]) -> Iterator[FetchResult]:
        """Results in input order, fetched `workers` at a time; a repeated URL is fetched once.

        Reads the input in windows, so it works on long streams; results of distinct
        URLs are kept until the call ends to serve repeats (group by URL upstream for
        very large inputs, as the Beam stage does). Within a window, requests are
        submitted host by host in turn so one busy host does not hold every worker.
        """
        executor = self._pool_executor()
        window = max(64, 4 * self.config.workers)
        futures: dict[str, Future] = {}
        pending: deque[list[str]] = deque()
        source = iter(urls)

        def submit_window() -> None:
            chunk = list(islice(source, window))
            if chunk:
                new = [u for u in dict.fromkeys(chunk) if u not in futures]
                for u in _interleave_by_host(new):
                    futures[u] = executor.submit(self.fetch, u)
                pending.append(chunk)

        try:
            submit_window()
            submit_window()
            while pending:
                chunk = pending.popleft()
                for url in chunk:
                    yield futures[url].result()
                submit_window()
        finally:
            for future in futures.values():
                future.cancel()

    # -- one URL

    def _fetch_into(self, url: str, result: FetchResult) -> None:
        """Follow redirects, retrying each hop; fills `result` or raises _Failure."""
        current = url
        while True:
            result.final_url = current
            result.http_status = result.content_type = result.address = None  # this hop's, once known
            target = _parse_target(current)
            self._check_robots(target)
            response = self._request_with_retries(target, result)
            result.http_status = response.http_status
            result.content_type = response.content_type
            result.address = response.address
            if response.location is None:
                result.media_kind, result.sniffed_type = response.sniffed
                result.bytes = len(response.body)
                result.data = response.body
                result.status, result.error = OK, ""
                return
            result.redirects += 1
            if result.redirects > self.config.max_redirects:
                raise _Failure("too-many-redirects", f"more than {self.config.max_redirects} redirects, next {response.location[:200]}", http_status=response.http_status)
            current = urljoin(current, response.location)

    def _request_with_retries(self, target: _Target, result: FetchResult, media: bool = True) -> _Response:
        """One hop: attempt, and on a retryable failure back off and try again."""
        for retry in range(self.config.max_retries + 1):
            try:
                return self._attempt(target, result, media)
            except _Failure as failure:
                wait = self._retry_wait(failure, retry, target)
                if wait is None:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _retry_wait(self, failure: _Failure, retry: int, target: _Target) -> Optional[float]:
        """Seconds to wait before retrying, or None to give up with this failure."""
        if not failure.retryable or retry >= self.config.max_retries:
            return None
        if failure.retry_after is not None:
            if failure.retry_after > self.config.retry_after_cap_s:
                failure.detail += f" (Retry-After {failure.retry_after:.0f}s over the {self.config.retry_after_cap_s:.0f}s cap)"
                return None
            self._gate(target.host).defer(failure.retry_after)
            return failure.retry_after
        backoff = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**retry)
        return backoff * random.uniform(0.5, 1.0)

    @staticmethod
    def _fail(result: FetchResult, failure: _Failure) -> None:
        result.status, result.error = failure.status, failure.detail[:500]
        if failure.http_status is not None:
            result.http_status = failure.http_status
        result.bytes = failure.bytes_read
        result.data = None

    def _attempt(self, target: _Target, result: FetchResult, media: bool = True) -> _Response:
        """One request: check the address, wait for a host slot, exchange, read the body."""
        ips, port = self._checked_addresses(target)
        result.attempts += 1  # from here on we touch the network
        key = (target.scheme, target.host, ips, port, self._proxy)
        with self._gate(target.host).slot():
            deadline = time.monotonic() + self.config.total_timeout_s
            conn, reused = self._connection(key, target, ips, port)
            keep = False
            try:
                try:
                    resp, sock = self._send(conn, target)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                    if not reused:
                        raise
                    conn.close()  # the server had closed this idle keep-alive connection: send again
                    result.attempts += 1
                    conn = self._new_connection(target, ips, port)
                    resp, sock = self._send(conn, target)
                address = self._peer_address(target, sock, ips, port)
                result.http_status, result.content_type, result.address = resp.status, resp.getheader("Content-Type"), address
                outcome, keep = self._read_response(resp, sock, address, deadline, media)
                return outcome
            except _Failure:
                raise
            except Exception as err:  # noqa: BLE001 - connection errors of every kind map to one fetch status
                raise _classify_exception(err) from None
            finally:
                if keep:
                    self._pool.give(key, conn)
                else:
                    conn.close()

    def _peer_address(self, target: _Target, sock: socket.socket, ips: tuple[str, ...], port: int) -> str:
        """ip:port we talked to: the proxy for proxied http, the tunnel's target through CONNECT."""
        if self._proxy is not None:
            return _join_address(*self._proxy) if target.scheme == "http" else _join_address(ips[0], port)
        try:
            peer = sock.getpeername()
            return _join_address(peer[0], peer[1])
        except OSError:
            return _join_address(ips[0], port)

    # -- addresses

    def _checked_addresses(self, target: _Target) -> tuple[tuple[str, ...], int]:
        """The IPs (IPv4 first) and port to connect to, after the address policy.

        Every resolved address must be public, not just the first: otherwise a name
        with one public and one private record could reach the private one on retry.
        Raises blocked-address or dns.
        """
        override = self._overrides.get(f"{target.host}:{target.port}") or self._overrides.get(target.host)
        if override is not None:
            ip, port = override
            return (ip,), port or target.port  # the user named this address: trusted
        try:
            addresses = [str(ipaddress.ip_address(target.host))]
        except ValueError:
            addresses = self._lookup(target.host, target.port)
        if not self.config.allow_private_addresses:
            blocked = [a for a in addresses if not is_public_address(a)]
            if blocked:
                raise _Failure("blocked-address", f"{target.host} resolves to non-public {blocked[0]}")
        ordered = sorted(addresses, key=lambda a: ":" in a)  # IPv4 first: IPv6 routes are often missing
        return tuple(ordered), target.port

    def _lookup(self, host: str, port: int) -> list[str]:
        """Resolve with a small cache; failures are dns (EAI_AGAIN retryable)."""
        now = time.monotonic()
        with self._dns_lock:
            cached = self._dns.get((host, port))
        if cached is not None and now - cached[0] <= self.config.dns_cache_s:
            return cached[1]
        lookup = self._dns_executor.submit(self._resolve, host, port)
        try:
            addresses = list(lookup.result(timeout=self.config.dns_timeout_s))
        except FutureTimeout:
            lookup.cancel()
            raise _Failure("dns", f"{host}: no answer within dns_timeout_s {self.config.dns_timeout_s}s", retryable=True) from None
        except socket.gaierror as err:
            retryable = err.errno == socket.EAI_AGAIN
            raise _Failure("dns", f"{host}: {err.strerror or err}", retryable=retryable) from None
        except (OSError, UnicodeError, ValueError) as err:
            raise _Failure("dns", f"{host}: {err}") from None
        if not addresses:
            raise _Failure("dns", f"{host}: no addresses")
        with self._dns_lock:
            if len(self._dns) >= _DNS_CACHE_MAX:
                self._dns.clear()
            self._dns[(host, port)] = (now, addresses)
        return addresses

    # -- robots.txt (RFC 9309)

    def _check_robots(self, target: _Target) -> None:
        """Raise robots when the origin's robots.txt disallows the path for our agent token."""
        if not self.config.honour_robots_txt or target.path == "/robots.txt":
            return
        if not self._robots_rules(target).can_fetch(self._agent_token, target.url):
            raise _Failure("robots", f"robots.txt of {target.scheme}://{target.authority} disallows {target.path[:200]} "
                                     f"for {self._agent_token!r}")

    def _robots_rules(self, target: _Target) -> RobotFileParser:
        """The origin's rules, fetched once per `robots_cache_s` (concurrent fetches of one origin wait
        for the first)."""
        origin = f"{target.scheme}://{target.authority}"
        with self._robots_lock:
            if len(self._robots) >= _ROBOTS_CACHE_MAX:
                self._robots.clear()
                self._robots_locks.clear()
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:
            cached = self._robots.get(origin)
            if cached is not None and time.monotonic() - cached[0] <= self.config.robots_cache_s:
                return cached[1]
            rules = self._fetch_robots(origin)
            with self._robots_lock:
                self._robots[origin] = (time.monotonic(), rules)
            return rules

    def _fetch_robots(self, origin: str) -> RobotFileParser:
        """robots.txt as RFC 9309 reads it: 2xx -> its rules; 4xx or more than five redirects
        ("unavailable"), or no answer at all (the media request then fails with its own status)
        -> everything allowed; 5xx -> everything disallowed (the server is there but cannot say)."""
        rules = RobotFileParser()
        current, scratch = origin + "/robots.txt", FetchResult(url=origin + "/robots.txt", status="error")
        try:
            for _ in range(_ROBOTS_MAX_REDIRECTS + 1):
                response = self._request_with_retries(_parse_target(current), scratch, media=False)
                if response.location is None:
                    rules.parse(response.body.decode("utf-8", "replace").splitlines())
                    for entry in rules.entries + ([rules.default_entry] if rules.default_entry else []):
                        # RFC 9309: the longest matching rule wins, allow on a tie (the parser takes the first)
                        entry.rulelines.sort(key=lambda rule: (-len(rule.path), not rule.allowance))
                    return rules
                current = urljoin(current, response.location)
            rules.parse([])
        except _Failure as failure:
            rules.parse(["User-agent: *", "Disallow: /"] if failure.status == "http-5xx" else [])
        return rules

    def _gate(self, host: str) -> _HostGate:
        with self._gates_lock:
            gate = self._gates.get(host)
            if gate is None:
                if len(self._gates) >= _GATES_PRUNE_AT:
                    now = time.monotonic()
                    self._gates = {h: g for h, g in self._gates.items() if not g.idle(now)}
                gate = self._gates[host] = _HostGate(self.config.per_host_concurrency, self.config.per_host_delay_s)
            return gate

    # -- connections and exchange

    def _connection(self, key: tuple, target: _Target, ips: tuple[str, ...], port: int) -> tuple[http.client.HTTPConnection, bool]:
        conn = self._pool.take(key)
        return (conn, True) if conn is not None else (self._new_connection(target, ips, port), False)

    def _new_connection(self, target: _Target, ips: tuple[str, ...], port: int) -> http.client.HTTPConnection:
        cfg = self.config
        if self._proxy is not None and target.scheme == "https":
            return _TunnelHTTPSConnection(target.host, port, ips, self._proxy, cfg.connect_timeout_s, cfg.read_timeout_s, self._ssl, cfg.user_agent)
        if self._proxy is not None:
            proxy_host, proxy_port = self._proxy
            return _PinnedHTTPConnection(proxy_host, proxy_port, [proxy_host], cfg.connect_timeout_s, cfg.read_timeout_s)
        if target.scheme == "https":
            return _PinnedHTTPSConnection(target.host, port, ips, cfg.connect_timeout_s, cfg.read_timeout_s, self._ssl)
        return _PinnedHTTPConnection(target.host, port, ips, cfg.connect_timeout_s, cfg.read_timeout_s)

    def _send(self, conn: http.client.HTTPConnection, target: _Target) -> tuple[http.client.HTTPResponse, socket.socket]:
        """Send our GET (absolute-form to a proxy for plain http) and read the response head."""
        proxied_http = self._proxy is not None and target.scheme == "http"
        request_target = f"http://{target.authority}{target.path}" if proxied_http else target.path
        conn.putrequest("GET", request_target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", target.authority)
        conn.putheader("User-Agent", self.config.user_agent)
        conn.putheader("Accept", "image/*,video/*;q=0.9,*/*;q=0.5")
        conn.putheader("Accept-Encoding", "identity")
        conn.endheaders()
        sock = conn.sock  # kept: getresponse() drops conn.sock when the server will close
        return conn.getresponse(), sock

    def _read_response(self, resp: http.client.HTTPResponse, sock: socket.socket, address: str, deadline: float,
                       media: bool = True) -> tuple[_Response, bool]:
        """Head -> redirect, failure or body; returns (response, connection reusable). `media`
        False (robots.txt): no opt-out check and no sniffing."""
        code = resp.status
        content_type = resp.getheader("Content-Type")
        if code in _REDIRECT_CODES:
            location = resp.getheader("Location")
            if not location:
                raise _Failure("http-other", f"HTTP {code} without Location", http_status=code)
            return _Response(code, content_type, address, location=location.strip()), False
        if not 200 <= code < 300:
            raise _http_failure(code, resp.getheader("Retry-After"))
        if media and self.config.honour_opt_out:
            reason = opt_out_reason(resp.msg, self._agent_token, self.config.opt_out_any_agent)
            if reason:
                raise _Failure("opt-out", reason, http_status=code)
        self._check_declared_length(resp, code)
        body, sniffed = self._read_body(resp, sock, code, deadline, media)
        return _Response(code, content_type, address, body=body, sniffed=sniffed), not resp.will_close

    def _check_declared_length(self, resp: http.client.HTTPResponse, code: int) -> None:
        declared = resp.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.config.max_bytes:
            raise _Failure("too-large", f"Content-Length {int(declared)} > max_bytes {self.config.max_bytes}", http_status=code)

    def _read_body(self, resp: http.client.HTTPResponse, sock: socket.socket, code: int, deadline: float,
                   media: bool = True) -> tuple[bytes, tuple[Optional[str], Optional[str]]]:
        """Stream the body under the byte cap and the deadline; sniff as soon as we can."""
        cap = self.config.max_bytes
        decoder = _content_decoder(resp.getheader("Content-Encoding"), code)
        chunks: list[bytes] = []
        size = 0
        sniffed: Optional[tuple[Optional[str], Optional[str]]] = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Failure("timeout", f"whole request over total_timeout_s {self.config.total_timeout_s}s", retryable=True, http_status=code, bytes_read=size)
            sock.settimeout(min(self.config.read_timeout_s, remaining))
            raw = resp.read1(_READ_CHUNK if decoder else min(_READ_CHUNK, cap + 1 - size))
            data = decoder(raw, cap + 1 - size) if decoder else raw
            if data:
                chunks.append(data)
                size += len(data)
            if size > cap:
                raise _Failure("too-large", f"body over max_bytes {cap}", http_status=code, bytes_read=size)
            done = not raw or (not resp.chunked and resp.length == 0)
            if media and sniffed is None and (size >= _SNIFF_BYTES or done):
                sniffed = sniff_media_type(b"".join(chunks)[:_SNIFF_BYTES])
                if sniffed[0] is None:
                    head = b"".join(chunks)[:16]
                    raise _Failure("not-media", f"no image/video magic bytes (starts {head!r}, Content-Type {resp.getheader('Content-Type')!r})", http_status=code, bytes_read=size)
            if done:
                break
        if not resp.chunked and resp.length:
            raise _Failure("truncated", f"body ended {resp.length} bytes before its Content-Length", retryable=True, http_status=code, bytes_read=size)
        resp.close()
        assert sniffed is not None or not media
        return b"".join(chunks), sniffed or (None, None)


def _join_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _interleave_by_host(urls: list[str]) -> list[str]:
    """Round-robin over hosts, keeping each host's order: a, b, c, a, b, a, ..."""
    by_host: dict[str, deque[str]] = {}
    for url in urls:
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            host = ""
        by_host.setdefault(host, deque()).append(url)
    queues = list(by_host.values())
    out: list[str] = []
    while queues:
        queues = [q for q in queues if q]
        for q in queues:
            out.append(q.popleft())
    return out


def _http_failure(code: int, retry_after: Optional[str]) -> _Failure:
    """Non-2xx, non-redirect status -> failure; 408, 429 and most 5xx are retried."""
    if 400 <= code < 500:
        status = "http-4xx"
    elif 500 <= code < 600:
        status = "http-5xx"
    else:
        status = "http-other"
    retryable = code in _RETRY_HTTP_CODES
    wait = _retry_after_seconds(retry_after) if retryable else None
    return _Failure(status, f"HTTP {code}", retryable=retryable, http_status=code, retry_after=wait)


def _content_decoder(encoding: Optional[str], code: int) -> Optional[Callable[[bytes, int], bytes]]:
    """gzip/deflate decoder bounded by output size (we ask for identity; some servers compress anyway)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Failure("error", f"unsupported Content-Encoding {encoding!r}", http_status=code)
    inflater = zlib.decompressobj(47 if "gzip" in encoding else 15)

    def decode(raw: bytes, limit: int) -> bytes:
        try:
            data = inflater.decompress(inflater.unconsumed_tail + raw, max(1, limit))
        except zlib.error as err:
            raise _Failure("error", f"bad {encoding} body: {err}", http_status=code) from None
        return data

    return decode


def _classify_exception(err: BaseException) -> _Failure:
    """Map what sockets, ssl and http.client raise mid-exchange to a status."""
    if isinstance(err, socket.timeout):
        return _Failure("timeout", f"read timed out ({err})", retryable=True)
    if isinstance(err, ssl.SSLCertVerificationError):
        return _Failure("tls", f"certificate: {err.verify_message or err}")
    if isinstance(err, ssl.SSLError):
        return _Failure("tls", f"{err.reason or err}")
    if isinstance(err, http.client.IncompleteRead):
        return _Failure("truncated", f"body cut short after {len(err.partial)} bytes of a chunk", retryable=True)
    if isinstance(err, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return _Failure("reset", f"{type(err).__name__}: {err}", retryable=True)
    if isinstance(err, http.client.HTTPException):
        return _Failure("error", f"bad HTTP response: {type(err).__name__}: {err}"[:300])
    if isinstance(err, OSError) and err.errno in (errno.ECONNRESET, errno.EPIPE):
        return _Failure("reset", f"{err}", retryable=True)
    if isinstance(err, OSError):
        return _Failure("connect", f"{type(err).__name__}: {err}")
    return _Failure("error", f"{type(err).__name__}: {err}"[:300])


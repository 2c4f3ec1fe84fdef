"""Moving bytes for the fetcher: request targets, pinned connections, the proxy tunnel, the pool, bounded bodies.

`Transport.exchange` makes one HTTP request to addresses the policy already checked and
reads its answer: a redirect (its Location), a failure (`FetchFailure`), or a 2xx body read
under the byte cap and the whole-request deadline and sniffed for media magic bytes.
Connections go to exactly those IPs (no second DNS lookup, so DNS rebinding cannot swap
them) while the Host header, TLS SNI and certificate check keep the URL's host name.

Through a proxy (`proxy="http://host:port"`), https goes through a CONNECT tunnel to
the checked IP (so the guarantees above hold). Plain http is sent to the proxy in
absolute form with the URL's own host name, because a compliant proxy must take
the Host from the request target; the proxy then does its own DNS lookup, so the
address check is ours but the final connection is the proxy's.
"""
from __future__ import annotations

import errno
import http.client
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence
from urllib.parse import quote, urlsplit

from m3w_pipeline.core.config import FetchConfig
from m3w_pipeline.media.fetch.status import FetchFailure, FetchResult, http_failure
from m3w_pipeline.media.images import is_webvtt, sniff_image_type, sniff_video_type

_REDIRECT_CODES = (301, 302, 303, 307, 308)
_SNIFF_BYTES = 4096  # enough for every magic we know (SVG looks this far for <svg)
_READ_CHUNK = 65536
_MAX_IDLE_CONNECTIONS = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~-._"
_STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

OptOutCheck = Callable[[http.client.HTTPMessage], str]  # response headers -> why they opt out, or ""


# ----------------------------------------------------------------------------- targets and answers


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # lower-case, no brackets
    port: int
    path: str  # path + query, what goes on the request line
    authority: str  # Host header value

    @property
    def origin(self) -> str:
        """scheme://authority: what robots.txt and politeness are kept per."""
        return f"{self.scheme}://{self.authority}"


@dataclass
class Response:
    """One completed HTTP exchange: a redirect (location) or a 2xx body."""

    http_status: int
    content_type: Optional[str]
    address: str
    location: Optional[str] = None
    body: bytes = b""
    sniffed: tuple[Optional[str], Optional[str]] = (None, None)


def parse_target(url: str) -> Target:
    """Split and validate a URL; anything we cannot request is bad-url."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise FetchFailure("bad-url", str(err)) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise FetchFailure("bad-url", f"scheme {scheme!r} is not http(s)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchFailure("bad-url", "no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as err:
        raise FetchFailure("bad-url", f"host {host!r}: {err}") from None
    if any(c in host for c in " \t\r\n/\\@"):
        raise FetchFailure("bad-url", f"host {host!r}")
    port = port or _DEFAULT_PORTS[scheme]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    path = quote(path, safe=_PATH_SAFE)  # spaces, controls, non-ASCII; existing %XX stay
    host_for_header = f"[{host}]" if ":" in host else host
    authority = host_for_header if port == _DEFAULT_PORTS[scheme] else f"{host_for_header}:{port}"
    return Target(url=url, scheme=scheme, host=host.lower(), port=port, path=path, authority=authority)


def join_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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


# ----------------------------------------------------------------------------- the exchange


class Transport:
    """Connections (pooled keep-alive, direct or through the proxy) and one request at a time on them.

    Thread-safe; the caller takes the per-host slot. `opt_out` (when honoured) is asked about
    every 2xx media response head before its body is read.
    """

    def __init__(self, config: FetchConfig, opt_out: Optional[OptOutCheck] = None):
        self.config = config
        self._proxy = _parse_proxy(config.proxy)
        self._opt_out = opt_out
        self._ssl = _ssl_context(config.ca_file)
        self._pool = _ConnectionPool(config.per_host_concurrency, config.idle_connection_s)

    def close(self) -> None:
        self._pool.close()

    def exchange(self, target: Target, ips: tuple[str, ...], port: int, result: FetchResult, media: bool = True) -> Response:
        """One request: connect (or reuse), send, read the head, then the body; records the head in `result`.

        `media` False (robots.txt): no opt-out check and no sniffing.
        """
        deadline = time.monotonic() + self.config.total_timeout_s
        key = (target.scheme, target.host, ips, port, self._proxy)
        conn = self._pool.take(key)
        reused = conn is not None
        if conn is None:
            conn = self._new_connection(target, ips, port)
        keep = False
        try:
            try:
                resp, sock = self._send(conn, target)
            except _STALE_CONNECTION_ERRORS:
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
        except FetchFailure:
            raise
        except Exception as err:  # noqa: BLE001 - connection errors of every kind map to one fetch status
            raise classify_exception(err) from None
        finally:
            if keep:
                self._pool.give(key, conn)
            else:
                conn.close()

    def _new_connection(self, target: Target, ips: tuple[str, ...], port: int) -> http.client.HTTPConnection:
        cfg = self.config
        if self._proxy is not None and target.scheme == "https":
            return _TunnelHTTPSConnection(target.host, port, ips, self._proxy, cfg.connect_timeout_s, cfg.read_timeout_s, self._ssl, cfg.user_agent)
        if self._proxy is not None:
            proxy_host, proxy_port = self._proxy
            return _PinnedHTTPConnection(proxy_host, proxy_port, [proxy_host], cfg.connect_timeout_s, cfg.read_timeout_s)
        if target.scheme == "https":
            return _PinnedHTTPSConnection(target.host, port, ips, cfg.connect_timeout_s, cfg.read_timeout_s, self._ssl)
        return _PinnedHTTPConnection(target.host, port, ips, cfg.connect_timeout_s, cfg.read_timeout_s)

    def _send(self, conn: http.client.HTTPConnection, target: Target) -> tuple[http.client.HTTPResponse, socket.socket]:
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

    def _peer_address(self, target: Target, sock: socket.socket, ips: tuple[str, ...], port: int) -> str:
        """ip:port we talked to: the proxy for proxied http, the tunnel's target through CONNECT."""
        if self._proxy is not None:
            return join_address(*self._proxy) if target.scheme == "http" else join_address(ips[0], port)
        try:
            peer = sock.getpeername()
            return join_address(peer[0], peer[1])
        except OSError:
            return join_address(ips[0], port)

    def _read_response(self, resp: http.client.HTTPResponse, sock: socket.socket, address: str, deadline: float,
                       media: bool = True) -> tuple[Response, bool]:
        """Head -> redirect, failure or body; returns (response, connection reusable)."""
        code = resp.status
        content_type = resp.getheader("Content-Type")
        if code in _REDIRECT_CODES:
            location = resp.getheader("Location")
            if not location:
                raise FetchFailure("http-other", f"HTTP {code} without Location", http_status=code)
            return Response(code, content_type, address, location=location.strip()), False
        if not 200 <= code < 300:
            raise http_failure(code, resp.getheader("Retry-After"))
        if media and self._opt_out is not None:
            reason = self._opt_out(resp.msg)
            if reason:
                raise FetchFailure("opt-out", reason, http_status=code)
        self._check_declared_length(resp, code)
        body, sniffed = self._read_body(resp, sock, code, deadline, media)
        return Response(code, content_type, address, body=body, sniffed=sniffed), not resp.will_close

    def _check_declared_length(self, resp: http.client.HTTPResponse, code: int) -> None:
        declared = resp.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.config.max_bytes:
            raise FetchFailure("too-large", f"Content-Length {int(declared)} > max_bytes {self.config.max_bytes}", http_status=code)

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
                raise FetchFailure("timeout", f"whole request over total_timeout_s {self.config.total_timeout_s}s", retryable=True,
                                   http_status=code, bytes_read=size)
            sock.settimeout(min(self.config.read_timeout_s, remaining))
            raw = resp.read1(_READ_CHUNK if decoder else min(_READ_CHUNK, cap + 1 - size))
            data = decoder(raw, cap + 1 - size) if decoder else raw
            if data:
                chunks.append(data)
                size += len(data)
            if size > cap:
                raise FetchFailure("too-large", f"body over max_bytes {cap}", http_status=code, bytes_read=size)
            done = not raw or (not resp.chunked and resp.length == 0)
            if media and sniffed is None and (size >= _SNIFF_BYTES or done):
                sniffed = sniff_media_type(b"".join(chunks)[:_SNIFF_BYTES])
                if sniffed[0] is None:
                    head = b"".join(chunks)[:16]
                    raise FetchFailure("not-media", f"no image/video magic bytes (starts {head!r}, Content-Type {resp.getheader('Content-Type')!r})",
                                       http_status=code, bytes_read=size)
            if done:
                break
        if not resp.chunked and resp.length:
            raise FetchFailure("truncated", f"body ended {resp.length} bytes before its Content-Length", retryable=True,
                               http_status=code, bytes_read=size)
        resp.close()
        assert sniffed is not None or not media
        return b"".join(chunks), sniffed or (None, None)


def _parse_proxy(proxy: str) -> Optional[tuple[str, int]]:
    if not proxy:
        return None
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"FetchConfig.proxy must be http://host:port, got {proxy!r}")
    return parts.hostname, parts.port or 8080


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _content_decoder(encoding: Optional[str], code: int) -> Optional[Callable[[bytes, int], bytes]]:
    """gzip/deflate decoder bounded by output size (we ask for identity; some servers compress anyway)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise FetchFailure("error", f"unsupported Content-Encoding {encoding!r}", http_status=code)
    inflater = zlib.decompressobj(47 if "gzip" in encoding else 15)

    def decode(raw: bytes, limit: int) -> bytes:
        try:
            data = inflater.decompress(inflater.unconsumed_tail + raw, max(1, limit))
        except zlib.error as err:
            raise FetchFailure("error", f"bad {encoding} body: {err}", http_status=code) from None
        return data

    return decode


def classify_exception(err: BaseException) -> FetchFailure:
    """Map what sockets, ssl and http.client raise mid-exchange to a status."""
    if isinstance(err, socket.timeout):
        return FetchFailure("timeout", f"read timed out ({err})", retryable=True)
    if isinstance(err, ssl.SSLCertVerificationError):
        return FetchFailure("tls", f"certificate: {err.verify_message or err}")
    if isinstance(err, ssl.SSLError):
        return FetchFailure("tls", f"{err.reason or err}")
    if isinstance(err, http.client.IncompleteRead):
        return FetchFailure("truncated", f"body cut short after {len(err.partial)} bytes of a chunk", retryable=True)
    if isinstance(err, _STALE_CONNECTION_ERRORS):
        return FetchFailure("reset", f"{type(err).__name__}: {err}", retryable=True)
    if isinstance(err, http.client.HTTPException):
        return FetchFailure("error", f"bad HTTP response: {type(err).__name__}: {err}"[:300])
    if isinstance(err, OSError) and err.errno in (errno.ECONNRESET, errno.EPIPE):
        return FetchFailure("reset", f"{err}", retryable=True)
    if isinstance(err, OSError):
        return FetchFailure("connect", f"{type(err).__name__}: {err}")
    return FetchFailure("error", f"{type(err).__name__}: {err}"[:300])


# ----------------------------------------------------------------------------- connections


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

    def __init__(self, host: str, port: int, ips: Sequence[str], proxy: tuple[str, int], connect_timeout: float, read_timeout: float,
                 context: ssl.SSLContext, user_agent: str):
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
    """TCP connection to the first of these addresses that answers; errors become FetchFailure.

    Trying the next address matters on workers without IPv6 routes, where a host's
    AAAA address fails at once and its A address works.
    """
    failure: Optional[FetchFailure] = None
    for ip in ips:
        try:
            sock = socket.create_connection((ip, port), timeout=connect_timeout)
        except socket.timeout:
            failure = FetchFailure("timeout", f"connect to {ip}:{port} timed out after {connect_timeout}s", retryable=True)
            continue
        except OSError as err:
            failure = FetchFailure("connect", f"connect to {ip}:{port}: {err.strerror or err}")
            continue
        sock.settimeout(read_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure or FetchFailure("connect", "no address to connect to")


def _connect_tunnel(sock: socket.socket, ip: str, port: int, host: str, user_agent: str) -> None:
    """Send CONNECT for ip:port and read the proxy's answer; anything but 2xx fails."""
    target = join_address(ip, port)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {user_agent}\r\n\r\n".encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise FetchFailure("connect", f"proxy closed the connection during CONNECT {target}")
        head += chunk
        if len(head) > 65536:
            raise FetchFailure("error", "proxy CONNECT response head too long")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].startswith("2"):
        raise FetchFailure("connect", f"proxy refused CONNECT {target} for {host}: {status_line}")

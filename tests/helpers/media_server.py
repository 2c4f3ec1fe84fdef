"""A real HTTP(S) media server and a tiny forward proxy on 127.0.0.1, for fetch tests and benchmarks.

Both listen on loopback only (port 0: the OS picks) and record every request, so a
test can assert what reached them, how often, and with which headers.

Routes of `MediaServer` (any route takes `?ct=TYPE` to override Content-Type and
`?hdr=Name:value` (repeatable) to add response headers):

    /img/NAME.(png|jpg|jpeg|gif|webp)?w=W&h=H   generated image, deterministic per NAME and size
    /video/NAME.(mp4|webm)                      a tiny valid video (8 frames 64x64, encoded with PyAV)
    /page.html                                  an HTML page
    /status/CODE                                that status with a small HTML body
    /flaky/N/REST                               500 (or ?code=) for the first N requests of this URL, then REST
    /throttle/N/REST?after=S                    429 with Retry-After: S for the first N requests, then REST
    /reset/N/REST                               connection reset (RST) for the first N requests, then REST
    /slow/SECONDS/REST                          waits SECONDS before answering with REST
    /cut/REST                                   REST's headers (full Content-Length), half the body, then close
    /big/BYTES?chunked=1                        BYTES of body (PNG signature + zeros); chunked: no Content-Length
    /redirect/N/REST                            N relative redirects, then REST
    /redirect-to?url=URL                        302 to URL
    /files/...                                  whatever `add_file` registered (benchmarks)
    /robots.txt                                 `robots` = (status, text) when set (3xx: text is the Location)
    anything else                               404, or a generated 400x300 JPEG with catch_all_images=True
"""
from __future__ import annotations

import http.client
import io
import select
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

_IMAGE_TYPES = {
    "png": ("PNG", "image/png"), "jpg": ("JPEG", "image/jpeg"), "jpeg": ("JPEG", "image/jpeg"),
    "gif": ("GIF", "image/gif"), "webp": ("WEBP", "image/webp"),
}
_PAGE = b"<!doctype html><html><head><title>not an image</title></head><body><p>Hello</p></body></html>\n"


@dataclass
class Request:
    method: str
    path: str  # as sent on the request line (path and query; absolute-form for proxies)
    headers: dict[str, str]  # lower-case names
    client: str
    at: float = field(default_factory=time.monotonic)


class RequestLog:
    """Thread-safe list of requests with per-path counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._per_path: dict[str, int] = {}

    def add(self, request: Request) -> int:
        """Record a request; returns how many requests this exact path has had, this one included."""
        with self._lock:
            self._requests.append(request)
            self._per_path[request.path] = self._per_path.get(request.path, 0) + 1
            return self._per_path[request.path]

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def count(self, path: str) -> int:
        """Requests whose path (with query) equals `path`, or whose path without query does."""
        with self._lock:
            return sum(1 for r in self._requests if r.path == path or r.path.split("?", 1)[0] == path)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._per_path.clear()


# ----------------------------------------------------------------------------- content


def make_image(name: str, width: int = 320, height: int = 240, ext: str = "png", quality: int = 85, noise: float = 12.0) -> bytes:
    """A deterministic picture (gradient + seeded noise) so different NAMEs differ in pixels and hash."""
    seed = zlib.crc32(name.encode("utf-8"))
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xs / max(1, width - 1) * 255, ys / max(1, height - 1) * 255, np.full_like(xs, seed % 256)], axis=-1)
    pixels = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    pillow_format = _IMAGE_TYPES[ext][0]
    kwargs: dict[str, Any] = {"quality": quality} if pillow_format in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels, "RGB").save(buffer, pillow_format, **kwargs)
    return buffer.getvalue()


_VIDEOS: dict[str, bytes] = {}
_VIDEO_LOCK = threading.Lock()


def make_video(container: str = "mp4") -> bytes:
    """A tiny real video (8 frames, 64x64): mp4 (MPEG-4 part 2) or webm (VP8); encoded once."""
    with _VIDEO_LOCK:
        if container not in _VIDEOS:
            import av

            codec = {"mp4": "mpeg4", "webm": "libvpx"}[container]
            buffer = io.BytesIO()
            with av.open(buffer, mode="w", format=container) as out:
                stream = out.add_stream(codec, rate=8)
                stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
                for i in range(8):
                    frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 30, np.uint8), format="rgb24")
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            _VIDEOS[container] = buffer.getvalue()
        return _VIDEOS[container]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: Optional[str] = None
    chunked: bool = False
    cut: bool = False  # send the full Content-Length but only half the body, then close
    reset: bool = False  # abort the connection with an RST instead of answering


# ----------------------------------------------------------------------------- server


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up mid-reply are part of the tests; anything else is kept in `errors`."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        err = sys.exc_info()[1]
        if not isinstance(err, (ConnectionError, TimeoutError, ssl.SSLError)):
            self.errors.append(f"{type(err).__name__}: {err}")


class _QuietServer6(_QuietServer):
    address_family = socket.AF_INET6


def ipv6_loopback_available() -> bool:
    """Whether this machine can listen on ::1 (containers without IPv6 cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class MediaServer:
    """ThreadingHTTPServer on 127.0.0.1:0 (or another loopback address, "::1" included) serving generated
    media and planted faults.

    `tls=(certfile, keyfile)` serves HTTPS instead. Use as a context manager.
    """

    def __init__(self, host: str = "127.0.0.1", tls: Optional[tuple[str, str]] = None, catch_all_images: bool = False):
        self.log = RequestLog()
        # Answer any path no route knows with a generated JPEG (stands in for the real web).
        self.catch_all_images = catch_all_images
        self.files: dict[str, tuple[bytes, str]] = {}
        self.robots: Optional[tuple[int, str]] = None  # /robots.txt (status, text); None: the routes below
        self.in_flight = 0  # requests being answered right now
        self.max_in_flight = 0  # the most at once since start (or reset_in_flight)
        self._flight_lock = threading.Lock()
        self._images: dict[tuple, bytes] = {}
        self._images_lock = threading.Lock()
        self._httpd = (_QuietServer6 if ":" in host else _QuietServer)((host, 0), _make_handler(self))
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.host, self.port = self._httpd.server_address[:2]
        self.scheme = "https" if tls else "http"
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "MediaServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def requests(self) -> list[Request]:
        return self.log.requests

    @property
    def errors(self) -> list[str]:
        """Handler exceptions other than clients hanging up (a test should see none)."""
        return list(self._httpd.errors)

    def count(self, path: str) -> int:
        return self.log.count(path)

    def enter(self) -> None:
        with self._flight_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._flight_lock:
            self.in_flight -= 1

    def reset_in_flight(self) -> None:
        with self._flight_lock:
            self.max_in_flight = self.in_flight

    def add_file(self, path: str, data: bytes, content_type: str) -> None:
        """Serve `data` at /files/PATH (benchmarks preload their images this way)."""
        self.files["/files/" + path.lstrip("/")] = (data, content_type)

    def image(self, name: str, width: int, height: int, ext: str) -> bytes:
        key = (name, width, height, ext)
        with self._images_lock:
            if key not in self._images:
                self._images[key] = make_image(name, width, height, ext)
            return self._images[key]

    # -- routing

    def route(self, path: str, query: dict[str, list[str]], seen: int) -> Reply:
        """The reply for one request; `seen` counts requests of this exact URL so far (1 = first)."""
        parts = path.lstrip("/").split("/")
        head, rest = parts[0], "/" + "/".join(parts[1:])
        if path in self.files:
            data, content_type = self.files[path]
            return Reply(body=data, content_type=content_type)
        if path == "/robots.txt" and self.robots is not None:
            status, text = self.robots
            if 300 <= status < 400:  # text is where it moved
                return Reply(status=status, headers=[("Location", text)])
            return Reply(status=status, body=text.encode(), content_type="text/plain")
        if head == "img" and len(parts) == 2:
            return self._image_reply(parts[1], query)
        if head == "video" and len(parts) == 2:
            container = parts[1].rsplit(".", 1)[-1]
            return Reply(body=make_video(container), content_type=f"video/{container}")
        if path == "/page.html":
            return Reply(body=_PAGE, content_type="text/html; charset=utf-8")
        if head == "status":
            return Reply(status=int(parts[1]), body=b"<html><body>status</body></html>", content_type="text/html")
        if head in ("flaky", "throttle", "reset") and len(parts) >= 3:
            return self._faulty(head, int(parts[1]), "/" + "/".join(parts[2:]), query, seen)
        if head == "slow":
            time.sleep(float(parts[1]))
            return self.route("/" + "/".join(parts[2:]), query, seen)
        if head == "cut":
            reply = self.route(rest, query, seen)
            reply.cut = True
            return reply
        if head == "big":
            size = int(parts[1])
            body = b"\x89PNG\r\n\x1a\n" + b"\0" * max(0, size - 8)
            return Reply(body=body, content_type="image/png", chunked=query.get("chunked") == ["1"])
        if head == "redirect":
            hops = int(parts[1])
            target = "/" + "/".join(parts[2:])
            location = f"/redirect/{hops - 1}{target}" if hops > 1 else target
            return Reply(status=302, headers=[("Location", location)])
        if head == "redirect-to":
            return Reply(status=302, headers=[("Location", query["url"][0])])
        if self.catch_all_images:
            return Reply(body=self.image(path, 400, 300, "jpg"), content_type="image/jpeg")
        return Reply(status=404, body=b"not found", content_type="text/plain")

    def _image_reply(self, filename: str, query: dict[str, list[str]]) -> Reply:
        name, _, ext = filename.rpartition(".")
        ext = ext.lower()
        if ext not in _IMAGE_TYPES:
            return Reply(status=404, body=b"unknown image type", content_type="text/plain")
        width = int(query.get("w", ["320"])[0])
        height = int(query.get("h", ["240"])[0])
        return Reply(body=self.image(name, width, height, ext), content_type=_IMAGE_TYPES[ext][1])

    def _faulty(self, kind: str, failures: int, rest: str, query: dict[str, list[str]], seen: int) -> Reply:
        if seen > failures:
            return self.route(rest, query, seen)
        if kind == "flaky":
            return Reply(status=int(query.get("code", ["500"])[0]), body=b"try again", content_type="text/plain")
        if kind == "throttle":
            return Reply(status=429, body=b"slow down", content_type="text/plain", headers=[("Retry-After", query.get("after", ["0"])[0])])
        return Reply(reset=True)


def _make_handler(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            seen = server.log.add(Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, self.client_address[0]))
            split = urlsplit(self.path)
            query = parse_qs(split.query)
            server.enter()
            try:
                reply = server.route(split.path, query, seen)
                _send_reply(self, reply, query)
            finally:
                server.leave()

    return Handler


def _send_reply(handler: BaseHTTPRequestHandler, reply: Reply, query: dict[str, list[str]]) -> None:
    """Write one reply, honouring the planted faults; a client that hung up is fine."""
    if reply.reset:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        return
    try:
        handler.send_response(reply.status)
        content_type = query.get("ct", [reply.content_type])[0]
        if content_type:
            handler.send_header("Content-Type", content_type)
        for name, value in reply.headers:
            handler.send_header(name, value)
        for extra in query.get("hdr", []):
            name, _, value = extra.partition(":")
            handler.send_header(name.strip(), value.strip())
        if reply.chunked:
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for start in range(0, len(reply.body), 65536):
                piece = reply.body[start : start + 65536]
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            handler.wfile.write(b"0\r\n\r\n")
            return
        handler.send_header("Content-Length", str(len(reply.body)))
        if reply.cut:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(reply.body[: len(reply.body) // 2] if reply.cut else reply.body)
        if reply.cut:
            handler.close_connection = True
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


# ----------------------------------------------------------------------------- proxy


class ForwardProxy:
    """A minimal forward proxy on 127.0.0.1 (GET in absolute form, and CONNECT tunnels).

    It only ever connects to 127.0.0.0/8 and refuses anything else with 403, so a
    test through it cannot reach another network. `hosts` is the proxy's own name
    lookup for plain http ({"media.test": 8080} sends media.test to 127.0.0.1:8080),
    so a test can give a name a public address on the fetcher's side (checked, never
    connected to) while the proxy carries the request to a local server.
    """

    def __init__(self, hosts: Optional[dict[str, int]] = None) -> None:
        self.hosts = dict(hosts or {})
        self.log = RequestLog()
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_proxy_handler(self))
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "ForwardProxy":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[Request]:
        return self.log.requests


def _loopback(host: str) -> bool:
    return host.startswith("127.") and host.replace(".", "").isdigit()


_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}


def _make_proxy_handler(proxy: ForwardProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _record(self, method: str) -> None:
            proxy.log.add(Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, self.client_address[0]))

        def do_GET(self) -> None:
            self._record("GET")
            target = urlsplit(self.path)
            host, port = target.hostname or "", target.port or 80
            if host in proxy.hosts:
                host, port = "127.0.0.1", proxy.hosts[host]
            if target.scheme != "http" or not _loopback(host):
                self._refuse(f"not a loopback http URL: {self.path}")
                return
            upstream = http.client.HTTPConnection(host, port, timeout=10)
            try:
                request_target = (target.path or "/") + (f"?{target.query}" if target.query else "")
                upstream.putrequest("GET", request_target, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        upstream.putheader(name, value)
                upstream.putheader("Via", "1.1 test-proxy")
                upstream.endheaders()
                response = upstream.getresponse()
                body = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (OSError, http.client.HTTPException) as err:
                self._refuse(f"upstream failed: {err}", 502)
            finally:
                upstream.close()

        def do_CONNECT(self) -> None:
            self._record("CONNECT")
            host, _, port = self.path.rpartition(":")
            if not _loopback(host):
                self._refuse(f"not a loopback address: {self.path}")
                return
            try:
                upstream = socket.create_connection((host, int(port)), timeout=10)
            except OSError as err:
                self._refuse(f"connect failed: {err}", 502)
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.close_connection = True
            _relay(self.connection, upstream)

        def _refuse(self, why: str, code: int = 403) -> None:
            body = why.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], 10)
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()

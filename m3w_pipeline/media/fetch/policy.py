"""What the fetcher may take: which addresses it may reach, what robots.txt allows, what the content owner opted out of.

Addresses: a host is resolved by us (or named by `host_overrides`), and every address it has,
an overridden one included, must be public unless `allow_private_addresses`; the fetcher then
connects to exactly those.

robots.txt (RFC 9309): read once per origin and `robots_cache_s`, through the same address
checks and politeness as media; paths it disallows for our user-agent product token end
as status robots without a request. Which answers count (2xx, 4xx, 5xx, redirects) is ours;
parsing and matching are protego's: "*" and "$" in paths, matched against path and query, the
longest rule wins and allow wins a tie; groups by product token, case-insensitive, groups naming
it combined, else "*". protego would also take a group naming any prefix of our token ("m3w" for
"m3w-bot"), so user-agent lines are first reduced to "*", our token or a name that cannot match.

Opt-out, decided from a media response's head (the body is never read): `X-Robots-Tag`
directives `noai` / `noimageai` opt a URL out whether unscoped (`X-Robots-Tag: noai`),
scoped to us or `*`, or - with the default `opt_out_any_agent=True` - scoped to any other
crawler (`X-Robots-Tag: CCBot: noai`): the directive states a wish about AI use of the
content rather than about one crawler's indexing, and our pages come from CCBot's crawl.
Set it False to follow the robots scoping rules strictly. TDMRep's `tdm-reservation: 1`
also opts out.
"""
from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Iterator, Optional, Sequence
from urllib.parse import urljoin

from protego import Protego

from m3w_pipeline.core.config import FetchConfig
from m3w_pipeline.media.fetch.status import FetchFailure, FetchResult
from m3w_pipeline.media.fetch.transport import Response, Target, parse_target

Resolver = Callable[[str, int], Sequence[str]]

_OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that carry a value after a colon (so "name:" is not a user agent).
_VALUED_ROBOTS_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_DNS_CACHE_MAX = 100_000
_ROBOTS_MAX_REDIRECTS = 5  # RFC 9309: follow at least five
_ROBOTS_CACHE_MAX = 100_000  # origins whose rules are kept; past it the cache starts over
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
# A user-agent line as protego reads one ("User-agent: x", "user agent x", "useragent:x"); not "user-agent-x: y".
_USER_AGENT_LINE = re.compile(r"\s*user[-\s]?agent(?:\s*:|\s+)\s*(.*)", re.IGNORECASE)


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
    """Product token robots rules name us by: "m3w-bot" for "m3w-bot/0.1 (+...)"; "" when there is none."""
    words = user_agent.split("/", 1)[0].split()
    return words[0].lower() if words else ""


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


class AddressPolicy:
    """Host -> the checked IPs to connect to: host overrides, our own (bounded, cached) lookup, the public-address rule."""

    def __init__(self, config: FetchConfig, resolve: Resolver):
        self.config = config
        self._resolve = resolve
        self._overrides = parse_host_overrides(dict(config.host_overrides))
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._dns_lock = threading.Lock()
        # Lookups run here so a fetch can stop waiting for one (a hung lookup keeps only its thread).
        self._dns_executor = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="m3w-dns")

    def close(self) -> None:
        self._dns_executor.shutdown(wait=False, cancel_futures=True)  # a hung lookup may still be running

    def checked_addresses(self, target: Target) -> tuple[tuple[str, ...], int]:
        """The IPs (IPv4 first) and port to connect to, after the address policy.

        Every resolved address must be public, not just the first: otherwise a name
        with one public and one private record could reach the private one on retry.
        A host override's address is checked the same way: it names where a host is,
        it does not make a private address safe to reach. Raises blocked-address or dns.
        """
        port, source = target.port, ""
        override = self._overrides.get(f"{target.host}:{target.port}") or self._overrides.get(target.host)
        if override is not None:
            addresses, port, source = [override[0]], override[1] or target.port, " (host_overrides)"
        else:
            try:
                addresses = [str(ipaddress.ip_address(target.host))]
            except ValueError:
                addresses = self._lookup(target.host, target.port)
        if not self.config.allow_private_addresses:
            blocked = [a for a in addresses if not is_public_address(a)]
            if blocked:
                raise FetchFailure("blocked-address", f"{target.host} resolves to non-public {blocked[0]}{source}")
        ordered = sorted(addresses, key=lambda a: ":" in a)  # IPv4 first: IPv6 routes are often missing
        return tuple(ordered), port

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
            raise FetchFailure("dns", f"{host}: no answer within dns_timeout_s {self.config.dns_timeout_s}s", retryable=True) from None
        except socket.gaierror as err:
            retryable = err.errno == socket.EAI_AGAIN
            raise FetchFailure("dns", f"{host}: {err.strerror or err}", retryable=retryable) from None
        except (OSError, UnicodeError, ValueError) as err:
            raise FetchFailure("dns", f"{host}: {err}") from None
        if not addresses:
            raise FetchFailure("dns", f"{host}: no addresses")
        with self._dns_lock:
            if len(self._dns) >= _DNS_CACHE_MAX:
                self._dns.clear()
            self._dns[(host, port)] = (now, addresses)
        return addresses


# ----------------------------------------------------------------------------- robots.txt (RFC 9309)


# One hop of a robots.txt fetch: the fetcher's request with retries (same address checks,
# per-host slot and politeness as media, no sniffing); raises FetchFailure.
RobotsRequest = Callable[[Target, FetchResult], Response]


class RobotsPolicy:
    """Each origin's robots.txt rules, fetched once per `robots_cache_s`; `check` refuses what they disallow."""

    def __init__(self, config: FetchConfig, agent_token: str, request: RobotsRequest):
        self.config = config
        self._agent_token = agent_token
        self._request = request
        self._robots: dict[str, tuple[float, Protego]] = {}  # origin -> (fetched at, rules)
        self._robots_locks: dict[str, threading.Lock] = {}  # one robots.txt fetch per origin at a time
        self._robots_lock = threading.Lock()

    def check(self, target: Target) -> None:
        """Raise robots when the origin's robots.txt disallows the path for our agent token."""
        if not self.config.honour_robots_txt or target.path == "/robots.txt":
            return
        if not self._rules(target).can_fetch(target.origin + target.path, self._agent_token):
            raise FetchFailure("robots", f"robots.txt of {target.origin} disallows {target.path[:200]} for {self._agent_token!r}")

    def _rules(self, target: Target) -> Protego:
        """The origin's rules, fetched once per `robots_cache_s` (concurrent fetches of one origin wait for the first)."""
        origin = target.origin
        with self._robots_lock:
            if len(self._robots) >= _ROBOTS_CACHE_MAX:
                self._robots.clear()
                self._robots_locks.clear()
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:
            cached = self._robots.get(origin)
            if cached is not None and time.monotonic() - cached[0] <= self.config.robots_cache_s:
                return cached[1]
            rules = self._fetch(origin)
            with self._robots_lock:
                self._robots[origin] = (time.monotonic(), rules)
            return rules

    def _fetch(self, origin: str) -> Protego:
        """robots.txt as RFC 9309 reads it: 2xx -> its rules; 4xx or more than five redirects
        ("unavailable"), or no answer at all (the media request then fails with its own status)
        -> everything allowed; 5xx -> everything disallowed (the server is there but cannot say)."""
        current, scratch = origin + "/robots.txt", FetchResult(url=origin + "/robots.txt", status="error")
        try:
            for _ in range(_ROBOTS_MAX_REDIRECTS + 1):
                response = self._request(parse_target(current), scratch)
                if response.location is None:
                    text = response.body.decode("utf-8-sig", "replace")  # -sig: a byte-order mark is not part of line 1
                    return Protego.parse(_only_our_groups(text, self._agent_token))
                current = urljoin(current, response.location)
            return Protego.parse("")
        except FetchFailure as failure:
            return Protego.parse(_DISALLOW_ALL if failure.status == "http-5xx" else "")


def _only_our_groups(text: str, token: str) -> str:
    """robots.txt with each user-agent line reduced to what RFC 9309 matches on: "*", our product token
    (case-insensitive; "m3w-bot/2.0" names it too), or another name with a "/" added, which cannot occur
    in a product token and so cannot match ours in protego's substring test."""
    lines = []
    for line in text.splitlines():
        found = _USER_AGENT_LINE.fullmatch(line.split("#", 1)[0].rstrip())
        if found and found.group(1) not in ("", "*"):
            name = found.group(1)
            line = f"User-agent: {token if token and agent_token(name) == token else name + '/'}"
        lines.append(line)
    return "\n".join(lines)

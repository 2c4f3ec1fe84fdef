"""Fetcher and FetchMediaFn against a real HTTP(S) server and forward proxy on 127.0.0.1.

Network rule: these tests only ever talk to 127.0.0.0/8 (and ::1). Names are resolved
by a fake resolver (numeric forms only, never DNS), and `loopback_only` makes any
connection to another address fail loudly; URLs naming 10.x / 169.254.x appear
only where the address policy must refuse them before a socket is opened, and a
public address (PUBLIC_STANDIN) only where a proxy carries the request instead.
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.media_server import ForwardProxy, MediaServer, ipv6_loopback_available, make_image, make_video
from m3w_pipeline.core.config import FetchConfig, ImageConfig
from m3w_pipeline.media.fetch import (
    FETCH_STATUSES,
    Fetcher,
    FetchResult,
    agent_token,
    is_public_address,
    opt_out_reason,
    sniff_media_type,
    status_table,
)
from m3w_pipeline.media.images import process_image
from schemas import load_arrow_schema

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "video"
# A public address for a test name on the fetcher's side: the address policy lets it through,
# and the request goes to a local ForwardProxy (loopback_only fails any direct connection to it).
PUBLIC_STANDIN = "8.8.8.8"
DEFAULT_UA = FetchConfig().user_agent


# ----------------------------------------------------------------------------- network guard


@pytest.fixture(autouse=True)
def _guard(loopback_only):
    """Every test here runs under conftest's loopback-only guard."""
    return loopback_only


def numeric_resolver(names: dict[str, list[str]] | None = None):
    """Resolve test names from `names` and numeric hosts (127.1, 2130706433) locally; never DNS."""
    names = names or {}

    def resolve(host: str, port: int) -> list[str]:
        if host in names:
            return names[host]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return [info[4][0] for info in infos]

    return resolve


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server():
    with MediaServer() as srv:
        yield srv
        assert srv.errors == []


SHORT_READ_TIMEOUT_S = 0.3  # for the tests of timeouts: /slow/1 answers after 1 s


def config(server: MediaServer, **overrides) -> FetchConfig:
    """No politeness delay; media.test is the server, on loopback, so private addresses are allowed
    (tests of the address policy turn that off). Timeouts are far beyond what the loopback server
    takes even on a loaded machine, so a slow answer is never a retry that changes `attempts`;
    tests of timeouts set short ones (SHORT_READ_TIMEOUT_S) themselves."""
    values = dict(
        connect_timeout_s=10.0,
        read_timeout_s=10.0,
        total_timeout_s=30.0,
        max_retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        per_host_delay_s=0.0,
        host_overrides={"media.test": f"127.0.0.1:{server.port}"},
        allow_private_addresses=True,
        honour_robots_txt=False,  # tested on its own below (the build tests run with it on)
    )
    values.update(overrides)
    return FetchConfig(**values)


def fetch(server: MediaServer, path_or_url: str, resolver=None, **overrides) -> FetchResult:
    url = "http://media.test" + path_or_url if path_or_url.startswith("/") else path_or_url
    with Fetcher(config(server, **overrides), resolve=resolver or numeric_resolver()) as fetcher:
        return fetcher.fetch(url)


# ----------------------------------------------------------------------------- units


def test_status_taxonomy_is_fixed_and_complete():
    expected = {"ok", "dns", "connect", "timeout", "http-4xx", "http-5xx", "too-large", "not-media",
                "too-many-redirects", "opt-out", "blocked-address", "bad-url", "error"}
    assert expected <= set(FETCH_STATUSES)
    assert len(FETCH_STATUSES) == len(set(FETCH_STATUSES))


@pytest.mark.parametrize(
    "ip, public",
    [
        ("8.8.8.8", True), ("2606:4700::1111", True),
        ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
        ("255.255.255.255", False), ("192.0.2.1", False), ("::1", False), ("fe80::1", False),
        ("fc00::1", False), ("::ffff:127.0.0.1", False), ("64:ff9b::a01:203", False),
        ("2002:7f00:1::1", False), ("ff02::1", False), ("not-an-ip", False),
    ],
)
def test_is_public_address(ip, public):
    assert is_public_address(ip) is public


def test_a_hung_name_lookup_fails_as_dns_without_holding_the_fetch(server):
    """getaddrinfo has no timeout: a resolver that never answers must not hold the fetch."""
    entered, release = threading.Event(), threading.Event()

    def hung(host, port):
        entered.set()
        release.wait(30)  # far beyond dns_timeout_s; released at the end of the test
        return ["127.0.0.1"]

    try:
        result = fetch(server, f"http://slow.test:{server.port}/img/hung-dns.png", resolver=hung, host_overrides={},
                       allow_private_addresses=True, dns_timeout_s=0.2, max_retries=0)
        assert entered.is_set() and not release.is_set()  # the lookup was still hanging when the fetch ended
        assert result.status == "dns" and "no answer within dns_timeout_s 0.2s" in result.error
        assert result.attempts == 0 and server.count("/img/hung-dns.png") == 0  # nothing was sent
    finally:
        release.set()


ROBOTS = """# a comment
User-agent: m3w-bot
Allow: /img/
Disallow: /img/private/

User-agent: *
Disallow: /
"""


def test_robots_txt_is_read_once_per_origin_and_disallowed_paths_are_not_requested():
    with MediaServer() as srv:
        srv.robots = (200, ROBOTS)
        urls = [f"http://media.test/img/p{i}.png" for i in range(4)] + ["http://media.test/img/private/x.png"]
        with Fetcher(config(srv, honour_robots_txt=True, user_agent="m3w-bot/0.1 (+https://example.org/bot)"),
                     resolve=numeric_resolver()) as fetcher:
            results = {r.url: r for r in fetcher.fetch_many(urls)}
        blocked = results["http://media.test/img/private/x.png"]  # the longer rule wins, though listed second
        assert blocked.status == "robots" and "disallows /img/private/x.png for 'm3w-bot'" in blocked.error
        assert blocked.attempts == 0 and srv.count("/img/private/x.png") == 0  # never requested
        assert all(results[u].status == "ok" for u in urls[:4])
        assert srv.count("/robots.txt") == 1  # once for the origin, though five URLs raced for it
        # another agent token falls under "*": everything disallowed
        with Fetcher(config(srv, honour_robots_txt=True, user_agent="otherbot/1.0"), resolve=numeric_resolver()) as f:
            assert f.fetch("http://media.test/img/p0.png").status == "robots"
        with Fetcher(config(srv, user_agent="otherbot/1.0"), resolve=numeric_resolver()) as f:  # honour_robots_txt off
            assert f.fetch("http://media.test/img/p0.png").status == "ok"


@pytest.mark.parametrize("robots, status", [((404, "gone"), "ok"), ((503, "down"), "robots"), ((200, ""), "ok")])
def test_robots_txt_errors_as_rfc_9309_reads_them(robots, status):
    """4xx: no rules, everything allowed; 5xx: the server cannot say, everything disallowed."""
    with MediaServer() as srv:
        srv.robots = robots
        with Fetcher(config(srv, honour_robots_txt=True, max_retries=0), resolve=numeric_resolver()) as fetcher:
            assert fetcher.fetch("http://media.test/img/a.png").status == status
        assert srv.count("/img/a.png") == (status == "ok")


def test_robots_txt_redirects_are_followed_five_times():
    """RFC 9309: at least five redirects are followed; past them robots.txt is unavailable (everything allowed)."""
    for hops, status in [(4, "robots"), (5, "ok")]:  # 1 + hops redirects before the file
        with MediaServer() as srv:
            srv.robots = (301, f"/redirect/{hops}/files/moved-robots.txt")
            srv.add_file("moved-robots.txt", b"User-agent: *\nDisallow: /\n", "text/plain")
            with Fetcher(config(srv, honour_robots_txt=True), resolve=numeric_resolver()) as fetcher:
                assert fetcher.fetch("http://media.test/img/a.png").status == status, hops
            assert srv.count("/robots.txt") == 1 and srv.count("/files/moved-robots.txt") == (status == "robots")


M3W_UA = FetchConfig().user_agent  # product token m3w-bot; the full string also holds "github"


@pytest.mark.parametrize(
    "rules, path, allowed",
    [
        # "$" ends the pattern; rules match the path and query, so a query is more after the ".jpg"
        ("User-agent: *\nDisallow: /*.jpg$\n", "/img/a.jpg", False),
        ("User-agent: *\nDisallow: /*.jpg$\n", "/img/a.jpg?x=1", True),
        ("User-agent: *\nDisallow: /*.jpg$\n", "/img/a.jpg.png", True),
        ("User-agent: *\nDisallow: /*.jpg\n", "/img/a.jpg?x=1", False),  # without "$" the match is a prefix
        ("User-agent: *\nDisallow: /*?\n", "/img/a.png?w=200", False),  # the query is matched too
        # "*" is any run of characters, within a segment or across them
        ("User-agent: *\nDisallow: /private*/\n", "/private-photos/a.png", False),
        ("User-agent: *\nDisallow: /private*/\n", "/private.png", True),
        ("User-agent: *\nDisallow: /*/thumbs/\n", "/2024/05/thumbs/a.png", False),
        # the longest matching rule wins, in whichever order they are written
        ("User-agent: *\nDisallow: /img/\nAllow: /img/public/\n", "/img/public/a.png", True),
        ("User-agent: *\nAllow: /img/\nDisallow: /img/private/\n", "/img/private/a.png", False),
        ("User-agent: *\nAllow: /img/public/\nDisallow: /img/\n", "/img/a.png", False),
        ("User-agent: *\nAllow: /img/\nDisallow: /*.png$\n", "/img/a.png", False),  # 7 octets beat 5, wildcards counted
        ("User-agent: *\nAllow: /*.png\nDisallow: /img/\n", "/img/a.png", True),
        # allow wins a tie of equally long rules
        ("User-agent: *\nDisallow: /img/a\nAllow: /img/a\n", "/img/a.png", True),
        ("User-agent: *\nDisallow: /*.png\nAllow: /img/*\n", "/img/a.png", True),
        # our group is found by our product token, case-insensitively, and beats "*"
        ("User-agent: *\nDisallow: /\n\nUser-agent: M3W-Bot\nAllow: /\n", "/img/a.png", True),
        ("User-agent: *\nAllow: /\n\nUser-agent: m3w-bot\nDisallow: /img/\n", "/img/a.png", False),
        # other crawlers' groups do not apply to us, a longer token or a word of our full User-Agent string either
        ("User-agent: m3w-bot-news\nDisallow: /\n", "/img/a.png", True),
        ("User-agent: *\nDisallow: /\n\nUser-agent: m3w-bot-news\nAllow: /\n", "/img/a.png", False),
        ("User-agent: github\nDisallow: /\n", "/img/a.png", True),
        # nor does a group naming a prefix of our token (protego alone would take it before "*")
        ("User-agent: m3w\nDisallow: /\n", "/img/a.png", True),
        ("User-agent: *\nDisallow: /\n\nUser-agent: m3w\nAllow: /\n", "/img/a.png", False),
        ("User-agent: m3w*\nDisallow: /\n", "/img/a.png", True),
        ("User-agent: /m3w-bot\nDisallow: /\n", "/img/a.png", True),  # no product token at all
        # a version after the token still names us; a trailing comment is not part of the name
        ("User-agent: *\nAllow: /\n\nUser-agent: m3w-bot/2.0\nDisallow: /img/\n", "/img/a.png", False),
        ("User-agent: *\nAllow: /\n\nuser agent m3w-bot # us\nDisallow: /img/\n", "/img/a.png", False),
        # groups naming us are combined; several user-agent lines share one group
        ("User-agent: m3w-bot\nDisallow: /a/\n\nUser-agent: otherbot\nDisallow: /\n\nUser-agent: m3w-bot\nDisallow: /img/\n", "/img/a.png", False),
        ("User-agent: otherbot\nUser-agent: m3w-bot\nDisallow: /img/\n", "/img/a.png", False),
        # comments, blank "Disallow:" (nothing disallowed), a byte-order mark before the first line
        ("# no crawlers\nUser-agent: * # all\nDisallow: /img/ # images\n", "/img/a.png", False),
        ("User-agent: *\nDisallow:\n", "/img/a.png", True),
        ("\ufeffUser-agent: *\nDisallow: /img/\n", "/img/a.png", False),
    ],
)
def test_robots_txt_rules_match_as_rfc_9309_says(rules, path, allowed):
    with MediaServer() as srv:
        srv.robots = (200, rules)
        with Fetcher(config(srv, honour_robots_txt=True, user_agent=M3W_UA, max_retries=0), resolve=numeric_resolver()) as fetcher:
            result = fetcher.fetch("http://media.test" + path)
        assert (result.status != "robots") is allowed, result
        assert srv.count(path) == (1 if allowed else 0) and srv.count("/robots.txt") == 1


def test_sniff_media_type_images_and_videos():
    assert sniff_media_type(make_image("s", 64, 64, "png")) == ("image", "png")
    assert sniff_media_type(make_image("s", 64, 64, "jpg")) == ("image", "jpeg")
    assert sniff_media_type(make_video("mp4")) == ("video", "mp4")
    assert sniff_media_type(make_video("webm")) == ("video", "webm")
    assert sniff_media_type(b"\x1a\x45\xdf\xa3\x93\x42\x82\x88matroska" + b"\0" * 40) == ("video", "mkv")
    assert sniff_media_type(b"OggS\x00\x02" + b"\0" * 40) == ("video", "ogv")  # the video corpus's names
    assert sniff_media_type(b"RIFF\x00\x00\x00\x00AVI LIST" + b"\0" * 40) == ("video", "avi")
    assert sniff_media_type(b"\xef\xbb\xbfWEBVTT\n\n00:00.000 --> 00:01.000\nhi\n") == ("track", "vtt")
    assert sniff_media_type(b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ") == ("video", "mov")
    assert sniff_media_type(b"<!doctype html><html>") == (None, None)
    assert sniff_media_type(b"") == (None, None)
    if VIDEOS.is_dir():
        assert sniff_media_type((VIDEOS / "decord__video_90.mov").read_bytes()[:64]) == ("video", "mov")
        assert sniff_media_type((VIDEOS / "moviepy__test_video.mp4").read_bytes()[:64]) == ("video", "mp4")
        assert sniff_media_type((VIDEOS / "moviepy__transparent.webm").read_bytes()[:64]) == ("video", "webm")


@pytest.mark.parametrize(
    "headers, any_agent, opted_out",
    [
        ({"X-Robots-Tag": "noai"}, True, True),
        ({"X-Robots-Tag": "noindex, NoImageAI"}, True, True),
        ({"X-Robots-Tag": "m3w-bot: noai"}, False, True),  # scoped to us
        ({"X-Robots-Tag": "*: noai"}, False, True),
        ({"X-Robots-Tag": "otherbot: noai"}, True, True),  # another crawler, honoured by default
        ({"X-Robots-Tag": "otherbot: noai"}, False, False),  # ... and not in strict scoping
        ({"X-Robots-Tag": "otherbot: noindex, m3w-bot: noimageai"}, False, True),
        ({"X-Robots-Tag": "googlebot: noindex, nofollow"}, True, False),
        ({"X-Robots-Tag": "unavailable_after: 25 Jun 2010 15:00:00 PST"}, True, False),
        ({"tdm-reservation": "1"}, True, True),
        ({"TDM-Reservation": " 1 "}, True, True),
        ({"tdm-reservation": "0"}, True, False),
        ({}, True, False),
    ],
)
def test_opt_out_reason(headers, any_agent, opted_out):
    assert bool(opt_out_reason(headers, agent_token(DEFAULT_UA), any_agent)) is opted_out
    assert agent_token(DEFAULT_UA) == "m3w-bot"


# ----------------------------------------------------------------------------- statuses end to end


def test_ok_images_are_complete_and_processable(server):
    for path, sniffed, ctype in [("/img/ok-a.png", "png", "image/png"), ("/img/ok-b.jpg?w=600&h=400", "jpeg", "image/jpeg")]:
        result = fetch(server, path)
        assert (result.status, result.http_status, result.sniffed_type, result.media_kind) == ("ok", 200, sniffed, "image")
        assert result.content_type == ctype and result.error == ""
        assert result.data is not None and result.bytes == len(result.data) > 1000
        assert result.attempts == 1 and result.redirects == 0
        assert result.final_url == "http://media.test" + path
        assert result.address == f"127.0.0.1:{server.port}"
        assert process_image(result.data, ImageConfig()).reason == "ok"
    assert server.count("/img/ok-a.png") == 1


def test_videos_are_media(server):
    mp4 = fetch(server, "/video/clip.mp4")
    webm = fetch(server, "/video/clip.webm")
    assert (mp4.status, mp4.media_kind, mp4.sniffed_type, mp4.data) == ("ok", "video", "mp4", make_video("mp4"))
    assert (webm.status, webm.media_kind, webm.sniffed_type) == ("ok", "video", "webm")


def test_content_type_is_not_trusted(server):
    image_as_html = fetch(server, "/img/liar.png?ct=text/html")
    assert (image_as_html.status, image_as_html.content_type, image_as_html.sniffed_type) == ("ok", "text/html", "png")
    html_as_image = fetch(server, "/page.html?ct=image/jpeg")
    assert (html_as_image.status, html_as_image.content_type, html_as_image.data) == ("not-media", "image/jpeg", None)
    assert html_as_image.attempts == 1 and "magic" in html_as_image.error


def test_http_errors_and_5xx_retries(server):
    missing = fetch(server, "/status/404")
    assert (missing.status, missing.http_status, missing.attempts) == ("http-4xx", 404, 1)
    assert server.count("/status/404") == 1  # 4xx is final
    down = fetch(server, "/status/503")
    assert (down.status, down.http_status, down.attempts) == ("http-5xx", 503, 3)
    assert server.count("/status/503") == 3  # 1 + max_retries
    flaky = fetch(server, "/flaky/1/img/flaky.png")
    assert (flaky.status, flaky.attempts) == ("ok", 2)
    assert server.count("/flaky/1/img/flaky.png") == 2
    too_flaky = fetch(server, "/flaky/3/img/flaky.png?code=502", max_retries=1)
    assert (too_flaky.status, too_flaky.http_status, too_flaky.attempts) == ("http-5xx", 502, 2)


def test_429_waits_for_retry_after_within_the_cap(server):
    result = fetch(server, "/throttle/1/img/throttled.png?after=1")
    assert (result.status, result.attempts) == ("ok", 2)
    first, second = [r.at for r in server.requests if r.path == "/throttle/1/img/throttled.png?after=1"]
    assert second - first >= 0.95  # Retry-After: 1, not the 10 ms backoff
    over_cap = fetch(server, "/throttle/1/img/patient.png?after=120", retry_after_cap_s=5)
    assert (over_cap.status, over_cap.http_status, over_cap.attempts) == ("http-4xx", 429, 1)
    assert "cap" in over_cap.error and over_cap.elapsed_s < 5  # never waited the 5 s cap (attempts == 1 says no retry)


def test_timeouts_resets_and_cut_bodies_are_retried(server):
    slow = fetch(server, "/slow/1/img/slow.png", read_timeout_s=SHORT_READ_TIMEOUT_S)
    assert (slow.status, slow.attempts) == ("timeout", 3)  # each attempt cut at 0.3 s: a 1 s wait would have answered
    assert slow.error.startswith("read timed out")
    assert server.count("/slow/1/img/slow.png") == 3
    reset = fetch(server, "/reset/1/img/reset.png")
    assert (reset.status, reset.attempts) == ("ok", 2)
    assert server.count("/reset/1/img/reset.png") == 2
    cut = fetch(server, "/cut/img/cut.png")
    assert (cut.status, cut.attempts, cut.data) == ("truncated", 3, None)
    assert server.count("/cut/img/cut.png") == 3
    assert 0 < cut.bytes < len(make_image("cut"))


def test_byte_cap_from_content_length_and_while_streaming(server):
    cap = 200_000
    declared = fetch(server, "/big/300000", max_bytes=cap)
    assert (declared.status, declared.bytes) == ("too-large", 0)  # refused from the header
    streamed = fetch(server, "/big/300000?chunked=1", max_bytes=cap)
    assert (streamed.status, streamed.bytes) == ("too-large", cap + 1)  # stopped at cap + 1
    at_cap = fetch(server, f"/big/{cap}?chunked=1", max_bytes=cap)
    assert (at_cap.status, at_cap.bytes) == ("ok", cap)


def test_redirects_are_followed_relative_and_bounded(server):
    followed = fetch(server, "/redirect/3/img/moved.png")
    assert (followed.status, followed.redirects, followed.attempts) == ("ok", 3, 4)
    assert followed.final_url == "http://media.test/img/moved.png"
    looping = fetch(server, "/redirect/9/img/far.png", max_redirects=5)
    assert (looping.status, looping.http_status, looping.redirects) == ("too-many-redirects", 302, 6)
    assert sum(1 for r in server.requests if r.path.startswith("/redirect/") and r.path.endswith("/img/far.png")) == 6
    assert server.count("/img/far.png") == 0


def test_redirect_to_another_private_address_is_blocked(server, loopback_only):
    """media.test (public, reached through the proxy) redirects into private space: refused before connecting."""
    resolver = numeric_resolver({"media.test": [PUBLIC_STANDIN]})
    public = dict(resolver=resolver, host_overrides={}, allow_private_addresses=False)
    with MediaServer(host="127.0.0.2") as other, ForwardProxy(hosts={"media.test": server.port}) as proxy:
        reachable = fetch(server, "/img/via-proxy.png", proxy=proxy.url, **public)
        assert (reachable.status, reachable.address) == ("ok", f"127.0.0.1:{proxy.port}")  # the public name itself is fetchable
        targets = [other.url("/img/inside.png"), "http://10.1.2.3/img/inside.png", "http://169.254.169.254/latest/meta-data/",
                   f"http://[::1]:{other.port}/img/inside.png"]
        for target in targets:
            connections_before = list(loopback_only)
            result = fetch(server, f"/redirect-to?url={target}", proxy=proxy.url, **public)
            assert (result.status, result.final_url, result.redirects) == ("blocked-address", target, 1), result
            assert loopback_only == connections_before + ["127.0.0.1", "127.0.0.1"]  # to the proxy, and the proxy to media.test
        assert [r.path for r in proxy.requests[1:]] == [f"http://media.test/redirect-to?url={t}" for t in targets]
        assert other.requests == []


def test_private_addresses_are_blocked_by_default(server, loopback_only):
    port = server.port
    resolver = numeric_resolver({"rebind.test": ["127.0.0.1"], "v6.test": ["::1"]})
    urls = [
        f"http://127.0.0.1:{port}/img/private.png",
        f"http://127.1:{port}/img/private.png",
        f"http://2130706433:{port}/img/private.png",
        f"http://0x7f.0.0.1:{port}/img/private.png",
        f"http://[::ffff:127.0.0.1]:{port}/img/private.png",
        f"http://rebind.test:{port}/img/private.png",  # a name that resolves to loopback
        f"http://v6.test:{port}/img/private.png",
        "http://10.0.0.1/img/private.png",
        "http://192.168.0.1/img/private.png",
    ]
    assert FetchConfig().allow_private_addresses is False
    with Fetcher(config(server, host_overrides={}, allow_private_addresses=False), resolve=resolver) as fetcher:
        results = list(fetcher.fetch_many(urls))
    assert [r.status for r in results] == ["blocked-address"] * len(urls)
    assert all(r.attempts == 0 and r.bytes == 0 for r in results)
    assert server.count("/img/private.png") == 0 and loopback_only == []
    allowed = fetch(server, f"http://127.0.0.1:{port}/img/private.png", allow_private_addresses=True, host_overrides={})
    assert allowed.status == "ok" and server.count("/img/private.png") == 1


def test_every_resolved_address_must_be_public(server, loopback_only):
    """One non-public record blocks the name: a later retry must not reach the private one."""
    resolver = numeric_resolver({"mixed.test": ["8.8.8.8", "127.0.0.1"]})
    result = fetch(server, f"http://mixed.test:{server.port}/img/mixed.png", resolver=resolver, host_overrides={}, allow_private_addresses=False)
    assert (result.status, result.attempts) == ("blocked-address", 0)
    assert loopback_only == [] and server.count("/img/mixed.png") == 0


def test_host_overrides_are_checked_like_resolved_addresses(server, loopback_only):
    """--resolve names an address, it does not vouch for it: a private one needs allow_private_addresses."""
    overrides = {"media.test": f"127.0.0.1:{server.port}", "v6.test": f"[::1]:{server.port}", "meta.test": "169.254.169.254",
                 "mapped.test": f"[::ffff:127.0.0.1]:{server.port}"}
    urls = ["http://media.test/img/overridden.png", "http://v6.test/img/overridden.png", "http://meta.test/latest/meta-data/",
            "http://mapped.test/img/overridden.png"]
    with Fetcher(config(server, host_overrides=overrides, allow_private_addresses=False), resolve=numeric_resolver()) as fetcher:
        results = list(fetcher.fetch_many(urls))
    assert [(r.status, r.attempts, r.bytes) for r in results] == [("blocked-address", 0, 0)] * 4
    assert [r.error for r in results] == [
        "media.test resolves to non-public 127.0.0.1 (host_overrides)", "v6.test resolves to non-public ::1 (host_overrides)",
        "meta.test resolves to non-public 169.254.169.254 (host_overrides)", "mapped.test resolves to non-public ::ffff:127.0.0.1 (host_overrides)"]
    assert loopback_only == [] and server.count("/img/overridden.png") == 0
    allowed = fetch(server, "/img/overridden.png", allow_private_addresses=True)
    assert (allowed.status, allowed.address) == ("ok", f"127.0.0.1:{server.port}") and server.count("/img/overridden.png") == 1


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine cannot listen on ::1 (no IPv6 loopback)")
def test_ipv6_literal_urls_keep_their_brackets_and_are_fetched_when_allowed(loopback_only):
    with MediaServer(host="::1") as v6:
        v6.robots = (200, "User-agent: *\nDisallow: /img/private/\n")
        url = v6.url("/redirect/1/img/v6.png")
        assert url.startswith("http://[::1]:")
        result = fetch(v6, url, host_overrides={}, honour_robots_txt=True)
        assert (result.status, result.sniffed_type, result.redirects) == ("ok", "png", 1), result
        assert (result.final_url, result.address) == (v6.url("/img/v6.png"), f"[::1]:{v6.port}")
        disallowed = fetch(v6, v6.url("/img/private/v6.png"), host_overrides={}, honour_robots_txt=True)
        assert disallowed.status == "robots" and f"robots.txt of http://[::1]:{v6.port} disallows" in disallowed.error
        blocked = fetch(v6, url, host_overrides={}, allow_private_addresses=False)
        assert (blocked.status, blocked.attempts, blocked.error) == ("blocked-address", 0, "::1 resolves to non-public ::1")
        assert sorted(r.path for r in v6.requests) == ["/img/v6.png", "/redirect/1/img/v6.png", "/robots.txt", "/robots.txt"]
        assert {r.headers["host"] for r in v6.requests} == {f"[::1]:{v6.port}"}
    assert set(loopback_only) == {"::1"}


def test_next_address_is_tried_when_one_does_not_answer(server, loopback_only):
    resolver = numeric_resolver({"dual.test": ["127.0.0.3", "127.0.0.1"]})  # nothing listens on 127.0.0.3
    result = fetch(server, f"http://dual.test:{server.port}/img/dual.png", resolver=resolver, host_overrides={}, allow_private_addresses=True)
    assert (result.status, result.attempts, result.address) == ("ok", 1, f"127.0.0.1:{server.port}")
    assert loopback_only == ["127.0.0.3", "127.0.0.1"]


def test_host_override_keeps_the_host_header_and_user_agent_is_sent(server):
    with_port = fetch(server, "http://images.example.com/img/override.png", host_overrides={"images.example.com": f"127.0.0.1:{server.port}"})
    url_port = fetch(server, f"http://images.example.com:{server.port}/img/override2.png", host_overrides={"images.example.com": "127.0.0.1"})
    assert with_port.status == url_port.status == "ok"
    (first,) = [r for r in server.requests if r.path == "/img/override.png"]
    (second,) = [r for r in server.requests if r.path == "/img/override2.png"]
    assert first.headers["host"] == "images.example.com"
    assert second.headers["host"] == f"images.example.com:{server.port}"
    assert first.headers["user-agent"] == DEFAULT_UA == "m3w-bot/0.1 (+https://github.com/m3w/m3w)"
    fetch(server, "/img/ua.png", user_agent="testbot/9 (+mailto:ops@example.org)")
    (ua,) = [r for r in server.requests if r.path == "/img/ua.png"]
    assert ua.headers["user-agent"] == "testbot/9 (+mailto:ops@example.org)"


def test_opt_out_headers_stop_before_the_body(server):
    cases = {
        "/big/300000?hdr=X-Robots-Tag:noai": "opt-out",  # the body would also be too large
        "/img/oo1.png?hdr=X-Robots-Tag:noindex,+noimageai": "opt-out",
        "/img/oo2.png?hdr=X-Robots-Tag:otherbot:+noai": "opt-out",
        "/img/oo3.png?hdr=tdm-reservation:1": "opt-out",
        "/img/oo4.png?hdr=tdm-reservation:0": "ok",
        "/img/oo5.png?hdr=X-Robots-Tag:googlebot:+noindex": "ok",
    }
    for path, status in cases.items():
        result = fetch(server, path, max_bytes=200_000)
        assert result.status == status, (path, result)
        if status == "opt-out":
            assert (result.bytes, result.data, result.attempts) == (0, None, 1)
    strict = fetch(server, "/img/oo6.png?hdr=X-Robots-Tag:otherbot:+noai", opt_out_any_agent=False)
    assert strict.status == "ok"


def test_bad_urls_dns_and_refused_connections(server):
    bad_urls = ["ftp://media.test/a.png", "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "http://", "http://media.test:99999/a.png",
                "not a url"]
    for url in bad_urls:
        result = fetch(server, url)
        assert (result.status, result.attempts) == ("bad-url", 0), (url, result)
    unknown = fetch(server, "http://nowhere.test/img/a.png")
    assert (unknown.status, unknown.attempts) == ("dns", 0)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    refused = fetch(server, "http://closed.test/img/a.png", host_overrides={"closed.test": f"127.0.0.1:{closed_port}"})
    assert (refused.status, refused.attempts) == ("connect", 1)


# ----------------------------------------------------------------------------- concurrency


def test_fetch_many_order_dedup_and_concurrency():
    names = [f"/slow/0.3/img/many{i}.png" for i in range(8)]
    urls = ["http://media.test" + n for n in names]
    requested = urls + urls[::-1] + urls[:3]
    with MediaServer() as quiet:  # its own server: in flight counts only these requests
        with Fetcher(config(quiet, workers=8, per_host_concurrency=8), resolve=numeric_resolver()) as fetcher:
            results = list(fetcher.fetch_many(requested))
        assert [r.url for r in results] == requested and all(r.status == "ok" for r in results)
        assert all(quiet.count(n) == 1 for n in names)  # each distinct URL once
        assert len({r.data for r in results}) == 8
        assert quiet.max_in_flight >= 2  # run concurrently, not one after another (counted by the server, not timed)


def test_per_host_concurrency_limit_and_politeness_delay():
    with MediaServer() as quiet:  # its own server: no slow handlers left over from other tests
        limited = config(quiet, workers=8, per_host_concurrency=2, read_timeout_s=2.0)
        urls = [f"http://media.test/slow/0.3/img/limit{i}.png" for i in range(6)]
        with Fetcher(limited, resolve=numeric_resolver()) as fetcher:
            assert [r.status for r in fetcher.fetch_many(urls)] == ["ok"] * 6
        assert quiet.max_in_flight == 2
        polite = config(quiet, workers=8, per_host_delay_s=0.2)
        urls = [f"http://media.test/img/polite{i}.png" for i in range(4)]
        with Fetcher(polite, resolve=numeric_resolver()) as fetcher:
            assert [r.status for r in fetcher.fetch_many(urls)] == ["ok"] * 4
        starts = sorted(r.at for r in quiet.requests if r.path.startswith("/img/polite"))
        assert all(b - a >= 0.18 for a, b in zip(starts, starts[1:])), starts


# ----------------------------------------------------------------------------- proxy and TLS


def test_http_proxy(server):
    with ForwardProxy() as proxy:
        url = server.url("/img/proxied.png")
        result = fetch(server, url, proxy=proxy.url, allow_private_addresses=True)
        assert result.status == "ok" and result.address == f"127.0.0.1:{proxy.port}"
        assert [(r.method, r.path) for r in proxy.requests] == [("GET", url)]
    (seen,) = [r for r in server.requests if r.path == "/img/proxied.png"]
    assert seen.headers["via"] == "1.1 test-proxy" and seen.headers["user-agent"] == DEFAULT_UA


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for images.example.com (key, cert paths)."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.example.com")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_verifies_the_name_direct_and_through_connect(server, tls_files):
    cert, key = tls_files
    with MediaServer(tls=(cert, key)) as secure, ForwardProxy() as proxy:
        overrides = {"images.example.com": f"127.0.0.1:{secure.port}"}
        url = "https://images.example.com/img/secure.png"
        direct = fetch(server, url, host_overrides=overrides, ca_file=cert)
        assert (direct.status, direct.sniffed_type) == ("ok", "png")
        assert secure.requests[-1].headers["host"] == "images.example.com"
        untrusted = fetch(server, url, host_overrides=overrides)
        assert (untrusted.status, untrusted.attempts) == ("tls", 1)
        tunnelled = fetch(server, "https://images.example.com/img/tunnelled.png", host_overrides=overrides, ca_file=cert, proxy=proxy.url)
        assert tunnelled.status == "ok"
        assert [(r.method, r.path) for r in proxy.requests] == [("CONNECT", f"127.0.0.1:{secure.port}")]
        assert secure.count("/img/tunnelled.png") == 1


# ----------------------------------------------------------------------------- status table


def test_status_table_matches_the_schema(server, tmp_path):
    urls = ["http://media.test/img/table.png", "http://media.test/status/404", "ftp://x/y"]
    with Fetcher(config(server), resolve=numeric_resolver()) as fetcher:
        results = list(fetcher.fetch_many(urls))
    table = status_table(results)
    assert table.schema.equals(load_arrow_schema("fetch_status"), check_metadata=True)
    pq.write_table(table, tmp_path / "status.parquet")
    back = pq.read_table(tmp_path / "status.parquet").to_pylist()
    assert [(r["url"], r["status"], r["http_status"]) for r in back] == [
        (urls[0], "ok", 200), (urls[1], "http-4xx", 404), (urls[2], "bad-url", None)]
    assert back[0]["bytes"] == results[0].bytes and back[0]["error"] is None and back[1]["error"] == "HTTP 404"
    assert status_table([r.to_row() for r in results]).equals(table)


# ----------------------------------------------------------------------------- Beam stage


def test_fetch_media_fn_in_a_beam_pipeline(server):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.util import assert_that, equal_to

    from beam_jobs.fetch_stage import FETCH_STATUS, fetch_media

    good = [f"http://media.test/img/beam{i}.png?w=200&h=150" for i in range(3)]
    bad = {"http://media.test/status/404?beam": "fetch-http-4xx", "http://media.test/page.html?ct=image/png&beam": "fetch-not-media",
           "http://media.test/img/tiny.png?w=20&h=20": "too-small"}
    refs = [(url, (f"doc{d}", n, 0, ())) for d in range(5) for n, url in enumerate(good + list(bad))]
    # a node whose best candidate is missing falls back to its next candidate, fetched once for both docs
    fallback = "http://media.test/img/fallback.png?w=120&h=90"
    refs += [("http://media.test/status/404?best", (f"doc{d}", 9, 0, ((2, fallback),))) for d in range(2)]
    expected = sorted((key, node, rank, bad.get(url, "ok")) for url, (key, node, rank, _) in refs if node != 9)
    expected += [(f"doc{d}", 9, 2, "ok") for d in range(2)]
    fetch_config = config(server, max_retries=0)

    def summarise(element):
        key, (node, rank, result) = element
        assert (result.image is not None) == (result.reason == "ok")
        return key, node, rank, result.reason

    pipeline = beam.Pipeline(runner="FnApiRunner")
    outputs = fetch_media(pipeline | beam.Create(refs), fetch_config, ImageConfig(), min_batch_size=2, max_batch_size=4)
    assert_that(outputs.images | beam.Map(summarise), equal_to(expected), label="images")
    statuses = outputs[FETCH_STATUS] | beam.Map(lambda row: (row["url"], row["status"]))
    expected_statuses = [(u, "ok") for u in good]
    expected_statuses += [(u, reason.removeprefix("fetch-") if reason.startswith("fetch-") else "ok") for u, reason in bad.items()]
    expected_statuses += [("http://media.test/status/404?best", "http-4xx"), (fallback, "ok")]
    assert_that(statuses, equal_to(expected_statuses), label="statuses")
    result = pipeline.run()
    result.wait_until_finish()

    for url in good + list(bad) + [fallback]:  # several documents reference each URL; it was requested once
        assert server.count(url.removeprefix("http://media.test")) == 1, url
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter().with_namespace("m3w.fetch"))["counters"]}
    assert counters == {"in": 8, "ok": 5, "http-4xx": 2, "not-media": 1}

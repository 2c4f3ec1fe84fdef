"""Media fetching inside `m3w build m3w`, against real HTTP(S) servers on 127.0.0.1.

Every URL any test here can request points at 127.0.0.1 (directly, through a host
override, or through a local proxy); URLs at other private addresses only appear where
they are blocked before any connection is made. Overrides to loopback are private
addresses like any other, so those builds set allow_private_addresses.
"""
from __future__ import annotations

import datetime
import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import CORPUS, build

from helpers.media_server import ForwardProxy, MediaServer, ipv6_loopback_available
from helpers.warc_builder import article, response, write_warc
from m3w_pipeline.extract.page import extract_page
from m3w_pipeline.read import warc

CC_FILES = [CORPUS / "warc" / "resiliparse__warcfile.warc.gz", CORPUS / "warc" / "cc-whirlwind__whirlwind.warc.gz"]
PROSE = [
    "The harbour museum opened a new hall this spring, with boats, nets and maps from three centuries of fishing.",
    "Visitors can climb aboard a restored trawler and listen to recordings of the last crews who sailed her.",
    "A final room shows how the town changed when the railway arrived and the fish markets moved inland.",
]
FAST = {"connect_timeout_s": 1.0, "read_timeout_s": 0.5, "total_timeout_s": 3.0, "max_retries": 2,
        "backoff_base_s": 0.01, "backoff_max_s": 0.05, "per_host_delay_s": 0.0, "max_bytes": 2_000_000}
# A public address the fetcher checks for a test name and never connects to: a local proxy carries the request.
PUBLIC_STANDIN = "8.8.8.8"


@pytest.fixture(autouse=True)
def _guard(loopback_only):
    return loopback_only


def self_signed_cert(folder: Path, hosts: list[str]) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def page_image_urls(paths: list[Path]) -> dict[str, list[str]]:
    """Page URL -> its image URLs in page order, as our extractor sees them."""
    out = {}
    for path in paths:
        with open(path, "rb") as f:
            for item in warc.iter_warc(f, str(path)):
                if isinstance(item, warc.Page):
                    out[item.url] = [r.url for r in extract_page(item.html, item.url).image_refs()]
    return out


def write_config(path: Path, fetch: dict) -> str:
    path.write_text(json.dumps({"fetch": {"enabled": True, **FAST, **fetch}}))
    return str(path)


def status_rows(out: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted(out.glob("fetch_status-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["url"]] = r
    return rows


def test_real_common_crawl_pages_get_their_images_fetched_in_page_order(tmp_path):
    expected = page_image_urls(CC_FILES)
    schemes_by_host: dict[str, set] = {}
    for urls in expected.values():
        for u in urls:
            schemes_by_host.setdefault(urlsplit(u).hostname, set()).add(urlsplit(u).scheme)
    https_hosts = sorted(h for h, s in schemes_by_host.items() if s == {"https"})
    cert, key = self_signed_cert(tmp_path, https_hosts)
    with MediaServer(catch_all_images=True) as plain, MediaServer(tls=(cert, key), catch_all_images=True) as secure:
        overrides = {h: f"127.0.0.1:{secure.port if h in https_hosts else plain.port}" for h in schemes_by_host}
        config = write_config(tmp_path / "config.json", {"host_overrides": overrides, "ca_file": cert, "allow_private_addresses": True})
        m = build("m3w", [str(p) for p in CC_FILES], tmp_path / "out", "--config", config, "--min-words", "5")
        requested = Counter((r.headers.get("host", "").split(":")[0], r.path) for s in (plain, secure) for r in s.requests)

    assert m["reconciles"], m["reconciliation_errors"]
    assert m["stages"]["fetch"]["in"] == len({u for urls in expected.values() for u in urls})
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")), shardshuffle=False, empty_check=False))
    assert len(samples) >= 5
    for sample in samples:
        doc = json.loads(sample["json"])
        got = [im["url"] for im in doc["images"] if im is not None and im["status"] == "ok"]
        assert got, doc["url"]
        order = expected[doc["url"]]
        assert got == [u for u in order if u in got]  # fetched images sit in page order
        for im in doc["images"]:
            if im is not None:
                assert im["original_width"] == 400 and sample[im["file"]][:2] == b"\xff\xd8"
    rows = status_rows(tmp_path / "out")
    assert len(rows) == m["stages"]["fetch"]["in"]
    assert {r["status"] for r in rows.values()} == {"ok"}
    # each distinct URL fetched once however many pages use it (a retried attempt shows in `attempts`)
    by_path = Counter()
    for url, r in rows.items():
        by_path[(urlsplit(url).hostname, urlsplit(url).path + (f"?{urlsplit(url).query}" if urlsplit(url).query else ""))] += r["attempts"]
    robots = Counter({k: n for k, n in requested.items() if k[1] == "/robots.txt"})
    assert robots == Counter({(h, "/robots.txt"): len(s) for h, s in schemes_by_host.items()})  # once per origin
    requested -= robots
    assert requested == by_path, {k: (v, by_path[k]) for k, v in requested.items() if v != by_path[k]}
    assert m["fetch_status_files"] == sorted(p.name for p in (tmp_path / "out").glob("fetch_status-*.parquet"))


FAULTS = {
    "ok.png": ("/img/ok.png", "ok"),
    "missing": ("/status/404", "http-4xx"),
    "flaky": ("/flaky/1/img/flaky.png", "ok"),
    "slow": ("/slow/2/img/slow.png", "timeout"),
    "cut": ("/cut/img/cut.png", "truncated"),
    "text-typed-image": ("/img/typed.png?ct=text/html", "ok"),
    "html-as-jpeg": ("/page.html?ct=image/jpeg", "not-media"),
    "big": ("/big/3000000", "too-large"),
    "noai": ("/img/noai.png?hdr=X-Robots-Tag:noai", "opt-out"),
    "robots": ("/img/private/robots.png", "robots"),  # the server's robots.txt disallows /img/private/
}


def fault_crawl(tmp_path: Path, base: str) -> Path:
    records = []
    for i, (name, (path, _)) in enumerate(FAULTS.items()):
        url = f"https://news.example/{name}"
        records.append(response(url, article(f"Story {i}", PROSE, [base + path, base + "/img/shared.png"])))
    return write_warc(tmp_path / "faults.warc.gz", records)


def test_planted_faults_end_with_the_right_status_and_shared_urls_are_fetched_once(tmp_path):
    """Pages name media.test; the override points it at the local server (a private address, allowed)."""
    with MediaServer() as server:
        server.robots = (200, "User-agent: *\nDisallow: /img/private/\n")
        base = f"http://media.test:{server.port}"
        crawl = fault_crawl(tmp_path, base)
        config = write_config(tmp_path / "config.json", {"host_overrides": {"media.test": "127.0.0.1"}, "allow_private_addresses": True})
        m = build("m3w", [str(crawl)], tmp_path / "out", "--config", config, "--min-words", "10")
        counts = {path: server.count(path) for path, _ in FAULTS.values()}
        shared = server.count("/img/shared.png")
        hosts = {r.headers.get("host") for r in server.requests}
    rows = status_rows(tmp_path / "out")
    for name, (path, status) in FAULTS.items():
        assert rows[base + path]["status"] == status, (name, rows[base + path])
    assert hosts == {f"media.test:{server.port}"}
    assert shared == 1 and rows[base + "/img/shared.png"]["status"] == "ok"  # 10 pages, one request
    assert counts["/flaky/1/img/flaky.png"] == 2 and rows[base + "/flaky/1/img/flaky.png"]["attempts"] == 2
    assert counts["/status/404"] == 1  # a 404 is not retried
    assert counts["/img/noai.png?hdr=X-Robots-Tag:noai"] == 1
    assert counts["/img/private/robots.png"] == 0 and server.count("/robots.txt") == 1  # read once, obeyed
    s = m["stages"]
    assert s["fetch"]["in"] == len(FAULTS) + 1 and s["fetch"]["kept"]["ok"] == 4
    assert s["image_refs"]["dropped"]["fetch-opt-out"] == 1 and s["image_refs"]["dropped"]["fetch-timeout"] == 1
    assert s["image_refs"]["dropped"]["fetch-robots"] == 1 and s["fetch"]["dropped"]["robots"] == 1
    assert s["documents"]["kept"]["kept"] == len(FAULTS) and m["reconciles"]  # the shared image keeps every page


def test_redirects_into_private_space_are_blocked(tmp_path):
    """Pages name media.test, a public address to the fetcher (a local proxy carries its requests); where it
    redirects into private space, the hop is refused before any connection."""
    private = {"loopback": "http://127.0.0.2/img/x.png", "lan": "http://10.0.0.1/img/x.png", "metadata": "http://169.254.169.254/latest/meta-data/"}
    base = "http://media.test"
    with MediaServer() as server, ForwardProxy(hosts={"media.test": server.port}) as proxy:
        records = [response(f"https://news.example/{name}", article(f"Story {i}", PROSE, [f"{base}/img/ok.png", f"{base}/redirect-to?url={url}"]))
                   for i, (name, url) in enumerate(private.items())]
        crawl = write_warc(tmp_path / "redirects.warc.gz", records)
        config = write_config(tmp_path / "config.json", {"host_overrides": {"media.test": PUBLIC_STANDIN}, "proxy": proxy.url})
        m = build("m3w", [str(crawl)], tmp_path / "out", "--config", config, "--min-words", "10")
        proxied = sorted(r.path for r in proxy.requests)
        served = sorted(r.path for r in server.requests)
    rows = status_rows(tmp_path / "out")
    assert rows[f"{base}/img/ok.png"]["status"] == "ok"
    for url in private.values():
        row = rows[f"{base}/redirect-to?url={url}"]
        assert (row["status"], row["final_url"], row["redirects"], row["attempts"]) == ("blocked-address", url, 1, 1), row
    wanted = ["/img/ok.png", "/robots.txt"] + [f"/redirect-to?url={url}" for url in private.values()]
    assert proxied == sorted(base + p for p in wanted) and served == sorted(wanted)  # each once; no private hop requested
    assert m["stages"]["fetch"]["dropped"] == {"blocked-address": len(private)} and m["reconciles"]


@pytest.mark.parametrize("named_by", ["address", "override"])
def test_without_allow_private_addresses_nothing_reaches_loopback(tmp_path, named_by):
    """Loopback is refused whether the page names it or a host override points a name at it."""
    with MediaServer() as server:
        if named_by == "address":
            base, fetch = server.base_url, {}
        else:
            base, fetch = f"http://media.test:{server.port}", {"host_overrides": {"media.test": "127.0.0.1"}}
        crawl = fault_crawl(tmp_path, base)
        config = write_config(tmp_path / "config.json", fetch)
        m = build("m3w", [str(crawl)], tmp_path / "out", "--config", config, "--min-words", "10")
        assert server.requests == []
    rows = status_rows(tmp_path / "out")
    assert {r["status"] for r in rows.values()} == {"blocked-address"}
    assert all("127.0.0.1" in (r["error"] or "") for r in rows.values())
    assert m["stages"]["fetch"]["dropped"] == {"blocked-address": len(FAULTS) + 1}
    assert m["stages"]["documents"]["dropped"] == {"no-image": len(FAULTS)}


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine cannot listen on ::1 (no IPv6 loopback)")
def test_ipv6_literal_image_urls_are_fetched_with_their_brackets(tmp_path):
    """http://[::1]:PORT/... on a page stays that URL through the join by URL, the fetch and the shards."""
    with MediaServer(host="::1") as v6:
        urls = [v6.url("/img/v6-a.png"), v6.url("/img/v6-b.jpg?w=400&h=300")]
        crawl = write_warc(tmp_path / "v6.warc.gz", [response("https://news.example/v6", article("Story", PROSE, urls))])
        config = write_config(tmp_path / "config.json", {"allow_private_addresses": True})
        m = build("m3w", [str(crawl)], tmp_path / "out", "--config", config, "--min-words", "10")
        served = sorted(r.path for r in v6.requests)
    rows = status_rows(tmp_path / "out")
    assert {url: (r["status"], r["address"]) for url, r in rows.items()} == {url: ("ok", f"[::1]:{v6.port}") for url in urls}
    assert served == ["/img/v6-a.png", "/img/v6-b.jpg?w=400&h=300", "/robots.txt"]
    (sample,) = wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")), shardshuffle=False, empty_check=False)
    images = [im for im in json.loads(sample["json"])["images"] if im is not None]
    assert [(im["url"], im["status"]) for im in images] == [(url, "ok") for url in urls]
    assert m["stages"]["fetch"] == {"in": 2, "kept": {"ok": 2}, "dropped": {}, "reconciles": True}

"""Video fetching inside `m3w build video|all --fetch-media`, against a real HTTP server on 127.0.0.1.

Pages in a WARC name their videos at media.test; `--resolve` points that host at the local
server (a loopback address, so with `--allow-private-addresses`), which serves real videos
from the shared corpus (read in place), a JPEG, a 404 and a corrupt video, and a WebVTT
track. No video is in the WARC, so every one must be fetched (or end as not-in-crawl).
"""
from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import CORPUS, build
from PIL import Image

from helpers.media_server import MediaServer, make_image
from helpers.warc_builder import response, write_warc
from m3w_pipeline.write.layout import index_file

VIDEO_DIR = CORPUS / "video"
GOOD = {"/files/clips/transparent.webm": "moviepy__transparent.webm", "/files/clips/bunny.webm": "moviepy__big_buck_bunny_432_433.webm",
        "/files/clips/bunny-subtitled.webm": "moviepy__big_buck_bunny_432_433.webm"}
CORRUPT = ("/files/clips/corrupted.mp4", "decord__corrupted.mp4")
JPEG = "/files/clips/really-a-photo.mp4"  # a JPEG body behind a video-looking URL and Content-Type
MISSING = "/status/404"
TRACK = "/files/subs/clip.vtt"
TRACK_CAPTION = "A rabbit wakes up under a tree and stretches in the morning sun."
VTT = f"WEBVTT\n\n00:00.000 --> 00:02.000\n{TRACK_CAPTION}\n".encode()
IMAGE = "/img/photo.jpg?w=400&h=300"
PROSE = [
    "The harbour museum opened a new hall this spring, with boats, nets and maps from three centuries of fishing.",
    "Visitors can climb aboard a restored trawler and listen to recordings of the last crews who sailed her.",
    "A final room shows how the town changed when the railway arrived and the fish markets moved inland.",
]


@pytest.fixture(autouse=True)
def _guard(loopback_only):
    return loopback_only


def video_figure(src: str, caption: str, track: str = "") -> str:
    track_tag = f'<track kind="captions" src="{track}">' if track else ""
    figcaption = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><video controls><source src="{src}">{track_tag}</video>{figcaption}</figure>'



def page(title: str, base: str, videos: list[tuple[str, str]], track: str = "") -> bytes:
    parts = [f"<h1>{title}</h1>", f'<figure><img src="{base}{IMAGE}" alt="The old trawler in the harbour"></figure>']
    for i, (path, caption) in enumerate(videos):
        parts.append(f"<p>{PROSE[i % len(PROSE)]}</p>")
        parts.append(video_figure(base + path, caption, base + track if track and i == 0 else ""))
    parts.append(f"<p>{PROSE[-1]}</p>")
    html = f"<!doctype html><html lang=en><head><title>{title}</title></head><body><main><article>{''.join(parts)}</article></main></body></html>"
    return html.encode("utf-8")


def crawl(tmp_path: Path, base: str) -> Path:
    """Three pages; the first good video is on two (with different captions), the track on two
    (the third page's video has no other caption), nothing else twice."""
    first = [
        ("/files/clips/transparent.webm", "A red shape spins slowly on a white background in this short clip."),
        (JPEG, "A photo of the harbour that the page wrongly embeds as a video clip."),
        (MISSING, "Fishermen mending their nets on the quay before the morning tide."),
    ]
    second = [
        ("/files/clips/transparent.webm", "The spinning red logo animation that opens every museum film."),
        ("/files/clips/bunny.webm", "A big rabbit wakes up in the forest and stretches in the sun."),
        (CORRUPT[0], "Traffic crossing the old harbour bridge at night in the rain."),
    ]
    records = [
        response("https://news.example/museum", page("Harbour museum", base, first, track=TRACK)),
        response("https://news.example/films", page("Museum films", base, second)),
        response("https://news.example/cartoon", page("Cartoon night", base, [("/files/clips/bunny-subtitled.webm", "")],
                                                      track=TRACK)),
    ]
    return write_warc(tmp_path / "videos.warc.gz", records)


def serve_corpus_videos(server: MediaServer) -> None:
    for path, name in list(GOOD.items()) + [CORRUPT]:
        server.add_file(path.removeprefix("/files/"), (VIDEO_DIR / name).read_bytes(), "video/" + name.rsplit(".", 1)[-1])
    server.add_file(JPEG.removeprefix("/files/"), make_image("photo", 320, 240, "jpg"), "video/mp4")
    server.add_file(TRACK.removeprefix("/files/"), VTT, "text/vtt")


def video_rows(out: Path) -> list[dict]:
    return [r for f in sorted(out.glob(index_file("video-*"))) for r in pq.read_table(f).to_pylist()]


def status_rows(out: Path) -> dict[str, dict]:
    return {urlsplit(r["url"]).path + (f"?{urlsplit(r['url']).query}" if urlsplit(r["url"]).query else ""): r
            for f in sorted(out.glob("fetch_status-*.parquet")) for r in pq.read_table(f).to_pylist()}


def run_build(tmp_path: Path, corpus: str, fetch: bool) -> tuple[dict, MediaServer]:
    with MediaServer() as server:
        serve_corpus_videos(server)
        base = f"http://media.test:{server.port}"
        warc = crawl(tmp_path, base)
        extra = ["--fetch-media"] if fetch else []
        m = build(corpus, [str(warc)], tmp_path / "out", *extra, "--resolve", f"media.test=127.0.0.1:{server.port}", "--allow-private-addresses",
                  "--min-words", "5")
    return m, server


@pytest.fixture(scope="module")
def video_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video_fetch")
    mp = pytest.MonkeyPatch()  # the loopback guard (conftest's is per test), for the module-scoped build
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert str(address[0]).startswith("127."), address
        return real(address, *args, **kwargs)

    mp.setattr(socket, "create_connection", guarded)
    try:
        m, server = run_build(tmp, "video", fetch=True)
    finally:
        mp.undo()
    return tmp / "out", m, server


def test_fetched_videos_are_in_the_shards_and_their_frames_decode(video_build):
    out, m, _ = video_build
    assert m["reconciles"], m["reconciliation_errors"]
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("video-*.tar")), shardshuffle=False, empty_check=False))
    assert len(samples) == m["totals"]["samples"] == 4  # transparent (two captions), bunny, bunny-subtitled
    urls = set()
    for s in samples:
        meta = json.loads(s["json"])
        urls.add(urlsplit(meta["url"]).path)
        frames = sorted(k for k in s if k.endswith(".jpg"))
        assert len(frames) >= 2 and s["txt"].decode().strip()
        for k in frames:
            Image.open(io.BytesIO(s[k])).convert("RGB").load()
        assert s["webm"][:4] == b"\x1a\x45\xdf\xa3"
        if meta["url"].endswith("bunny-subtitled.webm"):  # no figcaption, title or context: the fetched track
            assert (meta["caption"], meta["caption_source"]) == (TRACK_CAPTION, "track")
    assert urls == set(GOOD)


def test_each_distinct_video_and_track_url_is_requested_once(video_build):
    _, m, server = video_build
    for path in list(GOOD) + [CORRUPT[0], JPEG, MISSING, IMAGE, TRACK]:
        assert server.count(path) == 1, (path, server.count(path))  # transparent.webm and the track are on two pages
    s = m["stages"]
    assert s["video_unresolved"] == {"in": 7, "kept": {"to-fetch": 7}, "dropped": {}, "reconciles": True}
    assert s["video_fetch"]["in"] == 7 and s["video_fetch"]["kept"] == {"ok": 5}  # 3 good videos, the corrupt one, the track
    assert s["video_fetch"]["dropped"] == {"http-4xx": 1, "not-media": 1}
    assert s["fetch"]["in"] == 1 and s["fetch"]["kept"] == {"ok": 1}  # the page image, in the same build


def test_jpeg_404_and_corrupt_videos_end_as_failed_rows_and_status_rows(video_build):
    out, m, _ = video_build
    failed = {urlsplit(r["url"]).path: r for r in video_rows(out) if r["status"] != "success"}
    assert failed[JPEG]["status"] == "failed_to_download"
    assert failed[JPEG]["error_message"].startswith("fetch-not-media: image (jpeg)")
    assert failed["/status/404"]["status"] == "failed_to_download"
    assert failed["/status/404"]["error_message"] == "fetch-http-4xx: HTTP 404"
    assert failed[CORRUPT[0]]["status"] == "failed_to_subsample"
    assert failed[CORRUPT[0]]["error_message"].startswith("decode-error")
    dropped = m["stages"]["video_candidates"]["dropped"]
    assert dropped == {"fetch-not-media": 1, "fetch-http-4xx": 1, "decode-error": 1}
    rows = status_rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {
        **dict.fromkeys(GOOD, "ok"), CORRUPT[0]: "ok", JPEG: "not-media", MISSING: "http-4xx", IMAGE: "ok", TRACK: "ok"}
    assert (rows[TRACK]["media_kind"], rows[TRACK]["sniffed_type"]) == ("track", "vtt")
    assert rows[JPEG]["media_kind"] == "image" and rows[MISSING]["http_status"] == 404
    assert rows["/files/clips/bunny.webm"]["media_kind"] == "video" and rows["/files/clips/bunny.webm"]["sniffed_type"] == "webm"
    assert m["fetch_status_files"] == sorted(p.name for p in out.glob("fetch_status-*.parquet")) != []


def test_without_fetch_media_nothing_is_requested_and_videos_are_not_in_crawl(tmp_path):
    m, server = run_build(tmp_path, "video", fetch=False)
    assert server.requests == []
    assert m["reconciles"], m["reconciliation_errors"]
    assert "video_fetch" not in m["stages"] and "video_unresolved" not in m["stages"]
    assert m["stages"]["video_candidates"]["dropped"] == {"not-in-crawl": 7}
    rows = video_rows(tmp_path / "out")
    assert len(rows) == 7 and {r["error_message"] for r in rows} == {"not-in-crawl: no record for any source"}
    assert m["fetch_status_files"] == [] and not list((tmp_path / "out").glob("fetch_status-*.parquet"))


def test_build_all_fetches_images_and_videos_and_every_corpus_reconciles(tmp_path):
    manifests, server = run_build(tmp_path, "all", fetch=True)
    for corpus, m in manifests.items():
        assert m["reconciles"], (corpus, m["reconciliation_errors"])
    s = manifests["m3w"]["stages"]
    assert s["fetch"]["in"] == 1 and s["video_fetch"]["in"] == 7 and s["video_fetch"]["kept"] == {"ok": 5}
    for path in list(GOOD) + [CORRUPT[0], JPEG, MISSING, IMAGE, TRACK]:
        assert server.count(path) == 1, path
    out = tmp_path / "out"
    assert set(status_rows(out / "m3w")) == {IMAGE}  # image rows beside the M3W corpus, video rows beside the videos
    assert set(status_rows(out / "video")) == set(GOOD) | {CORRUPT[0], JPEG, MISSING, TRACK}
    assert manifests["pairs"]["fetch_status_files"] == []
    for corpus in ("m3w", "video"):
        assert manifests[corpus]["fetch_status_files"] == sorted(p.name for p in (out / corpus).glob("fetch_status-*.parquet")) != []
    assert manifests["video"]["totals"]["samples"] == 4

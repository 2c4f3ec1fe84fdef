"""`m3w build all`: the M3W, pair and video corpora from one read and one extraction of each page."""
from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import CORPUS, build
from PIL import Image

import m3w_pipeline.extract.page as page_module
from helpers.warc_builder import response, write_warc
from m3w_pipeline.extract.page import extract_page
from m3w_pipeline.write.layout import index_file

VIDEO_DIR = CORPUS / "video"
GALLERY = "https://videos.example/gallery"
KUMARA = "https://www.anchor.ch/wp-content/uploads/2019/12/Kumara4.mp4"
PICTUREFILL_PAGES = ("correctiv.org", "francais.radio.cz", "theguardian.com/commentisfree")


def corpus_pages() -> list[tuple[str, bytes]]:
    """(url, html bytes) of every shared-corpus HTML page with a real URL."""
    pages = []
    with open(CORPUS / "MANIFEST.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if not row["path"].startswith("html/") or "ground_truth" in row["path"]:
                continue
            url = next((p[4:] for p in row["notes"].split() if p.startswith("url=")), "")
            if url.startswith("http"):
                data = (CORPUS / row["path"]).read_bytes()
                pages.append((url, gzip.decompress(data) if row["path"].endswith(".gz") else data))
    return pages


def gallery_page() -> bytes:
    """One page with every corpus video in a captioned <figure>, between paragraphs."""
    parts = ["<h1>Test clips</h1><p>Short clips from public test suites, each with a caption that says what it shows.</p>"]
    for video in sorted(VIDEO_DIR.iterdir()):
        parts.append(
            f'<figure><video controls poster="/posters/{video.stem}.jpg"><source src="/clips/{video.name}"></video>'
            f"<figcaption>The clip {video.stem.replace('_', ' ')} plays for a few seconds in a small window.</figcaption></figure>"
            "<p>Another paragraph separates the clips so each caption stays next to its own video on the page.</p>"
        )
    return f"<!doctype html><html lang=en><head><title>Clips</title></head><body><main>{''.join(parts)}</main></body></html>".encode()


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((320, 240), 40 + 10 * seed).convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def video_content_type(name: str) -> str:
    return {"mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm"}[name.rsplit(".", 1)[-1]]


@pytest.fixture(scope="module")
def all_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build_all")
    records = []
    for url, html in corpus_pages():
        records.append(response(url, html))
        # the crawl also holds a few of each page's images (generated stand-ins at the real URLs)
        for i, ref in enumerate(extract_page(html, url).image_refs()[:3]):
            records.append(response(ref.url, jpeg(i), "image/jpeg"))
    records.append(response(GALLERY, gallery_page()))
    for video in sorted(VIDEO_DIR.iterdir()):
        records.append(response(f"https://videos.example/clips/{video.name}", video.read_bytes(), video_content_type(video.name)))
    records.append(response(KUMARA, (VIDEO_DIR / "moviepy__chaplin.mp4").read_bytes(), "video/mp4"))
    crawl = write_warc(tmp / "html-and-video.warc.gz", records)

    calls: Counter = Counter()
    mp = pytest.MonkeyPatch()
    # extraction in-process (no time budget), so the calls can be counted here
    (tmp / "in-process.toml").write_text("[extract]\ntimeout_s = 0.0\n")
    mp.setattr(page_module, "extract_page", lambda html, url, config: (calls.update([url]), extract_page(html, url, config))[1])
    try:
        manifests = build("all", [str(crawl), str(CORPUS / "warc" / "*")], tmp / "out", "--min-words", "10",
                          "--config", str(tmp / "in-process.toml"))
    finally:
        mp.undo()
    return tmp / "out", manifests, calls


def test_three_corpora_from_one_run_each_reconciling(all_build):
    out, manifests, _ = all_build
    for corpus, m in manifests.items():
        assert m["reconciles"], (corpus, m["reconciliation_errors"])
        assert m["corpus"] == corpus
    stages = manifests["m3w"]["stages"]
    assert manifests["pairs"]["stages"] == manifests["video"]["stages"] == stages  # one funnel, one run
    assert manifests["m3w"]["totals"]["samples"] > 0 and manifests["pairs"]["totals"]["samples"] > 0
    assert manifests["video"]["totals"]["samples"] >= 3
    assert len(manifests["m3w"]["broken_files"]) == 4


def test_each_page_is_read_and_extracted_once(all_build):
    _, manifests, calls = all_build
    stages = manifests["m3w"]["stages"]
    assert sum(calls.values()) == stages["pages"]["in"] == stages["records"]["kept"]["page"]
    # the same URL may be captured twice (revisits, twin files); each capture is extracted once
    assert sum(calls.values()) == len(calls) + (stages["pages"]["in"] - len(calls))
    assert calls[GALLERY] == 1


def test_every_real_video_is_kept_with_metadata_or_dropped_with_a_reason(all_build):
    out, manifests, _ = all_build
    rows = [r for f in sorted((out / "video").glob(index_file("video-*"))) for r in pq.read_table(f).to_pylist()]
    by_url: dict[str, dict] = {}
    for r in rows:
        by_url.setdefault(r["url"], r)
    for video in sorted(VIDEO_DIR.iterdir()):
        row = by_url[f"https://videos.example/clips/{video.name}"]
        assert row["status"] == "success" or row["error_message"], row
    outcome = {u.rsplit("/", 1)[-1]: (r["status"], (r["error_message"] or "").split(":")[0]) for u, r in by_url.items()}
    kept = {name for name, (status, _) in outcome.items() if status == "success"}
    assert kept >= {"moviepy__chaplin.mp4", "moviepy__big_buck_bunny_432_433.webm", "moviepy__no_duration.webm",
                    "moviepy__smpte-2997.mp4", "moviepy__transparent.webm", "Kumara4.mp4"}
    dropped = {name: outcome[name][1] for name in ("decord__corrupted.mp4", "decord__video_90.mov", "moviepy__test_video.mp4")}
    assert all(status != "success" for status, _ in (outcome[n] for n in dropped))
    assert "decode-error" in dropped["decord__corrupted.mp4"] and "too-short" in dropped["decord__video_90.mov"]
    assert "too-small" in dropped["moviepy__test_video.mp4"]  # 1x1
    meta = {r["url"].rsplit("/", 1)[-1]: r for r in rows if r["status"] == "success"}
    assert abs(meta["moviepy__no_duration.webm"]["duration"] - 4.94) < 0.1  # no duration in the header
    assert meta["moviepy__smpte-2997.mp4"]["fps"] == pytest.approx(25, abs=0.01)
    assert (meta["moviepy__chaplin.mp4"]["original_width"], meta["moviepy__chaplin.mp4"]["original_height"]) == (640, 360)
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "video").glob("*.tar")), shardshuffle=False, empty_check=False))
    assert len(samples) == manifests["video"]["totals"]["samples"]
    for s in samples:
        meta = json.loads(s["json"])
        frames = sorted(k for k in s if k.endswith(".jpg"))
        assert len(frames) >= 2 and s["txt"].decode().strip()
        stamps = [f["timestamp"] for f in meta["frames"]]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    page_of = {json.loads(s["json"])["url"]: json.loads(s["json"])["page_url"] for s in samples}
    assert page_of[KUMARA].startswith("https://www.anchor.ch/")


def test_picturefill_video_tags_yield_no_video(all_build):
    out, _, _ = all_build
    rows = [r for f in sorted((out / "video").glob(index_file("video-*"))) for r in pq.read_table(f).to_pylist()]
    pages = {r["page_url"] for r in rows}
    assert not [p for p in pages if any(marker in p for marker in PICTUREFILL_PAGES)]


def test_pair_shards_read_like_a_clip_trainer(all_build):
    out, manifests, _ = all_build
    urls = sorted(str(p) for p in (out / "pairs").glob("*.tar"))
    pairs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "txt"))
    assert len(pairs) == manifests["pairs"]["totals"]["samples"] > 0
    for image, caption in pairs:
        assert image.mode == "RGB" and min(image.size) > 0 and caption.strip()

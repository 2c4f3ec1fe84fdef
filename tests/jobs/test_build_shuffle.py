"""Image bytes move once (issue 12): `m3w build all` over a crawl where one banner is on all 300
pages, one image on four of them and ten pages have a photo of their own.

The manifest's `shuffle_bytes` (payload bytes entering each grouping) must show that the document
join and dedup carried image metadata only; that the processed bytes of each image crossed the
ShipImageBytes join once, and reached each shard that keeps it once (the hot banner: none); and
the shards must hold exactly the kept documents with the bytes `process_image` makes of their
images.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import build
from PIL import Image

from helpers.warc_builder import article, response, write_warc
from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.media.images import process_image
from m3w_pipeline.sample.text import TOPICS, TextMaker

pytestmark = pytest.mark.slow

PAGES, PHOTO_EVERY, SHARED_ON = 300, 30, (0, 30, 60, 90)  # photos on pages 0, 30, ..., 270; the shared image on four of them
BANNER, SHARED = "https://static.example/banner.jpg", "https://static.example/shared.jpg"
SHA_HEX = 64  # a shipped element is (sha256 hex, bytes)


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    w, h = size
    coarse = rng.uniform(0, 255, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shuffle_build(tmp_path_factory) -> tuple[Path, dict, dict[str, bytes], dict[str, list[str]]]:
    """(output folder, manifests, raw image bytes by URL, image URLs by page URL for photo pages)."""
    root = tmp_path_factory.mktemp("shuffle_build")
    rng, np_rng = random.Random(3), np.random.default_rng(3)
    maker = TextMaker(rng)
    raw = {BANNER: _jpeg(np_rng, (600, 240)), SHARED: _jpeg(np_rng, (400, 300))}
    records = [response(url, data, "image/jpeg") for url, data in raw.items()]
    photo_pages: dict[str, list[str]] = {}
    for i in range(PAGES):
        page_url, images = f"https://site{i % 7}.example/post/{i}.html", [BANNER]
        if i % PHOTO_EVERY == 0:
            photo = f"https://photos.example/{i}.jpg"
            raw[photo] = _jpeg(np_rng, (640, 480))
            records.append(response(photo, raw[photo], "image/jpeg"))
            images += [SHARED, photo] if i in SHARED_ON else [photo]
            photo_pages[page_url] = images[1:]
        topic = TOPICS[i % len(TOPICS)]
        records.append(response(page_url, article(maker.title(topic), [maker.paragraph(topic, 5) for _ in range(3)], images)))
    write_warc(root / "crawl.warc.gz", records)
    manifests = build("all", [str(root / "crawl.warc.gz")], root / "out", "--samples-per-shard", "3")
    return root / "out", manifests, raw, photo_pages


def _shards(folder: Path) -> dict[str, dict[str, dict]]:
    """shard name -> doc key -> {"doc": KEY.json, "files": {member name: bytes}}."""
    shards: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("m3w-*.tar")):
        docs: dict[str, dict] = defaultdict(lambda: {"files": {}})
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, rest = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if rest == "json":
                    docs[key]["doc"] = json.loads(data)
                else:
                    docs[key]["files"][rest] = data
        shards[path.stem] = dict(docs)
    return shards


def test_shards_hold_the_kept_documents_with_their_images_bytes(shuffle_build):
    out, manifests, raw, photo_pages = shuffle_build
    shards = _shards(out / "m3w")
    docs = {key: d for shard in shards.values() for key, d in shard.items()}
    assert sorted(d["doc"]["url"] for d in docs.values()) == sorted(photo_pages)  # the banner alone keeps no page
    processed = {url: process_image(data, ImageConfig()).image for url, data in raw.items()}
    for d in docs.values():
        urls = [im["url"] for im in d["doc"]["images"] if im is not None]
        assert urls == photo_pages[d["doc"]["url"]]  # the hot banner left every document
        positions = [i for i, im in enumerate(d["doc"]["images"]) if im is not None]
        assert d["files"] == {f"{p}.jpg": processed[u].data for p, u in zip(positions, urls)}
    m3w = manifests["m3w"]
    assert m3w["reconciles"] and m3w["totals"]["samples"] == len(photo_pages) == 10
    assert len(shards) == 4  # 10 documents, 3 per shard
    assert m3w["stages"]["images_hot"]["dropped"] == {"hot-image": 10}, m3w["stages"]["images_hot"]


def test_image_bytes_cross_each_join_once_per_shard_that_needs_them(shuffle_build):
    out, manifests, raw, photo_pages = shuffle_build
    block = manifests["m3w"]["shuffle_bytes"]
    assert all(manifests[c]["shuffle_bytes"] == block for c in ("pairs", "video"))  # one build, one count
    grouping = block["by_grouping"]
    processed = {url: process_image(data, ImageConfig()).image for url, data in raw.items()}
    size = {url: SHA_HEX + len(p.data) for url, p in processed.items()}

    # Processed once per URL: every image (the banner too) crosses ShipImageBytes once, not once per reference.
    assert grouping["ShipImageBytes/bytes"] == {"elements": len(raw), "bytes": sum(size.values())}
    # The document join and dedup carry metadata: all 300 banner references weigh less than one copy of the banner.
    banner = len(processed[BANNER].data)
    assert grouping["JoinByDocument/images"]["elements"] == PAGES + len(photo_pages) + len(SHARED_ON)
    assert grouping["JoinByDocument/images"]["bytes"] < 2 * banner
    assert grouping["DedupJoinDocuments/doc"]["bytes"] < banner

    # To the M3W shards: each image once per shard whose documents keep it; the banner nowhere.
    by_shard = defaultdict(set)
    for shard, docs in _shards(out / "m3w").items():
        for d in docs.values():
            by_shard[shard] |= {im["url"] for im in d["doc"]["images"] if im is not None}
    shipped = [url for urls in by_shard.values() for url in urls]
    assert BANNER not in shipped and shipped.count(SHARED) == len({s for s, urls in by_shard.items() if SHARED in urls}) > 1
    assert grouping["ShardWithBytes_m3w/bytes"] == {"elements": len(shipped), "bytes": sum(size[u] for u in shipped)}
    # Total image bytes shuffled: the raw records once, the processed bytes once plus once per needing shard
    # (pairs write ALIGN and LTIP shards of their own, which get their copies the same way).
    image_bytes = sum(grouping[g]["bytes"] for g in ("ShipImageBytes/bytes", "ShardWithBytes_m3w/bytes", "ShardWithBytes_pairs/bytes"))
    assert image_bytes < 4 * sum(len(p.data) for p in processed.values())
    assert block["total_bytes"] == sum(g["bytes"] for g in grouping.values())

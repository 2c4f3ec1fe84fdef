"""Image bytes move once (issue 12): `m3w build all` over a crawl where one banner is on all 300
pages, one image on four of them and ten pages have a photo of their own.

The manifest's `shuffle_bytes` (payload bytes entering each grouping) must show that the document
join and the shard join carried image metadata only, the documents crossing one shuffle after
assembly; that the processed bytes of each image crossed the ShipImageBytes join once, and
reached each shard that keeps it once (the hot banner: none); and the shards must hold exactly
the kept documents with the bytes `process_image` makes of their images.
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

from helpers.articles import page, prose
from helpers.warc_builder import response, write_warc
from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.media.images import process_image
from m3w_pipeline.sample.text import TOPICS, TextMaker

pytestmark = pytest.mark.slow

PAGES, PHOTO_EVERY, SHARED_ON = 300, 30, (0, 30, 60, 90)  # photos on pages 0, 30, ..., 270; the shared image on four of them
BANNER, SHARED = "https://static.example/site/masthead.jpg", "https://static.example/shared.jpg"
ALT = {"site": "The harbour at dawn with fishing boats", "static.example": "A red kite over the hills near the town",
       "photos.example": "A market stall with apples and pears in autumn"}
SHA_HEX = 64  # a shipped element is (sha256 hex, bytes)


def alt_text(_: int, url: str) -> str:
    """Each image's alt text names its host, so the pair corpus has ALIGN pairs too."""
    return ALT[url.rsplit("/", 2)[-2]]


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
        records.append(response(page_url, page(maker.title(topic), prose(maker, topic), images, alt_text)))
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
    assert m3w["stages"]["documents"]["kept"] == {"kept": PAGES}  # every page passed the filters with the banner
    assert m3w["stages"]["images_hot"]["dropped"] == {"hot-url": PAGES}  # ... which dedup then removed as hot
    assert m3w["stages"]["post_dedup"]["dropped"] == {"no-image": PAGES - len(photo_pages)}


def test_image_bytes_cross_each_join_once_per_shard_that_needs_them(shuffle_build):
    out, manifests, raw, photo_pages = shuffle_build
    block = manifests["m3w"]["shuffle_bytes"]
    assert all(manifests[c]["shuffle_bytes"] == block for c in ("pairs", "video"))  # one build, one count
    grouping = block["by_grouping"]
    processed = {url: process_image(data, ImageConfig()).image for url, data in raw.items()}
    size = {url: SHA_HEX + len(p.data) for url, p in processed.items()}

    # Processed once per URL: every image (the banner too) crosses ShipImageBytes once, not once per reference.
    assert grouping["ShipImageBytes/bytes"] == {"elements": len(raw), "bytes": sum(size.values())}
    # The document join and dedup carry metadata: a reference weighs ~170 bytes, not the image's ~17,000.
    joined = grouping["JoinByDocument/images"]
    assert joined["elements"] == PAGES + len(photo_pages) + len(SHARED_ON)
    assert joined["bytes"] < 250 * joined["elements"] < min(len(p.data) for p in processed.values()) * joined["elements"] / 50
    # The documents cross one shuffle after their assembly: the M3W shard join, where dedup's drops meet them
    # (every page: dedup keeps them all, the writer removes the banner and then every page without another image).
    docs = grouping["ShardWithBytes_m3w/samples"]
    assert docs["elements"] == PAGES and docs["bytes"] < PAGES * len(processed[BANNER].data) / 5  # a copy each would be 5x this
    assert "DedupJoinDocuments/doc" not in grouping and "ShardWithBytes_m3w/drops" not in grouping  # no dedup join; no drops

    # To the M3W shards: each image once per shard whose documents keep it; the banner nowhere.
    by_shard = defaultdict(set)
    for shard, docs in _shards(out / "m3w").items():
        for d in docs.values():
            by_shard[shard] |= {im["url"] for im in d["doc"]["images"] if im is not None}
    shipped = [url for urls in by_shard.values() for url in urls]
    assert BANNER not in shipped and shipped.count(SHARED) == len({s for s, urls in by_shard.items() if SHARED in urls}) > 1
    shard_index = 8  # an M3W shard key is its index, an int
    assert grouping["ShardWithBytes_m3w/bytes"] == {"elements": len(shipped), "bytes": sum(shard_index + size[u] for u in shipped)}
    # Pairs: the banner is in an ALIGN pair of every page (one caption: one pair after the shard's dedup); its
    # bytes, like every pair image's, reach each pair shard that keeps it once.
    pair_shipped = []
    for path in sorted((out / "pairs").glob("*.tar")):
        with tarfile.open(path) as tar:
            urls = {json.loads(tar.extractfile(m).read())["url"] for m in tar.getmembers() if m.name.endswith(".json")}
            pair_shipped += [(path.stem.split("-")[0], url) for url in sorted(urls)]
    assert (("align", BANNER) in pair_shipped) and len(pair_shipped) >= len(raw)
    pair_bytes = sum(len(prefix) + 8 + size[url] for prefix, url in pair_shipped)  # shard key (prefix, index)
    assert grouping["ShardWithBytes_pairs/bytes"] == {"elements": len(pair_shipped), "bytes": pair_bytes}
    assert block["total_bytes"] == sum(g["bytes"] for g in grouping.values())

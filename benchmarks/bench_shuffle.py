"""Bytes shuffled by `m3w build all` when one image is on every page (issue 12, "image bytes move once").

    python benchmarks/bench_shuffle.py [--pages 10000] [--photo-every 20] [--workdir DIR]

A generated crawl (tests/helpers/warc_builder): PAGES article pages of distinct prose, every one
showing the same banner (one URL, one record), every PHOTO_EVERY-th page also a photo of its own
(1024x768 JPEG, in the crawl). The banner is on more than `max_docs_per_image` pages, so dedup
removes it as hot; the kept documents are the pages with a photo.

One build, in a subprocess; its manifest's `shuffle_bytes` block (payload bytes entering every
grouping) is read against what the images weigh (`process_image` of each, run here):
- the banner's copies: ShipImageBytes carries each processed image once (its elements are the
  distinct images, its bytes their sum), the shard joins carry the banner nowhere (the shards are
  read back); the document join carries ~170 bytes of metadata per reference. Before issue 12
  every reference carried the processed bytes: PAGES copies through the document join alone;
- the total against the media the build used (the image records it read, all used) plus the text
  (the pages' HTML).
CPU seconds and peak RSS are the build subprocess's (resource.getrusage).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.articles import page, prose
from helpers.warc_builder import response, write_warc
from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.media.images import process_image
from m3w_pipeline.sample.text import TOPICS, TextMaker

BANNER_URL = "https://static.example/site/masthead.jpg"
IMAGE_STAGES = ("JoinMediaByUrl/media", "ShipImageBytes/bytes", "ShardWithBytes_m3w/bytes", "ShardWithBytes_pairs/bytes")


def jpeg(rng: np.random.Generator, size: tuple[int, int], quality: int = 85) -> bytes:
    """A photo-like JPEG: a smooth random field with grain, so it compresses like a camera photo."""
    w, h = size
    coarse = rng.uniform(0, 255, (h // 64 + 2, w // 64 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    pixels = np.clip(smooth + rng.normal(0, 6, (h, w, 1)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_crawl(path: Path, pages: int, photo_every: int, seed: int = 12) -> tuple[dict[str, bytes], int]:
    """The WARC; returns its image records' bytes by URL (the banner first) and how many bytes of HTML it holds."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    maker = TextMaker(rng)
    images = {BANNER_URL: jpeg(np_rng, (600, 240))}
    records = [response(BANNER_URL, images[BANNER_URL], "image/jpeg")]
    html_bytes = 0
    for i in range(pages):
        topic = TOPICS[i % len(TOPICS)]
        shown = [BANNER_URL]
        if i % photo_every == 0:
            url = f"https://photos.example/p{i}.jpg"
            images[url] = jpeg(np_rng, (1024, 768))
            records.append(response(url, images[url], "image/jpeg"))
            shown.append(url)
        html = page(maker.title(topic), prose(maker, topic), shown)
        records.append(response(f"https://site{i % 97}.example/article/{i}.html", html))
        html_bytes += len(html)
    write_warc(path, records)
    return images, html_bytes


def build(crawl: Path, out: Path) -> tuple[dict, float, float]:
    """`m3w build all` in a subprocess: the M3W manifest, its CPU seconds and peak RSS (MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "m3w", "build", "all", "--input", str(crawl), "--output", str(out)],
                   check=True, cwd=ROOT, capture_output=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads((out / "m3w" / "manifest.json").read_text()), cpu, after.ru_maxrss / 1024


def shard_urls(folder: Path) -> list[str]:
    """Per shard tar in `folder`, the distinct image URLs its samples' JSON name (one entry per shard and URL)."""
    found = []
    for tar in sorted(folder.glob("*.tar")):
        urls: set[str] = set()
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    sample = json.loads(t.extractfile(m).read())
                    urls |= {im["url"] for im in sample.get("images", []) if im} if "images" in sample else {sample["url"]}
        found += sorted(urls)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--photo-every", type=int, default=20)
    ap.add_argument("--workdir", type=Path, help="keep the crawl and the build here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_shuffle_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.process_time()
        raw, html = write_crawl(work / "crawl.warc.gz", args.pages, args.photo_every)
        print(f"crawl written in {time.process_time() - t0:.0f} CPU s: {args.pages} pages ({html / 1e6:.1f} MB HTML), "
              f"a {len(raw[BANNER_URL]) / 1e3:.1f} kB banner on every page, {len(raw) - 1} photos", flush=True)
        manifest, cpu, rss = build(work / "crawl.warc.gz", work / "out")
        processed = {url: process_image(data, ImageConfig()).image for url, data in raw.items()}
        assert all(p is not None for p in processed.values())
        size = {url: 64 + len(p.data) for url, p in processed.items()}  # a shipped element: (sha256 hex, bytes)
        grouping, stages = manifest["shuffle_bytes"]["by_grouping"], manifest["stages"]
        print(f"build: {cpu:.1f} CPU s, peak RSS {rss:.0f} MiB; {stages['image_refs']['in']} image references, "
              f"hot drops {stages['images_hot']['dropped']}, {manifest['totals']['samples']} documents kept")

        banner = len(processed[BANNER_URL].data)
        shipped = grouping["ShipImageBytes/bytes"]
        banner_copies = (shipped["bytes"] - sum(v for u, v in size.items() if u != BANNER_URL)) / size[BANNER_URL]
        m3w_urls = shard_urls(work / "out" / "m3w")
        pair_urls = shard_urls(work / "out" / "pairs")
        joined = grouping["JoinByDocument/images"]
        print(f"\nbanner: raw {len(raw[BANNER_URL]):,} B, processed {banner:,} B, on {args.pages} pages")
        print(f"  ShipImageBytes: {shipped['elements']} elements for {len(raw)} distinct images; the banner's bytes crossed it "
              f"{banner_copies:.2f} times")
        print(f"  shards holding it: M3W {m3w_urls.count(BANNER_URL)}, pairs {pair_urls.count(BANNER_URL)}; "
              f"M3W shard joins carried {grouping['ShardWithBytes_m3w/bytes']['elements']} images for {len(m3w_urls)} (shard, image)s")
        print(f"  document join: {joined['bytes'] / joined['elements']:.0f} B per reference ({joined['bytes'] / 1e6:.1f} MB for "
              f"{joined['elements']}); before issue 12 each reference carried the bytes: {args.pages * banner / 1e6:.0f} MB for the "
              "banner alone")

        media = sum(len(d) for d in raw.values())  # every image record is used by some kept sample
        image_groupings = {g: v["bytes"] for g, v in grouping.items() if g in IMAGE_STAGES}
        total = manifest["shuffle_bytes"]["total_bytes"]
        print("\nimage-carrying groupings: " + ", ".join(f"{g} {b / 1e6:.1f} MB" for g, b in image_groupings.items()))
        print(f"total shuffled {total / 1e6:.1f} MB = {total / (media + html):.2f}x the media used ({media / 1e6:.1f} MB of image "
              f"records) plus the text ({html / 1e6:.1f} MB of HTML)")
        top = sorted(grouping.items(), key=lambda kv: -kv[1]["bytes"])[:8]
        print("largest groupings: " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

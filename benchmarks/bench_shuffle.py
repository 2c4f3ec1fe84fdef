"""Bytes shuffled by `m3w build all` when one image is on every page (issue 12, "image bytes move once").

    python benchmarks/bench_shuffle.py [--pages 10000] [--photo-every 20]

A generated crawl (tests/helpers/warc_builder): PAGES article pages of distinct prose, every one
showing the same banner (one URL, one record), every PHOTO_EVERY-th page also a photo of its own
(1024x768 JPEG, in the crawl). The banner is on more than `max_docs_per_image` pages, so dedup
removes it as hot; the kept documents are the pages with a photo.

The build is run twice in subprocesses, on this crawl and on the same crawl without the banner, and
the manifests' `shuffle_bytes` blocks (payload bytes entering every grouping) are compared:
- the banner's cost is the difference between the two totals, shown in copies of its processed
  bytes (before issue 12 each reference carried a copy: PAGES copies through the document join);
- the groupings that carry image bytes (the media join, ShipImageBytes, the shard joins) are shown
  against what the images weigh: raw records read, processed bytes, processed bytes written;
- the total is shown against the media bytes the build used (the image records it read; every one
  is used by some kept sample) plus the text (the pages' HTML).
CPU time and peak RSS of each build are the subprocesses' (resource.getrusage).
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

from helpers.warc_builder import response, write_warc
from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.core.document import words
from m3w_pipeline.filter.quality import duplicate_ngram_char_fraction
from m3w_pipeline.media.images import process_image
from m3w_pipeline.sample.text import TOPICS, TextMaker, Topic

BANNER_URL = "https://static.example/site/masthead.jpg"
IMAGE_STAGES = ("JoinMediaByUrl/media", "ShipImageBytes/bytes", "ShardWithBytes_m3w/bytes", "ShardWithBytes_pairs/bytes")


def page(title: str, paragraphs: list[str], images: list[str]) -> bytes:
    """An article: the paragraphs with an image after each of the first ones (no captions: they would repeat text)."""
    body = "".join(f"<p>{p}</p>" + (f'<figure><img src="{images[i]}" alt="image {i}"></figure>' if i < len(images) else "")
                   for i, p in enumerate(paragraphs))
    return (f"<!doctype html><html lang=en><head><title>{title}</title></head><body><main><article><h1>{title}</h1>{body}"
            "</article></main></body></html>").encode("utf-8")


def prose(maker: TextMaker, topic: Topic) -> list[str]:
    """Three paragraphs well clear of the repeated n-gram limits, so every page passes the text filters."""
    while True:
        paragraphs = [maker.paragraph(topic, 3) for _ in range(3)]
        tokens = words(" ".join(paragraphs))
        if duplicate_ngram_char_fraction(tokens, 5) < 0.08 and duplicate_ngram_char_fraction(tokens, 10) < 0.04:
            return paragraphs


def jpeg(rng: np.random.Generator, size: tuple[int, int], quality: int = 85) -> bytes:
    """A photo-like JPEG: a smooth random field with grain, so it compresses like a camera photo."""
    w, h = size
    coarse = rng.uniform(0, 255, (h // 64 + 2, w // 64 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    pixels = np.clip(smooth + rng.normal(0, 6, (h, w, 1)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_crawl(path: Path, pages: int, photo_every: int, banner: bool, seed: int = 12) -> dict[str, int]:
    """The WARC; returns the raw bytes it holds per kind (html, banner, photos)."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    maker = TextMaker(rng)
    banner_bytes = jpeg(np_rng, (600, 240))
    records, sizes = [], {"html": 0, "banner": 0, "photos": 0}
    if banner:
        records.append(response(BANNER_URL, banner_bytes, "image/jpeg"))
        sizes["banner"] = len(banner_bytes)
    for i in range(pages):
        topic = TOPICS[i % len(TOPICS)]
        images = [BANNER_URL] if banner else []
        if i % photo_every == 0:
            url = f"https://photos.example/p{i}.jpg"
            data = jpeg(np_rng, (1024, 768))
            records.append(response(url, data, "image/jpeg"))
            sizes["photos"] += len(data)
            images.append(url)
        html = page(maker.title(topic), prose(maker, topic), images)
        records.append(response(f"https://site{i % 97}.example/article/{i}.html", html))
        sizes["html"] += len(html)
    write_warc(path, records)
    return sizes


def build(crawl: Path, out: Path) -> tuple[dict, float, float]:
    """`m3w build all` in a subprocess: the manifests, its CPU seconds and peak RSS (MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "m3w", "build", "all", "--input", str(crawl), "--output", str(out)],
                   check=True, cwd=ROOT, capture_output=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    manifests = {c: json.loads((out / c / "manifest.json").read_text()) for c in ("m3w", "pairs", "video")}
    return manifests, cpu, after.ru_maxrss / 1024


def written_image_bytes(folder: Path) -> int:
    """Image members of every shard tar in `folder` (jpg/png/webp)."""
    total = 0
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            total += sum(m.size for m in t.getmembers() if m.name.rsplit(".", 1)[-1] in ("jpg", "png", "webp"))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--photo-every", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_shuffle_") as tmp:
        work = Path(tmp)
        t0 = time.time()
        sizes = write_crawl(work / "banner.warc.gz", args.pages, args.photo_every, banner=True)
        write_crawl(work / "plain.warc.gz", args.pages, args.photo_every, banner=False)
        print(f"crawls written in {time.time() - t0:.0f} s: {args.pages} pages ({sizes['html'] / 1e6:.1f} MB HTML), "
              f"banner {sizes['banner'] / 1e3:.1f} kB on every page, {args.pages // args.photo_every + 1} photos "
              f"({sizes['photos'] / 1e6:.1f} MB)", flush=True)
        with_banner, cpu_b, rss_b = build(work / "banner.warc.gz", work / "out_banner")
        plain, cpu_p, rss_p = build(work / "plain.warc.gz", work / "out_plain")
        banner_processed = process_image(banner_bytes(), ImageConfig()).image
        assert banner_processed is not None
        shuffle_b, shuffle_p = with_banner["m3w"]["shuffle_bytes"], plain["m3w"]["shuffle_bytes"]
        m3w = with_banner["m3w"]["stages"]
        print(f"\nbuild with banner: {cpu_b:.1f} CPU s, peak RSS {rss_b:.0f} MiB; without: {cpu_p:.1f} CPU s "
              f"(the RSS figure is the largest child so far)")
        print(f"banner refs {m3w['image_refs']['in']} image refs, hot-removed {m3w['images_hot']['dropped']}, "
              f"kept documents {with_banner['m3w']['totals']['samples']} (without banner: {plain['m3w']['totals']['samples']})")
        print(f"\n{'grouping (image bytes)':32} {'with banner':>14} {'without':>14} {'difference':>12}")
        for stage in IMAGE_STAGES:
            b = shuffle_b["by_grouping"].get(stage, {}).get("bytes", 0)
            p = shuffle_p["by_grouping"].get(stage, {}).get("bytes", 0)
            print(f"{stage:32} {b:>14,} {p:>14,} {b - p:>12,}")
        extra = shuffle_b["total_bytes"] - shuffle_p["total_bytes"]
        size = len(banner_processed.data)
        image_extra = sum(shuffle_b["by_grouping"].get(s, {}).get("bytes", 0) - shuffle_p["by_grouping"].get(s, {}).get("bytes", 0)
                          for s in IMAGE_STAGES)
        print(f"\nbanner: raw {sizes['banner']:,} B, processed {size:,} B; its image bytes shuffled: {image_extra:,} B = "
              f"{image_extra / size:.2f} copies of the processed bytes (raw once + processed once)")
        print(f"banner total cost, with its {args.pages} references' metadata: {extra:,} B = {extra / size:.1f} copies "
              f"({(extra - image_extra) / args.pages:.0f} B per reference); before issue 12 the document join alone carried "
              f"{args.pages} copies ({args.pages * size / 1e6:.0f} MB)")
        media = sizes["banner"] + sizes["photos"]  # every image record of the crawl is used by some kept sample
        basis = media + sizes["html"]
        image_shuffled = sum(shuffle_b["by_grouping"].get(s, {}).get("bytes", 0) for s in IMAGE_STAGES)
        print(f"\nimage bytes shuffled {image_shuffled:,} B = {image_shuffled / media:.2f}x the image records read ({media:,} B); "
              f"written to shards: {written_image_bytes(work / 'out_banner' / 'm3w'):,} B (M3W)")
        print(f"total shuffled {shuffle_b['total_bytes']:,} B = {shuffle_b['total_bytes'] / basis:.2f}x the media used ({media:,} B) "
              f"plus the text ({sizes['html']:,} B of HTML)")
        top = sorted(shuffle_b["by_grouping"].items(), key=lambda kv: -kv[1]["bytes"])[:8]
        print("largest groupings: " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in top))
    return 0


def banner_bytes() -> bytes:
    """The banner as write_crawl makes it (its first draw from the seeded generator)."""
    return jpeg(np.random.default_rng(12), (600, 240))


if __name__ == "__main__":
    sys.exit(main())

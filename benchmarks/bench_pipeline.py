"""Pages/s per core: our extraction and the whole M3W job vs bare warcio + trafilatura.extract.

    python benchmarks/bench_pipeline.py [--pages 2000]

All three run single-process on the same generated crawl, so pages/s is pages/s per core.
The baseline is what a user would otherwise write: iterate with warcio, call
trafilatura.extract on each HTML response. Prints a table and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trafilatura
from warcio.archiveiterator import ArchiveIterator

from m3w_pipeline.extract.page import extract_page
from m3w_pipeline.read import warc
from m3w_pipeline.sample.crawl import write_sample_crawl


def baseline_warcio_trafilatura(files: list[Path]) -> int:
    pages = 0
    for path in files:
        with open(path, "rb") as f:
            try:
                for record in ArchiveIterator(f):
                    if record.rec_type != "response":
                        continue
                    ctype = record.http_headers.get_header("Content-Type") or ""
                    if "html" not in ctype or record.http_headers.get_statuscode() != "200":
                        continue
                    html = record.content_stream().read()
                    trafilatura.extract(html, url=record.rec_headers.get_header("WARC-Target-URI"), include_images=True)
                    pages += 1
            except Exception:  # noqa: BLE001 - the planted broken record at the end of the crawl
                pass
    return pages


def ours_extraction(files: list[Path]) -> int:
    pages = 0
    for path in files:
        with open(path, "rb") as f:
            for item in warc.iter_warc(f, str(path)):
                if isinstance(item, warc.Page):
                    extract_page(item.html, item.url)
                    pages += 1
    return pages


def ours_images(files: list[Path]) -> int:
    """process_image over every image record: the per-image work inside the job."""
    from m3w_pipeline.media.images import process_image

    n = 0
    for path in files:
        with open(path, "rb") as f:
            for item in warc.iter_warc(f, str(path)):
                if isinstance(item, warc.MediaRecord):
                    process_image(item.data)
                    n += 1
    return n


def ours_job(files: list[Path], out: Path) -> int:
    from m3w.cli import main

    shutil.rmtree(out, ignore_errors=True)
    rc = main(["build", "m3w", "--input", *map(str, files), "--output", str(out), "--force"])
    assert rc == 0
    return json.loads((out / "manifest.json").read_text())["stages"]["pages"]["in"]


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "_work"))
    args = parser.parse_args()
    work = Path(args.work)
    crawl_dir = work / f"crawl-{args.pages}"
    if not crawl_dir.exists():
        t = time.perf_counter()
        write_sample_crawl(crawl_dir, pages=args.pages, seed=0)
        print(f"generated {args.pages}-page crawl in {time.perf_counter() - t:.1f}s")
    files = sorted(crawl_dir.glob("*.warc.gz"))

    rows = []
    n, s = timed(baseline_warcio_trafilatura, files)
    rows.append(("baseline: warcio + trafilatura.extract", n, s))
    n, s = timed(ours_extraction, files)
    rows.append(("ours: iter_warc + extract_page", n, s))
    n, s = timed(ours_job, files, work / "m3w-out")
    rows.append(("ours: whole M3W job (FnApiRunner, 1 process)", n, s))
    n_images, s_images = timed(ours_images, files)

    base_rate = rows[0][1] / rows[0][2]
    print(f"\n{'step':<48} {'pages':>6} {'seconds':>8} {'pages/s':>8} {'vs baseline':>11}")
    for name, n, s in rows:
        print(f"{name:<48} {n:>6} {s:>8.1f} {n / s:>8.1f} {n / s / base_rate:>10.2f}x")
    print(f"{'  of which: process_image on every image record':<48} {n_images:>6} {s_images:>8.1f} {n_images / s_images:>8.1f} images/s")


if __name__ == "__main__":
    main()

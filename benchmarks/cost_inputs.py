"""Deterministic inputs for the crawl-scale cost comparison (issue 12), built from /work/shared/corpus.

* `build_text_warc`: the 60 real HTML pages, `copies` captures of each (one URL per capture), as a
  per-record gzip WARC of response records with the headers Common Crawl writes
  (WARC-Identified-Payload-Type, so readers can skip non-HTML records without sniffing).
  With `with_images`, every image the pages show (each <img src> and every image our extractor
  references from srcset/lazy attributes) is in the WARC once, as a JPEG/PNG/GIF made with Pillow
  from the shared photos: a crawl that also fetched the pages' images.
* `build_photos`: photo JPEGs around 1 MP (0.5-2 MP, log-uniform: median ~1 MP), cut and scaled from the shared
  photos with film grain, so they compress and decode like camera photos rather than like
  smooth upscales; mixed aspect ratios, qualities, progressive and 4:4:4 encodings.

Every random choice comes from a seeded generator or a hash of the URL: the same call writes the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import re
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
from lxml import html as lxml_html
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
HTML_DIR = CORPUS / "html"
IMAGES_DIR = CORPUS / "images"
# The real photographs among the shared images (the rest are icons, renders, test patterns, broken files).
PHOTO_SOURCES = ("pillow__flower.jpg", "pillow__flower2.webp", "pillow__hopper.png")
_ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)
_GRAIN_SIGMA = 3.0  # std of the added Gaussian grain in 8-bit levels: ~1.3 bits per pixel at quality 75-95
_SKIPPED_IMAGE_EXTS = (".svg",)  # not raster images: a crawl would hold them, we do not decode them


def shared_pages() -> list[tuple[str, bytes]]:
    """(URL, raw HTML bytes) of the 60 shared pages, URL from MANIFEST.tsv (or made up), sorted by file name."""
    urls = {}
    for line in (CORPUS / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines():
        path, *_rest = line.split("\t")
        found = re.search(r"\burl=(\S+)", line)
        if path.startswith("html/") and found:
            urls[path[len("html/") :]] = found.group(1)
    pages = []
    for path in sorted(HTML_DIR.glob("*.html*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        url = urls.get(path.name, "")
        if not url.startswith(("http://", "https://")):  # one test page is keyed "hard::<file name>"
            url = f"https://pages.example/{path.name.split('.html')[0]}.html"
        pages.append((url, data))
    return pages


def _photo_sources() -> list[Image.Image]:
    sources = []
    for name in PHOTO_SOURCES:
        with Image.open(IMAGES_DIR / name) as im:
            sources.append(im.convert("RGB"))
    return sources


def _photo(source: Image.Image, size: tuple[int, int], rng: np.random.Generator, grain: float = _GRAIN_SIGMA) -> Image.Image:
    """A crop of `source` with the aspect of `size`, scaled to `size`, with seeded grain of std `grain`."""
    width, height = size
    sw, sh = source.size
    aspect = width / height
    crop_w, crop_h = (sw, sw / aspect) if sw / sh < aspect else (sh * aspect, sh)
    zoom = rng.uniform(0.6, 1.0)
    crop_w, crop_h = crop_w * zoom, crop_h * zoom
    left = rng.uniform(0, sw - crop_w)
    top = rng.uniform(0, sh - crop_h)
    scaled = source.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if grain <= 0:
        return scaled
    pixels = np.asarray(scaled, dtype=np.float32) + rng.normal(0.0, grain, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, quality: int, progressive: bool = False, subsampling: int = 2) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=quality, progressive=progressive, subsampling=subsampling)
    return buffer.getvalue()


def build_photos(out_dir: Path, count: int = 400, seed: int = 12, grain: float = _GRAIN_SIGMA) -> list[Path]:
    """`count` photo JPEGs in out_dir (photo-000.jpg, ...); reuses a complete earlier build."""
    paths = [out_dir / f"photo-{i:03d}.jpg" for i in range(count)]
    stamp = out_dir / f".complete-{count}-{seed}-{grain}"
    if stamp.exists():
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = _photo_sources()
    for i, path in enumerate(paths):
        megapixels = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        aspect = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
        width = int(round((megapixels * 1e6 * aspect) ** 0.5))
        height = int(round(width / aspect))
        im = _photo(sources[i % len(sources)], (width, height), rng, grain)
        quality = int(rng.integers(75, 96))
        progressive = bool(rng.random() < 0.25)
        subsampling = 0 if rng.random() < 0.15 else 2
        path.write_bytes(_jpeg(im, quality, progressive, subsampling))
    stamp.write_text("")
    return paths


def page_image_urls(html: bytes, url: str) -> list[str]:
    """Every image URL the page shows: plain <img src> and what our extractor picks (srcset, lazy)."""
    from m3w_pipeline.extract.page import extract_page

    tree = lxml_html.fromstring(html)
    base = urljoin(url, (tree.xpath("//base/@href") or [url])[0])
    urls = {urljoin(base, src.strip()) for src in tree.xpath("//img/@src") if src.strip() and not src.strip().startswith("data:")}
    urls |= {node.image.url for node in extract_page(html, url).nodes if node.type == "image" and node.image is not None}
    return sorted(u for u in urls if u.startswith(("http://", "https://")) and not u.lower().split("?")[0].endswith(_SKIPPED_IMAGE_EXTS))


def _image_for_url(url: str, sources: list[Image.Image]) -> tuple[bytes, str]:
    """Deterministic image bytes and MIME type for one image URL (format from its extension)."""
    digest = hashlib.sha256(url.encode("utf-8")).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    path = url.lower().split("?")[0]
    graphic = path.endswith((".png", ".gif"))  # logos, icons, diagrams: smaller, no grain, lossless
    long_side = int(rng.integers(64, 480)) if graphic else int(rng.integers(200, 1400))
    aspect = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    size = (long_side, max(16, round(long_side / aspect))) if aspect >= 1 else (max(16, round(long_side * aspect)), long_side)
    im = _photo(sources[digest[8] % len(sources)], size, rng, grain=0.0 if graphic else _GRAIN_SIGMA)
    buffer = io.BytesIO()
    if path.endswith(".png"):
        im.quantize(64).save(buffer, "PNG")
        return buffer.getvalue(), "image/png"
    if path.endswith(".gif"):
        im.quantize(64).save(buffer, "GIF")
        return buffer.getvalue(), "image/gif"
    return _jpeg(im, int(rng.integers(75, 93))), "image/jpeg"


def _capture_url(url: str, copy: int) -> str:
    """The URL of capture `copy` of a page: a query parameter, so relative links resolve the same."""
    if copy == 0:
        return url
    url, _hash, _fragment = url.partition("#")
    return f"{url}{'&' if '?' in url else '?'}m3w_copy={copy}"


def _write_response(writer: WARCWriter, index: int, url: str, body: bytes, mime: str) -> None:
    http = StatusAndHeaders("200 OK", [("Content-Type", mime), ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
    record = writer.create_warc_record(
        url,
        "response",
        payload=io.BytesIO(body),
        http_headers=http,
        warc_headers_dict={
            "WARC-Date": f"2024-05-{1 + index // 86400 % 28:02d}T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d}Z",
            "WARC-Record-ID": f"<urn:uuid:00000000-0000-4000-8000-{index:012d}>",
            "WARC-Identified-Payload-Type": mime,
        },
    )
    writer.write_record(record)


def build_text_warc(path: Path, copies: int = 50, with_images: bool = False) -> dict[str, int]:
    """The benchmark WARC (reused when complete); returns its counts (pages, images, payload bytes)."""
    stamp = path.with_name(path.name + ".counts")
    if path.exists() and stamp.exists():
        return {key: int(value) for key, value in (item.split("=") for item in stamp.read_text().split())}
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = shared_pages()
    sources = _photo_sources() if with_images else []
    counts = {"pages": 0, "images": 0, "page_bytes": 0, "image_bytes": 0}
    written_images: set[str] = set()
    index = 0
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for copy in range(copies):
            for url, html in pages:
                _write_response(writer, index, _capture_url(url, copy), html, "text/html")
                index += 1
                counts["pages"] += 1
                counts["page_bytes"] += len(html)
                if not with_images or copy > 0:
                    continue
                for image_url in page_image_urls(html, url):
                    if image_url in written_images:
                        continue
                    written_images.add(image_url)
                    data, mime = _image_for_url(image_url, sources)
                    _write_response(writer, index, image_url, data, mime)
                    index += 1
                    counts["images"] += 1
                    counts["image_bytes"] += len(data)
    partial.rename(path)
    stamp.write_text(" ".join(f"{k}={v}" for k, v in counts.items()))
    return counts

"""The sites, the page record, and `PageMaker`: the seeded state every page draws from.

Why: every image a page shows is referenced the way real sites do it (srcset, <picture>,
lazy data-src, extensionless CDN URLs, /img.php?id=, relative paths, wrong or missing
Content-Types), because each is an extraction rule the pipeline must get right. Placing
an image returns its markup, its truth entry and the bytes to crawl together, so they
cannot disagree. For srcset/<picture> the crawl holds the LARGEST width candidate (the
truth `url`) and the `<img src>` fallback, which is the SMALLEST candidate (listed under
`also_written`); middle candidates are not in the crawl.
"""
from __future__ import annotations

import hashlib
import html
import random
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urljoin

from m3w_pipeline.sample.shapes import BACKGROUNDS, COLOURS, FORMATS, MAX_SHAPES, SHAPES, ImageFactory, RenderedImage, ShapeSpec, downscale
from m3w_pipeline.sample.text import TextMaker
from m3w_pipeline.sample.truth import image_truth
from m3w_pipeline.sample.warc import Capture, media_capture


@dataclass(frozen=True)
class Site:
    """One website: its pages share a host, a name and the chrome (`layout`) around the article."""

    host: str
    name: str
    layout: str  # news | blog | magazine: which page chrome wraps the article
    sections: tuple[str, ...]


SITES: tuple[Site, ...] = (
    Site("example.com", "The Example Gazette", "news", ("news", "city", "science", "sport")),
    Site("news.example.org", "Example Org News", "magazine", ("world", "culture", "travel", "tech")),
    Site("blog.example.net", "Notes from Example Net", "blog", ("garden", "kitchen", "projects")),
    Site("recipes.example.com", "Example Kitchen", "blog", ("recipes", "guides", "seasonal")),
)
CDN_HOST = "cdn.example.com"
IMG_HOST = "img.example.net"
STATIC_HOST = "static.example.org"
VIDEO_HOST = "media.example.com"
# A 1x1 transparent GIF, the usual lazy-loading placeholder.
LAZY_PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"

WRONG_CONTENT_TYPES: tuple[str, ...] = ("application/octet-stream", "text/html", "text/plain", "image/jpeg")
WRONG_TYPE_RATE = 0.05
MISSING_TYPE_RATE = 0.04
# Widest side per format: WebP and PNG encode 3-10x slower than JPEG, so they stay small.
MAX_WIDTH = {"JPEG": 560, "PNG": 360, "WEBP": 360}
SRCSET_WIDTHS = {"JPEG": (480, 800), "WEBP": (320, 480)}
MAX_HEIGHT = 600
NORMAL_ASPECTS: tuple[float, ...] = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3)
# URL styles for ordinary content images -> weight
URL_STYLES: tuple[tuple[str, float], ...] = (
    ("absolute", 0.22),
    ("srcset", 0.16),
    ("picture", 0.10),
    ("lazy", 0.12),
    ("cdn-hash", 0.10),  # extensionless: https://cdn.example.com/i/8f3a2b
    ("php", 0.08),  # /img.php?id=12&w=640
    ("root-relative", 0.12),
    ("path-relative", 0.10),
)


@dataclass
class PlacedImage:
    """One image reference on a page: its markup, its truth entry and the bytes to crawl."""

    markup: str
    truth: dict[str, Any]
    captures: list[Capture]


@dataclass
class Page:
    """One generated HTML page, with its truth fields and the media it brings into the crawl."""

    url: str
    html: bytes
    truth: dict[str, Any]
    media: list[Capture]  # images (and posters) this page introduces into the crawl
    relative_refs: list[str]  # raw refs, to check a duplicate URL resolves them identically
    base_href: Optional[str]


def weighted_choice(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    """A name from (name, weight) pairs, drawn with one rng.random() call."""
    roll = rng.random() * sum(w for _, w in table)
    for name, weight in table:
        roll -= weight
        if roll < 0:
            return name
    return table[-1][0]


class PageMaker:
    """The seeded state all pages draw from: one RNG, id counter, text, images, and logos written once.

    Every page and image takes its randomness from this one RNG in a fixed order, which is
    what makes the crawl reproducible; `article.make_page` builds a page with it.
    """

    def __init__(self, seed: int, stream: str = "pages") -> None:
        self.seed = seed
        self.stream = stream  # another stream (e.g. "lessons") draws other numbers and other image tokens
        self.rng = random.Random(f"m3w-sample-{stream}:{seed}")
        self.text = TextMaker(self.rng)
        self.images = ImageFactory(seed)
        self._counter = 0
        self._logos: dict[str, str] = {}  # host -> logo URL, written once

    # ---- ids and URLs ----

    def next_id(self) -> int:
        self._counter += 1
        return self._counter

    def token(self, n: int) -> str:
        """Opaque-looking but unique: a hash prefix plus the counter in hex."""
        key = f"{self.seed}:{n}" if self.stream == "pages" else f"{self.seed}:{self.stream}:{n}"
        return hashlib.sha1(key.encode()).hexdigest()[:6] + format(n, "x")

    def page_url(self, site: Site, title: str) -> str:
        n = self.next_id()
        slug = "-".join(w.strip(":,").lower() for w in title.split()[:6])
        section = self.rng.choice(site.sections)
        if site.layout == "blog" and self.rng.random() < 0.3:
            return f"https://{site.host}/?p={1000 + n}"
        return f"https://{site.host}/{section}/2024/03/{slug}-{n}"

    # ---- what an image shows, and how it is encoded and served ----

    def random_spec(self, count: Optional[int] = None) -> ShapeSpec:
        colour = self.rng.choice(COLOURS)[0]
        background = self.rng.choice(BACKGROUNDS)[0]
        return ShapeSpec(self.rng.choice(SHAPES), colour, count or self.rng.randint(1, MAX_SHAPES), background)

    def _normal_size(self, fmt: str, srcset: bool = False) -> tuple[int, int]:
        low, high = SRCSET_WIDTHS[fmt] if srcset else (200, MAX_WIDTH[fmt])
        width = self.rng.randrange(low, high + 1, 8)
        height = int(round(width / self.rng.choice(NORMAL_ASPECTS)))
        return width, max(160, min(height, MAX_HEIGHT))

    def _format(self) -> str:
        roll = self.rng.random()
        return "JPEG" if roll < 0.72 else "PNG" if roll < 0.9 else "WEBP"

    def _content_type(self, fmt: str) -> Optional[str]:
        """Usually the right Content-Type; sometimes a wrong one or none, as real servers send."""
        roll = self.rng.random()
        if roll < WRONG_TYPE_RATE:
            wrong = [t for t in WRONG_CONTENT_TYPES if t != FORMATS[fmt][1]]
            return self.rng.choice(wrong)
        if roll < WRONG_TYPE_RATE + MISSING_TYPE_RATE:
            return None
        return FORMATS[fmt][1]

    # ---- image markup ----

    def place_image(
        self,
        page_url: str,
        base_href: Optional[str],
        style: str,
        alt: str,
        spec: Optional[ShapeSpec] = None,
        size: Optional[tuple[int, int]] = None,
        fmt: Optional[str] = None,
        in_crawl: bool = True,
    ) -> PlacedImage:
        """Render one image in the given URL style; returns its <img>/<picture> markup."""
        spec = spec or self.random_spec()
        n = self.next_id()
        if style in ("srcset", "picture"):
            fmt = "WEBP" if style == "picture" else "JPEG"
        fmt = fmt or self._format()
        width, height = size or self._normal_size(fmt, srcset=style in ("srcset", "picture"))
        size_attrs = f' width="{width}" height="{height}"' if self.rng.random() < 0.5 else ""
        ref, markup, smaller = self._markup(style, n, FORMATS[fmt][0], width, html.escape(alt, quote=True), size_attrs)
        url = urljoin(base_href or page_url, ref)
        image, centres = self.images.draw(spec, width, height, fmt, self.rng)
        main = RenderedImage.encode(image, fmt, centres)
        truth = image_truth(url, ref, style, spec, main)
        if not in_crawl:
            truth.update(in_crawl=False, expected_drop="missing", bytes=None)
            return PlacedImage(markup, truth, [])
        truth["content_type"] = self._content_type(fmt)
        captures = [media_capture(url, main.data, truth["content_type"])]
        for small_url, small_width in smaller:
            rendered = downscale(image, small_width, "JPEG")
            captures.append(media_capture(small_url, rendered.data, FORMATS["JPEG"][1]))
            truth["also_written"].append({"url": small_url, "width": rendered.width, "height": rendered.height,
                                          "format": rendered.format, "bytes": len(rendered.data)})
        return PlacedImage(markup, truth, captures)

    def _markup(
        self, style: str, n: int, ext: str, width: int, alt_attr: str, size_attrs: str
    ) -> tuple[str, str, list[tuple[str, int]]]:
        """(ref as written in the page, markup, [(smaller candidate URL to crawl too, its width)])."""
        token = self.token(n)
        if style in ("srcset", "picture"):
            return self._responsive_markup(style, token, width, alt_attr)
        ref = self._plain_ref(style, n, token, ext, width)
        if style == "lazy":
            return ref, f'<img src="{LAZY_PLACEHOLDER}" data-src="{ref}" class="lazyload" alt="{alt_attr}"{size_attrs}>', []
        loading = ' loading="lazy"' if style == "cdn-hash" else ""
        return ref, f'<img src="{html.escape(ref)}" alt="{alt_attr}"{size_attrs}{loading}>', []

    def _plain_ref(self, style: str, n: int, token: str, ext: str, width: int) -> str:
        """The one URL of a style that has a single candidate, as the page writes it."""
        if style == "absolute":
            return f"https://{self.rng.choice((CDN_HOST, IMG_HOST))}/photos/2024/{token}.{ext}"
        if style == "cdn-hash":
            return f"https://{CDN_HOST}/i/{token}"
        if style == "php":
            return f"/img.php?id={n}&w={width}"
        if style == "root-relative":
            return f"/media/2024/03/{token}.{ext}"
        if style == "path-relative":
            return f"img/{token}.{ext}"
        if style == "lazy":
            return f"https://{CDN_HOST}/lazy/{token}.{ext}"
        raise ValueError(f"unknown image style {style}")

    def _responsive_markup(self, style: str, token: str, width: int, alt_attr: str) -> tuple[str, str, list[tuple[str, int]]]:
        """srcset <img> (JPEG, three widths) or <picture> (WebP sources, JPEG fallback); see the module docstring."""
        if style == "srcset":
            stem = f"https://{CDN_HOST}/photos/{token}"
            small_w, mid_w = round(width * 0.4), round(width * 0.7)
            ref, small_ref = f"{stem}-{width}.jpg", f"{stem}-{small_w}.jpg"
            srcset = self._srcset([f"{small_ref} {small_w}w", f"{stem}-{mid_w}.jpg {mid_w}w", f"{ref} {width}w"])
            markup = f'<img src="{small_ref}" srcset="{srcset}" sizes="(max-width: 700px) 100vw, 700px" alt="{alt_attr}">'
            return ref, markup, [(small_ref, small_w)]
        stem = f"https://{IMG_HOST}/p/{token}"
        small_w = round(width * 0.5)
        ref, fallback = f"{stem}-{width}.webp", f"{stem}-{small_w}.jpg"
        srcset = self._srcset([f"{stem}-{small_w}.webp {small_w}w", f"{ref} {width}w"])
        markup = f'<picture><source srcset="{srcset}" type="image/webp"><img src="{fallback}" alt="{alt_attr}"></picture>'
        return ref, markup, [(fallback, small_w)]

    def _srcset(self, candidates: list[str]) -> str:
        """The srcset attribute value; half the time reversed, so the largest candidate is not always last."""
        if self.rng.random() < 0.5:
            candidates.reverse()
        return ", ".join(candidates)

    def logo_url(self, site: Site) -> tuple[str, Optional[Capture]]:
        """The site's 40 px header logo: boilerplate, written the first time it is used."""
        url = f"https://{site.host}/static/logo.png"
        if site.host in self._logos:
            return url, None
        self._logos[site.host] = url
        rendered = self.images.render(ShapeSpec("star", "orange", 1, "white"), 40, 40, "PNG", self.rng)
        return url, media_capture(url, rendered.data, "image/png")

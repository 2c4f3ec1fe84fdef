"""Ordered main-content extraction: one parse per page -> text, image and video nodes.

trafilatura decides what is main content, but with ``include_images=True`` it drops
images whose URL lacks an image extension (CDN paths, ``.php?id=``, srcset-only,
lazy ``data-src``), loses ``<picture>``/``<video>`` structure and drops plain
``<figcaption>`` text. So before trafilatura sees the tree, every image-bearing element
(``<img>``, ``<picture>``, lazy variants) and every real ``<video>`` is replaced by a
canonical placeholder ``<img src="http://m3w.invalid/i/N.png">`` (a URL trafilatura
always keeps) while the full ``ImageRef``/``VideoRef`` for N is recorded from the
original DOM. Figcaptions of media figures are lifted out and re-inserted as a text
node after their media. trafilatura's XML body is then walked once, in order, mapping
placeholders back to nodes.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import trafilatura
from lxml.html import HtmlElement
from trafilatura.utils import load_html

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, Node, VideoRef
from m3w_pipeline.read.decode import decode_html

LOGGER = logging.getLogger(__name__)

_PLACEHOLDER = "http://m3w.invalid/{kind}/{index}.png"
_PLACEHOLDER_PREFIX = "http://m3w.invalid/"
_PLACEHOLDER_RE = re.compile(r"http://m3w\.invalid/([iv])/(\d+)\.png")

_LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-hi-res-src", "data-full-src")
_LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset")
# A src that is only a lazy-loading stand-in (used when no lazy URL is declared).
_PLACEHOLDER_SRC_RE = re.compile(r"/(?:pixel|blank|spacer|transparent|empty|placeholder|lazy|loading|grey|gray)[^/]*\.(?:gif|png|svg)$", re.IGNORECASE)
# Inline emoji/smiley images: their alt text is part of the sentence, not an image node.
_EMOJI_CLASS_RE = re.compile(r"\b(?:emoji|wp-smiley|emoticon)\b", re.IGNORECASE)
# Formats Pillow cannot decode: a srcset/<source> candidate in one of these loses to any other.
_UNDECODABLE_EXTS = frozenset({"svg", "svgz", "jxl", "heic", "heif", "pdf"})
_UNDECODABLE_TYPES = frozenset({"image/svg+xml", "image/jxl", "image/heic", "image/heif"})
_IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "avif", "bmp", "svg", "svgz", "ico", "tif", "tiff", "jxl", "heic", "heif"})
_VIDEO_PREFERENCE = {"mp4": 0, "m4v": 0, "mov": 1, "webm": 1, "ogv": 2, "ogg": 2}
_EXT_RE = re.compile(r"\.([a-z0-9]{2,5})$")
_DISPLAY_NONE_RE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_INT_ATTR_RE = re.compile(r"\s*(\d+)(?:\.\d*)?\s*(?:px)?\s*")
# Characters left as-is when percent-encoding a URL (spaces, non-ASCII get encoded, % kept).
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
# srcset entry: a URL (non-space run not ending in a comma), then commas or " descriptor".
_SRCSET_RE = re.compile(r"[\s,]*(\S*[^\s,])(?:,+|\s+([^,]*))?")
_HAS_HOST_RE = re.compile(r"https?://[^/\s?#]")
_WS_RE = re.compile(r"[\t\n\r]")

# trafilatura XML output: elements that start a new text node.
_BLOCK_TAGS = frozenset({"p", "head", "item", "row", "code", "quote", "list", "table", "div", "note", "body", "doc", "main", "article", "section"})


@dataclass
class _Media:
    """One recorded placeholder: the reference plus the figure caption it carries."""

    image: Optional[ImageRef] = None
    video: Optional[VideoRef] = None
    caption_group: Optional[int] = None  # media of one <figure> share a group


@dataclass
class _MediaTable:
    images: list[_Media] = field(default_factory=list)
    videos: list[_Media] = field(default_factory=list)
    captions: dict[int, str] = field(default_factory=dict)  # caption_group -> text


# --------------------------------------------------------------------------- public API


def extract_page(html: str | bytes, url: str, config: ExtractConfig = ExtractConfig()) -> ExtractedPage:
    """Parse once, let trafilatura pick main content, return text/image/video nodes in DOM order.

    Never raises on bad HTML: garbage or empty input gives a page with no nodes.
    """
    if not isinstance(html, (str, bytes, bytearray)):
        raise TypeError(f"html must be str or bytes, not {type(html).__name__}")
    if not isinstance(url, str):
        raise TypeError(f"url must be str, not {type(url).__name__}")
    if not isinstance(config, ExtractConfig):
        raise TypeError(f"config must be ExtractConfig, not {type(config).__name__}")
    page = ExtractedPage(url=url, nodes=[])
    try:
        text = decode_html(bytes(html)) if isinstance(html, (bytes, bytearray)) else html
        tree = _parse(text)
        if tree is None:
            return page
        page.title = _page_title(tree)
        page.lang = _page_lang(tree)
        page.robots, page.tdm_reservation = _opt_out_meta(tree)
        base = _base_url(tree, url)
        og_video = _og_video(tree, base) if config.include_og_video else None
        declared = _declared_main_summary(tree) if config.declared_main_fallback else None
        table = _rewrite_media(tree, url, base, config)
        body = _run_trafilatura(tree, url, config)
        page.nodes = _nodes_from_body(body, table, config) if body is not None else []
        if declared is not None and _missed_declared_main(page.nodes, declared, config):
            page.nodes = _nodes_from_declared_main(text, url, config)
        if og_video is not None and page.nodes:
            _add_og_video(page.nodes, og_video, page.title)
    except Exception as err:  # noqa: BLE001 -- a bad page must never stop a shard
        LOGGER.warning("extraction failed for %s: %r", url, err)
        page.nodes = []
    return page


def page_to_json(page: ExtractedPage) -> dict[str, Any]:
    """Plain JSON-able dict of a page (for `m3w extract`): nodes keep only their own field."""
    nodes = []
    for node in page.nodes:
        entry: dict[str, Any] = {"type": node.type}
        if node.type == "text":
            entry["text"] = node.text
        elif node.type == "image" and node.image is not None:
            entry["image"] = asdict(node.image)
        elif node.type == "video" and node.video is not None:
            entry["video"] = asdict(node.video)
        nodes.append(entry)
    return {"url": page.url, "title": page.title, "lang": page.lang, "nodes": nodes}


# --------------------------------------------------------------------------- parsing & metadata


def _parse(text: str) -> Optional[HtmlElement]:
    """One lxml parse via trafilatura's loader, so trafilatura sees exactly what it expects."""
    if not text or not text.strip():
        return None
    tree = load_html(text)
    return tree if tree is not None and len(tree) else None


def _clean_text(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    cleaned = " ".join(value.split())
    return cleaned or None


def _meta_content(tree: HtmlElement, *keys: str) -> Optional[str]:
    """First non-empty <meta property|name=KEY content> among keys (in priority order)."""
    found: dict[str, str] = {}
    for meta in tree.iter("meta"):
        key = (meta.get("property") or meta.get("name") or "").strip().lower()
        if key in keys and key not in found:
            content = _clean_text(meta.get("content"))
            if content:
                found[key] = content
    return next((found[k] for k in keys if k in found), None)


def _page_title(tree: HtmlElement) -> Optional[str]:
    """og:title (no site-name suffix), else <title>, else the first <h1>."""
    title = _meta_content(tree, "og:title", "twitter:title")
    if title:
        return title
    for tag in ("title", "h1"):
        elem = next(tree.iter(tag), None)
        if elem is not None:
            text = _clean_text(elem.text_content())
            if text:
                return text
    return None


def _normalise_lang(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    first = value.split(",")[0].strip().replace("_", "-").lower()
    return first if re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]{1,8})*", first) else None


def _opt_out_meta(tree: HtmlElement) -> tuple[list[str], bool]:
    """Robots directives from <meta name="robots"|"<bot>"> and the TDMRep reservation flag."""
    directives: list[str] = []
    tdm = False
    for meta in tree.iter("meta"):
        name = (meta.get("name") or "").strip().lower()
        content = (meta.get("content") or "").strip().lower()
        if name == "tdm-reservation":
            tdm = tdm or content == "1"
        elif name == "robots" or name.endswith("bot"):
            directives += [d.strip() for d in content.split(",") if d.strip() and d.strip() not in directives]
    return directives, tdm


def _page_lang(tree: HtmlElement) -> Optional[str]:
    """Declared language, lowercased BCP-47-ish: <html lang>, content-language, og:locale."""
    lang = _normalise_lang(tree.get("lang") or tree.get("xml:lang"))
    if lang:
        return lang
    for meta in tree.iter("meta"):
        if (meta.get("http-equiv") or "").strip().lower() == "content-language":
            lang = _normalise_lang(meta.get("content"))
            if lang:
                return lang
    return _normalise_lang(_meta_content(tree, "og:locale"))


def _base_url(tree: HtmlElement, url: str) -> str:
    """The page URL, or its <base href> resolved against it."""
    base = next((b.get("href") for b in tree.iter("base") if b.get("href")), None)
    if base:
        resolved = _absolute(base, url)
        if resolved:
            return resolved
    return url


def _absolute(raw: Optional[str], base: str) -> Optional[str]:
    """Absolute http(s) URL for an attribute value, or None (data:, javascript:, junk)."""
    if not raw:
        return None
    value = _WS_RE.sub("", raw.strip())
    if not value or value.startswith(("data:", "javascript:", "about:", "blob:", "#")):
        return None
    if value.startswith(("http://", "https://")) and "/./" not in value and "/../" not in value:
        return _encode_url(value) if len(value) < 4096 and _HAS_HOST_RE.match(value) else None
    try:
        resolved = _encode_url(urljoin(base, value))
    except ValueError:
        return None
    return resolved if _HAS_HOST_RE.match(resolved) and len(resolved) < 4096 else None


def _encode_url(url: str) -> str:
    """Percent-encode spaces/non-ASCII in path and query (IDNA for the host), as browsers do."""
    if url.isascii() and " " not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        try:
            netloc = netloc.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return urlunsplit((parts.scheme, netloc, *(quote(p, safe=_URL_SAFE) for p in (parts.path, parts.query, parts.fragment))))


# --------------------------------------------------------------------------- media rewriting


def _rewrite_media(tree: HtmlElement, url: str, base: str, config: ExtractConfig) -> _MediaTable:
    """Replace media elements by placeholders trafilatura keeps; record their refs in a table."""
    table = _MediaTable()
    teasers = _TeaserCards(tree, url, config)
    for video in list(tree.iter("video")):
        _rewrite_video(video, base, table)
    for picture in list(tree.iter("picture")):
        if config.drop_teaser_images and teasers.is_teaser(picture):
            _drop(picture)
            continue
        img = next(picture.iter("img"), None)
        _rewrite_image(picture, img, list(picture.iter("source")), base, config, table)
    for img in list(tree.iter("img", "amp-img")):
        if (img.get("src") or "").startswith(_PLACEHOLDER_PREFIX):
            continue
        if _EMOJI_CLASS_RE.search(img.get("class") or ""):
            _replace_with_text(img, _clean_text(img.get("alt")) or "")
            continue
        if config.drop_teaser_images and teasers.is_teaser(img):
            _drop(img)
            continue
        _rewrite_image(img, img, [], base, config, table)
    _attach_figcaptions(tree, table)
    return table


class _TeaserCards:
    """Finds related-article cards: an image linking to another page that a text link in the
    same small, link-dense container also points to.

    trafilatura keeps any block holding an image ("image container"), so without this the
    thumbnails and titles of related-post lists leak into the main content. Text links are
    indexed by href once, on the first linked image.
    """

    def __init__(self, tree: HtmlElement, url: str, config: ExtractConfig) -> None:
        self.tree, self.url, self.config = tree, url, config
        self.text_links: Optional[dict[str, list[HtmlElement]]] = None

    def _index(self) -> dict[str, list[HtmlElement]]:
        index: dict[str, list[HtmlElement]] = {}
        for link in self.tree.iter("a"):
            href = (link.get("href") or "").strip()
            if href and link.text_content().strip():
                index.setdefault(href, []).append(link)
        return index

    def is_teaser(self, elem: HtmlElement) -> bool:
        link = next(elem.iterancestors("a"), None)
        href = (link.get("href") or "").strip() if link is not None else ""
        if not href or href.startswith("#") or href == self.url or _url_ext(href) in _IMAGE_EXTS:
            return False
        if self.text_links is None:
            self.text_links = self._index()
        twins = self.text_links.get(href)
        if not twins:
            return False
        container: Optional[HtmlElement] = link
        for _ in range(self.config.teaser_max_depth + 1):
            if container is None:
                return False
            if any(t is container or container in t.iterancestors() for t in twins):
                total = len("".join(container.text_content().split()))
                linked = sum(len("".join(a.text_content().split())) for a in container.iter("a"))
                return total == 0 or linked >= self.config.teaser_link_density * total
            container = container.getparent()
        return False


def _replace_with_placeholder(elem: HtmlElement, kind: str, index: int) -> None:
    placeholder = elem.makeelement("img", {"src": _PLACEHOLDER.format(kind=kind, index=index)})
    placeholder.tail = elem.tail
    parent = elem.getparent()
    if parent is not None:
        parent.replace(elem, placeholder)


def _replace_with_text(elem: HtmlElement, text: str) -> None:
    """Remove an element, leaving `text` in its place (emoji images keep their alt text)."""
    if elem.getparent() is not None:
        elem.tail = text + (elem.tail or "")
        elem.drop_tree()


def _drop(elem: HtmlElement) -> None:
    if elem.getparent() is not None:
        elem.drop_tree()


def _rewrite_image(
    elem: HtmlElement,
    img: Optional[HtmlElement],
    sources: list[HtmlElement],
    base: str,
    config: ExtractConfig,
    table: _MediaTable,
) -> None:
    """Record an ImageRef for an <img>/<picture> and put a placeholder in its place.

    A lazy image with no usable URL falls back to the <noscript><img> right after it.
    """
    ref = _image_ref(img, sources, base, config)
    following = elem.getnext()
    if ref is None and following is not None and following.tag == "noscript":
        fallback = next(following.iter("img"), None)
        ref = _image_ref(fallback, [], base, config) if fallback is not None else None
        if ref is not None and ref.alt is None and img is not None:
            ref.alt = _clean_text(img.get("alt"))
    if ref is None:
        _drop(elem)
        return
    table.images.append(_Media(image=ref))
    _replace_with_placeholder(elem, "i", len(table.images) - 1)


def _image_ref(img: Optional[HtmlElement], sources: list[HtmlElement], base: str, config: ExtractConfig) -> Optional[ImageRef]:
    attrs = img.attrib if img is not None else {}
    width, height = _int_attr(attrs.get("width")), _int_attr(attrs.get("height"))
    if any(side is not None and side < config.min_declared_image_side for side in (width, height)):
        return None
    url = _best_image_url(img, sources, base, config)
    if url is None:
        return None
    return ImageRef(
        url=url,
        alt=_clean_text(attrs.get("alt")),
        title=_clean_text(attrs.get("title")),
        width_attr=width,
        height_attr=height,
    )


def _int_attr(value: Optional[str]) -> Optional[int]:
    if not value:
        return None
    match = _INT_ATTR_RE.fullmatch(value)
    return int(match.group(1)) if match else None


def _best_image_url(img: Optional[HtmlElement], sources: list[HtmlElement], base: str, config: ExtractConfig) -> Optional[str]:
    """srcset/<source> best candidate, else the first lazy data-* URL, else a non-placeholder src."""
    candidates: list[tuple[tuple[int, int, float], str]] = []
    for elem in [*sources, *([img] if img is not None else [])]:
        mime = (elem.get("type") or "").strip().lower()
        for attr in _srcset_attrs(elem):
            for raw, descriptor in _parse_srcset(elem.get(attr) or ""):
                url = _absolute(raw, base)
                if url is not None:
                    candidates.append((_candidate_rank(url, mime, descriptor, config), url))
        if elem.tag == "source":
            url = _absolute(elem.get("src") or elem.get("data-src"), base)
            if url is not None:
                candidates.append((_candidate_rank(url, mime, "", config), url))
    if candidates:
        return max(candidates, key=lambda c: c[0])[1]
    if img is None:
        return None
    for attr in _lazy_src_attrs(img):
        url = _absolute(img.get(attr), base)
        if url is not None:
            return url
    url = _absolute(img.get("src"), base)
    return url if url is not None and not _PLACEHOLDER_SRC_RE.search(url) else None


def _srcset_attrs(elem: HtmlElement) -> list[str]:
    """Lazy srcset attributes (data-srcset, data-lazy-srcset, any data-*srcset) before srcset:
    a lazy page's plain srcset is often a blurred preview."""
    names = [a for a in elem.attrib if a.startswith("data-") and a.endswith("srcset")]
    names.sort(key=lambda a: (_LAZY_SRCSET_ATTRS.index(a) if a in _LAZY_SRCSET_ATTRS else len(_LAZY_SRCSET_ATTRS)))
    return [*names, "srcset"] if "srcset" in elem.attrib else names


def _lazy_src_attrs(elem: HtmlElement) -> list[str]:
    """Known lazy-loading URL attributes first, then any other data-*src / data-*original."""
    known = [a for a in _LAZY_SRC_ATTRS if a in elem.attrib]
    other = [
        a for a in elem.attrib
        if a.startswith("data-") and a not in known and (a.endswith("-src") or a.endswith("original")) and "srcset" not in a
    ]
    return known + other


def _parse_srcset(value: str) -> list[tuple[str, str]]:
    """(url, descriptor) pairs per the HTML srcset grammar (URLs may contain commas)."""
    return [(m.group(1), m.group(2) or "") for m in _SRCSET_RE.finditer(value)]


def _candidate_rank(url: str, mime: str, descriptor: str, config: ExtractConfig) -> tuple[int, int, float]:
    """Sort key: decodable format first, then width descriptors over densities, then size."""
    decodable = 0 if (mime in _UNDECODABLE_TYPES or _url_ext(url) in _UNDECODABLE_EXTS) else 1
    descriptor = descriptor.lower().split(" ")[0] if descriptor else ""
    try:
        if descriptor.endswith("w"):
            width = float(descriptor[:-1])
            cap = config.max_srcset_width
            return decodable, 1, (width if not cap or width <= cap else -width)
        if descriptor.endswith("x"):
            return decodable, 0, float(descriptor[:-1])
    except ValueError:
        pass
    return decodable, 0, 1.0


def _url_ext(url: str) -> str:
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    match = _EXT_RE.search(path)
    return match.group(1) if match else ""


def _rewrite_video(video: HtmlElement, base: str, table: _MediaTable) -> None:
    """A <video> with real video sources becomes a placeholder; a hidden or image-only one
    (the IE9 picturefill hack) is unwrapped so the images inside it stay images."""
    ref = None if _is_hidden(video) else _video_ref(video, base)
    if ref is not None:
        table.videos.append(_Media(video=ref))
        _replace_with_placeholder(video, "v", len(table.videos) - 1)
    elif video.getparent() is not None:
        if next(video.iter("img", "picture", "source"), None) is not None:
            video.text = None
            video.drop_tag()
        else:
            video.drop_tree()


def _is_hidden(elem: HtmlElement) -> bool:
    return elem.get("hidden") is not None or bool(_DISPLAY_NONE_RE.search(elem.get("style") or ""))


def _video_ref(video: HtmlElement, base: str) -> Optional[VideoRef]:
    """VideoRef from src/<source src>; None when there is no playable (non-image) source."""
    raw_sources = [(video.get("src") or video.get("data-src"), video.get("type"))]
    raw_sources += [(s.get("src") or s.get("data-src"), s.get("type")) for s in video.iter("source")]
    sources: list[str] = []
    for raw, mime in raw_sources:
        url = _absolute(raw, base)
        if url is None or (mime or "").strip().lower().startswith("image/") or _url_ext(url) in _IMAGE_EXTS:
            continue
        if url not in sources:
            sources.append(url)
    if not sources:
        return None
    sources.sort(key=lambda u: _VIDEO_PREFERENCE.get(_url_ext(u), 3))
    tracks = _unique(_absolute(t.get("src"), base) for t in video.iter("track"))
    return VideoRef(
        sources=sources,
        poster=_absolute(video.get("poster") or video.get("data-poster"), base),
        tracks=tracks,
        title=_clean_text(video.get("title") or video.get("aria-label")),
        origin="video-tag",
    )


def _unique(values: Iterable[Optional[str]]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _attach_figcaptions(tree: HtmlElement, table: _MediaTable) -> None:
    """Move each media <figure>'s <figcaption> text onto its media refs; drop the element.

    Inner figures first, so a nested figure's own caption wins over its parent's.
    """
    for group, figure in enumerate(reversed(list(tree.iter("figure")))):
        captions = list(figure.iter("figcaption"))
        if not captions:
            continue
        media = [_placeholder_media(img, table) for img in figure.iter("img")]
        media = [m for m in media if m is not None]
        if not media:
            continue
        text = _clean_text(" ".join(c.text_content() for c in captions))
        for caption in captions:
            _drop(caption)
        if not text:
            continue
        table.captions[group] = text
        for item in media:
            if item.caption_group is None:
                item.caption_group = group
                if item.image is not None and item.image.caption is None:
                    item.image.caption = text
                if item.video is not None and item.video.caption is None:
                    item.video.caption = text


def _placeholder_media(elem: Any, table: _MediaTable) -> Optional[_Media]:
    match = _PLACEHOLDER_RE.fullmatch(elem.get("src") or "")
    if match is None:
        return None
    items = table.images if match.group(1) == "i" else table.videos
    index = int(match.group(2))
    return items[index] if index < len(items) else None


# --------------------------------------------------------------------------- trafilatura


def _run_trafilatura(tree: HtmlElement, url: str, config: ExtractConfig) -> Any:
    """trafilatura's main-content body (XML tree) for the rewritten tree, or None."""
    document = trafilatura.bare_extraction(
        tree,
        url=url or None,
        fast=config.fast,
        include_comments=config.include_comments,
        include_tables=config.include_tables,
        include_images=True,
        include_formatting=False,
        include_links=False,
        output_format="xml",
        with_metadata=False,
    )
    return getattr(document, "body", None) if document is not None else None


# --------------------------------------------------------------------------- output walk


class _NodeBuilder:
    """Walks trafilatura's XML body once, emitting block-level text and media nodes in order."""

    def __init__(self, table: _MediaTable, config: ExtractConfig) -> None:
        self.table = table
        self.config = config
        self.nodes: list[Node] = []
        self.buffer: list[str] = []
        self.cell_pending = False  # a table cell began: separate it from the previous one
        self.seen_media: set[int] = set()
        self.seen_urls: set[str] = set()
        self.group_last: dict[int, int] = {}  # caption group -> index of its last media node

    def add(self, text: str) -> None:
        if self.cell_pending and text.strip():
            if self.buffer:
                self.buffer.append(" | ")
            self.cell_pending = False
        self.buffer.append(text)

    def flush(self) -> None:
        self.cell_pending = False
        if not self.buffer:
            return
        text = " ".join("".join(self.buffer).split())
        self.buffer = []
        if text and len(text) >= self.config.min_text_node_chars:
            self.nodes.append(Node(type="text", text=text))

    def visit(self, elem: Any) -> None:
        tag = elem.tag
        if tag == "graphic":
            self.media(elem)
            return
        if not isinstance(tag, str):  # comments / processing instructions
            return
        block = tag in _BLOCK_TAGS
        if block:
            self.flush()
        if tag == "lb":
            self.buffer.append(" ")
        elif tag == "cell" and elem.getprevious() is not None:
            self.cell_pending = True
        self.visit_content(elem)
        if block:
            self.flush()

    def visit_content(self, elem: Any) -> None:
        """The element's own text, then each child followed by its tail, in document order."""
        if elem.text:
            self.add(elem.text)
        for child in elem:
            self.visit(child)
            if child.tail:
                self.add(child.tail)

    def media(self, elem: Any) -> None:
        if self.config.split_text_at_inline_images:
            self.flush()
        src = elem.get("src") or ""
        match = _PLACEHOLDER_RE.fullmatch(src)
        if match is None:
            return  # an image trafilatura found outside our rewrite (should not happen)
        key = (0 if match.group(1) == "i" else 1_000_000_000) + int(match.group(2))
        item = _placeholder_media(elem, self.table)
        if item is None or key in self.seen_media:
            return
        self.seen_media.add(key)
        if item.image is not None:
            if self.config.dedup_images and item.image.url in self.seen_urls:
                return
            self.seen_urls.add(item.image.url)
            self.nodes.append(Node(type="image", image=item.image))
        elif item.video is not None:
            self.nodes.append(Node(type="video", video=item.video))
        if item.caption_group is not None:
            self.group_last[item.caption_group] = len(self.nodes) - 1

    def insert_captions(self) -> None:
        """Caption text right after the last kept media node of its figure."""
        if not self.config.keep_figcaptions:
            return
        for group, index in sorted(self.group_last.items(), key=lambda kv: kv[1], reverse=True):
            text = self.table.captions.get(group)
            if not text or len(text) < self.config.min_text_node_chars:
                continue
            following = self.nodes[index + 1] if index + 1 < len(self.nodes) else None
            if following is not None and following.type == "text" and following.text == text:
                continue
            self.nodes.insert(index + 1, Node(type="text", text=text))


def _nodes_from_body(body: Any, table: _MediaTable, config: ExtractConfig) -> list[Node]:
    builder = _NodeBuilder(table, config)
    builder.visit(body)
    builder.flush()
    builder.insert_captions()
    return builder.nodes


def _og_video(tree: HtmlElement, base: str) -> Optional[VideoRef]:
    """og:video as a VideoRef (Flash players skipped), placed at the top of the page."""
    url = _meta_content(tree, "og:video:secure_url", "og:video:url", "og:video")
    mime = (_meta_content(tree, "og:video:type") or "").lower()
    absolute = _absolute(url, base)
    if absolute is None or "flash" in mime or _url_ext(absolute) == "swf":
        return None
    return VideoRef(sources=[absolute], poster=_absolute(_meta_content(tree, "og:image"), base), origin="og-video")


def _add_og_video(nodes: list[Node], video: VideoRef, title: Optional[str]) -> None:
    known = {s for n in nodes if n.video is not None for s in n.video.sources}
    if video.sources[0] in known:
        return
    video.title = title
    nodes.insert(0, Node(type="video", video=video))


# --------------------------------------------------------------------------- declared-main fallback

# Inside a declared main region these never hold content.
_SKIP_TAGS = frozenset({"script", "style", "noscript", "nav", "header", "footer", "aside", "form", "button", "select", "template", "svg", "iframe"})
_HTML_BLOCK_TAGS = frozenset(
    {"p", "div", "section", "article", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
     "blockquote", "pre", "table", "tr", "td", "th", "figure", "figcaption", "br", "hr", "main"}
)
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _find_declared_main(tree: HtmlElement) -> Optional[HtmlElement]:
    found = tree.xpath("//main | //*[@role='main']")
    return found[0] if found else None


def _declared_main_summary(tree: HtmlElement) -> Optional[tuple[set[str], int]]:
    """(words, image count) of the page's declared main region, read before any rewriting."""
    main = _find_declared_main(tree)
    if main is None:
        return None
    n_images = sum(1 for _ in main.iter("img", "picture"))
    if n_images == 0:
        return None
    return {w.lower() for w in _WORD_RE.findall(main.text_content())}, n_images


def _missed_declared_main(nodes: list[Node], declared: tuple[set[str], int], config: ExtractConfig) -> bool:
    if any(n.type == "image" for n in nodes):
        return False
    words = [w.lower() for n in nodes if n.type == "text" and n.text for w in _WORD_RE.findall(n.text)]
    if not words:
        return True
    inside = sum(1 for w in words if w in declared[0])
    return inside / len(words) < config.declared_main_max_overlap


class _DeclaredMainWalker(_NodeBuilder):
    """The node builder over raw HTML: block tags split text, placeholders become media."""

    def visit(self, elem: Any) -> None:
        tag = elem.tag
        if not isinstance(tag, str) or tag in _SKIP_TAGS:
            return
        if tag == "img":
            if _PLACEHOLDER_RE.fullmatch(elem.get("src") or ""):
                self.media(elem)
            return
        block = tag in _HTML_BLOCK_TAGS
        if block:
            self.flush()
        self.visit_content(elem)
        if block:
            self.flush()


def _nodes_from_declared_main(text: str, url: str, config: ExtractConfig) -> list[Node]:
    """Second parse, only for pages where trafilatura chose the wrong region.

    Teaser-card dropping is off here: on a portal page the cards are the content.
    """
    tree = _parse(text)
    if tree is None:
        return []
    main = _find_declared_main(tree)
    if main is None:
        return []
    from dataclasses import replace

    table = _rewrite_media(tree, url, _base_url(tree, url), replace(config, drop_teaser_images=False))
    walker = _DeclaredMainWalker(table, config)
    walker.visit(main)
    walker.flush()
    walker.insert_captions()
    return walker.nodes

"""Media references of a page: every image and video the parser must not lose, as an `ImageRef`/`VideoRef`.

`rewrite_media` replaces each image-bearing element (``<img>``, ``<amp-img>``, ``<picture>``)
and each real ``<video>`` with a placeholder ``<img src="http://m3w.invalid/i/N.png">`` that
trafilatura always keeps, and records the full reference for N in a `MediaTable`:

  * every URL of the picture, best first (`ImageRef.candidates`; `ImageRef.url` is the first):
    srcset / ``<source>`` entries by rank (decodable formats first, then width descriptors over
    densities, then size, `ExtractConfig.max_srcset_width` capped), then the lazy-loading
    attributes (``data-src`` and kin; the "src" values of a JSON one), then ``src`` unless it
    is a stand-in (pixel.gif, blank.png, a GIF beside a lazy URL, a spacer painting its picture
    as a CSS background), then those of the ``<noscript><img>`` twin after it (the whole ref
    when the image itself has no usable URL; the twin is not recorded on its own);
  * images declared smaller than `min_declared_image_side` are dropped, emoji images become
    their alt text, related-article teaser cards are dropped (`drop_teaser_images`), each
    counted by reason in `MediaTable.dropped`; the class/id words and visibility of each
    recorded image go with it (`RecordedMedia`) for `content_images`;
  * a ``<video>`` with playable sources becomes a `VideoRef` (mp4 first); a hidden or
    image-only one is unwrapped so its images stay images;
  * each media ``<figure>``'s ``<figcaption>`` text moves onto its refs (and into
    `MediaTable.captions`, for the node builder to re-insert as text).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from lxml.html import HtmlElement

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.core.nodes import ImageRef, VideoRef

# Placeholders stand in for media while trafilatura runs: i = image, v = video, N = index in the MediaTable.
_PLACEHOLDER = "http://m3w.invalid/{kind}/{index}.png"
_PLACEHOLDER_PREFIX = "http://m3w.invalid/"
_TWIN_MARK = "data-m3w-noscript-twin"  # set on a <noscript><img> whose URLs went to the image before it
PLACEHOLDER_RE = re.compile(r"http://m3w\.invalid/([iv])/(\d+)\.png")

_LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-hi-res-src", "data-full-src")
_LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset")
# A src that is only a lazy-loading stand-in (used when no lazy URL is declared).
_PLACEHOLDER_SRC_RE = re.compile(
    r"/(?:pixel|blank|spacer|transparent|empty|placeholder|lazy|loading|loader|preload|spinner|dummy|grey|gray|1x1)[^/]*\.(?:gif|png|svg)$",
    re.IGNORECASE,
)
# An <img> whose inline style paints the picture as a CSS background: its src is a spacer.
_CSS_PICTURE_RE = re.compile(r"background(?:-image)?\s*:[^;]*url\(", re.IGNORECASE)
# Formats of typical stand-ins: a src in one of these beside a lazy URL in another is one.
_STAND_IN_EXTS = frozenset({"gif", "svg"})
# Inline emoji/smiley images: their alt text is part of the sentence, not an image node.
_EMOJI_CLASS_RE = re.compile(r"\b(?:emoji|wp-smiley|emoticon)\b", re.IGNORECASE)
# Formats Pillow cannot decode: a srcset/<source> candidate in one of these loses to any other.
_UNDECODABLE_EXTS = frozenset({"svg", "svgz", "jxl", "heic", "heif", "pdf"})
_UNDECODABLE_TYPES = frozenset({"image/svg+xml", "image/jxl", "image/heic", "image/heif"})
_IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "avif", "bmp", "svg", "svgz", "ico", "tif", "tiff", "jxl", "heic", "heif"})
_VIDEO_PREFERENCE = {"mp4": 0, "m4v": 0, "mov": 1, "webm": 1, "ogv": 2, "ogg": 2}
_EXT_RE = re.compile(r"\.([a-z0-9]{2,5})$")
_DISPLAY_NONE_RE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_HIDDEN_STYLE_RE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
# Words after "hidden"/"hide" that limit it to some screens: "hidden-xs", "hide-small", "hidden-print".
_SCREEN_WORDS = frozenset({"xs", "sm", "md", "lg", "xl", "xxl", "small", "medium", "large", "mobile", "phone", "tablet", "desktop",
                           "print", "for"})
# Word boundaries: anything but letters and digits, and camelCase humps. Digits stay inside
# their word, so hashed file names ("2de8ad22", "04fb396c") give no "ad" or "fb".
_WORD_SPLIT_RE = re.compile(r"[^a-zA-Z0-9]+|(?<=[a-z])(?=[A-Z])")
_INT_ATTR_RE = re.compile(r"\s*(\d+)(?:\.\d*)?\s*(?:px)?\s*")
# Characters left as-is when percent-encoding a URL (spaces, non-ASCII get encoded, % kept).
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
# srcset tokens (HTML "parse a srcset attribute"): each is matched anchored at a position and
# consumes what it matches, so the whole parse is one left-to-right pass.
_SRCSET_SEPARATORS = re.compile(r"[\t\n\f\r ,]*")
_SRCSET_URL = re.compile(r"[^\t\n\f\r ]+")
_SRCSET_SPACE = frozenset("\t\n\f\r ")
_HAS_HOST_RE = re.compile(r"https?://[^/\s?#]")
_WS_RE = re.compile(r"[\t\n\r]")


@dataclass
class RecordedMedia:
    """One recorded placeholder: the reference plus the figure caption it carries."""

    image: Optional[ImageRef] = None
    video: Optional[VideoRef] = None
    caption_group: Optional[int] = None  # media of one <figure> share a group
    hidden: bool = False  # the replaced element itself is not displayed (see `is_hidden`)
    # class and id words of the replaced element (and its <img>): what the page calls it
    # (avatar, logo, share-icon, ...), which the placeholder no longer shows.
    names: str = ""


@dataclass
class MediaTable:
    """What `rewrite_media` recorded: placeholder N of kind i/v is images[N] / videos[N]."""

    images: list[RecordedMedia] = field(default_factory=list)
    videos: list[RecordedMedia] = field(default_factory=list)
    captions: dict[int, str] = field(default_factory=dict)  # caption_group -> text
    # image elements that got no placeholder, by reason: no-url, pixel, emoji (became its alt
    # text), teaser (related-article card), video-fallback (inside a playable <video>). With
    # `images` they account for every image element (a <picture> is one, a noscript twin none).
    dropped: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------- attribute values


def clean_text(value: Optional[str]) -> Optional[str]:
    """An attribute or element text with whitespace collapsed; None when nothing is left."""
    if not value:
        return None
    cleaned = " ".join(value.split())
    return cleaned or None


def absolute_url(raw: Optional[str], base: str) -> Optional[str]:
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


def rewrite_media(tree: HtmlElement, url: str, base: str, config: ExtractConfig) -> MediaTable:
    """Replace media elements by placeholders trafilatura keeps; record their refs in a table.

    The ``<noscript><img>`` twin right after a lazy image is not a second image: its URLs join
    the lazy image's candidates and it is not recorded on its own.
    """
    table = MediaTable()
    teasers = _TeaserCards(tree, url, config)
    for video in list(tree.iter("video")):
        _rewrite_video(video, base, table)
    for picture in list(tree.iter("picture")):
        if config.drop_teaser_images and teasers.is_teaser(picture):
            _noscript_twin(picture)
            _drop(picture)
            table.dropped["teaser"] += 1
            continue
        img = next(picture.iter("img"), None)
        _rewrite_image(picture, img, list(picture.iter("source")), base, config, table)
    for img in list(tree.iter("img", "amp-img")):
        if (img.get("src") or "").startswith(_PLACEHOLDER_PREFIX) or img.get(_TWIN_MARK) is not None:
            continue
        if _EMOJI_CLASS_RE.search(img.get("class") or ""):
            _noscript_twin(img)
            _replace_with_text(img, clean_text(img.get("alt")) or "")
            table.dropped["emoji"] += 1
            continue
        if config.drop_teaser_images and teasers.is_teaser(img):
            _noscript_twin(img)
            _drop(img)
            table.dropped["teaser"] += 1
            continue
        _rewrite_image(img, img, [], base, config, table)
    _attach_figcaptions(tree, table)
    return table


class _TeaserCards:
    """Finds related-article cards: an image linking to another page that a text link in the
    same small container also points to, where the container is link-dense (a title card) or
    one of a run of look-alike siblings (a list of cards with a blurb each).

    trafilatura keeps any block holding an image ("image container"), so without this the
    thumbnails and titles of related-post lists leak into the main content.
    """

    def __init__(self, tree: HtmlElement, url: str, config: ExtractConfig) -> None:
        self.tree, self.url, self.config = tree, url, config
        self.links_by_href: Optional[dict[str, list[HtmlElement]]] = None
        self.text_link_area: dict[str, set[HtmlElement]] = {}  # href -> its text links and their ancestors

    def _text_link_area(self, href: str) -> set[HtmlElement]:
        """The links to `href` that show text, with all their ancestors (elements, not id()s: lxml
        proxies live only while referenced). Links are indexed by href on the first linked image,
        their text read only for the hrefs a linked image asks about."""
        if self.links_by_href is None:
            self.links_by_href = {}
            for link in self.tree.iter("a"):
                if link_href := (link.get("href") or "").strip():
                    self.links_by_href.setdefault(link_href, []).append(link)
        if href not in self.text_link_area:
            texted = [link for link in self.links_by_href.get(href, ()) if link.text_content().strip()]
            self.text_link_area[href] = {elem for link in texted for elem in (link, *link.iterancestors())}
        return self.text_link_area[href]

    def is_teaser(self, elem: HtmlElement) -> bool:
        link = next(elem.iterancestors("a"), None)
        href = (link.get("href") or "").strip() if link is not None else ""
        if not href or href.startswith("#") or href == self.url or url_ext(href) in _IMAGE_EXTS:
            return False
        area = self._text_link_area(href)
        if not area:
            return False
        container: Optional[HtmlElement] = link
        for _ in range(self.config.teaser_max_depth + 1):
            if container is None:
                return False
            if container in area:  # a text link to the same page is this container or inside it
                total = len("".join(container.text_content().split()))
                linked = sum(len("".join(a.text_content().split())) for a in container.iter("a"))
                return total == 0 or linked >= self.config.teaser_link_density * total or self._one_of_many(container)
            container = container.getparent()
        return False

    def _one_of_many(self, card: HtmlElement) -> bool:
        """`card` and at least `teaser_min_siblings - 1` siblings share its tag and class and
        each holds a link: a list of cards, however much blurb text each card carries."""
        parent = card.getparent()
        if parent is None or not card.get("class"):
            return False
        alike = [c for c in parent if c.tag == card.tag and c.get("class") == card.get("class") and c.find(".//a[@href]") is not None]
        return len(alike) >= self.config.teaser_min_siblings


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
    table: MediaTable,
) -> None:
    """Record an ImageRef for an <img>/<picture> and put a placeholder in its place.

    The <noscript><img> right after a lazy image is its twin: its URLs are further candidates,
    and the whole ref when the image itself gives no usable URL.
    """
    twin = _noscript_twin(elem)
    ref = _image_ref(img, sources, base, config, twin)
    if ref is None and twin is not None:
        ref = _image_ref(twin, [], base, config)
        if ref is not None and ref.alt is None and img is not None:
            ref.alt = clean_text(img.get("alt"))
    if ref is None:
        _drop(elem)
        table.dropped["pixel" if _is_pixel(img, config) else "no-url"] += 1
        return
    names = " ".join(_unique(e.get(a) for e in (elem, img) if e is not None for a in ("class", "id")))
    hidden = any(is_hidden(e, by_class=True) for e in (elem, img) if e is not None)
    table.images.append(RecordedMedia(image=ref, names=names, hidden=hidden))
    _replace_with_placeholder(elem, "i", len(table.images) - 1)


def _is_pixel(img: Optional[HtmlElement], config: ExtractConfig) -> bool:
    """Declared smaller than `min_declared_image_side`: a tracking pixel or spacer."""
    sides = (_int_attr(img.get("width")), _int_attr(img.get("height"))) if img is not None else ()
    return any(side is not None and side < config.min_declared_image_side for side in sides)


def _noscript_twin(elem: HtmlElement) -> Optional[HtmlElement]:
    """The <img> of the <noscript> right after `elem`, marked so it is not taken as an image of
    its own: the same picture for browsers without JavaScript."""
    following = elem.getnext()
    twin = next(following.iter("img"), None) if following is not None and following.tag == "noscript" else None
    if twin is not None:
        twin.set(_TWIN_MARK, "")
    return twin


def _image_ref(
    img: Optional[HtmlElement], sources: list[HtmlElement], base: str, config: ExtractConfig, twin: Optional[HtmlElement] = None
) -> Optional[ImageRef]:
    attrs = img.attrib if img is not None else {}
    width, height = _int_attr(attrs.get("width")), _int_attr(attrs.get("height"))
    if _is_pixel(img, config):
        return None
    candidates = _image_candidates(img, sources, base, config)
    if not candidates:
        return None
    if twin is not None:
        candidates = _unique([*candidates, *_image_candidates(twin, [], base, config)])
    return ImageRef(
        url=candidates[0],
        alt=clean_text(attrs.get("alt")),
        title=clean_text(attrs.get("title")),
        width_attr=width,
        height_attr=height,
        candidates=candidates,
    )


def _int_attr(value: Optional[str]) -> Optional[int]:
    if not value:
        return None
    match = _INT_ATTR_RE.fullmatch(value)
    return int(match.group(1)) if match else None


def _image_candidates(img: Optional[HtmlElement], sources: list[HtmlElement], base: str, config: ExtractConfig) -> list[str]:
    """Every absolute URL of the picture, best first: srcset/<source> entries by rank, then the
    lazy data-* URLs, then a src that is not a lazy stand-in."""
    ranked: list[tuple[tuple[int, int, float], str]] = []
    for elem in [*sources, *([img] if img is not None else [])]:
        mime = (elem.get("type") or "").strip().lower()
        for attr in _srcset_attrs(elem):
            for raw, descriptors in parse_srcset(elem.get(attr) or ""):
                url = absolute_url(raw, base)
                if url is not None:
                    ranked.append((_candidate_rank(url, mime, descriptors, config), url))
        if elem.tag == "source":
            url = absolute_url(elem.get("src") or elem.get("data-src"), base)
            if url is not None:
                ranked.append((_candidate_rank(url, mime, [], config), url))
    ranked.sort(key=lambda c: c[0], reverse=True)  # stable: the first of equal ranks stays first
    found = [url for _, url in ranked]
    if img is not None:
        lazy = [url for attr in _lazy_src_attrs(img) for url in _attribute_urls(img.get(attr), base)]
        url = absolute_url(img.get("src"), base)
        if url is not None and not _is_stand_in(url, lazy) and not _CSS_PICTURE_RE.search(img.get("style") or ""):
            lazy.append(url)
        found += lazy
    return _unique(found)


def _attribute_urls(value: Optional[str], base: str) -> list[str]:
    """The URL(s) of a lazy-loading attribute: its value, or the "src"/"url" strings of a JSON
    value (msn.com puts one object per breakpoint in data-src; taken verbatim it is no URL)."""
    value = (value or "").strip()
    if not value.startswith(("{", "[")):
        url = absolute_url(value, base)
        return [url] if url is not None else []
    try:
        data = json.loads(value)
    except ValueError:
        return []
    found: list[str] = []
    stack = [data]
    while stack:  # depth-first, in document order
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(sub, str) and key.lower() in ("src", "url", "href"):
                    url = absolute_url(sub, base)
                    if url is not None:
                        found.append(url)
            stack.extend(reversed([v for v in item.values() if isinstance(v, (dict, list))]))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def _is_stand_in(src: str, lazy: list[str]) -> bool:
    """A src shown only until the real image loads: a stand-in by name (blank.gif, spacer.png,
    lazyload.svg, ...), or a GIF/SVG next to a lazy URL of another format (msn's e151e5.gif)."""
    if _PLACEHOLDER_SRC_RE.search(src):
        return True
    return bool(lazy) and url_ext(src) in _STAND_IN_EXTS and url_ext(lazy[0]) not in _STAND_IN_EXTS


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


def parse_srcset(value: str) -> list[tuple[str, list[str]]]:
    """(url, descriptors) pairs of a srcset, per the HTML "parse a srcset attribute" algorithm:
    URLs may contain commas (only trailing ones end a URL), a comma inside parentheses does not
    end a descriptor list. Candidates with descriptors the spec would reject are kept (their URL
    still names the picture; `_candidate_rank` treats them as 1x).

    Linear in len(value): every step consumes at least one character and none is read twice.
    """
    out: list[tuple[str, list[str]]] = []
    pos, end = 0, len(value)
    while True:
        pos = _SRCSET_SEPARATORS.match(value, pos).end()
        if pos >= end:
            return out
        url = _SRCSET_URL.match(value, pos).group()
        pos += len(url)
        if url.endswith(","):
            out.append((url.rstrip(","), []))
            continue
        descriptors, pos = _srcset_descriptors(value, pos)
        out.append((url, descriptors))


def _srcset_descriptors(value: str, pos: int) -> tuple[list[str], int]:
    """The descriptor tokens after a srcset URL, up to the comma that ends the candidate
    (the spec's tokenizer: in descriptor / in parens / after descriptor); returns the tokens
    and the position after that comma."""
    tokens: list[str] = []
    start: Optional[int] = None  # start of the token being read
    in_parens = False
    end = len(value)
    while pos < end:
        char = value[pos]
        if in_parens:
            in_parens = char != ")"
        elif char in _SRCSET_SPACE or char == ",":
            if start is not None:
                tokens.append(value[start:pos])
                start = None
            if char == ",":
                return tokens, pos + 1
        else:
            start = pos if start is None else start
            in_parens = char == "("
        pos += 1
    if start is not None:
        tokens.append(value[start:pos])
    return tokens, pos


def _candidate_rank(url: str, mime: str, descriptors: list[str], config: ExtractConfig) -> tuple[int, int, float]:
    """Sort key: decodable format first, then width descriptors over densities, then size."""
    decodable = 0 if (mime in _UNDECODABLE_TYPES or url_ext(url) in _UNDECODABLE_EXTS) else 1
    descriptor = descriptors[0].lower() if descriptors else ""
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


def url_ext(url: str) -> str:
    """The lower-case file extension of a URL's path ("" when there is none)."""
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    match = _EXT_RE.search(path)
    return match.group(1) if match else ""


def _rewrite_video(video: HtmlElement, base: str, table: MediaTable) -> None:
    """A <video> with real video sources becomes a placeholder; a hidden or image-only one
    (the IE9 picturefill hack) is unwrapped so the images inside it stay images."""
    ref = None if _is_hidden(video) else _video_ref(video, base)
    if ref is not None:
        # an <img> inside a playable <video> is its fallback for browsers without video
        table.dropped["video-fallback"] += sum(1 for e in video.iter("img", "amp-img", "picture") if e.tag == "picture" or
                                               next(e.iterancestors("picture"), None) is None)
        table.videos.append(RecordedMedia(video=ref))
        _replace_with_placeholder(video, "v", len(table.videos) - 1)
    elif video.getparent() is not None:
        if next(video.iter("img", "picture", "source"), None) is not None:
            video.text = None
            video.drop_tag()
        else:
            video.drop_tree()


def _is_hidden(elem: HtmlElement) -> bool:
    return elem.get("hidden") is not None or bool(_DISPLAY_NONE_RE.search(elem.get("style") or ""))


def name_words(value: str) -> list[str]:
    """Lower-case words of a class, id or file name: split at punctuation and camelCase humps."""
    return [w.lower() for w in _WORD_SPLIT_RE.split(value) if w]


def is_hidden(elem: HtmlElement, by_class: bool = False) -> bool:
    """Not displayed: `hidden`, display:none / visibility:hidden; with `by_class` also a class
    word hidden/hide/invisible/d-none, unless it only hides on some screens ("hidden-xs",
    "hide-small", Tailwind "hidden lg:block"). Class words are read on an image itself only:
    on containers they name something else too often ("field-label-hidden", "hide-paywall")."""
    if elem.get("hidden") is not None or _HIDDEN_STYLE_RE.search(elem.get("style") or ""):
        return True
    if not by_class:
        return False
    tokens = (elem.get("class") or "").split()
    if any(":" in token for token in tokens):  # responsive utility classes decide per screen
        return False
    for token in tokens:
        words = name_words(token)
        for i, word in enumerate(words):
            hides = word in ("hidden", "hide", "invisible") or (word == "none" and i > 0 and words[i - 1] == "d")
            if hides and (words[i + 1] if i + 1 < len(words) else "") not in _SCREEN_WORDS:
                return True
    return False


def _video_ref(video: HtmlElement, base: str) -> Optional[VideoRef]:
    """VideoRef from src/<source src>; None when there is no playable (non-image) source."""
    raw_sources = [(video.get("src") or video.get("data-src"), video.get("type"))]
    raw_sources += [(s.get("src") or s.get("data-src"), s.get("type")) for s in video.iter("source")]
    sources: list[str] = []
    for raw, mime in raw_sources:
        url = absolute_url(raw, base)
        if url is None or (mime or "").strip().lower().startswith("image/") or url_ext(url) in _IMAGE_EXTS:
            continue
        if url not in sources:
            sources.append(url)
    if not sources:
        return None
    sources.sort(key=lambda u: _VIDEO_PREFERENCE.get(url_ext(u), 3))
    tracks = _unique(absolute_url(t.get("src"), base) for t in video.iter("track"))
    return VideoRef(
        sources=sources,
        poster=absolute_url(video.get("poster") or video.get("data-poster"), base),
        tracks=tracks,
        title=clean_text(video.get("title") or video.get("aria-label")),
        origin="video-tag",
    )


def _unique(values: Iterable[Optional[str]]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _attach_figcaptions(tree: HtmlElement, table: MediaTable) -> None:
    """Move each media <figure>'s <figcaption> text onto its media refs; drop the element.

    Inner figures first, so a nested figure's own caption wins over its parent's.
    """
    for group, figure in enumerate(reversed(list(tree.iter("figure")))):
        captions = list(figure.iter("figcaption"))
        if not captions:
            continue
        media = [placeholder_media(img, table) for img in figure.iter("img")]
        media = [m for m in media if m is not None]
        if not media:
            continue
        text = clean_text(" ".join(c.text_content() for c in captions))
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


def placeholder_media(elem: Any, table: MediaTable) -> Optional[RecordedMedia]:
    """The recorded media behind a placeholder <img>/<graphic>, or None for any other element."""
    match = PLACEHOLDER_RE.fullmatch(elem.get("src") or "")
    if match is None:
        return None
    items = table.images if match.group(1) == "i" else table.videos
    index = int(match.group(2))
    return items[index] if index < len(items) else None

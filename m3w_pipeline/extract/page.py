"""Ordered main-content extraction: one parse per page -> text, image and video nodes.

trafilatura decides what is main content, but with ``include_images=True`` it drops
images whose URL lacks an image extension (CDN paths, ``.php?id=``, srcset-only,
lazy ``data-src``), loses ``<picture>``/``<video>`` structure and drops plain
``<figcaption>`` text. So before trafilatura sees the tree, every image-bearing element
(``<img>``, ``<picture>``, lazy variants) and every real ``<video>`` is replaced by a
canonical placeholder ``<img src="http://m3w.invalid/i/N.png">`` (a URL trafilatura
always keeps) while the full ``ImageRef``/``VideoRef`` for N is recorded from the
original DOM (`media_refs`: srcset, <picture>, lazy attributes, candidate ranking).
Figcaptions of media figures are lifted out and re-inserted as a text node after their
media. trafilatura's XML body is then walked once, in order, mapping placeholders back
to nodes; trafilatura's text stays as it is, while which images are content (and where
the ones it dropped go) is decided by `content_images` (`ExtractConfig.select_content_images`).
Every image element that does not become a node is counted in `ExtractedPage.dropped_images`.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, replace
from typing import Any, Optional

import lxml.html
from lxml.etree import ElementDefaultClassLookup
from lxml.html import HtmlComment, HtmlElement, HtmlEntity, HtmlProcessingInstruction
from trafilatura.utils import DOCTYPE_TAG, is_dubious_html, repair_faulty_html

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.core.nodes import ExtractedPage, Node, VideoRef
from m3w_pipeline.extract.content_images import select_images
from m3w_pipeline.extract.main_text import main_text_body
from m3w_pipeline.extract.media_refs import PLACEHOLDER_RE, MediaTable, absolute_url, clean_text, placeholder_media, rewrite_media, url_ext
from m3w_pipeline.read.decode import decode_html

LOGGER = logging.getLogger(__name__)

# trafilatura's HTML parser settings, but every element an `HtmlElement` looked up in C: lxml.html's
# own lookup is a Python call per element proxy (half a million per page set), and its form
# element classes (FormElement, InputElement, ...) are used by neither trafilatura nor us.
_PARSER = lxml.html.HTMLParser(collect_ids=False, default_doctype=False, encoding="utf-8", remove_comments=True, remove_pis=True)
_PARSER.set_element_class_lookup(
    ElementDefaultClassLookup(element=HtmlElement, comment=HtmlComment, pi=HtmlProcessingInstruction, entity=HtmlEntity)
)

# Bytes of the characters trafilatura's repair removes (its INVALID_XML_CHARS below U+0080).
_XML_FORBIDDEN_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])

# trafilatura XML output: elements that start a new text node.
_BLOCK_TAGS = frozenset({"p", "head", "item", "row", "code", "quote", "list", "table", "div", "note", "body", "doc", "main", "article", "section"})


# --------------------------------------------------------------------------- public API


def extract_page(html: str | bytes, url: str, config: ExtractConfig = ExtractConfig()) -> ExtractedPage:
    """Parse once, let trafilatura pick the main text, choose the content images, return
    text/image/video nodes in DOM order.

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
        metas = list(tree.iter("meta"))
        named = _named_meta(metas)
        page.title = _page_title(tree, named)
        page.lang = _page_lang(tree, metas, named)
        page.robots, page.tdm_reservation = _opt_out_meta(metas)
        base = _base_url(tree, url)
        og_video = _og_video(named, base) if config.include_og_video else None
        og_image = absolute_url(_meta_content(named, "og:image:secure_url", "og:image:url", "og:image"), base)
        declared = _declared_main_summary(tree) if config.declared_main_fallback else None
        table = rewrite_media(tree, url, base, config)
        body = main_text_body(tree, url, config)
        nodes = _nodes_from_body(body, table, config) if body is not None else []
        if declared is not None and _missed_declared_main(nodes, declared, config):
            nodes, tree, table = _nodes_from_declared_main(text, url, config)
        dropped = Counter(table.dropped)
        if config.select_content_images and tree is not None:
            nodes, chosen_drops = select_images(nodes, tree, table, url, og_image, config)
            dropped.update(chosen_drops)
        else:  # trafilatura's choice: what it did not keep was outside its content
            dropped["outside-content"] += len(table.images) - len({id(n.image) for n in nodes if n.type == "image"})
        page.nodes = _finish_nodes(nodes, table, config, dropped)
        page.dropped_images = dict(sorted(dropped.items()))
        if og_video is not None and page.nodes:
            _add_og_video(page.nodes, og_video, page.title)
    except Exception as err:  # noqa: BLE001 -- a bad page must never stop a shard
        LOGGER.warning("extraction failed for %s: %r", url, err)
        page.nodes = []
    return page


def page_to_json(page: ExtractedPage) -> dict[str, Any]:
    """Plain JSON-able dict of a page (for `m3w extract`): nodes keep only their own field (an
    image its `ImageRef`, candidates included), plus the per-reason count of dropped images."""
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
    return {"url": page.url, "title": page.title, "lang": page.lang, "nodes": nodes, "dropped_images": dict(page.dropped_images)}


# --------------------------------------------------------------------------- parsing & metadata


def _parse(text: str) -> Optional[HtmlElement]:
    """One lxml parse, with the repairs and checks of trafilatura's `load_html` (so trafilatura
    sees the tree it expects). lxml parses the repaired page as UTF-8 bytes (its string form is
    converted inside libxml2, ~25% slower; both give the same tree), else as a string; a page
    that does not say "html" early and parses to fewer than two children is not HTML."""
    if not text or not text.strip():
        return None
    beginning = text[:50].lower()
    markup = _repaired_utf8(text, beginning)
    if markup is None:  # characters XML forbids, lone surrogates: trafilatura's repair on the string
        text = repair_faulty_html(text, beginning)
        tree = _fromstring(text)
        if tree is None or not len(tree):
            tree = _fromstring(text.encode("utf-8", "surrogatepass"))
    else:
        tree = _fromstring(markup)
        if tree is None or not len(tree):
            tree = _fromstring(markup.decode("utf-8"))
    if tree is None or not len(tree) or (is_dubious_html(beginning) and len(tree) < 2):
        return None
    return tree


def _repaired_utf8(text: str, beginning: str) -> Optional[bytes]:
    """`repair_faulty_html(text, beginning)` as UTF-8 bytes, or None where only trafilatura's own
    repair applies (a character XML forbids, a lone surrogate). Its whole-page regex scan for
    forbidden characters (~0.8 ms a page) is done here on the bytes, in C: the ASCII controls are
    single bytes in UTF-8 and U+FFFE/U+FFFF fixed three-byte sequences."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(data.translate(None, _XML_FORBIDDEN_BYTES)) != len(data) or b"\xef\xbf\xbe" in data or b"\xef\xbf\xbf" in data:
        return None
    head = text[:4096]
    if "doctype" in beginning:  # trafilatura drops a DOCTYPE holding a "/" from the first line, which always ends in "\n"
        first, newline, rest = text.partition("\n")
        doctype = DOCTYPE_TAG.match(first)
        if doctype is not None or not newline:
            cut = doctype.end() if doctype is not None else 0
            data = data[len(first[:cut].encode("utf-8")):] + (b"" if newline else b"\n")
            head = (first[cut:cut + 4096] + "\n" + rest[:4096])[:4096]
    if any("<html" in line and line.endswith("/>") for line in head.splitlines()[:4]):
        return repair_faulty_html(text, beginning).encode("utf-8")  # a self-closed <html/> (rare): their repair
    return data


def _fromstring(markup: str | bytes) -> Optional[HtmlElement]:
    try:
        return lxml.html.fromstring(markup, parser=_PARSER)
    except Exception:  # noqa: BLE001 - lxml's refusals (ValueError, ParserError, ...) mean "try the other form"
        return None


def _named_meta(metas: list[HtmlElement]) -> dict[str, str]:
    """Each <meta property|name=KEY>'s first non-empty content (whitespace collapsed), by lower-cased KEY."""
    found: dict[str, str] = {}
    for meta in metas:
        key = (meta.get("property") or meta.get("name") or "").strip().lower()
        if key and key not in found:
            content = clean_text(meta.get("content"))
            if content:
                found[key] = content
    return found


def _meta_content(named: dict[str, str], *keys: str) -> Optional[str]:
    """The first of keys (in priority order) that a <meta> gives content (see `_named_meta`)."""
    return next((named[k] for k in keys if k in named), None)


def _page_title(tree: HtmlElement, named: dict[str, str]) -> Optional[str]:
    """og:title (no site-name suffix), else <title>, else the first <h1>."""
    title = _meta_content(named, "og:title", "twitter:title")
    if title:
        return title
    for tag in ("title", "h1"):
        elem = next(tree.iter(tag), None)
        if elem is not None:
            text = clean_text(elem.text_content())
            if text:
                return text
    return None


def _normalise_lang(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    first = value.split(",")[0].strip().replace("_", "-").lower()
    return first if re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]{1,8})*", first) else None


def _opt_out_meta(metas: list[HtmlElement]) -> tuple[list[str], bool]:
    """Robots directives from <meta name="robots"|"<bot>"> and the TDMRep reservation flag."""
    directives: list[str] = []
    tdm = False
    for meta in metas:
        name = (meta.get("name") or "").strip().lower()
        content = (meta.get("content") or "").strip().lower()
        if name == "tdm-reservation":
            tdm = tdm or content == "1"
        elif name == "robots" or name.endswith("bot"):
            directives += [d.strip() for d in content.split(",") if d.strip() and d.strip() not in directives]
    return directives, tdm


def _page_lang(tree: HtmlElement, metas: list[HtmlElement], named: dict[str, str]) -> Optional[str]:
    """Declared language, lowercased BCP-47-ish: <html lang>, content-language, og:locale."""
    lang = _normalise_lang(tree.get("lang") or tree.get("xml:lang"))
    if lang:
        return lang
    for meta in metas:
        if (meta.get("http-equiv") or "").strip().lower() == "content-language":
            lang = _normalise_lang(meta.get("content"))
            if lang:
                return lang
    return _normalise_lang(_meta_content(named, "og:locale"))


def _base_url(tree: HtmlElement, url: str) -> str:
    """The page URL, or its <base href> resolved against it."""
    base = next((b.get("href") for b in tree.iter("base") if b.get("href")), None)
    if base:
        resolved = absolute_url(base, url)
        if resolved:
            return resolved
    return url




# --------------------------------------------------------------------------- output walk


class _NodeBuilder:
    """Walks trafilatura's XML body once, emitting block-level text and media nodes in order."""

    def __init__(self, table: MediaTable, config: ExtractConfig) -> None:
        self.table = table
        self.config = config
        self.nodes: list[Node] = []
        self.buffer: list[str] = []
        self.cell_pending = False  # a table cell began: separate it from the previous one
        self.seen_media: set[str] = set()  # placeholder srcs already emitted

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
        if src in self.seen_media or PLACEHOLDER_RE.fullmatch(src) is None:
            return  # repeated, or an image trafilatura found outside our rewrite (should not happen)
        item = placeholder_media(elem, self.table)
        if item is None:
            return
        self.seen_media.add(src)
        if item.image is not None:
            self.nodes.append(Node(type="image", image=item.image))
        elif item.video is not None:
            self.nodes.append(Node(type="video", video=item.video))


def _finish_nodes(nodes: list[Node], table: MediaTable, config: ExtractConfig, dropped: Counter) -> list[Node]:
    """The first image node per URL (`dedup_images`; later ones counted as duplicate), then each
    kept figure's caption as a text node right after its last media node."""
    out: list[Node] = []
    seen: set[str] = set()
    for node in nodes:
        if node.type == "image" and node.image is not None and config.dedup_images:
            if node.image.url in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(node.image.url)
        out.append(node)
    if not config.keep_figcaptions:
        return out
    groups = {id(item.image if item.image is not None else item.video): item.caption_group for item in (*table.images, *table.videos)}
    last: dict[int, int] = {}
    for i, node in enumerate(out):
        group = groups.get(id(node.image if node.type == "image" else node.video)) if node.type != "text" else None
        if group is not None:
            last[group] = i
    for group, i in sorted(last.items(), key=lambda kv: kv[1], reverse=True):
        text = table.captions.get(group)
        if not text or len(text) < config.min_text_node_chars:
            continue
        following = out[i + 1] if i + 1 < len(out) else None
        if following is not None and following.type == "text" and following.text == text:
            continue
        out.insert(i + 1, Node(type="text", text=text))
    return out


def _nodes_from_body(body: Any, table: MediaTable, config: ExtractConfig) -> list[Node]:
    builder = _NodeBuilder(table, config)
    builder.visit(body)
    builder.flush()
    return builder.nodes


def _og_video(named: dict[str, str], base: str) -> Optional[VideoRef]:
    """og:video as a VideoRef (Flash players skipped), placed at the top of the page."""
    url = _meta_content(named, "og:video:secure_url", "og:video:url", "og:video")
    mime = (_meta_content(named, "og:video:type") or "").lower()
    absolute = absolute_url(url, base)
    if absolute is None or "flash" in mime or url_ext(absolute) == "swf":
        return None
    return VideoRef(sources=[absolute], poster=absolute_url(_meta_content(named, "og:image"), base), origin="og-video")


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
    """The first <main> or role="main" element in document order (a Python walk that stops
    there is cheaper than the XPath union, which tests every element's attributes)."""
    for elem in tree.iter():
        if elem.tag == "main" or elem.get("role") == "main":
            return elem
    return None


def _declared_main_summary(tree: HtmlElement) -> Optional[str]:
    """The text of the page's declared main region, read before any rewriting; None when there
    is none or it shows no image. Its words are read only if trafilatura's output has no image."""
    main = _find_declared_main(tree)
    if main is None or next(main.iter("img", "picture"), None) is None:
        return None
    return main.text_content()


def _missed_declared_main(nodes: list[Node], declared: str, config: ExtractConfig) -> bool:
    if any(n.type == "image" for n in nodes):
        return False
    words = [w.lower() for n in nodes if n.type == "text" and n.text for w in _WORD_RE.findall(n.text)]
    if not words:
        return True
    vocabulary = {w.lower() for w in _WORD_RE.findall(declared)}
    inside = sum(1 for w in words if w in vocabulary)
    return inside / len(words) < config.declared_main_max_overlap


class _DeclaredMainWalker(_NodeBuilder):
    """The node builder over raw HTML: block tags split text, placeholders become media."""

    def visit(self, elem: Any) -> None:
        tag = elem.tag
        if not isinstance(tag, str) or tag in _SKIP_TAGS:
            return
        if tag == "img":
            if PLACEHOLDER_RE.fullmatch(elem.get("src") or ""):
                self.media(elem)
            return
        block = tag in _HTML_BLOCK_TAGS
        if block:
            self.flush()
        self.visit_content(elem)
        if block:
            self.flush()


def _nodes_from_declared_main(text: str, url: str, config: ExtractConfig) -> tuple[list[Node], Optional[HtmlElement], MediaTable]:
    """Second parse, only for pages where trafilatura chose the wrong region: the nodes of the
    declared main region, with the tree and media table they came from.

    Teaser-card dropping is off here: on a portal page the cards are the content.
    """
    tree = _parse(text)
    main = _find_declared_main(tree) if tree is not None else None
    if tree is None or main is None:
        return [], None, MediaTable()
    table = rewrite_media(tree, url, _base_url(tree, url), replace(config, drop_teaser_images=False))
    walker = _DeclaredMainWalker(table, config)
    walker.visit(main)
    walker.flush()
    return walker.nodes, tree, table

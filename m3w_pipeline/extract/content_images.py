"""Which images of a page are content, and where they go among trafilatura's text nodes.

trafilatura decides the text; its image choice is a side effect of its text rules: a container
whose class says "slide", "widget", "teaser" or "related_image_wrap" goes with the photo in it,
an image in an ``<h3>``, a ``<dl>`` gallery or an ``<aside>`` block is never kept, the lead
image above the article body lies outside its region, and what it does keep includes share
buttons, logos and teaser tiles. So images are chosen here, on the rewritten DOM (media are
placeholders, see `media_refs`), in four steps:

1. `index_dom`: the page's visible text as one whitespace-free stream, with the element owning
   each piece and the offset of each media placeholder.
2. `locate`: each text node of trafilatura's output found in that stream, so each has a DOM
   position and a DOM element.
3. `content_region`: the deepest element holding `content_region_share` of the located text,
   the article as trafilatura saw it (none when that is the whole page: its last-resort dump).
4. Candidates: every image trafilatura kept, every image in the region, the lead image just
   before the region (`_is_lead`: close to the region's start, or the page's og:image), and the
   photos of a lightbox gallery (`_lightbox_galleries`). A candidate the reader does not see as
   content is dropped and counted (`_drop_reason`, reasons in `IMAGE_DROP_REASONS`); the others
   are placed by DOM position among the nodes (`_place`).

The rules use what a page says about an image (class and id words, file name, declared or URL
size, where it links, whether it is displayed), never a site's name. On the 60 judged corpus pages
(tests/data/content_images) they reach recall 209/213 and precision 209/210 with order kept. Left:
gizmodo's lead (no URL on the page, only a template id that og:image carries), handelsblatt's
lead (800 characters of teaser text and 6 levels away from the body) and its newsletter promo
box (a same-site link that nothing names a promo), villacc's small-screen main image
(``href="#"``, apart from its gallery), parcoabruzzo's chart (a photo column beside the text).
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from lxml.etree import iterwalk
from lxml.html import HtmlElement

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.core.nodes import Node
from m3w_pipeline.extract.media_refs import PLACEHOLDER_RE, MediaTable, RecordedMedia, absolute_url, is_hidden, name_words, url_ext

# Elements whose text a reader never sees as page text. Not <noscript>: some pages put the
# whole page in one (a no-JS wrapper), and trafilatura then extracts from it.
_INVISIBLE_TAGS = frozenset({"script", "style", "template", "svg", "head", "title", "textarea", "select", "option"})
# Characters ignored when matching output text to the DOM: whitespace (re-flowed by every
# extractor) and the " | " the node builder puts between table cells (`_squeeze`).
_PROBE = 40  # characters of a text node's start (and end) searched for in the DOM stream


@dataclass
class DomIndex:
    """The visible text of a tree as one whitespace-free string, and where each piece came from."""

    text: str
    starts: list[int]  # offset of each text piece
    owners: list[HtmlElement]  # element whose .text or child's .tail the piece is
    media: dict[str, tuple[int, HtmlElement]] = field(default_factory=dict)  # placeholder src -> (offset, element)

    def owner_at(self, offset: int) -> Optional[HtmlElement]:
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.owners[i] if i >= 0 else None


def _squeeze(text: str) -> str:
    return "".join(text.split()).replace("|", "")


# Joins the raw pieces for one squeeze of the whole page: never in lxml text (XML forbids it),
# not whitespace to str.split(), so each piece's squeezed form is what lies between two.
_SEPARATOR = "\x00"


def index_dom(root: HtmlElement) -> DomIndex:
    """One pass over the tree (iterative: pages nest thousands of elements deep) collecting each
    text piece and its owner, then one squeeze of all the pieces at once. The hot loop of
    `select_images` (every element twice), so it is kept flat: no call per event."""
    raw: list[str] = []
    raw_owners: list[HtmlElement] = []
    media_at: list[tuple[str, int, HtmlElement]] = []  # placeholder src, pieces before it, element
    walker = iterwalk(root, events=("start", "end"))
    for event, elem in walker:
        if event == "end":  # the tail belongs to the parent, after this element's subtree
            text = elem.tail
            if not text or elem is root or text.isspace():
                continue
            owner = elem.getparent()
            if owner is None:
                continue
        else:
            tag = elem.tag
            if not isinstance(tag, str):  # comments, processing instructions: only their tail counts
                continue
            if tag in _INVISIBLE_TAGS:
                walker.skip_subtree()
                continue
            if tag == "img":
                src = elem.get("src") or ""
                if PLACEHOLDER_RE.fullmatch(src):
                    media_at.append((src, len(raw), elem))
            text = elem.text
            if not text or text.isspace():
                continue
            owner = elem
        raw.append(text)
        raw_owners.append(owner)
    squeezed = _squeeze(_SEPARATOR.join(raw)).split(_SEPARATOR) if raw else []
    pieces: list[str] = []
    starts: list[int] = []
    owners: list[HtmlElement] = []
    before = [0]  # stream offset before each raw piece
    offset = 0
    for piece, owner in zip(squeezed, raw_owners):
        if piece:
            starts.append(offset)
            owners.append(owner)
            pieces.append(piece)
            offset += len(piece)
        before.append(offset)
    media = {src: (before[count], elem) for src, count, elem in media_at}
    return DomIndex("".join(pieces), starts, owners, media)


@dataclass
class Located:
    """Where one output text node was found: stream offsets and the element holding all of it."""

    start: int
    end: int
    elem: HtmlElement
    weight: int  # characters


def _common_ancestor(a: HtmlElement, b: HtmlElement) -> HtmlElement:
    if a is b:
        return a
    above_a = set(a.iterancestors())  # elements, not id()s: lxml proxies live only while referenced
    above_a.add(a)
    return next(e for e in (b, *b.iterancestors()) if e in above_a)


def locate(texts: list[Optional[str]], index: DomIndex) -> list[Optional[Located]]:
    """Find each text in the stream, searching forward from the previous hit (output follows
    the page), then from the start. None for texts not on the page (figure captions moved
    out of the DOM, text trafilatura rewrote)."""
    found: list[Optional[Located]] = []
    cursor = 0
    stream = index.text
    for text in texts:
        squeezed = _squeeze(text) if text else ""
        if not squeezed:
            found.append(None)
            continue
        head = squeezed[:_PROBE]
        start = stream.find(head, cursor)
        if start < 0:
            start = stream.find(head)
        if start < 0:
            found.append(None)
            continue
        tail = squeezed[-_PROBE:]
        end = stream.find(tail, start + len(squeezed) - len(tail)) if len(squeezed) > len(head) else start
        end = end + len(tail) if end >= 0 else start + len(head)
        first, last = index.owner_at(start), index.owner_at(end - 1)
        if first is None or last is None:
            found.append(None)
            continue
        found.append(Located(start, end, _common_ancestor(first, last), len(squeezed)))
        cursor = end
    return found


def content_region(located: list[Optional[Located]], root: HtmlElement, share: float) -> Optional[HtmlElement]:
    """The deepest element holding at least `share` of the located text: walk down from the
    root while one child still holds that much."""
    weights: dict[HtmlElement, int] = {}  # elements as keys keep their lxml proxies (and identity) alive
    total = 0
    for hit in located:
        if hit is None:
            continue
        total += hit.weight
        for elem in (hit.elem, *hit.elem.iterancestors()):
            weights[elem] = weights.get(elem, 0) + hit.weight
    if not total:
        return None
    region = root
    while True:
        child = next((c for c in region if weights.get(c, 0) >= share * total), None)
        if child is None:
            return region
        region = child


# --------------------------------------------------------------------------- what is not content

# Class/id/file-name words, split at "-", "_", spaces, camelCase and digits, that say what an
# image is for. A hit on the image itself, its file name, or an element between it and the
# region (or the block it shares with the region) drops it, counted under the reason.
_WORD_REASONS: dict[str, str] = {
    **dict.fromkeys(("icon", "icons", "sprite", "emoji", "glyph", "badge", "favicon"), "icon"),
    **dict.fromkeys(("logo", "logos", "logotype"), "logo"),
    **dict.fromkeys(("share", "sharing", "social", "sociable", "addthis", "sharethis", "shariff", "follow", "print", "rss", "feedly"),
                    "share"),
    **dict.fromkeys(("avatar", "avatars", "gravatar", "author", "authors", "byline", "user", "users"), "avatar"),
    **dict.fromkeys(("ad", "ads", "advert", "adverts", "advertisement", "adslot", "dfp", "adsense", "sponsor", "sponsored", "promo",
                     "cta", "newsletter", "subscribe", "signup"), "ad"),
    **dict.fromkeys(("nav", "navbar", "navigation", "menu", "footer", "breadcrumb", "breadcrumbs", "sidebar", "comment", "comments",
                     "modal", "popup", "toolbar", "cookie"), "chrome"),
}
# Network names as an image's whole file name (twitter.svg, facebook-medium.png, fb-icon.png):
# the buttons of share and follow bars.
_SOCIAL_FILE_WORDS = frozenset({"facebook", "fb", "twitter", "tw", "linkedin", "pinterest", "instagram", "insta", "youtube", "whatsapp",
                                "telegram", "reddit", "tumblr", "xing", "vk", "mail", "email", "gplus", "google"})
# First host labels of ad servers.
_AD_HOSTS = frozenset({"ad", "ads", "adserver", "adservice", "adserving", "pagead", "pagead2", "banner", "banners"})
_DECORATION_REPEATS = 3
# Elements that are site chrome whatever their class.
_CHROME_TAGS = frozenset({"nav", "footer", "form", "button", "menu"})
_URL_SIZE_RE = re.compile(r"(?:^|[/_-])(\d{1,4})x(\d{1,4})(?=[/.]|$)")
# A link to an app action (mailto:, whatsapp:, sms:): a share button.
_APP_LINK_RE = re.compile(r"(?!https?:)[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_LIGHTBOX_EXTS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "avif", "bmp", "tif", "tiff"})
# Every reason an image element does not become an image node: `media_refs` drops the first
# five before trafilatura runs, `select_images` the others, `page._finish_nodes` duplicates.
IMAGE_DROP_REASONS = ("no-url", "pixel", "emoji", "teaser", "video-fallback", "hidden", "icon", "logo", "share", "avatar", "ad", "chrome",
                      "external-link", "outside-content", "duplicate")


def _file_words(url: str) -> list[str]:
    """Words of a URL's file name (its directories name the site's folders, not the image)."""
    return name_words(urlsplit(url).path.rsplit("/", 1)[-1].rsplit(".", 1)[0])


def _url_size(url: str) -> Optional[tuple[int, int]]:
    """A WxH the URL spells (resizer paths /40x40/, WordPress -90x90.png), the last one."""
    found = _URL_SIZE_RE.findall(urlsplit(url).path)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def _link_kind(elem: HtmlElement, page_url: str) -> str:
    """What the image links to: "" (nothing, "#", the page itself), "image" (its own file: a
    lightbox), "site" (another page of this site), "external" (another site) or "app" (a
    mailto:/whatsapp:/sms: action: a share button)."""
    link = next(elem.iterancestors("a"), None)
    href = (link.get("href") or "").strip() if link is not None else ""
    if not href or href.startswith(("#", "javascript:")):
        return ""
    if _APP_LINK_RE.match(href):
        return "app"
    target = absolute_url(href, page_url)
    if target is None or target.split("#")[0] == page_url.split("#")[0]:
        return ""
    if url_ext(target) in _LIGHTBOX_EXTS:
        return "image"
    return "site" if _site(target) == _site(page_url) else "external"


def _site(url: str) -> str:
    """Registrable-ish host: the last two labels (three under a two-letter second level, co.uk)."""
    host = (urlsplit(url).hostname or "").lower()
    labels = host.split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-2]) <= 3 and len(labels[-1]) == 2 else 2
    return ".".join(labels[-keep:])


def _drop_reason(
    elem: HtmlElement, item: RecordedMedia, scope: Optional[HtmlElement], repeats: int, page_url: str, config: ExtractConfig
) -> Optional[str]:
    """Why the reader would not see this candidate as content, or None to keep it.

    `scope` bounds the ancestors whose names count: the region for an image inside it, the
    element shared with the region for one outside (above that, names describe the page
    layout, not this image: an article body may sit in "st-sidebar__main").
    """
    ref = item.image
    assert ref is not None
    ancestors = []
    for parent in elem.iterancestors():
        if parent is scope:
            break
        ancestors.append(parent)
    # hidden: a reader never sees it (share images for Pinterest, microdata copies, the
    # <noscript> fallback of a script-loaded ad)
    if item.hidden or any(is_hidden(e) for e in elem.iterancestors()) or any(e.tag == "noscript" for e in ancestors):
        return "hidden"
    # the same picture three or more times on a page is decoration: rating stars, bullets
    if repeats >= _DECORATION_REPEATS:
        return "icon"
    # icon-sized: declared, or spelled in the URL (resizers: /40x40/, WordPress -90x90.png)
    declared = [side for side in (ref.width_attr, ref.height_attr) if side is not None]
    url_size = _url_size(ref.url)
    if any(side < config.min_content_image_side for side in declared) or (url_size and max(url_size) < config.min_content_image_side):
        return "icon"
    # share buttons: named after a network (twitter.svg, facebook-medium.png, class="fb") or
    # linking to an app action (mailto:, whatsapp:)
    file_words = _file_words(ref.url)
    own_words = name_words(item.names)
    if any(words and words[0] in _SOCIAL_FILE_WORDS and len(words) <= 2 for words in (file_words, own_words)):
        return "share"
    link = _link_kind(elem, page_url)
    if link == "app":
        return "share"
    # what the page calls it: the image's class/id, its file name, the elements around it
    element_names = (" ".join(filter(None, (e.get("class"), e.get("id")))) for e in ancestors)
    for own, words in ((True, own_words), (True, file_words), *((False, name_words(names)) for names in element_names)):
        # "icon" around an image is a false friend (WordPress galleries: dt.gallery-icon)
        reason = next((_WORD_REASONS[w] for w in words if w in _WORD_REASONS and (own or _WORD_REASONS[w] != "icon")), None)
        if reason is not None:
            return reason
    if any(e.tag in _CHROME_TAGS for e in ancestors):
        return "chrome"
    # served from an ad host (ads.example.com, adserver.example.net)
    if (urlsplit(ref.url).hostname or "").split(".")[0] in _AD_HOSTS:
        return "ad"
    # linked to another site: ads, partner logos, promos (a large picture may still be content:
    # a Pinterest graphic in the text links to its pin)
    if link == "external" and not (len(declared) == 2 and min(declared) >= config.external_link_min_side):
        return "external-link"
    return None


# --------------------------------------------------------------------------- choosing and placing

_AFTER_MEDIA = 1 << 60  # order key of a text node: after any media at the same offset


@dataclass
class _Candidate:
    src: str  # placeholder URL
    item: RecordedMedia
    offset: int
    order: int  # document order among placeholders
    elem: HtmlElement


def select_images(
    nodes: list[Node], tree: HtmlElement, table: MediaTable, page_url: str, og_image: Optional[str], config: ExtractConfig
) -> tuple[list[Node], Counter]:
    """trafilatura's nodes with the content images chosen here, in DOM order among them.

    Returns the nodes and the recorded images that did not become nodes, by reason.
    """
    if not table.images:
        return nodes, Counter()
    index = index_dom(tree)
    root = tree.find("body") if tree.find("body") is not None else tree
    text_at = [i for i, node in enumerate(nodes) if node.type == "text"]
    located = locate([nodes[i].text for i in text_at], index)
    region = content_region(located, root, config.content_region_share)
    if region is not None and _whole_page(region, root, index, config):
        region = None
    region_elems = set(region.iter()) if region is not None else set()
    region_start = min((hit.start for hit in located if hit is not None and hit.elem in region_elems), default=None)

    recorded = {_placeholder_src("i", i): item for i, item in enumerate(table.images)}
    by_ref = {id(item.image): src for src, item in recorded.items()}
    by_ref.update({id(item.video): _placeholder_src("v", i) for i, item in enumerate(table.videos)})
    media_order = {src: order for order, (src, _) in enumerate(sorted(index.media.items(), key=lambda kv: kv[1][0]))}
    candidates = {
        src: _Candidate(src, recorded[src], offset, media_order[src], elem) for src, (offset, elem) in index.media.items() if src in recorded
    }
    kept = {by_ref[id(node.image)] for node in nodes if node.type == "image" and id(node.image) in by_ref}
    galleries = _lightbox_galleries([c for c in candidates.values() if c.elem not in region_elems], page_url, config)
    og_twin = _og_twin(og_image, candidates.values())

    repeats = Counter(item.image.url for item in recorded.values() if item.image is not None)
    dropped: Counter = Counter()
    chosen: dict[str, _Candidate] = {}
    for src, item in recorded.items():
        cand = candidates.get(src)
        if cand is None:  # inside an element no reader sees (<template>, <textarea>)
            dropped["outside-content"] += 1
            continue
        inside = cand.elem in region_elems
        scope = region if inside else (_common_ancestor(cand.elem, region) if region is not None else None)
        lead = (
            not inside and region is not None and region_start is not None and cand.offset <= region_start
            and _is_lead(cand, region, scope, region_start, src == og_twin, config)
        )
        if not (src in kept or inside or lead or src in galleries):
            dropped["outside-content"] += 1
            continue
        reason = _drop_reason(cand.elem, item, scope, repeats[item.image.url], page_url, config)
        if reason is not None:
            dropped[reason] += 1
        else:
            chosen[src] = cand

    return _place(nodes, located, text_at, chosen, kept, by_ref, index, media_order), dropped


def _whole_page(region: HtmlElement, root: HtmlElement, index: DomIndex, config: ExtractConfig) -> bool:
    """The region is the page, not an article: it is the root, or it holds the site's
    navigation or footer and nearly all of the page's text (trafilatura's last resort, a dump of
    every text on the page). Its images are then only those trafilatura kept."""
    if region is root:
        return True
    if next(region.iter("nav", "footer", "menu"), None) is None:
        return False
    first, last = _text_span(region, index)
    return last - first >= config.content_region_share * len(index.text)


def _text_span(elem: HtmlElement, index: DomIndex) -> tuple[int, int]:
    """Stream offsets where the text inside `elem` starts and ends."""
    inside = [i for i, owner in enumerate(index.owners) if owner is elem or elem in owner.iterancestors()]
    if not inside:
        return 0, 0
    end = index.starts[inside[-1] + 1] if inside[-1] + 1 < len(index.starts) else len(index.text)
    return index.starts[inside[0]], end


def _placeholder_src(kind: str, index: int) -> str:
    return f"http://m3w.invalid/{kind}/{index}.png"


def _is_lead(cand: _Candidate, region: HtmlElement, shared: Optional[HtmlElement], region_start: int, og: bool,
             config: ExtractConfig) -> bool:
    """Just before the region (at most `lead_max_text_chars` of title, byline and date between)
    and inside the block the region sits in (at most `lead_max_levels` up), or the page's own
    og:image within twice that text: the article's lead picture."""
    between = region_start - cand.offset
    if og and between <= 2 * config.lead_max_text_chars:
        return True
    if shared is None or between > config.lead_max_text_chars:
        return False
    levels = 0
    for parent in region.iterancestors():
        levels += 1
        if parent is shared:
            break
    return levels <= config.lead_max_levels


def _lightbox_galleries(outside: list[_Candidate], page_url: str, config: ExtractConfig) -> set[str]:
    """Images outside the region that link to their own full-size file, in a container holding
    at least `gallery_min_images` of them: the page's photo gallery, wherever its text is (a
    single lightbox image in a sidebar is not one)."""
    linked = [c for c in outside if _link_kind(c.elem, page_url) == "image"]
    counts: dict[HtmlElement, int] = {}
    for cand in linked:
        for parent in cand.elem.iterancestors():
            if parent.tag in ("body", "html"):
                break
            counts[parent] = counts.get(parent, 0) + 1
    return {
        c.src for c in linked
        if any(counts.get(p, 0) >= config.gallery_min_images for p in c.elem.iterancestors() if p.tag not in ("body", "html"))
    }


_SIZE_TOKEN_RE = re.compile(r"[-_.]?(?:\d{2,4}x\d{2,4}|w\d+h\d+\w*|scaled|large|medium|small|thumb(?:nail)?)$", re.IGNORECASE)


def _file_stem(url: str) -> str:
    """File name without extension and size suffixes: photo-1024x576.jpg and photo.jpg agree."""
    name = urlsplit(url).path.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower()
    previous = None
    while previous != name:
        previous, name = name, _SIZE_TOKEN_RE.sub("", name)
    return name


def _og_twin(og_image: Optional[str], candidates: Any) -> Optional[str]:
    """The placeholder showing the page's og:image: one with that URL or path among its
    candidates, else the only one whose file stem is the og:image's, or starts with it (a stem
    several images share, "image" or "preview", says nothing)."""
    if not og_image:
        return None
    og_path = urlsplit(og_image).path
    for cand in sorted(candidates, key=lambda c: c.order):
        if any(url == og_image or urlsplit(url).path == og_path for url in cand.item.image.candidates):
            return cand.src
    stem = _file_stem(og_image)
    if len(stem) < 4:
        return None
    for matches in (lambda other: other == stem, lambda other: other.startswith(stem) and other[len(stem)] in "-_"):
        # the same stem, else the og:image stem plus a suffix (CMS thumbnails append a crop hash)
        same = [c for c in candidates if any(matches(_file_stem(url)) for url in c.item.image.candidates)]
        if same:
            return same[0].src if len(same) == 1 else None
    return None


def _place(
    nodes: list[Node], located: list[Optional[Located]], text_at: list[int], chosen: dict[str, _Candidate], kept: set[str],
    by_ref: dict[int, str], index: DomIndex, media_order: dict[str, int],
) -> list[Node]:
    """Drop kept images that were not chosen; insert chosen ones trafilatura dropped before the
    first node that follows them in the page (order key: text offset, then document order)."""
    hit_of = dict(zip(text_at, located))
    existing: list[tuple[tuple[int, int], Node]] = []
    key = (-1, -1)
    for i, node in enumerate(nodes):
        if node.type == "text":
            hit = hit_of.get(i)
            key = (hit.start, _AFTER_MEDIA) if hit is not None else key
        else:
            src = by_ref.get(id(node.image if node.type == "image" else node.video))
            if node.type == "image" and src not in chosen:
                continue
            if src is not None and src in index.media:
                key = (index.media[src][0], media_order[src])
        existing.append((key, node))
    new = sorted((c for src, c in chosen.items() if src not in kept), key=lambda c: (c.offset, c.order))
    out: list[Node] = []
    pending = 0
    for node_key, node in existing:
        while pending < len(new) and (new[pending].offset, new[pending].order) < node_key:
            out.append(Node(type="image", image=new[pending].item.image))
            pending += 1
        out.append(node)
    out.extend(Node(type="image", image=c.item.image) for c in new[pending:])
    return out

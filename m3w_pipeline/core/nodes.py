"""The ordered content of one page: what extraction produces and every later step reads.

Kept separate from `extract` so that shards, filters and pairs can use the types
without pulling in the HTML stack. All types are plain dataclasses: they pickle
for Beam and convert to JSON with `dataclasses.asdict`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

NodeType = Literal["text", "image", "video"]


@dataclass
class ImageRef:
    """An <img>/<picture> reference as found on the page, before any bytes are seen."""

    url: str  # absolute URL, resolved against the page URL and <base>
    alt: Optional[str] = None
    title: Optional[str] = None
    width_attr: Optional[int] = None  # the width="" attribute, when numeric
    height_attr: Optional[int] = None
    caption: Optional[str] = None  # text of the enclosing <figure>'s <figcaption>
    # Every absolute URL the page gives for this picture, best first (`url` is the first):
    # srcset / <picture> <source> entries by rank, lazy data-* URLs, src, the <noscript> twin.
    # An archive often holds only the variant the browser loaded (a 1x src, not the 2x srcset
    # entry), so joining and fetching may fall back through these.
    candidates: list[str] = field(default_factory=list)


@dataclass
class VideoRef:
    """A video reference: <video>/<source>, og:video, figure-wrapped players."""

    sources: list[str] = field(default_factory=list)  # absolute candidate URLs, best first
    poster: Optional[str] = None
    tracks: list[str] = field(default_factory=list)  # absolute <track> URLs
    title: Optional[str] = None
    caption: Optional[str] = None
    origin: str = "video-tag"  # video-tag | og-video | iframe


@dataclass
class Node:
    type: NodeType
    text: Optional[str] = None  # for type == "text"
    image: Optional[ImageRef] = None  # for type == "image"
    video: Optional[VideoRef] = None  # for type == "video"


@dataclass
class ExtractedPage:
    url: str
    nodes: list[Node]
    title: Optional[str] = None
    lang: Optional[str] = None  # the page's declared language (<html lang>, meta), if any
    # Opt-out signals the page itself carries: directives of <meta name="robots"> (or a
    # named crawler's meta) and TDMRep's <meta name="tdm-reservation" content="1">.
    robots: list[str] = field(default_factory=list)
    tdm_reservation: bool = False
    # Image elements of the page that did not become image nodes, by reason (no-url, pixel,
    # emoji, teaser, video-fallback, hidden, icon, logo, share, avatar, ad, chrome,
    # external-link, outside-content, duplicate): image nodes + these = every image element
    # (a <picture> counts once, the <noscript> twin of a lazy image not at all).
    dropped_images: dict[str, int] = field(default_factory=dict)

    def text_nodes(self) -> list[str]:
        return [n.text for n in self.nodes if n.type == "text" and n.text]

    def image_refs(self) -> list[ImageRef]:
        return [n.image for n in self.nodes if n.type == "image" and n.image is not None]

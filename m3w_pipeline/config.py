"""Typed configuration for a corpus build.

Every threshold the pipeline applies is a named field here, with a default that
works on real Common Crawl data. Each step reads only its own section, so a
section can be pickled to Beam workers on its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class WarcConfig:
    # Pages larger than this (decoded HTTP payload) are dropped as too-large.
    max_page_bytes: int = 5_000_000
    # Media records larger than this are dropped as too-large.
    max_media_bytes: int = 25_000_000


@dataclass(frozen=True)
class ExtractConfig:
    # Text blocks shorter than this many characters are not kept as nodes.
    min_text_node_chars: int = 1
    # Keep <figcaption> text as a text node right after its image.
    keep_figcaptions: bool = True
    # Reader comments are not main content; trafilatura's include_comments.
    include_comments: bool = False
    # Keep table rows as text nodes (trafilatura's include_tables).
    include_tables: bool = True
    # Skip trafilatura's readability/justext comparison: faster, a little less recall.
    fast: bool = False
    # Split a paragraph around an inline image so the image keeps its DOM position.
    split_text_at_inline_images: bool = True
    # Images whose width or height attribute is below this are spacers / tracking pixels.
    min_declared_image_side: int = 2
    # From a srcset, take the widest candidate up to this many px (0: no cap, widest).
    max_srcset_width: int = 0
    # Keep only the first image node per absolute URL.
    dedup_images: bool = True
    # Drop related-article cards: an image linked to a page that a nearby text link (within
    # teaser_max_depth ancestors, link text >= teaser_link_density of the text) also targets.
    drop_teaser_images: bool = True
    teaser_max_depth: int = 4
    teaser_link_density: float = 0.5
    # Add a video node for the page's og:video meta unless a <video> already has that URL.
    include_og_video: bool = True


@dataclass(frozen=True)
class ImageConfig:
    # Pillow's decompression-bomb guard: images with more pixels are rejected.
    max_image_pixels: int = 89_478_485
    min_side: int = 64
    # max(w, h) / min(w, h) above this is rejected as bad-aspect.
    max_aspect_ratio: float = 3.0
    # Longest side after resizing; smaller images are not upscaled.
    max_side: int = 512
    output_format: str = "jpg"
    jpeg_quality: int = 90
    # Convert images with an embedded non-sRGB ICC profile (Display P3, Adobe RGB,
    # CMYK press profiles) to sRGB; costs a few ms per such image.
    convert_icc_to_srgb: bool = True


@dataclass(frozen=True)
class FilterConfig:
    min_words_per_document: int = 20
    min_images_per_document: int = 1
    max_images_per_document: int = 30


@dataclass(frozen=True)
class ShardConfig:
    # Documents per tar shard.
    samples_per_shard: int = 1000
    # Prefix of shard file names: PREFIX-00000.tar, PREFIX-00000.parquet.
    prefix: str = "m3w"


@dataclass(frozen=True)
class BuildConfig:
    warc: WarcConfig = field(default_factory=WarcConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildConfig":
        """Build from a (possibly partial) nested dict; unknown keys are an error."""
        return _from_dict(cls, data)


def _from_dict(klass: type, data: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(klass)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {klass.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None  # type: ignore[misc]
        if is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(default), value)
        else:
            kwargs[name] = value
    return klass(**kwargs)

"""The truth file: what the pipeline should make of every HTML response in the sample crawl.

Why: pipeline tests compare their output with `sample-truth.jsonl`, so every field is
defined here, in one place, and the expectations (kept or dropped, and why) are derived
from the pipeline's own default config rather than restated.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from m3w_pipeline.core.config import FilterConfig, ImageConfig
from m3w_pipeline.sample.shapes import RenderedImage, RenderedVideo, ShapeSpec
from m3w_pipeline.sample.text import count_words

TRUTH_FILENAME = "sample-truth.jsonl"
# What the pipeline's default config keeps; the truth's expectations are derived from it.
MIN_SIDE = ImageConfig().min_side
MAX_ASPECT = ImageConfig().max_aspect_ratio
MIN_WORDS = FilterConfig().min_words_per_document


def _spec_fields(spec: ShapeSpec) -> dict[str, Any]:
    """What an image or video shows, as images[*] and videos[*] both record it."""
    return {"description": spec.description(), "shape": spec.shape, "colour": spec.colour, "count": spec.count,
            "background": spec.background}


def image_truth(url: str, ref: str, style: str, spec: ShapeSpec, rendered: RenderedImage) -> dict[str, Any]:
    """One truth image entry; callers fill content_type, also_written, text_sources, caption.

    Fields: url (absolute; for srcset/<picture> the largest candidate), ref (as written in
    the HTML, before resolving against <base href>/page URL; HTML entities decoded),
    style (URL style: absolute, srcset, picture, lazy, cdn-hash, php, root-relative,
    path-relative), format (Pillow name), content_type (HTTP header sent; None = absent;
    wrong on purpose for some), width/height/bytes of the crawled file, description
    (what text next to it says: "three red circles on a white background"), shape,
    colour, count, background, centres ([x, y] of each shape), text_sources (alt,
    figcaption, paragraph), caption (figcaption or adjacent sentence), in_crawl,
    expected_drop (None, too-small, bad-aspect, missing), warc_file, also_written
    (smaller srcset/<picture> fallback candidates that are also in the crawl).
    """
    return {
        "url": url,
        "ref": ref,
        "style": style,
        "format": rendered.format,
        "content_type": None,
        "width": rendered.width,
        "height": rendered.height,
        "bytes": len(rendered.data),
        **_spec_fields(spec),
        "centres": [list(c) for c in rendered.centres],
        "text_sources": [],
        "caption": None,
        "in_crawl": True,
        "expected_drop": expected_drop(rendered.width, rendered.height),
        "warc_file": None,
        "also_written": [],
    }


def expected_drop(width: int, height: int) -> Optional[str]:
    """Why the default ImageConfig drops an image of this size, or None if it is kept."""
    if min(width, height) < MIN_SIDE:
        return "too-small"
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return "bad-aspect"
    return None


def video_truth(
    spec: ShapeSpec, caption: str, source: str, poster_url: str, poster: RenderedImage, clip: Optional[RenderedVideo]
) -> dict[str, Any]:
    """One truth video entry (fields: see `page_truth`); the clip fields are null when the clip is not crawled."""
    truth = {
        "sources": [source], "poster": poster_url, "poster_width": poster.width, "poster_height": poster.height,
        "caption": caption, **_spec_fields(spec), "in_crawl": False,
        "url": None, "width": None, "height": None, "fps": None, "frames": None, "duration": None,
        "bytes": None, "velocity": None, "warc_file": None,
    }
    if clip is not None:
        truth.update(in_crawl=True, url=source, width=clip.width, height=clip.height, fps=clip.fps,
                     frames=clip.frames, duration=clip.duration, bytes=len(clip.data), velocity=list(clip.velocity))
    return truth


def page_truth(page_fields: dict[str, Any], warc_file: str, duplicate_of: Optional[str]) -> dict[str, Any]:
    """Complete a page's truth line with where it is and what the pipeline should do with it.

    Fields: url, warc_file, status, kind, site, layout, title, base_href,
    images (page order; main content only; see `image_truth`), videos (sources, poster and
    its size and poster_warc_file, caption, description, shape, colour, count, background,
    in_crawl; for a clip in the crawl: url, warc_file, width, height, fps, frames, duration,
    bytes, velocity [px/s]; else those are null), boilerplate_images (header logo, not main content),
    main_words (APPROXIMATE: words of h1/h2/h3, paragraphs, list items and captions in the article,
    excluding byline, alt text and chrome), words_approximate, expected_kept, expected_drop_reason,
    duplicate_of (URL of the page this one is a byte-identical copy of), truncated.
    """
    truth = dict(page_fields)
    valid = [im for im in truth["images"] if im["expected_drop"] is None]
    if not truth["images"]:
        reason: Optional[str] = "no-images"
    elif not valid:
        reason = "no-valid-images"
    elif truth["main_words"] < MIN_WORDS:
        reason = "too-few-words"
    else:
        reason = None
    truth.update(
        warc_file=warc_file, words_approximate=True, expected_kept=reason is None,
        expected_drop_reason=reason, duplicate_of=duplicate_of, truncated=False,
    )
    return truth


def error_truth(url: str, status: int, reason: str, body: bytes) -> dict[str, Any]:
    """Truth line of an HTML error response (404, 301): never kept, words counted from its text."""
    return {
        "url": url, "status": status, "kind": "error", "site": urlsplit(url).hostname, "layout": None,
        "title": None, "base_href": None, "images": [], "videos": [], "boilerplate_images": [],
        "main_words": count_words(html.unescape(_strip_tags(body.decode("latin-1")))),
        "words_approximate": True, "expected_kept": False, "expected_drop_reason": reason,
        "duplicate_of": None, "truncated": False,
    }


def _strip_tags(text: str) -> str:
    out, depth = [], 0
    for ch in text:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def fill_warc_files(truth_lines: list[dict[str, Any]], media_files: dict[str, str]) -> None:
    """Record in which WARC file each image and video landed (media may sit in a later file)."""
    for line in truth_lines:
        for image in line["images"]:
            image["warc_file"] = media_files.get(image["url"]) if image["in_crawl"] else None
            for also in image.get("also_written", []):
                also["warc_file"] = media_files.get(also["url"])
        for video in line["videos"]:
            video["poster_warc_file"] = media_files.get(video["poster"])
            video["warc_file"] = media_files.get(video["url"]) if video["in_crawl"] else None


def write_truth(path: Path, truth_lines: list[dict[str, Any]]) -> None:
    """One JSON object per line, keys sorted, so the file is byte-stable."""
    with open(path, "w", encoding="utf-8") as fh:
        for line in truth_lines:
            fh.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")

"""Image (and later video) bytes -> validated, normalised, resized, hashed media.

(stub: being written)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from m3w_pipeline.config import ImageConfig


@dataclass
class ProcessedImage:
    data: bytes  # re-encoded bytes (JPEG by default)
    ext: str  # file extension of `data` in a shard: "jpg" | "png" | "webp"
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str  # Pillow's format name of the input: JPEG, PNG, GIF, ...
    original_bytes: int
    sha256: str  # hex digest of `data`
    phash: str  # hex perceptual hash (imagehash.phash)


@dataclass
class ImageResult:
    """Either an image or the named reason it was dropped (see IMAGE_DROP_REASONS)."""

    image: Optional[ProcessedImage]
    reason: str  # "ok" or a drop reason
    detail: str = ""


def process_image(data: bytes, config: ImageConfig = ImageConfig()) -> ImageResult:
    raise NotImplementedError

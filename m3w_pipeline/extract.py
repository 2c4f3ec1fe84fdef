"""Ordered main-content extraction: one parse per page -> text, image and video nodes.

(stub: being written)
"""
from __future__ import annotations

from m3w_pipeline.config import ExtractConfig
from m3w_pipeline.nodes import ExtractedPage


def extract_page(html: str | bytes, url: str, config: ExtractConfig = ExtractConfig()) -> ExtractedPage:
    raise NotImplementedError

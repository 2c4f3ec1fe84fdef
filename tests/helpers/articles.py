"""Article pages of distinct prose for the shuffle test and benchmark (tests/jobs/test_build_shuffle.py,
benchmarks/bench_shuffle.py): every page passes the text filters, so what the build keeps depends on its images."""
from __future__ import annotations

from typing import Callable

from m3w_pipeline.core.document import words
from m3w_pipeline.filter.quality import duplicate_ngram_char_fraction
from m3w_pipeline.sample.text import TextMaker, Topic


def page(title: str, paragraphs: list[str], images: list[str], alt: Callable[[int, str], str] = lambda i, url: f"image {i}") -> bytes:
    """An article: the paragraphs with an image after each of the first ones, `alt(i, url)` its alt text
    (no captions: they would repeat text)."""
    body = "".join(f"<p>{p}</p>" + (f'<figure><img src="{images[i]}" alt="{alt(i, images[i])}"></figure>' if i < len(images) else "")
                   for i, p in enumerate(paragraphs))
    return (f"<!doctype html><html lang=en><head><title>{title}</title></head><body><main><article><h1>{title}</h1>{body}"
            "</article></main></body></html>").encode("utf-8")


def prose(maker: TextMaker, topic: Topic) -> list[str]:
    """Three paragraphs well clear of the repeated n-gram limits, so every page passes the text filters."""
    while True:
        paragraphs = [maker.paragraph(topic, 3) for _ in range(3)]
        tokens = words(" ".join(paragraphs))
        if duplicate_ngram_char_fraction(tokens, 5) < 0.08 and duplicate_ngram_char_fraction(tokens, 10) < 0.04:
            return paragraphs

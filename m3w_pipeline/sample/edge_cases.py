"""Records a pipeline must skip, count or reject rather than extract.

Why: Common Crawl is full of them, and each is a place where a pipeline can silently lose
or double-count documents: JSON and CSS responses, a 404 and a 301 HTML page, exact
duplicate pages at other URLs (utm_source query, /amp path), and a response whose gzip
member is cut in half (written by `warc.write_warc_file`).
"""
from __future__ import annotations

import json
import random
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

from m3w_pipeline.sample.article import make_page
from m3w_pipeline.sample.pages import Page, PageMaker
from m3w_pipeline.sample.truth import error_truth, page_truth
from m3w_pipeline.sample.warc import HTML_CONTENT_TYPE, Capture


def misc_captures() -> list[tuple[Capture, Optional[dict[str, Any]]]]:
    """JSON, CSS, 404 and 301 responses: records a pipeline must skip or count, not extract."""
    json_body = json.dumps({"articles": [{"id": i, "title": f"Story {i}"} for i in range(5)]},
                           sort_keys=True).encode()
    css_body = (b"body{font-family:Georgia,serif;margin:0}header,footer{background:#eee}"
                b".lazyload{opacity:0}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}\n")
    not_found = (b"<!DOCTYPE html><html><head><title>Page not found</title></head><body>"
                 b"<h1>404 - Page not found</h1><p>Sorry, the page you were looking for does not exist. "
                 b"It may have been moved or deleted. Try the search box or go back to the home page.</p>"
                 b"</body></html>\n")
    redirect_target = "https://blog.example.net/garden/2024/03/moved-post"
    redirect = (b'<html><head><title>301 Moved Permanently</title></head><body><h1>Moved Permanently</h1>'
                b'<p>The document has moved <a href="' + redirect_target.encode() + b'">here</a>.</p></body></html>\n')
    return [
        (Capture("https://example.com/api/articles.json", 200, json_body, "application/json"), None),
        (Capture("https://example.com/static/site.css", 200, css_body, "text/css"), None),
        (Capture("https://news.example.org/world/2024/03/missing-page", 404, not_found, HTML_CONTENT_TYPE,
                 with_metadata=True),
         error_truth("https://news.example.org/world/2024/03/missing-page", 404, "http-404", not_found)),
        (Capture("http://blog.example.net/old-post", 301, redirect, "text/html; charset=iso-8859-1",
                 [("Location", redirect_target)], with_metadata=True),
         error_truth("http://blog.example.net/old-post", 301, "http-301", redirect)),
    ]


def truncated_page(maker: PageMaker, warc_file: str) -> tuple[Capture, list[Capture], dict[str, Any]]:
    """A text-only page whose response record will be cut mid-gzip-member.

    Returns its capture, the media it introduced (a first-seen logo) and its truth line.
    """
    page = make_page(maker, "textonly")
    url = f"https://{urlsplit(page.url).netloc}/drafts/unfinished-story-{maker.next_id()}"
    page.truth["url"] = url
    truth = page_truth(page.truth, warc_file, None)
    truth.update(expected_kept=False, expected_drop_reason="truncated-record", truncated=True)
    return Capture(url, 200, page.html, HTML_CONTENT_TYPE), page.media, truth


def _duplicate_url(url: str, rng: random.Random) -> str:
    """Another URL a crawler meets the same page at: a tracking query or an /amp path."""
    parts = urlsplit(url)
    if rng.random() < 0.5 or parts.query:
        sep = "&" if parts.query else "?"
        return f"{url}{sep}utm_source=newsletter"
    return f"https://{parts.netloc}/amp{parts.path}"


def _resolves_same(page: Page, new_url: str) -> bool:
    """Whether every relative image ref resolves to the same URL from `new_url`, so the copy's truth holds."""
    base_old = page.base_href or page.url
    base_new = page.base_href or new_url
    return all(urljoin(base_old, r) == urljoin(base_new, r) for r in page.relative_refs)


def make_duplicate(originals: list[Page], rng: random.Random) -> Optional[tuple[Page, str]]:
    """An exact copy (same HTML bytes) of an earlier kept page at another URL on the same host."""
    for original in rng.sample(originals, min(len(originals), 8)):
        new_url = _duplicate_url(original.url, rng)
        if _resolves_same(original, new_url):
            truth = dict(original.truth, url=new_url)
            return Page(new_url, original.html, truth, [], original.relative_refs, original.base_href), original.url
    return None



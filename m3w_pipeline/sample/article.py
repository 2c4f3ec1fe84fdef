"""One HTML page: the article (headings, paragraphs, figures, images, a video) inside site chrome.

Why: the pipeline must find the main content and the images that belong to it, so pages
come in several kinds (article, listicle, gallery, video; text-only, short and icon-only
pages that must be dropped) and three site layouts whose header, nav, sidebar and footer
are boilerplate. While building, the article counts its main-content words and collects
each image's and video's truth entry, so the truth cannot drift from the HTML.

Videos: "video" pages hold a <figure><video poster> whose figcaption names what moves in
it. For most of them (VIDEO_IN_CRAWL_RATE) the crawl holds the clip itself as a video/mp4
response at the <source> URL (`shapes.render_shape_video`).
"""
from __future__ import annotations

import html
from typing import Any, Optional

from m3w_pipeline.sample.pages import (
    CDN_HOST,
    SITES,
    STATIC_HOST,
    URL_STYLES,
    VIDEO_HOST,
    Page,
    PageMaker,
    PlacedImage,
    Site,
    weighted_choice,
)
from m3w_pipeline.sample.shapes import ShapeSpec, render_shape_video
from m3w_pipeline.sample.text import (
    ADJACENT_AFTER_TEMPLATES,
    ADJACENT_BEFORE_TEMPLATES,
    SHORT_TITLES,
    TOPICS,
    VIDEO_CAPTION_TEMPLATES,
    TextMaker,
    Topic,
    capitalise,
    count_words,
)
from m3w_pipeline.sample.truth import video_truth
from m3w_pipeline.sample.warc import Capture, media_capture

MISSING_IMAGE_RATE = 0.04  # non-first images referenced by a page but absent from the crawl
IN_ARTICLE_ICON_RATE = 0.12
VIDEO_FPS: tuple[int, ...] = (8, 10, 12)
VIDEO_SECONDS: tuple[float, ...] = (2.0, 3.0, 4.0)
VIDEO_IN_CRAWL_RATE = 0.75
POSTER_SIZE = (640, 360)
MENU_ITEMS: tuple[str, ...] = ("News", "Opinion", "Culture", "Travel", "Food", "Science", "Sport", "About")
FOOTER_LINES: tuple[str, ...] = (
    "Sign up for our newsletter to get the latest stories delivered to your inbox every week.",
    "We use cookies to improve your experience. By continuing to browse you agree to our use of cookies.",
    "Advertise with us. Work for us. Accessibility statement. Corrections policy.",
)


def make_page(maker: PageMaker, kind: str) -> Page:
    """A new page of `kind` (see crawl.PAGE_KINDS) on a random site, about a random topic."""
    site = maker.rng.choice(SITES)
    topic = maker.rng.choice(TOPICS)
    return _ArticleBuilder(maker, site, topic, kind).build()


class _ArticleBuilder:
    """Assembles one page's main content as HTML blocks, counting main-content words."""

    def __init__(self, maker: PageMaker, site: Site, topic: Topic, kind: str) -> None:
        self.maker = maker
        self.rng = maker.rng
        self.text = maker.text
        self.site = site
        self.topic = topic
        self.kind = kind
        self.blocks: list[str] = []
        self.words = 0
        self.images: list[dict[str, Any]] = []
        self.videos: list[dict[str, Any]] = []
        self.media: list[Capture] = []
        self.refs: list[str] = []
        self.base_href: Optional[str] = None
        self.listicle_count = self.rng.randint(3, 6) if kind == "listicle" else None
        if kind == "short":
            self.title = self.rng.choice(SHORT_TITLES)
        else:
            self.title = self.text.title(topic, self.listicle_count)
        self.url = maker.page_url(site, self.title)
        if kind == "base":
            self.base_href = self.rng.choice((
                f"https://{STATIC_HOST}/{site.host.split('.')[0]}/assets/",
                f"https://{site.host}/archive/2023/",
            ))

    # ---- text blocks ----

    def heading(self, tag: str, text: str) -> None:
        self.blocks.append(f"<{tag}>{html.escape(text)}</{tag}>")
        self.words += count_words(text)

    def paragraph(self, text: Optional[str] = None) -> None:
        text = text or self.text.paragraph(self.topic)
        self.blocks.append(f"<p>{html.escape(text)}</p>")
        self.words += count_words(text)

    # ---- image blocks ----

    def _style(self) -> str:
        if self.base_href:
            return self.rng.choice(("path-relative", "path-relative", "root-relative", "absolute"))
        return weighted_choice(self.rng, URL_STYLES)

    def _place(self, alt: str, spec: ShapeSpec, text_sources: list[str], caption: Optional[str] = None,
               style: Optional[str] = None, size: Optional[tuple[int, int]] = None, fmt: Optional[str] = None) -> PlacedImage:
        """Place an image (the first one of a page is always crawled) and record which text names it."""
        first = not self.images
        in_crawl = first or self.rng.random() >= MISSING_IMAGE_RATE
        placed = self.maker.place_image(self.url, self.base_href, style or self._style(), alt, spec,
                                        size, fmt, in_crawl=in_crawl)
        placed.truth.update(text_sources=text_sources, caption=caption)
        self.images.append(placed.truth)
        self.media.extend(placed.captures)
        self.refs.append(placed.truth["ref"])
        return placed

    def figure(self, spec: Optional[ShapeSpec] = None) -> None:
        """<figure> with <figcaption>; alt is descriptive, generic or empty."""
        spec = spec or self.maker.random_spec()
        d = spec.description()
        roll = self.rng.random()
        alt = capitalise(d) if roll < 0.5 else ("" if roll < 0.75 else "Illustration")
        placed = self._place(alt, spec, (["alt"] if roll < 0.5 else []) + ["figcaption"])
        caption = self.text.caption(d, len(self.images))  # drawn after placing: the RNG order is part of the output
        placed.truth["caption"] = caption
        self.words += count_words(caption)
        self.blocks.append(f'<figure class="wp-block-image">{placed.markup}'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def bare_image(self) -> None:
        """An image outside <figure>, named by its alt and/or an adjacent paragraph."""
        spec = self.maker.random_spec()
        d = spec.description()
        roll = self.rng.random()
        before = after = None
        if roll < 0.4:
            before = self.rng.choice(ADJACENT_BEFORE_TEMPLATES).format(d=d)
        elif roll < 0.7:
            after = self.rng.choice(ADJACENT_AFTER_TEMPLATES).format(d=d)
        alt = capitalise(d) if (roll >= 0.7 or self.rng.random() < 0.5) else ""
        sources = (["alt"] if alt else []) + (["paragraph"] if before or after else [])
        if before:
            self.paragraph(f"{self.text.sentence(self.topic)} {before}")
        placed = self._place(alt, spec, sources, caption=before or after)
        self.blocks.append(f'<div class="image">{placed.markup}</div>')
        if after:
            self.paragraph(f"{after} {self.text.sentence(self.topic)}")

    def inline_paragraph_image(self) -> None:
        """An image in the middle of a paragraph's text, named by its alt."""
        spec = self.maker.random_spec()
        first, second = self.text.sentence(self.topic), self.text.sentence(self.topic)
        placed = self._place(capitalise(spec.description()), spec, ["alt"])
        self.blocks.append(f"<p>{html.escape(first)} {placed.markup} {html.escape(second)}</p>")
        self.words += count_words(first) + count_words(second)

    def icon(self) -> None:
        """A small author avatar or share icon inside the article: must be dropped as too small."""
        side = self.rng.choice((16, 24, 32, 48))
        spec = self.maker.random_spec(count=1)
        placed = self._place("", spec, [], style="absolute", size=(side, side), fmt=self.rng.choice(("PNG", "JPEG")))
        self.blocks.append(f'<p class="author">{placed.markup} By {html.escape(self.text.person())}</p>')

    def banner(self) -> None:
        """A wide divider/banner image: must be dropped for its aspect ratio."""
        width, height = self.rng.choice(((720, 140), (800, 160), (640, 120), (150, 600)))
        spec = self.maker.random_spec(count=self.rng.randint(2, 5))
        placed = self._place(capitalise(spec.description()), spec, ["alt"], style="absolute", size=(width, height), fmt="JPEG")
        self.blocks.append(f'<div class="divider">{placed.markup}</div>')

    def image_list(self) -> None:
        """A <ul> with an image inside one of its items."""
        items = [self.text.sentence(self.topic) for _ in range(self.rng.randint(3, 5))]
        spec = self.maker.random_spec()
        placed = self._place(capitalise(spec.description()), spec, ["alt"])
        where = self.rng.randrange(1, len(items))
        parts = [f"<li>{html.escape(t)}</li>" for t in items]
        parts.insert(where, f"<li>{placed.markup}</li>")
        self.blocks.append("<ul>" + "".join(parts) + "</ul>")
        self.words += sum(count_words(t) for t in items)

    def video(self) -> None:
        """A <video> with poster and mp4 source in a <figure>; the poster is crawled, and for
        most videos the mp4 too (shapes moving as the figcaption says)."""
        spec = self.maker.random_spec()
        d = spec.description()
        token = self.maker.token(self.maker.next_id())
        poster_url = f"https://{CDN_HOST}/posters/{token}.jpg"
        source = f"https://{VIDEO_HOST}/v/{token}/clip.mp4"
        poster = self.maker.images.render(spec, *POSTER_SIZE, "JPEG", self.rng)
        self.media.append(media_capture(poster_url, poster.data, "image/jpeg"))
        caption = capitalise(self.rng.choice(VIDEO_CAPTION_TEMPLATES).format(d=d))
        self.words += count_words(caption)
        self.blocks.append(
            f'<figure class="video"><video controls preload="none" width="{poster.width}" height="{poster.height}" '
            f'poster="{poster_url}"><source src="{source}" type="video/mp4">'
            f"Your browser does not support the video tag.</video><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        clip = None
        if self.rng.random() < VIDEO_IN_CRAWL_RATE:
            clip = render_shape_video(spec, f"{self.maker.seed}:{token}", self.rng.choice(VIDEO_FPS),
                                      self.rng.choice(VIDEO_SECONDS))
            self.media.append(media_capture(source, clip.data, "video/mp4"))
        self.videos.append(video_truth(spec, caption, source, poster_url, poster, clip))

    def random_image(self) -> None:
        roll = self.rng.random()
        if roll < 0.5:
            self.figure()
        elif roll < 0.75:
            self.bare_image()
        elif roll < 0.88:
            self.inline_paragraph_image()
        else:
            self.image_list()

    # ---- content kinds ----

    def _article_body(self, images: int) -> None:
        paragraphs = self.rng.randint(max(2, images), 8)
        slots = sorted(self.rng.sample(range(1, paragraphs + 1), images)) if images else []
        if self.rng.random() < IN_ARTICLE_ICON_RATE:
            self.icon()
        for i in range(paragraphs):
            if i and self.rng.random() < 0.25:
                self.heading("h2", self.text.title(self.topic))
            self.paragraph()
            while slots and slots[0] == i + 1:
                slots.pop(0)
                self.random_image()
        if self.rng.random() < 0.05:
            self.banner()

    def content(self) -> None:
        kind = self.kind
        self.heading("h1", self.title)
        if kind in ("article", "base"):
            self._article_body(self.rng.randint(1, 4))
        elif kind == "listicle":
            self.paragraph()
            self.blocks.append("<ol>")
            count = self.listicle_count or 3
            for i, noun in enumerate(self.rng.sample(self.topic.nouns, count)):
                self.blocks.append("<li>")
                self.heading("h3", capitalise(noun))
                if i % 2 == 0:
                    self.figure()
                else:
                    self.inline_paragraph_image()
                self.paragraph(self.text.paragraph(self.topic, self.rng.randint(2, 4)))
                self.blocks.append("</li>")
            self.blocks.append("</ol>")
        elif kind == "gallery":
            self.paragraph(self.text.paragraph(self.topic, 2))
            self.blocks.append('<div class="gallery">')
            for _ in range(self.rng.randint(3, 6)):
                self.figure()
            self.blocks.append("</div>")
            self.paragraph(self.text.paragraph(self.topic, 2))
        elif kind == "video":
            self.paragraph()
            self.video()
            self.paragraph()
            self.figure()
            self.paragraph()
        elif kind == "textonly":
            for _ in range(self.rng.randint(2, 7)):
                self.paragraph()
        elif kind == "short":
            self.figure(self.maker.random_spec())
        elif kind == "icons":
            for _ in range(self.rng.randint(2, 5)):
                self.paragraph()
                if self.rng.random() < 0.5:
                    self.icon()
                else:
                    self.banner()
        else:
            raise ValueError(f"unknown page kind {kind}")

    def build(self) -> Page:
        self.content()
        logo_url, logo_capture = self.maker.logo_url(self.site)
        if logo_capture:
            self.media.append(logo_capture)
        description = self.text.sentence(self.topic)
        html_text = render_page(self.site, self.title, description, self.blocks, logo_url,
                                 self.base_href, self.text, self.topic)
        truth = {
            "url": self.url,
            "status": 200,
            "kind": self.kind,
            "site": self.site.host,
            "layout": self.site.layout,
            "title": self.title,
            "base_href": self.base_href,
            "images": self.images,
            "videos": self.videos,
            "boilerplate_images": [logo_url],
            "main_words": self.words,
        }
        return Page(self.url, html_text.encode("utf-8"), truth, self.media, self.refs, self.base_href)



# The chrome of each site layout around the article ({body}); everything but {body} is
# boilerplate the pipeline must not keep. Only news pages carry a byline.
LAYOUT_TEMPLATES: dict[str, str] = {
    "blog": (
        '<body class="blog">\n<div id="page"><header id="masthead">{logo}'
        '<nav class="main-navigation"><ul class="menu">{menu}</ul></nav></header>\n'
        '<div id="content"><div class="post"><div class="entry-content">\n{body}\n</div></div>\n'
        '<div id="sidebar" class="widget-area"><h3>Recent posts</h3><ul>{related}</ul></div></div>\n'
        "{footer}</div>\n"
    ),
    "magazine": (
        '<body class="magazine">\n<header>{logo}<nav><ul>{menu}</ul></nav>'
        '<form class="search"><input type="search" name="q" placeholder="Search"></form></header>\n'
        '<div class="layout"><main><section class="story">\n{body}\n</section></main>\n'
        '<aside class="related"><h3>Most read</h3><ol>{related}</ol></aside></div>\n{footer}'
    ),
    "news": (
        '<body class="news">\n<header class="site-header">{logo}<nav><ul>{menu}</ul></nav></header>\n'
        "<main><article>{byline}\n{body}\n</article>\n"
        '<aside class="related"><h3>Related articles</h3><ul>{related}</ul></aside></main>\n{footer}'
    ),
}


def render_page(
    site: Site, title: str, description: str, blocks: list[str], logo_url: str,
    base_href: Optional[str], text: TextMaker, topic: Topic,
) -> str:
    """Wrap main content in site chrome: head, header/nav, aside, footer (all boilerplate)."""
    rng = text.rng
    menu = "".join(f'<li><a href="/{m.lower()}/">{m}</a></li>' for m in rng.sample(MENU_ITEMS, 5))
    related = "".join(
        f'<li><a href="/story/{rng.randrange(10_000, 99_999)}">{html.escape(text.title(topic))}</a></li>'
        for _ in range(3)
    )
    base = f'<base href="{base_href}">\n' if base_href else ""
    head = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)} | {html.escape(site.name)}</title>\n{base}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="description" content="{html.escape(description, quote=True)}">\n'
        '<link rel="stylesheet" href="/static/site.css">\n'
        "<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}</script>\n"
        "</head>\n"
    )
    logo = (f'<a class="logo" href="/"><img src="{logo_url}" alt="{html.escape(site.name)}" '
            f'width="40" height="40"></a>')
    footer = (
        f"<footer class=\"site-footer\"><p>&copy; 2024 {html.escape(site.name)}. All rights reserved.</p>"
        '<p><a href="/privacy">Privacy policy</a> &middot; <a href="/terms">Terms of use</a> &middot; '
        '<a href="/contact">Contact</a></p>'
        f"<p>{rng.choice(FOOTER_LINES)}</p></footer>\n"
    )
    byline = f'<p class="byline">By {html.escape(text.person())} &middot; 4 March 2024</p>' if site.layout == "news" else ""
    page = LAYOUT_TEMPLATES[site.layout].format(logo=logo, menu=menu, body="\n".join(blocks), related=related,
                                                footer=footer, byline=byline)
    return head + page + "</body>\n</html>\n"

"""Fast-binding "lesson" pages: shapes named with made-up words that change from page to page.

Why: Flamingo's point is in-context few-shot learning. Modelled on the fast concept binding
task of Frozen (Tsimpoukelli et al., 2021): a page shows LESSON_WAYS concepts (a coloured
shape; the concepts of a page differ in both colour and shape), each LESSON_SHOTS times in
shuffled order, every image captioned "<word>." with a word invented for this page. No
word means anything outside its page, so only the page itself (the context) can tell which
word goes with which picture: a model that names the concept of a held-out page's image
right, more often than chance, has learned it in context.

Pages stay under the quality filters' 50-word repetition threshold (the repeated captions
would otherwise drop them), give their images an empty alt (no image-text pairs: a made-up
word is no caption) and vary count and background within a concept, so no two images of a
page look alike to the perceptual-hash dedup. The URL path starts with LESSON_PATH, which is
how readers of the built corpus find them.
"""
from __future__ import annotations

import html
import random

from m3w_pipeline.sample.article import render_page
from m3w_pipeline.sample.pages import SITES, Page, PageMaker, Site
from m3w_pipeline.sample.shapes import BACKGROUNDS, COLOURS, SHAPES, ShapeSpec
from m3w_pipeline.sample.text import TOPICS, count_words

LESSON_PATH = "/lessons/"
LESSON_WAYS = 2  # concepts per page
LESSON_SHOTS = 5  # images per concept: 4 shots of each concept + a query of one
LESSON_COUNTS = (1, 2, 3)  # shapes per image
LESSON_IMAGE_SIDE = 128  # square JPEGs: above the content-image minimum, quick to encode
LESSON_INTRO = "New words today. Each picture has one. Learn them all."  # sentences under LTIP's 5 words: no pair
# the magazine chrome: with the blog's sidebar or the news menu and byline, a lesson's few words
# sometimes lose to the chrome and the extractor puts the figures outside the main content
LESSON_SITES = tuple(site for site in SITES if site.layout == "magazine")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def made_up_word(rng: random.Random) -> str:
    """A pronounceable non-word of 3-6 letters ("dax", "tulip"-like, but meaning nothing)."""
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))) + rng.choice(_CONSONANTS)


def lesson_caption(word: str) -> str:
    """The text after each image (and what a reader of the corpus parses the word from): the word
    alone, so in a model's token stream it follows its `<image>` directly."""
    return f"{word}."


def make_lesson(maker: PageMaker, number: int) -> Page:
    """One lesson page: LESSON_WAYS concepts x LESSON_SHOTS images in shuffled order."""
    rng = maker.rng
    site: Site = rng.choice(LESSON_SITES)
    colours = rng.sample([c for c, _ in COLOURS], LESSON_WAYS)
    shapes = rng.sample(SHAPES, LESSON_WAYS)
    words: list[str] = []
    while len(words) < LESSON_WAYS:
        word = made_up_word(rng)
        if word not in words:
            words.append(word)
    looks = [(count, bg) for count in LESSON_COUNTS for bg, _ in BACKGROUNDS]  # one look per image of a concept
    items = [(k, look) for k in range(LESSON_WAYS) for look in rng.sample(looks, LESSON_SHOTS)]
    rng.shuffle(items)
    title = f"Word lesson {number}"
    url = f"https://{site.host}{LESSON_PATH}{maker.next_id()}/lesson-{number}"
    blocks = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(LESSON_INTRO)}</p>"]
    words_count = count_words(title) + count_words(LESSON_INTRO)
    images, media, refs = [], [], []
    for k, (count, background) in items:
        spec = ShapeSpec(shapes[k], colours[k], count, background)
        side = (LESSON_IMAGE_SIDE, LESSON_IMAGE_SIDE)
        placed = maker.place_image(url, None, "absolute", "", spec, size=side, fmt="JPEG")
        caption = lesson_caption(words[k])
        placed.truth.update(text_sources=["figcaption"], caption=caption)
        images.append(placed.truth)
        media.extend(placed.captures)
        refs.append(placed.truth["ref"])
        words_count += count_words(caption)
        blocks.append(f'<figure class="lesson">{placed.markup}<figcaption>{html.escape(caption)}</figcaption></figure>')
    # the chrome of the site's articles (header, nav, related links, footer); the logo is the site's,
    # written into the crawl by the other pages' PageMaker when they use the site
    page_html = render_page(site, title, LESSON_INTRO, blocks, f"https://{site.host}/static/logo.png", None,
                             maker.text, rng.choice(TOPICS))
    truth = {
        "url": url, "status": 200, "kind": "lesson", "site": site.host, "layout": "lesson", "title": title,
        "base_href": None, "images": images, "videos": [], "boilerplate_images": [f"https://{site.host}/static/logo.png"], "main_words": words_count
    }
    return Page(url, page_html.encode("utf-8"), truth, media, refs, None)

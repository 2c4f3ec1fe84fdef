"""Content images (`m3w_pipeline.extract.content_images`): every image a reader of the article sees,
in place, and every other image element counted under the reason it was left out.

Hand-built pages whose right answer is known exactly, then the accounting on the 60 real pages.
The recall/precision against the judged truth is tests/extract/test_image_recall.py.
"""
from __future__ import annotations

import re

import lxml.html
import pytest
from test_extract import FILLER, HTML_DIR, image_urls, manifest, needs_corpus, page_bytes

from m3w_pipeline.core.config import ExtractConfig
from m3w_pipeline.extract.page import extract_page, page_to_json

URL = "https://news.example.com/2024/03/river-report"


def para(n: int) -> str:
    return f"<p>{FILLER} Paragraph {n} of the report.</p>"


ARTICLE = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>River report | Example News</title>
<meta property="og:image" content="https://cdn.example.org/photos/river-lead-1200x630.jpg"></head><body>
<header class="site-header"><a class="logo" href="/"><img src="/static/brand.png" alt="Example News"></a>
<nav><ul><li><a href="/world">World</a></li><li><a href="/sport">Sport</a></li></ul></nav></header>
<div class="layout"><article>
<header class="article-header"><h1>River water quality improves again</h1><p>By Ana Costa, 4 March 2024</p>
<figure><img src="https://cdn.example.org/photos/river-lead-800x450.jpg" width="800" height="450" alt="The river at dawn"></figure>
</header>
<div class="article-body">{para(1)}
<div class="slideshow-article-img"><img src="/photos/sampling.jpg" alt="A slide container"></div>
{para(2)}
<h3><img src="/photos/section.jpg" width="1000" height="458" alt="Section picture">What the samples show</h3>
{para(3)}
<div class="gallery"><dl class="gallery-item"><dt class="gallery-icon"><a href="/photos/g1.jpg"><img src="/photos/g1-200x200.jpg"
 width="200" height="200"></a></dt></dl><dl class="gallery-item"><dt class="gallery-icon"><a href="/photos/g2.jpg"><img
 src="/photos/g2-200x200.jpg" width="200" height="200"></a></dt></dl></div>
<aside class="block-image"><div class="img"><img src="/photos/aside.jpg" alt="An aside picture"></div></aside>
{para(4)}
<img class="swp_hidden_pin_image" src="/photos/pin.jpg" alt="Pin me">
<div class="post-share"><a href="https://twitter.com/share?u=x"><img src="/img/twitter.svg" alt="Twitter"></a>
<a href="mailto:?body=x"><img src="/img/round-envelope.png" alt="Mail"></a></div>
<img src="/img/bullet.png" alt=""><img src="/img/bullet.png" alt=""><img src="/img/bullet.png" alt="">
<div class="author-box"><img src="/people/ana.jpg" alt="Ana Costa"></div>
<div class="ad-slot"><img src="https://ads.example.net/creative/8812.jpg" alt=""></div>
<a href="https://partner-site.org/"><img src="/img/partner.png" width="240" height="120" alt="Our partner"></a>
<img src="/img/info.png" width="48" height="48" alt="Info">
<img src="https://cdn.example.org/resize/40x40/people/ana.jpg" alt="">
{para(5)}<noscript><img src="https://track.example.net/fallback.jpg" alt=""></noscript>
</div></article>
<aside class="sidebar"><a href="/shop"><img src="/img/promo.jpg" alt="Shop"></a></aside></div>
<footer><p>Copyright 2024 Example News.</p></footer></body></html>"""


def test_media_containers_headings_galleries_and_asides_in_the_article_are_kept_in_order():
    page = extract_page(ARTICLE, URL)
    assert image_urls(page) == [
        "https://cdn.example.org/photos/river-lead-800x450.jpg",  # lead in the article header
        "https://news.example.com/photos/sampling.jpg",  # in a "slide" container
        "https://news.example.com/photos/section.jpg",  # inside an <h3>
        "https://news.example.com/photos/g1-200x200.jpg",  # WordPress <dl> gallery
        "https://news.example.com/photos/g2-200x200.jpg",
        "https://news.example.com/photos/aside.jpg",  # <aside> image block in the body
    ]
    kinds = [n.type if n.type == "image" else (n.text or "")[:20] for n in page.nodes]
    assert kinds.index("image") < next(i for i, k in enumerate(kinds) if k.startswith("The committee"))  # lead first
    texts = [n.text for n in page.nodes if n.type == "text"]
    paragraph = {int(m.group(1)): i for i, t in enumerate(page.nodes) if t.text and (m := re.search(r"Paragraph (\d) ", t.text))}
    positions = {ref.url.rsplit("/", 1)[1]: i for i, n in enumerate(page.nodes) if (ref := n.image) is not None}
    assert paragraph[1] < positions["sampling.jpg"] < paragraph[2] < positions["section.jpg"] < paragraph[3]
    assert paragraph[3] < positions["g1-200x200.jpg"] < positions["aside.jpg"] < paragraph[4]
    assert "What the samples show" in texts


def test_every_left_out_image_is_counted_under_its_reason():
    page = extract_page(ARTICLE, URL)
    assert page.dropped_images == {
        "ad": 1,  # served by an ad host
        "avatar": 1,  # in an author box
        "external-link": 1,  # a partner logo linking to another site
        "hidden": 2,  # the hidden Pinterest image, the <noscript> fallback of a script
        "icon": 5,  # 48x48 declared, 40x40 in the URL, a bullet repeated three times
        "logo": 1,  # the site logo (class "logo" around it)
        "outside-content": 1,  # the sidebar promo
        "share": 2,  # twitter.svg, a mailto: button
    }
    image_elements = len(lxml.html.fromstring(ARTICLE).xpath("//img"))
    assert len(page.image_refs()) + sum(page.dropped_images.values()) == image_elements == 20
    assert page_to_json(page)["dropped_images"] == page.dropped_images


def _image_elements(html: bytes | str) -> int:
    """Image elements as a reader's browser shows them, counted independently of the extractor:
    a <picture> once, an <img>/<amp-img> outside one, not the <noscript> twin right after an image."""
    from trafilatura.utils import load_html

    from m3w_pipeline.read.decode import decode_html

    tree = load_html(decode_html(html) if isinstance(html, bytes) else html)
    if tree is None:
        return 0
    count = 0
    for elem in tree.iter("picture", "img", "amp-img"):
        if elem.tag != "picture" and next(elem.iterancestors("picture"), None) is not None:
            continue
        twin_of = next(elem.iterancestors("noscript"), None)
        before = twin_of.getprevious() if twin_of is not None else None
        if before is not None and before.tag in ("img", "amp-img", "picture") and next(twin_of.iter("img"), None) is elem:
            continue
        count += 1
    return count


@needs_corpus
@pytest.mark.parametrize("name", sorted(n for n in manifest() if (HTML_DIR / n).is_file()))
def test_image_nodes_and_dropped_images_reconcile_on_real_pages(name):
    html = page_bytes(name)
    page = extract_page(html, manifest()[name]["url"])
    assert len(page.image_refs()) + sum(page.dropped_images.values()) == _image_elements(html), page.dropped_images


@needs_corpus
def test_image_nodes_and_dropped_images_reconcile_on_every_corpus_warc_page():
    from m3w_pipeline.read import warc

    pages = 0
    for path in sorted((HTML_DIR.parent / "warc").iterdir()):
        with open(path, "rb") as f:
            for item in warc.iter_warc(f, str(path)):
                if isinstance(item, warc.Page):
                    page = extract_page(item.html, item.url)
                    assert len(page.image_refs()) + sum(page.dropped_images.values()) == _image_elements(item.html), item.url
                    pages += 1
    assert pages >= 80


def _page(body: str, head: str = "", aside: str = "") -> str:
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Report</title>{head}</head><body>
<header class="site-header"><nav><a href="/">Home</a> <a href="/world">World</a></nav></header>
<div class="layout">{aside}<main><article><div class="entry-content">{body}</div></article></main></div>
<footer><p>Copyright 2024 Example News.</p></footer></body></html>"""


def test_the_og_image_is_the_lead_even_a_few_levels_away_and_with_a_thumbnail_suffix():
    lead = """<div class="hero"><div class="hero__inner"><div class="hero__media"><div class="frame">
<img src="/uploads/thumbs/harbour-at-dawn-oaqhevqivwzz.jpg" alt="Harbour"></div></div></div></div>"""
    html = f"""<!DOCTYPE html><html><head><title>T</title><meta property="og:image" content="https://x.example.com/uploads/harbour-at-dawn.jpg">
</head><body><div class="page"><div class="wrap"><div class="col">{lead}<p>Short standfirst of the story.</p></div>
<div class="col2"><div class="row"><div class="cell"><div class="inner"><div class="text">{para(1)}{para(2)}</div></div></div></div></div>
</div></div></body></html>"""
    page = extract_page(html, "https://x.example.com/story")
    assert image_urls(page) == ["https://x.example.com/uploads/thumbs/harbour-at-dawn-oaqhevqivwzz.jpg"]
    assert page.nodes[0].type == "image"
    other = html.replace("harbour-at-dawn.jpg", "a-different-picture.jpg")  # not the og:image: too far up for a lead
    assert image_urls(extract_page(other, "https://x.example.com/story")) == []


def test_a_lightbox_gallery_outside_the_text_region_is_kept_a_single_lightbox_image_is_not():
    gallery = "".join(f'<div class="frame"><a class="lightbox" href="/photos/room{i}.jpg"><img src="/photos/room{i}-thumb.jpg"></a></div>'
                      for i in range(3))
    html = f"""<!DOCTYPE html><html><head><title>Villa</title></head><body>
<div class="listing"><div class="photos">{gallery}</div><div class="facts"><p>Four bedrooms, three baths.</p></div></div>
<article>{para(1)}{para(2)}{para(3)}</article>
<div class="box"><a href="/photos/map.jpg"><img src="/photos/map-thumb.jpg" alt="Map"></a></div></body></html>"""
    page = extract_page(html, "https://villas.example.com/villa/9")
    assert image_urls(page) == [f"https://villas.example.com/photos/room{i}-thumb.jpg" for i in range(3)]
    assert page.nodes[0].type == "image"  # the gallery comes before the text, as on the page
    assert page.dropped_images == {"outside-content": 1}


def test_when_the_text_is_the_whole_page_only_the_images_trafilatura_kept_count():
    """A photo page with hardly any text: trafilatura falls back to every text of the page
    (navigation and all), which is no article region to take images from."""
    html = """<!DOCTYPE html><html><head><title>Photo of the day</title></head><body><div id="page">
<header><a class="logo" href="/"><img src="/static/logo.png" alt="Site" width="40" height="40"></a>
<nav><ul><li><a href="/news/">News</a></li><li><a href="/sport/">Sport</a></li></ul></nav></header>
<div id="content"><div class="post"><div class="entry-content"><h1>Photo of the day</h1>
<figure><img src="https://img.example.net/p/1bd245cc.jpg" alt="Circles"><figcaption>Four red circles.</figcaption></figure>
</div></div><div id="sidebar"><h3>Recent posts</h3><ul><li><a href="/story/1">Why the bread oven matters</a></li></ul></div></div>
<footer><p>Copyright 2024 Example Kitchen.</p></footer></div></body></html>"""
    chosen = extract_page(html, "https://recipes.example.com/?p=1203")
    theirs = extract_page(html, "https://recipes.example.com/?p=1203", ExtractConfig(select_content_images=False))
    assert image_urls(chosen) == image_urls(theirs)
    assert sum(chosen.dropped_images.values()) + len(chosen.image_refs()) == 2


def test_lazy_json_stand_in_and_css_spacer_sources():
    body = f"""{para(1)}
<span class="storyimage"><img src="//static.example.net/sc/9b/e151e5.gif" alt="Bed"
 data-src='{{"default":{{"w":"80","src":"//img.example.net/a.img?h=450&amp;w=799"}},"size3column":{{"src":"//img.example.net/a.img?h=352&amp;w=624"}}}}'></span>
{para(2)}
<img src="/grafix/x.gif" style="background: url(/grafix/slide.jpg) no-repeat" alt="Slide">
{para(3)}"""
    page = extract_page(_page(body), "https://www.example.com/story")
    refs = page.image_refs()
    assert [(r.url, r.candidates) for r in refs] == [
        ("https://img.example.net/a.img?h=450&w=799", ["https://img.example.net/a.img?h=450&w=799", "https://img.example.net/a.img?h=352&w=624"]),
    ]
    assert page.dropped_images == {"no-url": 1}


def test_cards_of_a_related_list_with_blurbs_are_teasers():
    cards = "".join(f"""<div class="tumb"><div class="r"><a href="/diet-{i}.html"><img src="/nif/diet-{i}-pop.jpg" width="155" height="155"></a></div>
<div class="title"><a href="/diet-{i}.html">Diet {i}</a></div>
<div class="body">A popular diet for an active life, ten kilos in two weeks, {i}.</div></div>"""
                    for i in range(4))
    body = f'{para(1)}<img src="/nif/main.jpg" alt="Main">{para(2)}<div id="tumblock"><h2>Popular diets</h2>{cards}</div>'
    page = extract_page(_page(body), "https://diets.example.com/atkins.html")
    assert image_urls(page) == ["https://diets.example.com/nif/main.jpg"]
    assert page.dropped_images == {"teaser": 4}
    few = body.replace(cards, cards[: cards.index('<div class="tumb">', 10)])  # one card alone, blurb longer than its title
    assert "https://diets.example.com/nif/diet-0-pop.jpg" in image_urls(extract_page(_page(few), "https://diets.example.com/atkins.html"))


def test_turning_selection_off_gives_trafilaturas_images_all_others_counted():
    page = extract_page(ARTICLE, URL, ExtractConfig(select_content_images=False))
    urls = image_urls(page)
    assert "https://news.example.com/photos/g1-200x200.jpg" not in urls  # trafilatura drops <dl> galleries
    assert "https://news.example.com/img/twitter.svg" in urls  # and keeps share buttons
    assert len(page.image_refs()) + sum(page.dropped_images.values()) == 20

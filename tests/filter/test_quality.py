"""Quality scores on hand-built texts whose ratios are known, and the filters built on them."""
from __future__ import annotations

import gzip
import io
import json
import math
import random
import re
import string
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import BuildConfig, FilterConfig, ImageConfig
from m3w_pipeline.core.document import DocImage, Document, DocVideo, words
from m3w_pipeline.core.nodes import ImageRef, VideoRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.filter import quality as q
from m3w_pipeline.filter.filters import (
    blocked_image_url,
    document_filters,
    filter_nodes,
    first_failure,
    image_node_filters,
    quality_filters,
    url_host_path,
)
from m3w_pipeline.media.images import ProcessedImage, process_image

CONFIG = FilterConfig()

ENGLISH = (
    "The committee met on Tuesday to discuss the new budget for the city library. "
    "Members agreed that the reading rooms should stay open later in the evening, and they asked "
    "the director to prepare a plan for the winter months. A final decision is expected in March, "
    "after the public has had a chance to comment on the proposal at two open meetings."
)


def doc_of(*nodes, lang: str = "en") -> Document:
    doc = Document("k", "https://site.example/page", "site.example", None, lang, Provenance("f", 0, 0, "r", "2024-01-01T00:00:00Z"))
    for node in nodes:
        if isinstance(node, str):
            doc.texts.append(node)
            doc.images.append(None)
        else:
            doc.texts.append(None)
            doc.images.append(node)
    return doc


def ok_image(url: str, w: int = 400, h: int = 300, fmt: str = "JPEG") -> DocImage:
    return DocImage(ImageRef(url), "ok", ProcessedImage(b"x", "jpg", w, h, w, h, fmt, 1, "sha-" + url, "0" * 16))


# ----------------------------------------------------------------------------- scores


def test_duplicate_line_and_paragraph_fractions():
    assert q.duplicate_fractions(["abc", "abc", "xy"]) == pytest.approx((1 / 3, 3 / 8))
    assert q.duplicate_fractions(["a", "a", "a", "a"]) == pytest.approx((3 / 4, 3 / 4))
    assert q.duplicate_fractions([]) == (0.0, 0.0)
    scores = q.text_scores(["Home\nNews\nHome", "Some text here.", "Some text here."], "en", CONFIG)
    assert scores["dup_line_fraction"] == pytest.approx(2 / 5)  # lines: Home News Home Some.. Some..
    assert scores["dup_para_fraction"] == pytest.approx(1 / 3)


def test_top_and_duplicate_ngram_char_fractions():
    tokens = ["the", "cat", "the", "cat", "sat"]
    assert q.top_ngram_char_fraction(tokens, 2) == pytest.approx(12 / 15)  # (the cat) x 2
    assert q.top_ngram_char_fraction(["a", "b", "c", "d"], 2) == 0.0  # nothing repeats
    assert q.duplicate_ngram_char_fraction(["a", "b", "c", "a", "b", "c"], 3) == pytest.approx(0.5)
    assert q.duplicate_ngram_char_fraction(["aa", "b", "c", "aa", "b", "c", "aa", "b", "c"], 3) == pytest.approx(8 / 12)
    assert q.duplicate_ngram_char_fraction(["a", "b"], 3) == 0.0


def test_char_and_word_repetition_ratios():
    # 2-grams of "abababab": ab x 4, ba x 3; sqrt(2 distinct) -> top 1 -> 4 / 7
    assert q.char_repetition_ratio("abababab", 2) == pytest.approx(4 / 7)
    assert q.char_repetition_ratio("abcdefgh", 2) == 0.0  # no repeated n-gram counts
    assert q.char_repetition_ratio("short", 10) == 0.0
    assert q.word_repetition_ratio(["a", "b", "a", "b", "c"], 2) == pytest.approx(2 / 4)
    assert q.word_repetition_ratio(["a", "b", "c"], 5) == 0.0


def _char_repetition_by_slices(text: str, n: int) -> float:
    """The definition, spelled out: a Counter of every char n-gram slice."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) < n:
        return 0.0
    freqs = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    k = min(int(math.sqrt(len(freqs))), sum(1 for f in freqs if f > 1))
    return sum(freqs[:k]) / sum(freqs)


def test_char_repetition_counts_long_texts_exactly_as_slices_do():
    """Long texts count n-grams by packed character ranks in numpy: the same value, to the bit, as
    the Counter of slices, whether one key holds an n-gram (few distinct characters) or several do
    (over 64 distinct characters, any Unicode, a lone surrogate), and for n from 1 to 21."""
    rng = random.Random(7)
    corpus = sorted((Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "html").glob("*.html.gz"))[:5]
    assert len(corpus) == 5
    texts = [re.sub(r"<[^>]+>", " ", gzip.decompress(p.read_bytes()).decode("utf-8", "replace"))[:8000] for p in corpus]
    texts += ["".join(rng.choice("ab ") for _ in range(rng.randint(256, 3000))) for _ in range(10)]
    texts += ["".join(chr(rng.randint(32, 0x2FFFF)) for _ in range(rng.randint(256, 2000))) for _ in range(5)]
    texts += ["日本語のテキストです。" * 60, "a" * 1000, "x\ud800y " * 100, string.printable * 20]
    assert all(len(t) >= q._PACK_FROM_CHARS for t in texts)
    for text in texts:
        for n in (1, 2, 5, 10, 13, 21):
            assert q.char_repetition_ratio(text, n) == _char_repetition_by_slices(text, n), (text[:40], n)
    assert q.char_repetition_ratio("ab" * 200, 2) == 200 / 399  # ab x 200, ba x 199: the top one of two


def test_stopword_and_flagged_word_ratios_are_language_aware():
    tokens = words("The cat is on the mat")
    assert q.stopword_ratio(tokens, "en") == pytest.approx(4 / 6)
    assert q.stopword_ratio(words("Der Hund ist in dem Haus"), "de-AT") == pytest.approx(4 / 6)
    assert q.stopword_ratio(tokens, "ja") is None and q.stopword_ratio(tokens, None) is None
    assert q.stopword_ratio(words("Det er en fin dag"), "nb") == pytest.approx(3 / 5)  # nb uses the 'no' list
    assert q.flagged_word_ratio(words("free porn videos here now"), "en") == pytest.approx(1 / 5)
    assert q.flagged_word_ratio(words("nackte tatsachen"), "de") == pytest.approx(1 / 2)
    assert q.flagged_word_ratio(words("nackte tatsachen"), "en") == 0.0  # German list not applied to English
    assert all(q.stopwords(lang) for lang in ("en", "de", "fr", "es", "no", "ru"))  # lists shipped


def test_punctuation_and_special_character_ratios():
    assert q.text_scores(["Hello, world!"], None, CONFIG)["punctuation_ratio"] == pytest.approx(2 / 12)
    assert q.special_char_ratio("ab12 !?") == pytest.approx(4 / 6)
    assert q.special_char_ratio("नमस्ते दुनिया") == 0.0  # Devanagari vowel signs are marks, not specials
    assert q.special_char_ratio("€€ ab") == pytest.approx(2 / 4)
    assert q.text_scores(["   "], None, CONFIG)["punctuation_ratio"] == 0.0


def test_document_scores_give_one_value_per_index_column():
    scores = q.document_scores(doc_of(ENGLISH, ok_image("https://i.example/a.jpg"), ENGLISH.upper()))
    names = [name for name, _, _ in q.DOCUMENT_SCORE_COLUMNS]
    assert set(scores) == set(names) | {"n_words"}
    assert scores["lang_id"] == "en" and scores["lang_id_score"] > 0.9
    assert scores["dup_para_fraction"] == 0.0  # upper-case copy is another paragraph...
    assert scores["dup_5gram_char_fraction"] == pytest.approx(0.5, abs=0.01)  # ...but the same words
    for name, arrow_type, nullable in q.DOCUMENT_SCORE_COLUMNS:
        value = scores[name]
        assert (value is None and nullable) or isinstance(value, str if arrow_type == "string" else (int, float)), name


def test_score_columns_match_the_index_schema():
    """The columns quality.py fills are declared once more, as the format, in schemas/m3w_index.arrow.json."""
    from schemas import load_arrow_schema

    index = json.loads((Path(__file__).parents[2] / "schemas" / "m3w_index.arrow.json").read_text())
    declared = {f["name"]: (f["type"], f["nullable"]) for f in index["fields"]}
    for name, arrow_type, nullable in q.DOCUMENT_SCORE_COLUMNS:
        # the index may hold null also where a document was never scored
        assert name in declared and declared[name][0] == arrow_type and declared[name][1] >= nullable, name
    names = [f["name"] for f in index["fields"]]
    first = names.index(q.DOCUMENT_SCORE_COLUMNS[0][0])  # one block, in the same order
    assert names[first : first + len(q.DOCUMENT_SCORE_COLUMNS)] == [n for n, _, _ in q.DOCUMENT_SCORE_COLUMNS]
    assert load_arrow_schema("m3w_index").names == names


# ----------------------------------------------------------------------------- document filters


def test_a_clean_article_passes_every_document_filter():
    doc = doc_of(ENGLISH, ok_image("https://i.example/a.jpg"), ENGLISH.replace("committee", "council").replace("Tuesday", "Friday"))
    assert first_failure(document_filters(CONFIG), doc_of(ENGLISH, ok_image("https://i.example/a.jpg"))) is None
    assert first_failure(quality_filters(CONFIG), doc) == "duplicate-5grams"  # near-identical paragraphs
    names = [f.name for f in document_filters(CONFIG)]
    assert names[:4] == ["too-few-words", "no-image", "too-many-images", "too-many-words"]
    assert len(names) == len(set(names))


def test_each_quality_filter_names_its_drop():
    filters = quality_filters(CONFIG)
    menu = "\n".join(["Home", "News", "Sport", "Contact", "Home", "News", "Sport", "Contact"] * 8)
    assert first_failure(filters, doc_of(menu + "\n" + ENGLISH)) == "duplicate-lines"
    porn = ENGLISH + " " + " ".join(["free porn xxx videos"] * 3)
    assert first_failure(filters, doc_of(porn)) == "flagged-words"
    numbers = ENGLISH + " " + " ".join(f"{i:05d}-{i:04d}/{i:03d}" for i in range(40))
    assert first_failure(filters, doc_of(numbers)) == "special-chars"
    german = ("Der Ausschuss hat am Dienstag über den neuen Haushalt der Stadtbibliothek beraten und wird im März entscheiden, "
              "ob die Lesesäle länger geöffnet bleiben.")
    assert first_failure(quality_filters(replace(CONFIG, languages=("en",))), doc_of(german * 3)) == "wrong-language"
    assert first_failure(quality_filters(replace(CONFIG, languages=("de", "en"))), doc_of(german)) is None
    no_stopwords = (
        "Buy cheap running shoes online. Best price running shoes. Running shoes sale today. Free shipping "
        "worldwide. Discount codes available. New arrivals weekly. Top brands. Secure checkout. Easy returns. "
        "Gift cards. Customer reviews. Size guide. Store locator. Newsletter signup. Limited offers."
    )  # identified as English, 1 stopword in 40 words
    assert first_failure(filters, doc_of(no_stopwords)) == "few-stopwords"


def test_repetition_filters_skip_short_documents():
    short = "Open data for the city. Open data in the news. Open data is here."  # 'open data': 24 of 49 chars
    assert q.top_ngram_char_fraction(words(short), 2) > CONFIG.max_top_2gram_char_fraction
    assert first_failure(quality_filters(CONFIG), doc_of(short)) is None
    strict = replace(CONFIG, min_words_for_repetition_filters=0)
    assert first_failure(quality_filters(strict), doc_of(short)) == "top-2gram"


def test_scores_are_computed_once_per_document(monkeypatch):
    calls = []
    real = q.document_scores
    monkeypatch.setattr(q, "document_scores", lambda doc, config: calls.append(doc.key) or real(doc, config))
    doc = doc_of(ENGLISH, ok_image("https://i.example/a.jpg"))
    assert first_failure(document_filters(CONFIG), doc) is None
    assert calls == ["k"]


# ----------------------------------------------------------------------------- node filters


def test_node_filters_remove_bad_text_nodes_and_images_and_keep_the_document_aligned():
    doc = doc_of(
        ENGLISH,
        "•••• ★★★★ ••••",  # no words
        ok_image("https://www.site.example/static/images/site-logo.png"),  # blocklisted
        ok_image("https://i.example/photo.jpg"),
        ok_image("https://i.example/strip.jpg", w=1200, h=100),  # aspect 12: ImageConfig's check, before decoding
        ok_image("https://i.example/huge.jpg", w=30_000, h=12_000),  # larger than max_image_side
        ok_image("https://i.example/scan.jpg", fmt="PCX"),
        DocImage(ImageRef("https://i.example/not-yet.jpg"), "missing"),
        "Thanks for reading.",
    )
    doc.videos.append(DocVideo(8, VideoRef(["https://v.example/v.mp4"])))  # before "Thanks for reading."
    tally = Tally()
    out = filter_nodes(doc, CONFIG, tally)
    assert out.texts == [ENGLISH, None, None, None, "Thanks for reading."]
    assert [im.ref.url for im in out.images if im] == [
        "https://i.example/photo.jpg", "https://i.example/strip.jpg", "https://i.example/not-yet.jpg"
    ]
    assert out.texts[out.videos[0].position] == "Thanks for reading."
    assert tally.counts == {
        ("text_nodes", "in"): 3,
        ("text_nodes", "kept"): 2,
        ("text_nodes", "text-node-word-count"): 1,
        ("image_nodes", "in"): 6,
        ("image_nodes", "kept"): 3,
        ("image_nodes", "image-url-blocklist"): 1,
        ("image_nodes", "image-too-large"): 1,
        ("image_nodes", "image-format"): 1,
    }
    assert [r.reason for r in tally.rejects] == ["text-node-word-count", "image-url-blocklist", "image-too-large", "image-format"]
    assert doc.n_images == 5  # the input is not modified


def jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 40)).save(buf, "JPEG")
    return buf.getvalue()


def test_image_size_and_aspect_are_one_check_with_one_setting():
    """ImageConfig.min_side / max_aspect_ratio decide, once, before decoding; loosening them lets
    the image through (there is no second, filter-level copy that would still drop it)."""
    tiny, strip = jpeg(40, 40), jpeg(1200, 100)
    assert process_image(tiny).reason == "too-small" and process_image(strip).reason == "bad-aspect"
    loose = ImageConfig(min_side=32, max_aspect_ratio=12.0)
    for data in (tiny, strip):
        result = process_image(data, loose)
        assert result.reason == "ok" and result.image is not None
        image = DocImage(ImageRef("https://i.example/x.jpg"), "ok", result.image)
        assert first_failure(image_node_filters(CONFIG), image) is None
    for old in ("min_image_side", "max_image_aspect_ratio"):  # the former filter keys name themselves
        with pytest.raises(ValueError, match=old):
            BuildConfig.from_dict({"filters": {old: 32}})


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/wp-content/themes/x/images/logo.png",
        "https://example.com/assets/Logos/brand_2x.svg",
        "https://example.com/img/icons/share-facebook.png",
        "https://example.com/favicon-32x32.png",
        "https://secure.gravatar.com/avatar/abc123?s=96",
        "https://example.com/user/avatars/42.jpg",
        "https://example.com/img/spacer.gif",
        "https://pixel.wp.com/g.gif?blog=1",
        "https://www.facebook.com/tr?id=1&ev=PageView",
        "https://ad.doubleclick.net/ddm/ad/x.jpg",
        "https://tpc.googlesyndication.com/simgad/123",
        "https://example.com/ads/300x250.jpg",
        "https://example.com/css/sprites/ui-sprite.png",
        "https://example.com/banner-summer-sale.gif",
        "https://archive.org/images/star.png",
    ],
)
def test_blocklisted_image_urls(url):
    assert blocked_image_url(url) is not None, url_host_path(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/uploads/2024/05/harbour-at-dawn.jpg",
        "https://example.com/catalogue/item-17.jpg",
        "https://cdn.example.com/prologue.jpg",
        "https://example.com/images/adventure-bike.jpg",
        "https://example.com/photos/loaded-truck.jpg",
        "https://example.com/img.php?src=logo.png",  # the query is not looked at
    ],
)
def test_ordinary_image_urls_are_not_blocklisted(url):
    assert blocked_image_url(url) is None, url

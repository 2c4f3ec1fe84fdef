"""Pair extraction (ALIGN, LTIP), caption cleaning, dedup keys and video-text candidates,
from assembled Documents (no second parse, no image re-processing)."""
from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Optional

import pytest
from PIL import Image

from m3w_pipeline.core.config import PairConfig, VideoConfig
from m3w_pipeline.core.document import Document, DocVideo, assemble_document
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, Node, VideoRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.extract.page import extract_page
from m3w_pipeline.media.images import ImageResult, process_image
from m3w_pipeline.media.video import process_video
from m3w_pipeline.read.decode import decode_html
from m3w_pipeline.write.captions import caption_problem, clean_caption
from m3w_pipeline.write.pairs import (
    STATUS_FAILED_TO_DOWNLOAD,
    STATUS_FAILED_TO_RESIZE,
    STATUS_SUCCESS,
    assemble_pair_input,
    dedup_samples,
    extract_pairs,
    pair_key,
)
from m3w_pipeline.write.video_samples import (
    STATUS_FAILED_TO_SUBSAMPLE,
    build_video_sample,
    choose_video_caption,
    unfetchable_reason,
    unfetchable_sample,
    video_candidates,
)

HTML_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "html"
VIDEO_DIR = HTML_DIR.parent / "video"
PROV = Provenance("crawl-00000.warc.gz", 100, 2000, "<urn:uuid:1>", "2024-03-04T10:00:00Z")


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (200, 150)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def image(colour: tuple[int, int, int], size: tuple[int, int] = (200, 150)) -> ImageResult:
    result = process_image(jpeg(colour, size))
    assert result.image is not None
    return result


def doc_from(nodes: list[Node], results: dict[int, Optional[ImageResult]], key: str = "a" * 24,
             url: str = "https://news.example.org/story") -> Document:
    page = ExtractedPage(url, nodes, title="A story about shapes", lang="en")
    doc, _ = assemble_document(key, page, PROV, results)
    return doc


def text(t: str) -> Node:
    return Node("text", text=t)


def img(url: str, alt: Optional[str] = None, caption: Optional[str] = None) -> Node:
    return Node("image", image=ImageRef(url, alt=alt, caption=caption))


# ------------------------------------------------------------------ caption cleaning


@pytest.mark.parametrize("raw, cleaned, problem", [
    ("Three red circles on a white background. Photo: Maya Patel", "Three red circles on a white background.", None),
    ("Figure 3: two green stars on a black background.", "two green stars on a black background.", None),
    ("Der Hafen von Hamburg bei Nacht (Foto: dpa)", "Der Hafen von Hamburg bei Nacht", None),
    ("  \u201cA quiet  harbour\u200b at dawn\u201d ", "A quiet harbour at dawn", None),
    ("Two blue squares on grey. Illustration by Ana Lopez.", "Two blue squares on grey.", None),
    ("IMG_1234", "IMG_1234", "placeholder"),
    ("image", "image", "placeholder"),
    ("Logo", "Logo", "placeholder"),
    ("photo 2", "photo 2", "placeholder"),
    ("DSC01234.JPG", "DSC01234.JPG", "filename"),
    ("sunset-over-the-bay_final.jpeg", "sunset-over-the-bay_final.jpeg", "filename"),
    ("https://cdn.example.com/a/b.jpg", "https://cdn.example.com/a/b.jpg", "url"),
    ("www.example.com/gallery", "www.example.com/gallery", "url"),
    ("1234 5678 9012", "1234 5678 9012", "not-language"),
    ("8f3a2b1c 77d0e4 a9b8c7", "8f3a2b1c 77d0e4 a9b8c7", "not-language"),
    ("Red car", "Red car", "too-short"),
    (" ".join(["word"] * 25), " ".join(["word"] * 25), "too-long"),
    ("Photo: AP", "", "empty"),
])
def test_clean_caption_and_its_problems(raw: str, cleaned: str, problem: Optional[str]) -> None:
    assert clean_caption(raw) == cleaned
    assert caption_problem(cleaned, 3, 20) == problem


def test_alt_repeating_the_file_name_is_not_a_caption() -> None:
    assert caption_problem("kumara 4", 1, 20, url="https://x.example/up/Kumara_4.jpg") == "filename"
    assert caption_problem("A tuk-tuk in Kandy", 1, 20, url="https://x.example/up/Kumara_4.jpg") is None


def test_language_filter_only_when_configured() -> None:
    german = "Ein kleiner roter Hund spielt im Garten mit einem Ball"
    assert caption_problem(german, 3, 20) is None
    assert caption_problem(german, 3, 20, PairConfig(languages=("en",))) == "language"
    assert caption_problem("A small red dog plays in the garden with a ball", 3, 20, PairConfig(languages=("en",))) is None


# ------------------------------------------------------------------ ALIGN and LTIP from a Document


def test_align_and_ltip_pairs_from_a_document_reuse_the_processed_images() -> None:
    red, blue, green, grey = image((200, 30, 30)), image((30, 30, 200)), image((30, 160, 30)), image((128, 128, 128))
    nodes = [
        text("An introduction that says nothing about pictures at all."),
        img("https://cdn.example/red.jpg", alt="A red square on a white wall",
            caption="A red square painted on a white wall. Photo: Ana Lopez"),
        text("A red square painted on a white wall. Photo: Ana Lopez"),  # the figcaption node (keep_figcaptions)
        text("The picture above shows a red square painted by local students. Unrelated sentence here."),
        text("The image below shows a blue circle floating over a calm lake."),
        img("https://cdn.example/blue.jpg", alt="IMG_2231"),
        text("We restored the photograph twice, and it looked quieter."),  # a media noun but no pointer
        img("https://cdn.example/green.jpg", alt="Green leaves"),
        text("Some closing words about the garden and the weather."),
        img("https://cdn.example/grey.jpg", alt="A grey stone bridge over a river",
            caption="A grey stone bridge over a river"),
    ]
    results = {1: red, 5: blue, 7: green, 9: grey}
    doc = doc_from(nodes, results)
    pairs, outcomes = extract_pairs(doc)
    got = {(p.kind, p.url.rsplit("/", 1)[-1]): (p.caption, p.caption_source) for p in pairs}
    assert got == {
        ("align", "red.jpg"): ("A red square on a white wall", "alt"),
        ("ltip", "red.jpg"): ("A red square painted on a white wall.", "figcaption"),
        ("ltip", "blue.jpg"): ("The image below shows a blue circle floating over a calm lake.", "context"),
        ("align", "grey.jpg"): ("A grey stone bridge over a river", "alt"),
    }
    assert outcomes == {
        "kept-align": 2, "kept-ltip": 2, "align-caption-placeholder": 1, "align-caption-too-short": 1,
        "ltip-no-description": 1, "ltip-same-as-alt": 1,
    }
    assert sum(outcomes.values()) == 4 * 2  # every (image, kind) candidate has one outcome
    by_url = {im.ref.url: im.image for im in doc.images if im is not None}
    for p in pairs:
        assert p.status == STATUS_SUCCESS and p.image is by_url[p.url]  # the very ProcessedImage: no re-processing
        assert p.key == pair_key(p.kind, p.image.sha256, p.caption)
        assert (p.page_url, p.doc_key, p.lang, p.provenance) == (doc.url, doc.key, "en", PROV)


def test_context_direction_and_scope_rules() -> None:
    red, blue = image((200, 30, 30)), image((30, 30, 200))
    nodes = [
        img("https://cdn.example/a.jpg"),
        text("Intro sentence. The image below shows two yellow kites over a beach."),  # points at b, not a
        img("https://cdn.example/b.jpg"),
    ]
    pairs, _ = extract_pairs(doc_from(nodes, {0: red, 2: blue}))
    assert [(p.url[-5:], p.caption) for p in pairs] == [("b.jpg", "The image below shows two yellow kites over a beach.")]
    whole = PairConfig(context_scope="paragraph")
    pairs, _ = extract_pairs(doc_from(nodes, {0: red, 2: blue}), whole)
    assert [p.caption for p in pairs] == ["Intro sentence. The image below shows two yellow kites over a beach."]
    figcaption_only = PairConfig(ltip_sources=("figcaption",))
    assert extract_pairs(doc_from(nodes, {0: red, 2: blue}), figcaption_only)[1] == {
        "align-no-alt": 2, "ltip-no-description": 2}


def test_missing_failed_and_small_images_become_failed_rows() -> None:
    ok, small = image((200, 30, 30)), image((30, 30, 200), (200, 100))
    broken = ImageResult(None, "truncated", "image file is truncated")
    nodes = [
        text("Opening paragraph with enough words to be a real paragraph here."),
        img("https://cdn.example/missing.jpg", alt="A lighthouse on a rocky coast"),
        img("https://cdn.example/broken.jpg", alt="A red tram crossing a bridge"),
        img("https://cdn.example/small.jpg", alt="A small blue boat in a harbour"),
        img("https://cdn.example/ok.jpg", alt="Two cats asleep on a sofa"),
        img("https://cdn.example/fetch.jpg", alt="A dog waiting at the door"),
    ]
    page = ExtractedPage("https://news.example.org/s", nodes, title="t", lang="en")
    pin = assemble_pair_input("b" * 24, page, PROV, {1: None, 2: broken, 3: small, 4: ok,
                                                       5: ImageResult(None, "fetch-http-404", "HTTP 404")})
    assert [(f.ref.url.rsplit("/", 1)[-1], f.position, f.reason) for f in pin.failed_images] == [
        ("broken.jpg", 2, "truncated"), ("fetch.jpg", 4, "fetch-http-404")]
    pairs, outcomes = extract_pairs(pin.doc, PairConfig(ltip=False, min_image_side=128), pin.failed_images)
    rows = {p.url.rsplit("/", 1)[-1]: (p.status, p.error_message.split(":")[0] if p.error_message else None) for p in pairs}
    assert rows == {
        "missing.jpg": (STATUS_FAILED_TO_DOWNLOAD, "missing"),
        "broken.jpg": (STATUS_FAILED_TO_RESIZE, "truncated"),
        "small.jpg": (STATUS_FAILED_TO_RESIZE, "too-small"),
        "ok.jpg": (STATUS_SUCCESS, None),
        "fetch.jpg": (STATUS_FAILED_TO_DOWNLOAD, "fetch-http-404"),  # the fetch stage could not get it
    }
    assert outcomes == {"align-image-missing": 1, "align-image-truncated": 1, "align-image-too-small": 1, "kept-align": 1,
                        "align-image-fetch-http-404": 1}
    assert [p.url.rsplit("/", 1)[-1] for p in pairs] == ["missing.jpg", "broken.jpg", "small.jpg", "ok.jpg", "fetch.jpg"]
    assert len({p.key for p in pairs}) == 5  # failed rows get their own keys
    # a page whose images are opted out yields no image candidates at all
    opted = assemble_pair_input("b" * 24, page, PROV, {4: ok}, "opt-out-noimageai")
    assert opted.opted_out == "opt-out-noimageai" and not opted.failed_images and opted.doc.n_images == 0


def test_identical_pairs_share_a_key_and_dedup_keeps_the_first_page() -> None:
    red = image((200, 30, 30))
    nodes = [img("https://cdn.example/red.jpg", alt="A red square on a white wall")]
    a = extract_pairs(doc_from(nodes, {0: red}, key="1" * 24, url="https://b.example/2"))[0]
    b = extract_pairs(doc_from(nodes, {0: red}, key="2" * 24, url="https://a.example/1"))[0]
    other_caption = extract_pairs(doc_from([img("https://cdn.example/red.jpg", alt="A red square on a grey wall")], {0: red}))[0]
    assert a[0].key == b[0].key != other_caption[0].key
    kept, duplicates = dedup_samples(a + b + other_caption)
    assert duplicates == 1 and len(kept) == 2
    assert next(p for p in kept if p.key == a[0].key).page_url == "https://a.example/1"


# ------------------------------------------------------------------ videos from real corpus pages


def corpus_doc(name: str, url: str) -> Document:
    data = (HTML_DIR / name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    page = extract_page(decode_html(data), url)
    doc, _ = assemble_document("c" * 24, page, PROV, {})
    return doc


@pytest.mark.parametrize("name", [
    "trafilatura__correctiv.org.zusage.html",
    "trafilatura__francais.radio.cz-ministre.html",
    "aeb__5fa3154ec031ab35411a457d78eb5aa92c0e803c5329bd05c001e6d64009e206.html.gz",
])
def test_hidden_video_wrapping_images_yields_no_video_candidate(name: str) -> None:
    """The IE9 picturefill hack (<video style="display:none"> around <source srcset=...jpg>)."""
    raw = (HTML_DIR / name).read_bytes()
    assert b"<video" in (gzip.decompress(raw) if name.endswith(".gz") else raw)
    doc = corpus_doc(name, "https://example.org/page")
    assert video_candidates(doc) == []
    assert doc.images  # the wrapped images are still images


def test_real_video_pages_give_fetchable_candidates() -> None:
    anchor = video_candidates(corpus_doc("trafilatura__anchor.ch.lanka.html",
                                         "https://www.anchor.ch/gesellschaft/ein-tag-aus-dem-leben/"))
    assert [c.fetchable for c in anchor] == [["https://www.anchor.ch/wp-content/uploads/2019/12/Kumara4.mp4"]]
    assert anchor[0].reason == "candidate" and anchor[0].origin == "video-tag"
    gofeminin = video_candidates(corpus_doc("trafilatura__gofeminin.de.horoskop.html", "https://www.gofeminin.de/horoskop/x"))
    assert len(gofeminin) == 1
    g = gofeminin[0]
    assert all(u.endswith(".mp4") for u in g.fetchable) and any(u.endswith(".m3u8") for u in g.sources)
    eldeber = corpus_doc("trafilatura__eldeber.com.bo-autos.html", "https://eldeber.com.bo/autos")
    assert video_candidates(eldeber) == []  # an empty <video controls> is no video


def test_unfetchable_players_are_recorded_with_a_reason() -> None:
    assert unfetchable_reason("https://cdn.example/live/master.m3u8") == "hls-manifest"
    assert unfetchable_reason("https://cdn.example/v/manifest.mpd") == "dash-manifest"
    assert unfetchable_reason("https://www.youtube.com/embed/abc") == "embed-player"
    assert unfetchable_reason("blob:https://example.org/1234-5678") == "blob-url"
    assert unfetchable_reason("data:video/mp4;base64,AAAA") == "data-url"
    assert unfetchable_reason("https://cdn.example/v/clip.mp4") is None
    doc = doc_from([text("Intro text for the page.")], {})
    doc.videos = [DocVideo(1, VideoRef(["https://cdn.example/live/master.m3u8"], caption="Live: the harbour at night")),
                  DocVideo(1, VideoRef([], title="An empty player shell"))]
    cands = video_candidates(doc)
    assert [c.reason for c in cands] == ["hls-manifest", "no-source"]
    row = unfetchable_sample(cands[0], VideoConfig())
    assert (row.status, row.error_message, row.caption) == (STATUS_FAILED_TO_DOWNLOAD, "hls-manifest: not fetched",
                                                            "Live: the harbour at night")


def test_video_caption_sources_in_order() -> None:
    nodes = [text("Watch the video below: three green squares drift across a grey screen."), text("Closing words.")]
    doc = doc_from(nodes, {})
    doc.title = "Page title about moving shapes"
    doc.videos = [
        DocVideo(1, VideoRef(["https://v.example/a.mp4"], title="Kumara4.mp4", caption="Three green squares drift by")),
        DocVideo(1, VideoRef(["https://v.example/b.mp4"], title="Green squares drifting slowly")),
        DocVideo(1, VideoRef(["https://v.example/c.mp4"])),
    ]
    a, b, c = video_candidates(doc)
    assert a.captions == {"figcaption": "Three green squares drift by",
                          "context": "Watch the video below: three green squares drift across a grey screen.",
                          "page-title": "Page title about moving shapes"}  # the file-name title is no caption
    config = VideoConfig()
    assert choose_video_caption(a, "Spoken words", config) == ("Three green squares drift by", "figcaption")
    assert choose_video_caption(b, None, config) == ("Green squares drifting slowly", "title")
    assert choose_video_caption(c, "Two people talk about squares", VideoConfig(caption_sources=("track", "context")))[1] == "track"
    assert choose_video_caption(c, None, VideoConfig(caption_sources=("figcaption",))) == (None, None)


def test_build_video_sample_outcomes() -> None:
    good = process_video((VIDEO_DIR / "moviepy__transparent.webm").read_bytes())
    bad = process_video(b"<html>not a video</html>")
    doc = doc_from([text("x")], {})
    doc.videos = [DocVideo(1, VideoRef(["https://v.example/hd.mp4", "https://v.example/sd.mp4"], caption="A red ball bounces"))]
    cand = video_candidates(doc)[0]
    config = VideoConfig()
    sample, outcome = build_video_sample(cand, [(1, "https://v.example/sd.mp4", good), (0, "https://v.example/hd.mp4", bad)], [], config)
    assert outcome == "kept" and sample is not None and sample.url.endswith("sd.mp4") and sample.caption == "A red ball bounces"
    row, outcome = build_video_sample(cand, [(0, "https://v.example/hd.mp4", bad)], [], config)
    assert outcome == "not-video" and row is not None and row.status == STATUS_FAILED_TO_SUBSAMPLE
    row, outcome = build_video_sample(cand, [], [], config)
    assert outcome == "not-in-crawl" and row is not None and row.status == STATUS_FAILED_TO_DOWNLOAD
    cand.captions = {}
    assert build_video_sample(cand, [(0, "u", good)], [], config) == (None, "no-caption")
    sample, _ = build_video_sample(cand, [(0, "u", good)], [(0, "A red ball bounces twice on the floor")], config)
    assert sample is not None and sample.caption_source == "track"

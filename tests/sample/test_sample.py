"""The sample crawl must be valid, deterministic and agree with its own truth file.

Downstream pipeline tests compare their output to `sample-truth.jsonl`, so a truth line
that disagrees with the WARC bytes would make every later test wrong; these tests read
the WARCs back independently (warcio, raw zlib, Pillow) and check each claim.
"""
from __future__ import annotations

import html
import io
import json
import os
import re
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin

import pytest
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

from m3w_pipeline.core.config import DedupConfig, FilterConfig
from m3w_pipeline.filter.dedup import phash_distance
from m3w_pipeline.media.images import process_image
from m3w_pipeline.sample.crawl import SampleCrawl, write_sample_crawl
from m3w_pipeline.sample.lesson import LESSON_PATH, LESSON_SHOTS, LESSON_WAYS
from m3w_pipeline.sample.shapes import BACKGROUNDS, COLOURS, SHAPES
from m3w_pipeline.sample.truth import TRUTH_FILENAME

PAGES = 120
PAGES_PER_FILE = 50  # -> 3 files, so cross-file image joins occur


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> SampleCrawl:
    return write_sample_crawl(tmp_path_factory.mktemp("crawl"), pages=PAGES, seed=0, pages_per_file=PAGES_PER_FILE)


@pytest.fixture(scope="module")
def truth(crawl: SampleCrawl) -> list[dict]:
    with open(crawl.truth_path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def records(crawl: SampleCrawl) -> dict[str, list[dict]]:
    """WARC file name -> records in file order, read with warcio."""
    return {path.name: _read_records(path) for path in crawl.warc_paths}


@pytest.fixture(scope="module")
def responses(records: dict[str, list[dict]]) -> dict[tuple[str, str], dict]:
    """(WARC file name, target URI) -> response record."""
    return {
        (name, rec["uri"]): rec
        for name, recs in records.items()
        for rec in recs
        if rec["type"] == "response"
    }


def _read_records(path: Path) -> list[dict]:
    out = []
    with open(path, "rb") as fh:
        iterator = ArchiveIterator(fh)
        for record in iterator:
            http = record.http_headers
            out.append({
                "type": record.rec_type,
                "uri": record.rec_headers.get_header("WARC-Target-URI"),
                "id": record.rec_headers.get_header("WARC-Record-ID"),
                "concurrent": record.rec_headers.get_header("WARC-Concurrent-To"),
                "refers_to": record.rec_headers.get_header("WARC-Refers-To-Target-URI"),
                "status": int(http.get_statuscode()) if http and record.rec_type == "response" else None,
                "headers": dict(http.headers) if http else {},
                "payload": record.content_stream().read(),
                "offset": iterator.get_record_offset(),
            })
    return out


def _gzip_members(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(offset, complete, decompressed) for each gzip member, parsed with raw zlib."""
    members, pos, view = [], 0, memoryview(data)
    while pos < len(data):
        decomp = zlib.decompressobj(31)
        out = decomp.decompress(view[pos:])
        if not decomp.eof:
            members.append((pos, False, out))
            break
        members.append((pos, True, out))
        pos = len(data) - len(decomp.unused_data)
    return members


# ---------------------------------------------------------------- WARC validity


def test_files_are_per_record_gzip_with_a_break_only_at_the_end(crawl: SampleCrawl) -> None:
    assert len(crawl.warc_paths) == 3
    for index, path in enumerate(crawl.warc_paths):
        members = _gzip_members(path.read_bytes())
        last_file = index == len(crawl.warc_paths) - 1
        complete = members[:-1] if last_file else members
        assert all(ok for _, ok, _ in complete), path
        # one member == exactly one record
        for _, _, data in complete:
            assert data.startswith(b"WARC/1.0\r\n") and data.count(b"\r\nWARC-Type: ") == 1
            assert data.endswith(b"\r\n\r\n")
        if last_file:
            offset, ok, _ = members[-1]
            broken = crawl.broken_record
            assert not ok and broken is not None
            assert broken.warc_path == path and broken.offset == offset
            assert path.stat().st_size == broken.offset + broken.kept_length < broken.offset + broken.full_length
        assert complete[0][2].split(b"\r\n")[1] == b"WARC-Type: warcinfo"


def test_warcio_reads_every_record_and_the_truncated_one_is_short(
    crawl: SampleCrawl, records: dict[str, list[dict]]
) -> None:
    for path in crawl.warc_paths:
        recs = records[path.name]
        assert recs[0]["type"] == "warcinfo"
        assert len(recs) == len(_gzip_members(path.read_bytes()))
    last = records[crawl.warc_paths[-1].name][-1]
    broken = crawl.broken_record
    assert broken is not None and last["uri"] == broken.url and last["offset"] == broken.offset
    # warcio yields the cut record without raising; only its payload is short.
    assert len(last["payload"]) < int(last["headers"]["Content-Length"])
    total = Counter(rec["type"] for recs in records.values() for rec in recs)
    assert dict(total) == crawl.record_counts


def test_record_kinds_like_common_crawl(records: dict[str, list[dict]], crawl: SampleCrawl) -> None:
    all_recs = [rec for recs in records.values() for rec in recs]
    types = Counter(rec["type"] for rec in all_recs)
    assert types["warcinfo"] == len(crawl.warc_paths)
    assert types["revisit"] == 1 and types["metadata"] > PAGES * 0.9
    assert types["request"] == types["response"] + types["revisit"]
    by_id = {rec["id"]: rec for rec in all_recs}
    assert len(by_id) == len(all_recs), "record ids must be unique"
    for rec in all_recs:
        if rec["type"] == "request":
            target = by_id[rec["concurrent"]]
            assert target["type"] in ("response", "revisit") and target["uri"] == rec["uri"]
    revisit = next(rec for rec in all_recs if rec["type"] == "revisit")
    assert any(r["type"] == "response" and r["uri"] == revisit["refers_to"] for r in all_recs)
    content_types = {rec["headers"].get("Content-Type", "") for rec in all_recs if rec["type"] == "response"}
    assert {"application/json", "text/css", "image/png", "image/webp", "image/jpeg"} <= content_types
    statuses = Counter(rec["status"] for rec in all_recs if rec["type"] == "response")
    assert statuses[404] == 1 and statuses[301] == 1
    redirect = next(rec for rec in all_recs if rec["status"] == 301)
    assert redirect["headers"]["Location"].startswith("https://")


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_sample_crawl(tmp_path / "a", pages=25, seed=3, pages_per_file=10)
    b = write_sample_crawl(tmp_path / "b", pages=25, seed=3, pages_per_file=10)
    c = write_sample_crawl(tmp_path / "c", pages=25, seed=4, pages_per_file=10)
    assert [p.name for p in a.warc_paths] == [p.name for p in b.warc_paths] == [p.name for p in c.warc_paths]
    for pa, pb, pc in zip(a.warc_paths, b.warc_paths, c.warc_paths):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes() != c.truth_path.read_bytes()


def test_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """Different PYTHONHASHSEEDs (set/dict-order or hash() dependence) must not change output."""
    code = "import sys; from m3w_pipeline.sample.crawl import write_sample_crawl; write_sample_crawl(sys.argv[1], pages=12)"
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, timeout=120)
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]


def test_rewrite_removes_stale_warcs_and_bad_args(tmp_path: Path) -> None:
    stale = tmp_path / "sample-00007.warc.gz"
    stale.write_bytes(b"old")
    result = write_sample_crawl(tmp_path, pages=3, seed=0)
    assert not stale.exists()
    assert sorted(tmp_path.iterdir()) == sorted(result.warc_paths + [tmp_path / TRUTH_FILENAME])
    with pytest.raises(ValueError):
        write_sample_crawl(tmp_path, pages=0)


# ---------------------------------------------------------------- truth vs WARCs


def test_truth_pages_match_html_responses(truth: list[dict], responses: dict, crawl: SampleCrawl) -> None:
    assert crawl.truth_path.name == TRUTH_FILENAME
    assert len({tuple(sorted(line)) for line in truth}) == 1, "every truth line has the same fields"
    urls = [line["url"] for line in truth]
    assert len(urls) == len(set(urls))
    pages = [line for line in truth if line["status"] == 200 and not line["truncated"]]
    assert len([p for p in pages if p["kind"] != "lesson"]) == PAGES == crawl.pages
    assert len([p for p in pages if p["kind"] == "lesson"]) == crawl.lessons == PAGES // 5
    for line in truth:
        rec = responses[(line["warc_file"], line["url"])]
        assert rec["status"] == line["status"]
        assert rec["headers"]["Content-Type"].startswith("text/html")
    for line in pages:
        page = html.unescape(responses[(line["warc_file"], line["url"])]["payload"].decode("utf-8"))
        if line["base_href"]:
            assert f'<base href="{line["base_href"]}">' in page
        pos = 0
        for image in line["images"]:
            assert urljoin(line["base_href"] or line["url"], image["ref"]) == image["url"]
            match = re.compile(re.escape(image["ref"]) + r"""(?=["'\s])""").search(page, pos)
            assert match, (line["url"], image["ref"])
            pos = match.end()
        for logo in line["boilerplate_images"]:
            assert page.index(logo) < page.index("<h1>")


def test_truth_images_are_in_the_warcs_at_the_stated_size(truth: list[dict], responses: dict) -> None:
    checked = 0
    for line in truth:
        for image in line["images"]:
            written = [(image, image["warc_file"])] + [(a, a["warc_file"]) for a in image["also_written"]]
            if not image["in_crawl"]:
                assert image["expected_drop"] == "missing" and image["warc_file"] is None
                assert not any(key[1] == image["url"] for key in responses)
                continue
            for entry, warc_file in written:
                rec = responses[(warc_file, entry["url"])]
                assert len(rec["payload"]) == entry["bytes"]
                with Image.open(io.BytesIO(rec["payload"])) as decoded:
                    assert decoded.size == (entry["width"], entry["height"])
                    assert decoded.format == entry["format"]
                checked += 1
            assert responses[(image["warc_file"], image["url"])]["headers"].get("Content-Type") == image["content_type"]
    assert checked > PAGES


def test_expectations_follow_the_stated_rules(truth: list[dict], responses: dict) -> None:
    reasons = Counter()
    for line in truth:
        for image in line["images"]:
            w, h = image["width"], image["height"]
            if image["expected_drop"] is None:
                assert min(w, h) >= 64 and max(w, h) / min(w, h) <= 3.0
            reasons[image["expected_drop"]] += 1
        valid = [im for im in line["images"] if im["expected_drop"] is None]
        if line["status"] == 200 and not line["truncated"]:
            assert line["expected_kept"] == (bool(valid) and line["main_words"] >= 20)
        else:
            assert not line["expected_kept"]
        if line["expected_kept"]:
            assert 1 <= len(line["images"]) <= 30
    assert reasons["too-small"] and reasons["bad-aspect"] and reasons[None] > 100
    kept = [line for line in truth if line["expected_kept"] and line["kind"] != "lesson"]
    assert 0.55 < len(kept) / PAGES < 0.9
    # the mix the pipeline must handle
    styles = Counter(im["style"] for line in truth for im in line["images"])
    assert {"srcset", "picture", "lazy", "cdn-hash", "php", "root-relative", "path-relative", "absolute"} <= set(styles)
    kinds = Counter(line["kind"] for line in truth)
    assert kinds["textonly"] and kinds["short"] and kinds["video"] and kinds["icons"]
    assert any(line["base_href"] for line in truth)
    wrong_or_missing = [im for line in truth for im in line["images"]
                        if im["in_crawl"] and im["content_type"] not in ("image/jpeg", "image/png", "image/webp")]
    assert wrong_or_missing
    # some images live in a different WARC file than their page
    assert any(im["warc_file"] not in (None, line["warc_file"]) for line in truth for im in line["images"])


def test_duplicates_are_byte_identical_copies(truth: list[dict], responses: dict) -> None:
    by_url = {line["url"]: line for line in truth}
    dups = [line for line in truth if line["duplicate_of"]]
    assert dups
    for line in dups:
        original = by_url[line["duplicate_of"]]
        assert original["duplicate_of"] is None and original["url"] != line["url"]
        a = responses[(line["warc_file"], line["url"])]["payload"]
        b = responses[(original["warc_file"], original["url"])]["payload"]
        assert a == b
        assert [im["url"] for im in line["images"]] == [im["url"] for im in original["images"]]


def test_videos_have_crawled_posters(truth: list[dict], responses: dict) -> None:
    videos = [(line, v) for line in truth for v in line["videos"]]
    assert videos
    for line, video in videos:
        page = responses[(line["warc_file"], line["url"])]["payload"].decode()
        assert video["sources"][0].endswith(".mp4") and video["sources"][0] in page
        poster = responses[(video["poster_warc_file"], video["poster"])]
        with Image.open(io.BytesIO(poster["payload"])) as decoded:
            assert decoded.size == (video["poster_width"], video["poster_height"])
        assert video["colour"] in video["caption"] and video["shape"] in video["caption"]


def test_crawled_videos_decode_to_what_the_truth_and_caption_say(truth: list[dict], responses: dict) -> None:
    """The mp4 at the <source> URL is a real H.264 clip: size, rate, length as stated, the
    captioned colour on screen, and the shapes moving."""
    import av
    import numpy as np

    videos = [v for line in truth for v in line["videos"]]
    crawled = [v for v in videos if v["in_crawl"]]
    assert crawled and len(crawled) < len(videos)  # both kinds: clip in the crawl, and not
    for video in videos:
        if not video["in_crawl"]:
            assert video["warc_file"] is None and not any(key[1] == video["sources"][0] for key in responses)
    for video in crawled:
        rec = responses[(video["warc_file"], video["url"])]
        assert video["url"] == video["sources"][0] and rec["headers"]["Content-Type"] == "video/mp4"
        assert len(rec["payload"]) == video["bytes"]
        with av.open(io.BytesIO(rec["payload"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.average_rate == video["fps"]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == video["frames"] and frames[0].shape == (video["height"], video["width"], 3)
        assert abs(len(frames) / video["fps"] - video["duration"]) < 1e-9 and 2 <= video["duration"] <= 4
        colour = np.array(COLOURS[[c for c, _ in COLOURS].index(video["colour"])][1], dtype=float)
        near = np.abs(frames[0].astype(float) - colour).sum(axis=2) < 60
        assert near.sum() > 20, video["url"]
        assert np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean() > 0.5  # the shapes moved


def test_video_rendering_is_deterministic() -> None:
    from m3w_pipeline.sample.shapes import ShapeSpec, render_shape_video

    spec = ShapeSpec("star", "red", 3, "white")
    a, b = render_shape_video(spec, "k", 10, 2.0), render_shape_video(spec, "k", 10, 2.0)
    assert a.data == b.data and a.frames == 20 and a.data != render_shape_video(spec, "other", 10, 2.0).data


# ---------------------------------------------------------------- learnable content


def test_most_images_are_over_10kb(truth: list[dict]) -> None:
    # lesson pages' images are small on purpose (quick to encode; the model sees them at 32 px)
    sizes = [im["bytes"] for line in truth if line["kind"] != "lesson" for im in line["images"] if im["in_crawl"]]
    assert sum(s > 10_000 for s in sizes) / len(sizes) > 0.6


def _nearest_colour(rgb: tuple[int, int, int]) -> str:
    palette = list(COLOURS) + list(BACKGROUNDS)
    return min(palette, key=lambda item: sum((a - b) ** 2 for a, b in zip(item[1], rgb)))[0]


def test_text_names_the_drawn_shapes_and_pixels_agree(truth: list[dict], responses: dict) -> None:
    checked = 0
    for line in truth:
        page = html.unescape(responses[(line["warc_file"], line["url"])]["payload"].decode()) if line["images"] else ""
        for image in line["images"]:
            d = image["description"]
            assert image["colour"] in d and image["shape"] in d and image["background"] in d
            assert image["shape"] in SHAPES and len(image["centres"]) == image["count"]
            if image["expected_drop"] is not None:
                continue
            assert image["text_sources"], "every kept image is named by alt, figcaption or a paragraph"
            lowered = page.lower()
            if "alt" in image["text_sources"]:
                assert f'alt="{d}"'.lower() in lowered
            if line["kind"] == "lesson":  # named by the page's made-up word (test_lessons_bind_made_up_words)
                assert image["caption"].lower() in lowered
            elif "figcaption" in image["text_sources"] or "paragraph" in image["text_sources"]:
                assert d in image["caption"].lower() and image["caption"].lower() in lowered
            if checked < 60:
                payload = responses[(image["warc_file"], image["url"])]["payload"]
                with Image.open(io.BytesIO(payload)) as decoded:
                    rgb = decoded.convert("RGB")
                    for x, y in image["centres"]:
                        assert _nearest_colour(rgb.getpixel((x, y))) == image["colour"], (image["url"], x, y)
                checked += 1
    assert checked == 60


def test_prose_is_long_and_varied(truth: list[dict], responses: dict) -> None:
    pages = [line for line in truth if line["status"] == 200 and not line["truncated"] and line["kind"] != "lesson"]
    words = [line["main_words"] for line in pages]
    assert sum(80 <= w <= 600 for w in words) / len(words) > 0.7
    paragraphs: Counter = Counter()
    for line in pages:
        if line["duplicate_of"]:
            continue
        page = responses[(line["warc_file"], line["url"])]["payload"].decode()
        main = page[page.index("<h1>"):page.index("<footer")]  # footer boilerplate repeats by design
        paragraphs.update(set(re.findall(r"<p>([^<]{80,})</p>", main)))
    assert len(paragraphs) > PAGES and max(paragraphs.values()) == 1, "a long paragraph repeats across pages"


def test_lessons_bind_made_up_words(truth: list[dict], responses: dict) -> None:
    """Fast-binding pages: two concepts (differing in colour and shape) x LESSON_SHOTS images, each
    captioned with a word made up for that page; short enough for the repetition filters, and no
    two images of a page close enough for the perceptual-hash dedup to drop one."""
    lessons = [line for line in truth if line["kind"] == "lesson"]
    assert lessons and all(LESSON_PATH in line["url"] and line["expected_kept"] for line in lessons)
    vocabularies = []
    for line in lessons:
        assert line["main_words"] < FilterConfig().min_words_for_repetition_filters
        words: dict[str, set[tuple[str, str]]] = {}
        for image in line["images"]:
            match = re.fullmatch(r"([a-z]+)\.", image["caption"])
            assert match and image["text_sources"] == ["figcaption"] and image["expected_drop"] is None
            words.setdefault(match.group(1), set()).add((image["colour"], image["shape"]))
        assert len(words) == LESSON_WAYS and all(len(concept) == 1 for concept in words.values())
        (colour_a, shape_a), (colour_b, shape_b) = (next(iter(c)) for c in words.values())
        assert colour_a != colour_b and shape_a != shape_b
        assert Counter(re.fullmatch(r"([a-z]+)\.", im["caption"]).group(1) for im in line["images"]) == {w: LESSON_SHOTS for w in words}
        page = responses[(line["warc_file"], line["url"])]["payload"].decode()
        assert 'alt=""' in page and page.count("<figcaption>") == len(line["images"])
        hashes = [process_image(responses[(im["warc_file"], im["url"])]["payload"]).image.phash for im in line["images"]]
        assert min(phash_distance(a, b) for i, a in enumerate(hashes) for b in hashes[:i]) > DedupConfig().max_phash_distance
        vocabularies.append(frozenset(words))
    assert len(set(vocabularies)) == len(vocabularies), "the words change from page to page"

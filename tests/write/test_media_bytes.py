"""Media bytes leave the samples and come back (m3w_pipeline.write.media_bytes), without Beam:
a shard written from samples whose bytes went through split -> needs -> shipments -> fill is
byte for byte the shard written from the samples as processed."""
from __future__ import annotations

import dataclasses
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import FilterConfig, PairConfig, VideoConfig
from m3w_pipeline.core.document import DocImage, DocVideo, assemble_document
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, Node, VideoRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.filter.dedup import image_ids, remove_hot_images
from m3w_pipeline.filter.filters import enough_images_after_dedup
from m3w_pipeline.media.images import ImageResult, process_image
from m3w_pipeline.media.video import VideoResult, process_video
from m3w_pipeline.write.media_bytes import (
    document_hashes,
    grouped_with_bytes,
    kept_keys_needs,
    needs,
    sample_hashes,
    shipments,
    split_image_bytes,
    split_video_bytes,
    video_content_key,
    video_hashes,
    with_document_bytes,
    with_sample_bytes,
    with_video_bytes,
)
from m3w_pipeline.write.pair_shards import write_pair_shard, write_video_shard
from m3w_pipeline.write.pairs import extract_pairs
from m3w_pipeline.write.shards import write_m3w_shard
from m3w_pipeline.write.video_samples import build_video_sample, video_candidates

PROV = Provenance("crawl-00000.warc.gz", 100, 2000, "<urn:uuid:1>", "2024-03-04T10:00:00Z")
VIDEO_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "video"


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def document(key: str, results: dict[int, ImageResult]):
    nodes = [Node("text", text="Cards on a table, photographed one by one for the catalogue.")]
    nodes += [Node("image", image=ImageRef(f"https://cdn.example/{i}.jpg", alt=f"A card, number {i}, on a white table")) for i in range(3)]
    doc, _ = assemble_document(key, ExtractedPage(f"https://cards.example/{key}", nodes, lang="en"), PROV,
                               {i + 1: r for i, r in results.items()})
    return doc


def shipped_back(samples: dict[str, list[Any]], contents: dict[str, Any], hashes, fill, corpus: str = "m3w") -> dict[str, list[Any]]:
    """The round trip the build wires with Beam: what each shard needs, one shipment per (content, shard), fill."""
    wanted: dict[str, list] = defaultdict(list)
    for shard, group in samples.items():
        for sample in group:
            for key, target in needs((shard, sample), corpus, hashes):
                wanted[key].append(target)
    by_shard: dict[str, list] = defaultdict(list)
    for key in sorted(set(contents) | set(wanted)):
        for name, (shard, content) in shipments(key, [contents[key]] if key in contents else [], wanted.get(key, [])):
            assert name == corpus
            by_shard[shard].append(content)
    return {shard: grouped_with_bytes({"samples": group, "bytes": by_shard[shard]}, fill) for shard, group in samples.items()}


def test_image_split_keeps_metadata_and_hands_the_bytes_once():
    result = process_image(jpeg((200, 30, 30)))
    content, light = split_image_bytes(result)
    assert content == (result.image.sha256, result.image.data) and len(content[1]) > 500
    assert light.image.data == b"" and light.image.sha256 == result.image.sha256 and light.image.phash == result.image.phash
    assert result.image.data == content[1]  # the input is not changed
    failed = ImageResult(None, "decode-error", "truncated")
    assert split_image_bytes(failed) == (None, failed)


def test_m3w_shard_from_shipped_bytes_is_the_shard_from_processed_documents():
    red, blue, green = (process_image(jpeg(c)) for c in ((200, 30, 30), (30, 30, 200), (30, 200, 30)))
    full = {"s0": [document("a" * 24, {0: red, 1: blue}), document("b" * 24, {0: blue, 2: green})], "s1": [document("c" * 24, {0: red})]}
    contents, light = {}, {}
    for shard, docs in full.items():
        light[shard] = []
        for doc in docs:
            images = []
            for im in doc.images:
                if im is None or im.image is None:
                    images.append(im)
                    continue
                content, stripped = split_image_bytes(ImageResult(im.image, "ok"))
                contents[content[0]] = content[1]
                images.append(DocImage(im.ref, im.status, stripped.image))
            light[shard].append(dataclasses.replace(doc, images=images))
    assert all(im.image.data == b"" for docs in light.values() for d in docs for im in d.images if im and im.image)
    assert sorted(document_hashes(full["s0"][0])) == sorted([red.image.sha256, blue.image.sha256])
    back = shipped_back(light, contents, document_hashes, with_document_bytes)
    for shard in full:
        want, got = io.BytesIO(), io.BytesIO()
        write_m3w_shard(full[shard], shard, want)
        write_m3w_shard(back[shard], shard, got)
        assert got.getvalue() == want.getvalue()


def test_shipments_once_per_shard_and_nothing_for_unneeded_content():
    targets = [("m3w", "s1"), ("m3w", "s0"), ("m3w", "s1"), ("pairs", "s0")]
    assert list(shipments("k", [b"xyz"], targets)) == [("m3w", ("s0", ("k", b"xyz"))), ("m3w", ("s1", ("k", b"xyz"))),
                                                      ("pairs", ("s0", ("k", b"xyz")))]
    assert list(shipments("banner", [b"xyz"], [])) == []  # a hot banner no kept sample uses goes no further
    with pytest.raises(ValueError, match="no bytes"):
        list(shipments("k", [], targets))
    # needs: each distinct content once per sample, sorted
    doc = document("d" * 24, {0: process_image(jpeg((9, 9, 9))), 1: process_image(jpeg((9, 9, 9)))})
    (only,) = needs(("s3", doc), "m3w", document_hashes)
    assert only == (doc.images[1].image.sha256, ("m3w", "s3"))


def test_pair_shard_from_shipped_bytes_is_the_shard_from_processed_pairs():
    red, blue = process_image(jpeg((200, 30, 30))), process_image(jpeg((30, 30, 200), (240, 240)))
    pairs, _ = extract_pairs(document("e" * 24, {0: red, 1: blue}), PairConfig(ltip=False))
    assert len([p for p in pairs if p.image is not None]) == 2 and [p for p in pairs if p.image is None]  # one failed row
    contents, light = {}, []
    for pair in pairs:
        if pair.image is None:
            light.append(pair)
            continue
        content, stripped = split_image_bytes(ImageResult(pair.image, "ok"))
        contents[content[0]] = content[1]
        light.append(dataclasses.replace(pair, image=stripped.image))
    assert [list(sample_hashes(p)) for p in pairs] == [[p.image.sha256] if p.image else [] for p in pairs]
    back = shipped_back({"align-00000": light}, contents, sample_hashes, with_sample_bytes, corpus="pairs")
    want, got = io.BytesIO(), io.BytesIO()
    write_pair_shard(pairs, "align-00000", want)
    write_pair_shard(back["align-00000"], "align-00000", got)
    assert got.getvalue() == want.getvalue()


@pytest.mark.parametrize("container", ["original", "mp4"])
def test_video_shard_from_shipped_bytes_is_the_shard_from_processed_videos(container):
    config = VideoConfig(container=container)
    result = process_video((VIDEO_DIR / "moviepy__transparent.webm").read_bytes(), config)
    assert result.video is not None and result.video.frames, result.reason
    content, light_result = split_video_bytes(result)
    key, (data, frames, mp4) = content
    assert key == video_content_key(result.video.sha256) == f"video:{result.video.sha256}"
    assert data == result.video.data and list(frames) == [f.data for f in result.video.frames] and mp4 == result.video.mp4
    assert (mp4 is not None) == (container == "mp4")
    assert light_result.video.data == b"" and light_result.video.mp4 is None and all(f.data == b"" for f in light_result.video.frames)
    assert split_video_bytes(VideoResult(None, "too-long")) == (None, VideoResult(None, "too-long"))

    doc = document("f" * 24, {})
    doc.videos = [DocVideo(1, VideoRef(["https://v.example/clip.webm"], caption="A box slides across a transparent background"))]
    cand = video_candidates(doc)[0]
    full, outcome = build_video_sample(cand, [(0, cand.fetchable[0], result)], [], config)
    light, _ = build_video_sample(cand, [(0, cand.fetchable[0], light_result)], [], config)
    assert outcome == "kept" and list(video_hashes(light)) == [key]
    back = shipped_back({"video-00000": [light]}, {key: (data, frames, mp4)}, video_hashes, with_video_bytes, corpus="video")
    want, got = io.BytesIO(), io.BytesIO()
    write_video_shard([full], "video-00000", want)
    write_video_shard(back["video-00000"], "video-00000", got)
    assert got.getvalue() == want.getvalue()


@pytest.mark.parametrize("min_images", [1, 2, 3])
def test_kept_keys_needs_is_the_writers_decision_made_on_dedup_keys(min_images):
    """What the build decides on dedup's keys (shard count, bytes to ship) must be what the writer then
    decides on the document: hot images removed, then enough stored images left."""
    red, blue, banner = (process_image(jpeg(c)) for c in ((200, 30, 30), (30, 30, 200), (90, 90, 90)))
    doc = document("g" * 24, {0: red, 1: banner})  # image 2 is missing: no result
    doc2 = document("h" * 24, {0: red, 1: blue, 2: banner})
    hot_sets = [frozenset(), frozenset({f"sha256:{banner.image.sha256}"}), frozenset({"url:https://cdn.example/0.jpg"})]
    config = FilterConfig(min_images_per_document=min_images)
    for d in (doc, doc2):
        for hot in hot_sets:
            after = remove_hot_images(d, hot, Tally())
            written = enough_images_after_dedup(after, config, Tally())
            decided = kept_keys_needs(image_ids(d), hot, min_images)
            assert (decided is not None) == written, (d.key, hot, min_images)
            if written:
                assert decided == sorted(set(document_hashes(after)))

"""Pair and video shards: deterministic bytes, read back with webdataset the way CLIP and
Flamingo trainers read them, Parquet indexes with failed rows; and the Beam stages in real
pipelines (embedded FnApiRunner) over a generated sample crawl and over hand-made videos."""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import apache_beam as beam
import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from beam_jobs.counting import SHUFFLE_STAGES, CountedSteps
from beam_jobs.image_bytes import IMAGE_BYTES, ImageShipment
from beam_jobs.m3w_job import BROKEN, COUNTS, MEDIA, ExtractFn, ProcessImageRecordsFn, ReadWarcFn, ResolveImagesFn, image_refs
from beam_jobs.pairs_video_stages import (
    VIDEO_MEDIA,
    AssemblePairInputsFn,
    add_pair_corpus,
    add_video_corpus,
    split_media,
)
from m3w_pipeline.core.accounting import STAGE_LINKS
from m3w_pipeline.core.config import BuildConfig, PairConfig, VideoConfig
from m3w_pipeline.core.document import DocVideo, assemble_document
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, Node, VideoRef
from m3w_pipeline.core.web import Provenance, normalize_url
from m3w_pipeline.media.images import process_image
from m3w_pipeline.media.video import process_video
from m3w_pipeline.read.warc import MediaRecord
from m3w_pipeline.sample.crawl import SampleCrawl, write_sample_crawl
from m3w_pipeline.write.layout import INDEX_DIR
from m3w_pipeline.write.pair_shards import write_pair_shard, write_video_shard
from m3w_pipeline.write.pairs import PairInput, extract_pairs
from m3w_pipeline.write.video_samples import build_video_sample, video_candidates
from schemas import load_json_schema

VIDEO_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "video"
PROV = Provenance("crawl-00000.warc.gz", 100, 2000, "<urn:uuid:1>", "2024-03-04T10:00:00Z")
PAIR_SCHEMA = jsonschema.Draft202012Validator(load_json_schema("pair_sample"))
VIDEO_SCHEMA = jsonschema.Draft202012Validator(load_json_schema("video_sample"))


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def page_doc(key: str, url: str, nodes: list[Node], results: dict, title: str | None = None):
    doc, _ = assemble_document(key, ExtractedPage(url, nodes, title=title, lang="en"), PROV, results)
    return doc


def read_webdataset(paths: list[Path], *fields: str) -> list[tuple]:
    urls = [str(p) for p in paths]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple(*fields))


def check_schema(validator: jsonschema.Draft202012Validator, sample: dict) -> None:
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(sample)]
    assert not errors, errors


# ------------------------------------------------------------------ library writers


def test_pair_shard_is_deterministic_and_reads_back_like_clip_training(tmp_path: Path) -> None:
    red, blue = process_image(jpeg((200, 30, 30))), process_image(jpeg((30, 30, 200), (240, 240)))
    nodes = [
        Node("image", image=ImageRef("https://cdn.example/red.jpg", alt="A red card on a white table")),
        Node("image", image=ImageRef("https://cdn.example/blue.jpg", alt="A blue card on a white table")),
        Node("image", image=ImageRef("https://cdn.example/gone.jpg", alt="A green card on a white table")),
    ]
    doc = page_doc("d" * 24, "https://cards.example/p", nodes, {0: red, 1: blue})
    pairs, _ = extract_pairs(doc, PairConfig(ltip=False))
    path = tmp_path / "align-00000.tar"
    with open(path, "wb") as fh:
        info, table = write_pair_shard(list(reversed(pairs)), "align-00000", fh)
    again = io.BytesIO()
    write_pair_shard(pairs, "align-00000", again)  # input order does not matter
    assert again.getvalue() == path.read_bytes() and info.tar_sha256 == hashlib.sha256(again.getvalue()).hexdigest()
    assert info.samples == 2 and table.num_rows == 3
    rows = {r["url"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert rows["gone.jpg"]["status"] == "failed_to_download" and rows["gone.jpg"]["offset"] is None
    # exactly what a CLIP trainer does
    got = read_webdataset([path], "jpg", "txt")
    assert sorted(txt for _, txt in got) == ["A blue card on a white table", "A red card on a white table"]
    for im, txt in got:
        assert isinstance(im, Image.Image) and im.size in ((300, 200), (240, 240))
        colour = np.asarray(im).reshape(-1, 3).mean(axis=0)
        assert (colour[0] > colour[2]) == txt.startswith("A red")
    for sample in read_webdataset([path], "json", "__key__"):
        meta, key = sample
        check_schema(PAIR_SCHEMA, meta)
        assert meta["key"] == key and rows[meta["url"].rsplit("/", 1)[-1]]["sha256"] == meta["sha256"]
    data = path.read_bytes()
    for r in table.to_pylist():  # offset/size locate each sample's members
        if r["offset"] is not None:
            assert data[r["offset"]:r["offset"] + 100].startswith(f"{r['key']}.jpg".encode())


def moving_clip(seconds: float = 3.0, fps: int = 10) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps, options={"threads": "1"})
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(int(seconds * fps)):
            a = np.full((120, 160, 3), 240, np.uint8)
            x = 10 + 4 * i
            a[40:80, x:x + 30] = (30, 60, 220)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def test_video_shard_frames_in_time_order(tmp_path: Path) -> None:
    doc = page_doc("e" * 24, "https://v.example/p", [Node("text", text="x")], {})
    doc.videos = [DocVideo(1, VideoRef(["https://v.example/clip.mp4"], caption="A blue box slides to the right"))]
    cand = video_candidates(doc)[0]
    sample, outcome = build_video_sample(cand, [(0, cand.fetchable[0], process_video(moving_clip()))], [], VideoConfig())
    assert outcome == "kept" and sample is not None
    path = tmp_path / "video-00000.tar"
    with open(path, "wb") as fh:
        info, table = write_video_shard([sample], "video-00000", fh)
    assert info.samples == 1 and table.to_pylist()[0]["n_frames"] == 8
    (got,) = list(wds.WebDataset(str(path), shardshuffle=False).decode("pil"))
    assert got["txt"] == "A blue box slides to the right" and got["mp4"] == sample.video.data
    check_schema(VIDEO_SCHEMA, got["json"])
    frames = [got[f"{i:03d}.jpg"] for i in range(8)]
    assert [f["file"] for f in got["json"]["frames"]] == [f"{i:03d}.jpg" for i in range(8)]
    assert_moving(frames, got["json"]["frames"])


def assert_moving(frames: list[Image.Image], meta: list[dict], min_shift: float = 2.0) -> None:
    """Timestamps strictly ascend and the picture changes from frame to frame."""
    times = [f["timestamp"] for f in meta]
    assert times == sorted(times) and len(set(times)) == len(times)
    arrays = [np.asarray(f.convert("L"), dtype=float) for f in frames]
    for a, b in zip(arrays, arrays[1:]):
        assert np.abs(a - b).mean() > min_shift / 10  # not the same picture


# ------------------------------------------------------------------ Beam: the sample crawl end to end


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> SampleCrawl:
    # seed 6, 50 pages: 5 video pages, 4 of their clips in the crawl (asserted below)
    return write_sample_crawl(tmp_path_factory.mktemp("pv_crawl"), pages=50, seed=6, pages_per_file=25)


def run_pairs_and_video(inputs: list[str], out: Path, config: BuildConfig) -> dict[tuple[str, str], int]:
    """The read/extract/resolve part of the M3W job, then the pair and video corpora, as the job wires them."""
    out.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(runner="FnApiRunner") as p:
        read = (p | "Inputs" >> beam.Create(sorted(inputs))
                | "ReadWarc" >> beam.ParDo(ReadWarcFn(config.warc)).with_outputs(MEDIA, BROKEN, COUNTS, main="pages"))
        split = read[MEDIA] | "SplitMedia" >> beam.FlatMap(split_media).with_outputs(VIDEO_MEDIA, COUNTS, main="images")
        extracted = read.pages | "Extract" >> beam.ParDo(ExtractFn(config.extract)).with_outputs(COUNTS, main="docs")
        refs = extracted.docs | "ImageRefs" >> beam.FlatMap(image_refs)
        processed = split.images | "ProcessImageRecords" >> beam.ParDo(ProcessImageRecordsFn(config.image)).with_outputs(
            COUNTS, IMAGE_BYTES, main="records")
        resolved = ({"refs": refs, "media": processed.records} | "JoinMediaByUrl" >> beam.CoGroupByKey()
                    | "ResolveImages" >> beam.ParDo(ResolveImagesFn()).with_outputs(COUNTS, main="images"))
        by_doc = {"page": extracted.docs, "images": resolved.images} | "JoinByDocument" >> beam.CoGroupByKey()
        pair_inputs = by_doc | "AssemblePairInputs" >> beam.ParDo(AssemblePairInputsFn())
        shipment = ImageShipment(CountedSteps(), processed[IMAGE_BYTES])
        pairs = add_pair_corpus(pair_inputs, str(out), config, shipment)
        videos = add_video_corpus(pair_inputs, split[VIDEO_MEDIA], str(out), config)
        pairs.shards = shipment.ship()["pairs"]  # image bytes travel apart from the pairs, as in the job
        write_counts(p, [read[COUNTS], split[COUNTS], extracted[COUNTS], resolved[COUNTS]] + pairs.counts + videos.counts,
                     [pairs.shards, videos.shards], out)
    return load_counts(out)


def write_counts(p: beam.Pipeline, counts: list, shards: list, out: Path) -> None:
    summed = (counts | "AllCounts" >> beam.Flatten() | "StageCounts" >> beam.Filter(lambda c: c.stage not in SHUFFLE_STAGES)
              | "CountKey" >> beam.Map(lambda c: (f"{c.stage}|{c.outcome}", c.n))
              | "SumCounts" >> beam.CombinePerKey(sum) | "CountList" >> beam.combiners.ToList())
    summed | "WriteCounts" >> beam.Map(lambda items: (out / "counts.json").write_text(json.dumps(dict(sorted(items)))))
    (shards | "AllShards" >> beam.Flatten() | "ShardList" >> beam.combiners.ToList()
     | "WriteShardList" >> beam.Map(lambda items: (out / "shards.json").write_text(json.dumps(sorted(items, key=lambda s: s["name"])))))


def load_counts(out: Path) -> dict[tuple[str, str], int]:
    return {tuple(k.split("|")): v for k, v in json.loads((out / "counts.json").read_text()).items()}


def reconcile(counts: dict[tuple[str, str], int]) -> list[str]:
    """in == sum(outcomes) per stage, and each STAGE_LINKS pair agrees (what accounting will check)."""
    errors = []
    for stage in {s for s, _ in counts}:
        outcomes = {o: n for (s, o), n in counts.items() if s == stage and o != "in"}
        if counts.get((stage, "in"), 0) != sum(outcomes.values()):
            errors.append(f"{stage}: in={counts.get((stage, 'in'), 0)} outcomes={outcomes}")
    counted = {s for s, _ in counts}
    for stage, outcome, next_stage in STAGE_LINKS:
        if stage in counted and next_stage in counted and counts.get((stage, outcome), 0) != counts.get((next_stage, "in"), 0):
            errors.append(f"{stage}.{outcome} != {next_stage}.in")
    return errors


@pytest.fixture(scope="module")
def built(crawl: SampleCrawl, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pv_build")
    return out, run_pairs_and_video([str(p) for p in crawl.warc_paths], out, BuildConfig())


@pytest.fixture(scope="module")
def truth(crawl: SampleCrawl) -> list[dict]:
    return [json.loads(line) for line in crawl.truth_path.read_text().splitlines()]


def test_accounting_reconciles_and_names_every_stage(built: tuple[Path, dict]) -> None:
    out, counts = built
    assert reconcile(counts) == []
    stages = {s for s, _ in counts}
    pair_video_stages = {"media_kind", "pair_documents", "pair_candidates", "align_samples", "video_refs",
                         "video_media_records", "video_candidates", "video_samples"}
    assert pair_video_stages - {"video_refs"} <= stages
    shards = json.loads((out / "shards.json").read_text())
    by_set = Counter()
    for s in shards:
        by_set[s["name"].split("-")[0]] += s["samples"]
    assert by_set["align"] == counts[("align_samples", "written")] > 20
    assert by_set["ltip"] == counts[("ltip_samples", "written")] > 20
    assert by_set["video"] == counts[("video_samples", "written")]


def test_pair_shards_from_the_crawl_agree_with_the_truth(built: tuple[Path, dict], truth: list[dict]) -> None:
    out, counts = built
    images = {im["url"]: im for line in truth for im in line["images"]}
    for kind in ("align", "ltip"):
        tars = sorted(out.glob(f"{kind}-*.tar"))
        clip_style = read_webdataset(tars, "jpg", "txt")  # the CLIP trainer's view
        assert len(clip_style) == counts[(f"{kind}_samples", "written")]
        for (im, caption), (meta,) in zip(clip_style, read_webdataset(tars, "json")):
            check_schema(PAIR_SCHEMA, meta)
            assert meta["caption"] == caption and im.size == (meta["width"], meta["height"])
            assert images[meta["url"]]["description"] in caption.lower(), (kind, caption)
        index = [r for t in sorted((out / INDEX_DIR).glob(f"{kind}-*.parquet")) for r in pq.read_table(t).to_pylist()]
        failed = Counter(r["status"] for r in index if r["status"] != "success")
        assert set(failed) <= {"failed_to_download", "failed_to_resize"}
        failed_outcomes = sum(n for (s, o), n in counts.items() if s == "pair_candidates" and o.startswith(f"{kind}-image-"))
        assert sum(failed.values()) == failed_outcomes
    # ALIGN recall: images kept by the media checks whose alt is their description
    align_urls = {m["url"] for (m,) in read_webdataset(sorted(out.glob("align-*.tar")), "json")}
    expected = {im["url"] for line in truth if line["status"] == 200 for im in line["images"]
                if im["expected_drop"] is None and "alt" in im["text_sources"]}
    assert len(expected & align_urls) >= 0.9 * len(expected)


def test_video_shards_from_the_crawl_agree_with_the_truth(built: tuple[Path, dict], truth: list[dict]) -> None:
    out, counts = built
    videos = [v for line in truth if line["status"] == 200 for v in line["videos"]]
    in_crawl = {v["url"]: v for v in videos if v["in_crawl"]}
    assert len(in_crawl) == 4 and len(videos) - sum(v["in_crawl"] for v in videos) >= 1  # the crawl we asked for
    assert counts[("video_candidates", "not-in-crawl")] == sum(1 for v in videos if not v["in_crawl"])
    assert counts[("video_media_records", "used")] == len(in_crawl)
    samples = list(wds.WebDataset([str(p) for p in sorted(out.glob("video-*.tar"))], shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == len(in_crawl) == counts[("video_samples", "written")]
    for s in samples:
        meta = s["json"]
        check_schema(VIDEO_SCHEMA, meta)
        t = in_crawl[meta["url"]]
        assert s["txt"] == t["caption"] and t["colour"] in s["txt"] and t["shape"] in s["txt"]
        assert abs(meta["duration"] - t["duration"]) <= 0.1 and meta["fps"] == t["fps"]
        assert (meta["original_width"], meta["original_height"]) == (t["width"], t["height"])
        assert hashlib.sha256(s["mp4"]).hexdigest() == meta["sha256"] and len(s["mp4"]) == t["bytes"]
        frames = [s[f["file"]] for f in meta["frames"]]
        assert len(frames) == 8
        assert_moving(frames, meta["frames"])
    rows = [r for t in sorted((out / INDEX_DIR).glob("video-*.parquet")) for r in pq.read_table(t).to_pylist()]
    assert Counter(r["status"] for r in rows) == {"success": len(in_crawl), "failed_to_download": len(videos) - len(in_crawl)}


# ------------------------------------------------------------------ Beam: video stage on hand-made inputs


def _record(url: str, data: bytes, content_type: str, offset: int = 0) -> tuple[str, MediaRecord]:
    provenance = Provenance("v.warc.gz", offset, len(data), f"<urn:{offset}>", "2024-03-04T10:00:00Z")
    return normalize_url(url), MediaRecord(url, data, content_type, provenance)


def test_video_stage_joins_probes_once_and_writes_failed_rows(tmp_path: Path) -> None:
    names = ("moviepy__transparent.webm", "decord__corrupted.mp4", "moviepy__big_buck_bunny_432_433.webm")
    corpus = {name: (VIDEO_DIR / name).read_bytes() for name in names}
    V = "https://v.example/"

    def doc(key: str, url: str, *videos: VideoRef):
        d = page_doc(key * 24, url, [Node("text", text="Some words on the page.")], {})
        d.videos = [DocVideo(1, v) for v in videos]
        return PairInput(d)

    inputs = [
        doc("1", "https://a.example/1", VideoRef([V + "transparent.webm"], caption="A red shape spins on white"),
            VideoRef([V + "corrupted.mp4"], caption="Traffic crossing a bridge at night")),
        doc("2", "https://a.example/2", VideoRef([V + "transparent.webm"], caption="The red logo animation of the studio"),
            VideoRef([V + "live/master.m3u8"], caption="Live pictures from the harbour")),
        doc("3", "https://a.example/3", VideoRef([V + "transparent.webm"], caption="A red shape spins on white"),
            VideoRef([V + "page.mp4"], caption="An error page served as video"),
            VideoRef([V + "absent.mp4"], caption="A video the crawler never fetched")),
        doc("4", "https://a.example/4", VideoRef([V + "bunny.webm"], tracks=[V + "bunny.vtt"])),
    ]
    vtt = b"WEBVTT\n\n00:00.000 --> 00:01.000\nA big rabbit wakes up under a tree\n"
    media = [
        _record(V + "transparent.webm", corpus["moviepy__transparent.webm"], "video/webm", 1),
        _record(V + "transparent.webm", corpus["moviepy__transparent.webm"], "video/webm", 2),  # a second capture
        _record(V + "corrupted.mp4", corpus["decord__corrupted.mp4"], "video/mp4", 3),
        _record(V + "page.mp4", b"<!DOCTYPE html><html><body>Not found</body></html>", "video/mp4", 4),
        _record(V + "bunny.webm", corpus["moviepy__big_buck_bunny_432_433.webm"], "video/webm", 5),
        _record(V + "bunny.vtt", vtt, "text/vtt", 6),
        _record(V + "unused.webm", corpus["moviepy__transparent.webm"], "video/webm", 7),
        _record("https://img.example/a.jpg", jpeg((1, 2, 3)), "image/jpeg", 8),
    ]
    config = BuildConfig()
    with beam.Pipeline(runner="FnApiRunner") as p:
        split = (p | "Media" >> beam.Create(media)
                 | "SplitMedia" >> beam.FlatMap(split_media).with_outputs(VIDEO_MEDIA, COUNTS, main="images"))
        videos = add_video_corpus(p | "Docs" >> beam.Create(inputs), split[VIDEO_MEDIA], str(tmp_path), config)
        write_counts(p, [split[COUNTS]] + videos.counts, [videos.shards], tmp_path)
    counts = load_counts(tmp_path)
    # links to the M3W stages this test does not run (records, media_records) are skipped
    assert reconcile(counts) == []
    assert ("records", "in") not in counts and ("media_records", "in") not in counts
    expected = {
        ("media_kind", "in"): 8, ("media_kind", "image"): 1, ("media_kind", "video"): 7,
        ("video_refs", "in"): 8, ("video_refs", "candidate"): 7, ("video_refs", "hls-manifest"): 1,
        ("video_media_records", "in"): 7, ("video_media_records", "duplicate-url"): 1,
        ("video_media_records", "used"): 5, ("video_media_records", "unreferenced"): 1,  # transparent: one probe, 3 candidates
        ("video_candidates", "in"): 7, ("video_candidates", "kept"): 4, ("video_candidates", "decode-error"): 1,
        ("video_candidates", "not-video"): 1, ("video_candidates", "not-in-crawl"): 1,
        ("video_samples", "in"): 4, ("video_samples", "written"): 3, ("video_samples", "duplicate"): 1,
    }
    assert counts == expected
    rows = {r["caption"]: r for t in (tmp_path / INDEX_DIR).glob("video-*.parquet") for r in pq.read_table(t).to_pylist()}
    assert {c: (r["status"], (r["error_message"] or "").split(":")[0]) for c, r in rows.items()} == {
        "A red shape spins on white": ("success", ""),
        "The red logo animation of the studio": ("success", ""),
        "A big rabbit wakes up under a tree": ("success", ""),
        "Traffic crossing a bridge at night": ("failed_to_subsample", "decode-error"),
        "An error page served as video": ("failed_to_subsample", "not-video"),
        "A video the crawler never fetched": ("failed_to_download", "not-in-crawl"),
        "Live pictures from the harbour": ("failed_to_download", "hls-manifest"),
    }
    assert rows["A red shape spins on white"]["page_url"] == "https://a.example/1"  # dedup keeps the first page
    assert rows["A big rabbit wakes up under a tree"]["caption_source"] == "track"
    shared = [r for r in rows.values() if r["url"] == V + "transparent.webm" and r["status"] == "success"]
    assert len({r["sha256"] for r in shared}) == 1 and len(shared) == 2

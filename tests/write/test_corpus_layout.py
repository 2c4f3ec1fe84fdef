"""write/layout: the dataset card's declared features, img2dataset stats, and MP4 video shards that
HF `datasets` and webdataset read (real WebM files from the shared corpus, re-encoded and remuxed)."""
from __future__ import annotations

import hashlib
import io
import json

import av
import pyarrow as pa
import pytest
import webdataset as wds
import yaml
from conftest import CORPUS

from m3w_pipeline.core.config import BuildConfig, VideoConfig
from m3w_pipeline.core.document import DocVideo, ExtractedPage, assemble_document
from m3w_pipeline.core.nodes import Node, VideoRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.media.video import process_video
from m3w_pipeline.write.layout import (
    CARD_NAME,
    dataset_card,
    index_file,
    json_schema_features,
    shard_side_files,
    shard_stats,
    sizes_json,
    stats_file,
)
from m3w_pipeline.write.pair_shards import write_video_shard
from m3w_pipeline.write.video_samples import build_video_sample, video_candidates
from schemas import load_arrow_schema, load_json_schema

PROV = Provenance("v.warc.gz", 0, 10, "<urn:1>", "2024-03-04T10:00:00Z")


def _front_matter(card: bytes) -> dict:
    text = card.decode("utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("schema", ["pair_sample", "video_sample"])
def test_card_features_cover_every_json_field_and_parse_as_hf_features(schema: str) -> None:
    datasets = pytest.importorskip("datasets")
    spec = load_json_schema(schema)
    features = json_schema_features(spec, {"captions": ("figcaption", "title")})
    assert [f["name"] for f in features] == list(spec["properties"])
    parsed = datasets.Features._from_yaml_list([{"name": "json", "struct": features}])
    arrow = parsed.arrow_schema.field("json").type
    assert arrow.field("provenance").type.field("offset").type == pa.int64()
    assert arrow.field("sha256").type == pa.string()
    if schema == "video_sample":
        assert arrow.field("frames").type.value_type.field("timestamp").type == pa.float64()
        assert [arrow.field("captions").type.field(i).name for i in range(2)] == ["figcaption", "title"]


def test_cards_point_each_corpus_at_its_samples() -> None:
    config = BuildConfig()
    m3w, pairs, video = (_front_matter(dataset_card(c, config, ["x-00000"])) for c in ("m3w", "pairs", "video"))
    assert m3w["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "index/*.parquet"}], "default": True}]
    assert [(c["config_name"], c["data_files"][0]["path"]) for c in pairs["configs"]] == [
        ("default", "*.tar"), ("align", "align-*.tar"), ("ltip", "ltip-*.tar")]
    assert [f["name"] for f in pairs["dataset_info"][0]["features"]] == ["jpg", "txt", "json", "__key__", "__url__"]
    names = [f["name"] for f in video["dataset_info"][0]["features"]]
    assert {"mp4", "webm", "mov", "mkv"} <= set(names) and [n for n in names if n.endswith(".jpg")] == [f"{i:03d}.jpg" for i in range(8)]
    mp4_only = _front_matter(dataset_card("video", BuildConfig(video=VideoConfig(container="mp4")), ["x"]))
    assert [f["name"] for f in mp4_only["dataset_info"][0]["features"] if f.get("dtype") == "binary"] == ["mp4"]
    with pytest.raises(ValueError, match="unknown corpus"):
        dataset_card("mmc4", config, [])


def test_stats_and_sizes_follow_img2dataset_and_open_clip() -> None:
    rows = [{"status": "success"}] * 3 + [
        {"status": "failed_to_download", "error_message": "missing: the image is not in the crawl"},
        {"status": "failed_to_resize", "error_message": "too-small: min side 20 < 64"},
        {"status": "failed_to_resize", "error_message": "too-small: min side 30 < 64"},
    ]
    assert json.loads(shard_stats(rows, "pairs")) == {
        "count": 6, "successes": 3, "failed_to_download": 1, "failed_to_resize": 2, "duration": None,
        "status_dict": {"missing": 1, "success": 3, "too-small": 2}}
    with pytest.raises(ValueError, match="failed_to_resize"):  # a pair status is not a video status
        shard_stats(rows, "video")
    assert json.loads(sizes_json([{"name": "b-00001", "samples": 2}, {"name": "a-00000", "samples": 5}])) == {
        "a-00000.tar": 5, "b-00001.tar": 2}
    m3w_index = pa.Table.from_pylist([], schema=load_arrow_schema("m3w_index"))
    assert list(shard_side_files("m3w-00000", m3w_index)) == [index_file("m3w-00000")]  # no stats for documents


def test_mp4_video_shards_read_with_webdataset_and_the_card(tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    config = BuildConfig(video=VideoConfig(container="mp4"))
    names = {"https://v.example/bunny.webm": "moviepy__big_buck_bunny_432_433.webm",
             "https://v.example/shape.webm": "moviepy__transparent.webm"}
    nodes = [Node("text", text="Watch the clips below from our studio.")]
    doc, _ = assemble_document("a" * 24, ExtractedPage("https://a.example/p", nodes, title="Studio clips", lang="en"), PROV, {})
    doc.videos = [DocVideo(1, VideoRef([url], caption=f"A short clip number {i} of the studio")) for i, url in enumerate(names)]
    samples = []
    for candidate in video_candidates(doc, config.video, config.pairs):
        url = candidate.fetchable[0]
        result = process_video((CORPUS / "video" / names[url]).read_bytes(), config.video, config.image)
        sample, outcome = build_video_sample(candidate, [(0, url, result)], [], config.video)
        assert outcome == "kept"
        samples.append(sample)
    buf = io.BytesIO()
    info, table = write_video_shard(samples, "video-00000", buf)
    (tmp_path / "video-00000.tar").write_bytes(buf.getvalue())
    for path, data in shard_side_files("video-00000", table).items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_bytes(data)
    (tmp_path / CARD_NAME).write_bytes(dataset_card("video", config, ["video-00000"]))
    assert json.loads((tmp_path / stats_file("video-00000")).read_text())["successes"] == info.samples == 2

    loaded = list(wds.WebDataset(str(tmp_path / "video-00000.tar"), shardshuffle=False).to_tuple("mp4", "json"))
    assert len(loaded) == 2
    for mp4, meta in loaded:
        meta = json.loads(meta)
        assert meta["format"] == "webm" and meta["stored_format"] == "mp4" and meta["stored_via"] == "transcode"
        assert hashlib.sha256(mp4).hexdigest() == meta["output_sha256"] != meta["sha256"]
        with av.open(io.BytesIO(mp4), format="mp4") as c:
            assert sum(1 for _ in c.decode(video=0)) >= 20
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(hashlib.sha256(row["mp4"]).hexdigest() for row in ds) == sorted(json.loads(m)["output_sha256"] for _, m in loaded)

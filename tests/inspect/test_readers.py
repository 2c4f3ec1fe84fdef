"""Every corpus of `m3w build all` opened by the readers people already use, typed as the README says.

pyarrow (dataset and read_table on the index folder), HF `datasets` (the parquet builder on the
index folder, and the dataset card: `load_dataset(corpus_dir)`), DuckDB, webdataset, open_clip's
sizes.json rule and img2dataset's NAME_stats.json. `datasets` runs offline (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import build

from m3w_pipeline.core.web import normalize_url
from m3w_pipeline.inspect.corpus import open_corpus
from m3w_pipeline.inspect.stats import StatsConfig, compute_stats
from m3w_pipeline.inspect.validate import validate_corpus
from m3w_pipeline.read.warc import MediaRecord, iter_warc
from m3w_pipeline.sample.crawl import write_sample_crawl
from m3w_pipeline.write.layout import index_dir, index_path, legacy_index_path, stats_file

pytestmark = pytest.mark.slow  # one Beam build of the three corpora


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, list]:
    crawl = write_sample_crawl(tmp_path_factory.mktemp("readers_crawl"), pages=60, seed=11)
    out = tmp_path_factory.mktemp("readers_build")
    manifests = build("all", [str(p) for p in crawl.warc_paths], out, "--samples-per-shard", "15")
    return out, manifests, crawl.warc_paths


@pytest.fixture
def hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cache = str(tmp_path / "hf_cache")
    return lambda *args, **kw: datasets.load_dataset(*args, split="train", cache_dir=cache, **kw)


def _samples(manifest: dict) -> int:
    return sum(s["samples"] for s in manifest["shards"])


def _index_rows(manifest: dict) -> int:
    return sum(s.get("rows", s["samples"]) for s in manifest["shards"])


@pytest.mark.parametrize("corpus", ["m3w", "pairs", "video"])
def test_the_index_folder_opens_with_pyarrow_duckdb_and_hf_parquet(built, hf, corpus: str) -> None:
    out, manifests, _ = built
    folder = index_dir(str(out / corpus))
    rows = _index_rows(manifests[corpus])
    assert len(manifests[corpus]["shards"]) >= (1 if corpus == "video" else 2)  # a folder of several files
    assert pds.dataset(folder).count_rows() == rows
    table = pq.read_table(folder)
    assert table.num_rows == rows and sorted(table.column("key").to_pylist()) == sorted(
        r for s in manifests[corpus]["shards"] for r in pq.read_table(index_path(str(out / corpus), s["name"])).column("key").to_pylist())
    assert hf("parquet", data_dir=folder).num_rows == rows
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"SELECT count(*) FROM '{folder}/*.parquet'").fetchall() == [(rows,)]
    if corpus != "m3w":  # pairs and video indexes list failed candidates beside the samples
        ok = duckdb.sql(f"SELECT count(*) FROM '{folder}/*.parquet' WHERE status = 'success'").fetchall()[0][0]
        assert ok == _samples(manifests[corpus]) <= rows
        assert corpus == "video" or ok < rows  # this crawl has pairs whose image is missing or too odd


def test_load_dataset_on_the_m3w_folder_gives_documents(built, hf) -> None:
    out, manifests, _ = built
    docs = hf(str(out / "m3w"))
    assert docs.num_rows == _samples(manifests["m3w"])
    by_key = {row["key"]: row for row in docs}
    for sample in wds.WebDataset(sorted(str(p) for p in (out / "m3w").glob("m3w-*.tar")), shardshuffle=False):
        doc = json.loads(sample["json"])
        row = by_key.pop(doc["key"])
        assert row["texts"] == doc["texts"]  # OBELICS columns: aligned, in page order
        assert row["images"] == [im["url"] if im else None for im in doc["images"]]
        assert all((t is None) != (i is None) for t, i in zip(row["texts"], row["images"]))
    assert not by_key


def test_load_dataset_on_the_pair_folder_gives_image_caption_pairs(built, hf) -> None:
    import datasets

    out, manifests, _ = built
    pairs = hf(str(out / "pairs"))
    assert pairs.num_rows == _samples(manifests["pairs"])  # the pairs, not the 'index' with its failed rows
    raw = pairs.cast_column("jpg", datasets.Image(decode=False))
    for row in raw:
        assert row["txt"] == row["json"]["caption"] and row["json"]["status"] == "success"
        assert hashlib.sha256(row["jpg"]["bytes"]).hexdigest() == row["json"]["output_sha256"]
    assert pairs[0]["jpg"].size == (pairs[0]["json"]["width"], pairs[0]["json"]["height"])  # decodes as PIL
    kinds = Counter(pairs["json"][i]["kind"] for i in range(pairs.num_rows))
    assert hf(str(out / "pairs"), "align").num_rows == kinds["align"] > 0
    assert hf(str(out / "pairs"), "ltip").num_rows == kinds["ltip"] > 0


def test_load_dataset_on_the_video_folder_gives_video_samples(built, hf) -> None:
    out, manifests, _ = built
    videos = hf(str(out / "video"))
    assert videos.num_rows == _samples(manifests["video"]) > 0
    for row in videos:
        stored = row[row["json"]["stored_format"]]
        assert hashlib.sha256(stored).hexdigest() == row["json"]["output_sha256"]
        assert row["txt"] == row["json"]["caption"] and row["000.jpg"].size == (row["json"]["width"], row["json"]["height"])


def test_webdataset_sizes_json_and_img2dataset_stats_agree(built) -> None:
    out, manifests, _ = built
    for corpus, fields in (("pairs", ("jpg", "txt")), ("video", ("mp4", "txt")), ("m3w", ("json",))):
        folder = out / corpus
        tars = sorted(str(p) for p in folder.glob("*.tar"))
        sizes = json.loads((folder / "sizes.json").read_text())
        # open_clip's rule: the sample count is the sum of sizes.json over the shard file names
        total = sum(int(sizes[Path(t).name]) for t in tars)
        assert total == _samples(manifests[corpus])
        assert sum(1 for _ in wds.WebDataset(tars, shardshuffle=False).to_tuple(*fields)) == total
        if corpus == "m3w":
            continue
        for shard in manifests[corpus]["shards"]:
            stats = json.loads((folder / stats_file(shard["name"])).read_text())
            rows = pq.read_table(index_path(str(folder), shard["name"])).to_pylist()
            statuses = Counter(r["status"] for r in rows)
            failed = ("failed_to_download", "failed_to_resize") if corpus == "pairs" else ("failed_to_download", "failed_to_subsample")
            assert stats == {
                "count": len(rows), "successes": shard["samples"], "duration": None,
                **{f: statuses[f] for f in failed},
                "status_dict": dict(Counter("success" if r["status"] == "success" else r["error_message"].split(":")[0] for r in rows)),
            }
            assert stats["successes"] + sum(stats[f] for f in failed) == stats["count"]


def test_pair_sha256_is_the_original_bytes_and_exif_is_a_json_string(built) -> None:
    out, _, warcs = built
    originals: dict[str, bytes] = {}
    for path in warcs:
        with open(path, "rb") as f:
            originals.update((normalize_url(r.url), r.data) for r in iter_warc(f, path.name) if isinstance(r, MediaRecord))
    rows = [r for r in pq.read_table(index_dir(str(out / "pairs"))).to_pylist() if r["status"] == "success"]
    assert rows
    for row in rows:
        original = originals[normalize_url(row["url"])]
        assert row["sha256"] == hashlib.sha256(original).hexdigest() != row["output_sha256"]  # joins with the source bytes
        assert row["original_bytes"] == len(original)
        assert isinstance(json.loads(row["exif"]), dict)


def test_a_corpus_in_the_old_layout_still_reads(built, tmp_path) -> None:
    """Indexes beside the tars (before index/): stats, validate and the locator still find them."""
    out, manifests, _ = built
    old = tmp_path / "m3w"
    shutil.copytree(out / "m3w", old)
    for shard in manifests["m3w"]["shards"]:
        Path(index_path(str(old), shard["name"])).rename(legacy_index_path(str(old), shard["name"]))
    (old / "index").rmdir()
    corpus = open_corpus(str(old))
    assert [s.index for s in corpus.shards] == [legacy_index_path(str(old), s["name"]) for s in manifests["m3w"]["shards"]]
    assert compute_stats(corpus, config=StatsConfig(source="index")).samples == _samples(manifests["m3w"])
    assert validate_corpus(str(old)).problems == []


def test_validate_catches_sizes_and_stats_that_disagree_with_the_tars(built, tmp_path) -> None:
    out, manifests, _ = built
    copy = tmp_path / "pairs"
    shutil.copytree(out / "pairs", copy)
    first = manifests["pairs"]["shards"][0]["name"]
    sizes = json.loads((copy / "sizes.json").read_text())
    sizes[f"{first}.tar"] += 1
    (copy / "sizes.json").write_text(json.dumps(sizes))
    stats = json.loads((copy / stats_file(first)).read_text())
    stats["successes"] -= 1
    (copy / stats_file(first)).write_text(json.dumps(stats))
    problems = [p for p in validate_corpus(str(copy)).problems if p.check == "sizes"]
    assert sorted(p.file for p in problems) == sorted(["sizes.json", stats_file(first)])

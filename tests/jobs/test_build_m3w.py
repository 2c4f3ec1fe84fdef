"""The M3W Beam job end to end: real WARCs in, webdataset shards + Parquet + manifest out."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import CORPUS, build
from PIL import Image

from m3w_pipeline.media.images import process_image
from m3w_pipeline.read import warc
from m3w_pipeline.write.layout import index_file
from m3w_pipeline.write.shards import validate_document_json
from schemas import load_arrow_schema, load_json_schema

GOV_UK = CORPUS / "warc" / "ukwa__BL-20140325121225068-00000-32090_opera_8443.warc.gz"


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def read_samples(out: Path) -> list[dict]:
    """Every sample, read the way a training loader reads webdataset shards."""
    urls = sorted(str(p) for p in out.glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_corpus_build_reconciles_and_lists_broken_files(corpus_build):
    m = manifest_of(corpus_build)
    assert m["reconciles"], m["reconciliation_errors"]
    s = m["stages"]
    for stage in ("records", "pages", "image_refs", "media_records", "documents"):
        assert s[stage]["in"] == sum(s[stage]["kept"].values()) + sum(s[stage]["dropped"].values())
    assert s["records"]["kept"]["page"] == s["pages"]["in"]
    assert s["records"]["in"] > 700  # 31 files, ~750 records
    assert s["records"]["dropped"]["request"] > 250 and s["records"]["dropped"]["revisit"] > 100
    broken = {Path(b["warc_file"]).name: b["reason"] for b in m["broken_files"]}
    assert broken == {
        "resiliparse__clipped.warc.gz": "record-cut-short",
        "warcio__example-bad.warc.gz.bad": "not-per-record-gzip",
        "warcio__example-trunc.warc": "content-encoding",
        "warcio__example-wrong-chunks.warc.gz": "invalid-record",
    }
    assert m["totals"]["samples"] == s["documents"]["kept"]["kept"] > 0
    assert sum(sh["samples"] for sh in m["shards"]) == m["totals"]["samples"]


def test_manifest_checksums_match_the_files(corpus_build):
    for shard in manifest_of(corpus_build)["shards"]:
        tar = (corpus_build / f"{shard['name']}.tar").read_bytes()
        par = (corpus_build / index_file(shard["name"])).read_bytes()
        assert hashlib.sha256(tar).hexdigest() == shard["tar_sha256"] and len(tar) == shard["tar_bytes"]
        assert hashlib.sha256(par).hexdigest() == shard["parquet_sha256"]
    assert not list(corpus_build.glob("*.tmp-*"))


def test_gov_uk_home_page_has_its_370px_photos_from_the_same_warc_in_page_order(corpus_build):
    samples = {json.loads(s["json"])["url"]: s for s in read_samples(corpus_build)}
    assert "http://data.gov.uk/" in samples
    sample = samples["http://data.gov.uk/"]
    doc = json.loads(sample["json"])
    images = [im for im in doc["images"] if im is not None and im["status"] == "ok"]
    expected = ["oliver2_0.jpg", "Harvey-Lewis5016sf.jpg", "Tim-Straughan.jpg"]
    big = [im for im in images if im["original_width"] == 370]
    assert [im["url"].split("/")[-1].split("?")[0] for im in big] == expected
    records = {
        r.url: r for r in warc.iter_warc(open(GOV_UK, "rb"), str(GOV_UK)) if isinstance(r, warc.MediaRecord)
    }
    for im in big:
        assert im["original_height"] == 370
        stored = sample[im["file"]]
        assert hashlib.sha256(stored).hexdigest() == im["sha256"]
        # the stored bytes are exactly our processing of the WARC's own record
        assert process_image(records[im["url"]].data).image.data == stored
        assert Image.open(io.BytesIO(stored)).size == (im["width"], im["height"])
    assert doc["provenance"]["warc_file"].endswith(GOV_UK.name)


def test_shards_read_back_with_webdataset_and_pyarrow_and_match_the_schemas(corpus_build):
    validator = jsonschema.Draft202012Validator(load_json_schema("m3w_document"))
    samples = read_samples(corpus_build)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == manifest_of(corpus_build)["totals"]["samples"]
    n_images = 0
    for s in samples:
        doc = json.loads(s["json"])
        assert validate_document_json(doc, validator) == []
        assert doc["key"] == s["__key__"]
        for im in doc["images"]:
            if im is not None and im["status"] == "ok":
                data = s[im["file"]]
                assert hashlib.sha256(data).hexdigest() == im["sha256"]
                assert Image.open(io.BytesIO(data)).mode == "RGB"
                n_images += 1
    assert n_images == manifest_of(corpus_build)["stages"]["image_refs"]["kept"]["resolved"]

    schema = load_arrow_schema("m3w_index")
    for par in corpus_build.glob(index_file("*")):
        table = pq.read_table(par)
        assert table.schema.equals(schema, check_metadata=False)
        tar_path = corpus_build / f"{par.stem}.tar"
        with tarfile.open(tar_path) as tf:
            by_offset = {m.offset: m.name for m in tf.getmembers()}
        data = tar_path.read_bytes()
        for row in table.to_pylist():
            assert by_offset[row["offset"]] == f"{row['key']}.json"  # offset locates the sample
            first = tarfile.TarInfo.frombuf(data[row["offset"] : row["offset"] + 512], "utf-8", "strict")
            assert first.name == f"{row['key']}.json"
            assert row["shard"] == par.stem


def test_same_input_twice_gives_byte_identical_output(tmp_path, corpus_build):
    again = tmp_path / "again"
    build("m3w", [str(CORPUS / "warc" / "*")], again, "--samples-per-shard", "2")
    first, second = _files(corpus_build), _files(again)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def _files(root):
    """Every file under root (the indexes are in index/) by relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_into_the_same_output_skips_then_rebuilds_without_duplicates(tmp_path):
    out = tmp_path / "out"
    inputs = [str(GOV_UK), str(CORPUS / "warc" / "pywb__iana.warc.gz")]
    m1 = build("m3w", inputs, out, "--samples-per-shard", "4", "--min-words", "5", "--min-images", "0")
    before = _files(out)
    m2 = build("m3w", inputs, out, "--samples-per-shard", "4", "--min-words", "5", "--min-images", "0")  # finished: skipped
    assert m2 == m1
    assert _files(out) == before
    # a different build into the same place: fewer, larger shards; the old ones must not linger
    m3 = build("m3w", inputs, out, "--samples-per-shard", "1000", "--min-words", "5", "--min-images", "0")
    assert m3["totals"]["shards"] == 1 < m1["totals"]["shards"]
    assert sorted(p.name for p in out.glob("*.tar")) == ["m3w-00000.tar"]
    stale = {sh["name"] for sh in m1["shards"]} - {"m3w-00000"}
    assert sorted(m3["removed_stale_files"]) == sorted(f"{n}.{ext}" for n in stale for ext in ("parquet", "tar"))
    keys = [s["__key__"] for s in read_samples(out)]
    assert len(keys) == len(set(keys)) == m1["totals"]["samples"]


@pytest.fixture
def job_service(tmp_path):
    """Beam's in-process Python job service: the route Flink and Spark job servers take."""
    import socket
    import subprocess
    import sys
    import time

    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", "0", "--port_file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "job service did not start"
            time.sleep(0.2)
        port = int(port_file.read_text().strip())
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_portable_runner_gives_the_same_shards_as_the_embedded_runner(tmp_path, job_service):
    inputs = [str(GOV_UK), str(CORPUS / "warc" / "resiliparse__clipped.warc.gz")]
    local = build("m3w", inputs, tmp_path / "local", "--samples-per-shard", "3", "--min-words", "5")
    portable = build(
        "m3w", inputs, tmp_path / "portable", "--samples-per-shard", "3", "--min-words", "5",
        "--runner", "PortableRunner", f"--job_endpoint={job_service}", "--environment_type=LOOPBACK",
    )
    assert portable["reconciles"] and portable["stages"] == local["stages"]
    assert portable["broken_files"] == local["broken_files"]
    assert [s["tar_sha256"] for s in portable["shards"]] == [s["tar_sha256"] for s in local["shards"]]


def test_sample_crawl_build_matches_the_generators_truth(sample_build, sample_crawl):
    """Our generated crawl says which pages should become documents and with which images, in order."""
    truth = {t["url"]: t for t in map(json.loads, sample_crawl.truth_path.read_text().splitlines())}
    samples = read_samples(sample_build)
    assert len(samples) >= 0.5 * sum(t["expected_kept"] for t in truth.values())
    for sample in samples:
        doc = json.loads(sample["json"])
        t = truth[doc["url"]]
        # news bylines ("By A B · 4 March 2024") are main content for us, not for the truth's word count
        borderline = t["expected_drop_reason"] == "too-few-words" and t["layout"] == "news"
        assert t["expected_kept"] or borderline, (doc["url"], t["expected_drop_reason"])
        expected = [im for im in t["images"] if im["expected_drop"] is None]
        positions = [i for i, im in enumerate(doc["images"]) if im is not None and im["status"] == "ok"]
        assert [doc["images"][i]["url"] for i in positions] == [im["url"] for im in expected]
        for i, im in zip(positions, expected):
            assert (doc["images"][i]["original_width"], doc["images"][i]["original_height"]) == (im["width"], im["height"])
            if "figcaption" in im["text_sources"]:  # the figcaption is the text right after its image
                assert doc["texts"][i + 1] == im["caption"]
    m = manifest_of(sample_build)
    assert m["reconciles"] and m["stages"]["records"]["dropped"]["http-status"] == 2  # the 404 and the 301
    broken = sample_crawl.broken_record
    assert [(Path(b["warc_file"]).name, b["reason"]) for b in m["broken_files"]] == [(broken.warc_path.name, "record-cut-short")]


@pytest.mark.parametrize("damage", ["delete-tar", "flip-byte"])  # a missing file; same size, another sha256
def test_rerun_verifies_the_files_before_it_skips(tmp_path, damage, caplog):
    out = tmp_path / "out"
    inputs = [str(GOV_UK)]
    first = build("m3w", inputs, out, "--samples-per-shard", "4", "--min-words", "5", "--min-images", "0")
    intact = _files(out)
    tar, parquet = out / f"{first['shards'][-1]['name']}.tar", out / index_file(first["shards"][-1]["name"])
    if damage == "delete-tar":
        tar.unlink()
    else:
        data = bytearray(parquet.read_bytes())
        data[len(data) // 2] ^= 1
        parquet.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="beam_jobs.runner"):
        again = build("m3w", inputs, out, "--samples-per-shard", "4", "--min-words", "5", "--min-images", "0")
    assert "skipped" not in again  # rebuilt, not skipped
    assert "rebuilding" in caplog.text
    assert _files(out) == intact  # the rebuild restores every byte

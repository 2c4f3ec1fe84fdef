"""`m3w export`: OBELICS-style Parquet read by pyarrow, DuckDB and Hugging Face `datasets`;
MMC4 webdataset shards read back member by member (OpenFlamingo's own loaders read them in
test_openflamingo_loaders.py, in their own venv)."""
from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_stats import corpus_path

WORD = re.compile(r"\w+", re.UNICODE)


def source_documents(root: Path) -> list[tuple[dict, dict[str, bytes]]]:
    """(document JSON, {member suffix: bytes}) in shard order, read with tarfile only."""
    manifest = json.loads((root / "manifest.json").read_text())
    out: list[tuple[dict, dict[str, bytes]]] = []
    for shard in manifest["shards"]:
        with tarfile.open(root / f"{shard['name']}.tar") as tar:
            for m in tar.getmembers():
                key, _, suffix = m.name.partition(".")
                data = tar.extractfile(m).read()
                if suffix == "json":
                    out.append((json.loads(data), {}))
                else:
                    assert out[-1][0]["key"] == key
                    out[-1][1][suffix] = data
    return out


def export(kind: str, src: Path, dst: Path, *flags: str) -> dict:
    import contextlib

    from m3w.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", kind, str(src), str(dst), *flags]) == 0
    return json.loads(buf.getvalue())


@pytest.fixture(params=["handmade", "sample_build"])
def source(request) -> Path:
    return corpus_path(request, request.param)


# ----------------------------------------------------------------------------- OBELICS-style Parquet


def test_parquet_export_opens_in_pyarrow_duckdb_and_datasets(source, tmp_path):
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    docs = source_documents(source)
    dst = tmp_path / "obelics"
    result = export("parquet", source, dst)
    n_images = sum(1 for d, _ in docs for im in d["images"] if im and im["status"] == "ok")
    assert result["documents"] == len(docs) and result["images"] == n_images

    # pyarrow: OBELICS' four columns; aligned lists; bytes equal the shard's members in page order
    table = pq.read_table(dst)
    assert table.schema.names == ["images", "metadata", "general_metadata", "texts"]
    assert table.schema.field("images").type == pa.list_(pa.binary())
    assert table.schema.field("texts").type == pa.list_(pa.string())
    assert table.schema.field("metadata").type == pa.string() == table.schema.field("general_metadata").type
    rows = {json.loads(r["general_metadata"])["key"]: r for r in table.to_pylist()}
    assert len(rows) == len(docs)
    for doc, media in docs:
        row = rows[doc["key"]]
        kept = [(t, im) for t, im in zip(doc["texts"], doc["images"]) if im is None or im["status"] == "ok"]
        assert row["texts"] == [t for t, _ in kept]
        assert row["images"] == [media[im["file"]] if im else None for _, im in kept]
        assert all((t is None) != (im is None) for t, im in zip(row["texts"], row["images"]))
        meta = json.loads(row["metadata"])
        assert len(meta) == len(row["texts"])
        for m, (_, im) in zip(meta, kept):
            assert (m is None) == (im is None)
            if im:
                assert (m["src"], m["alt_text"], m["original_width"], m["sha256"]) == (im["url"], im["alt"], im["original_width"], im["sha256"])
        general = json.loads(row["general_metadata"])
        prov = doc["provenance"]
        assert (general["url"], general["warc_filename"], general["warc_record_offset"], general["warc_record_length"]) == (
            doc["url"], prov["warc_file"], prov["offset"], prov["length"])

    # DuckDB
    glob = str(dst / "*.parquet")
    (n_rows,) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0]
    n_bytes_images, n_texts, n_image_bytes = duckdb.sql(
        f"SELECT count(im), count(t), sum(octet_length(im)) FROM (SELECT unnest(images) AS im, unnest(texts) AS t FROM read_parquet('{glob}'))"
    ).fetchall()[0]
    assert (n_rows, n_bytes_images) == (len(docs), n_images)
    assert n_texts == sum(1 for d, _ in docs for t in d["texts"] if t is not None)
    assert n_image_bytes == sum(len(m[im["file"]]) for d, m in docs for im in d["images"] if im and im["status"] == "ok")
    urls = {u for (u,) in duckdb.sql(f"SELECT json_extract_string(general_metadata, '$.url') FROM read_parquet('{glob}')").fetchall()}
    assert urls == {d["url"] for d, _ in docs}

    # Hugging Face datasets
    ds = load_dataset("parquet", data_files=glob, split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert ds.num_rows == len(docs) and set(ds.column_names) == {"images", "metadata", "general_metadata", "texts"}
    first = ds[0]
    key = json.loads(first["general_metadata"])["key"]
    assert first["images"] == rows[key]["images"] and first["texts"] == rows[key]["texts"]
    image = next(b for b in first["images"] if b is not None)
    assert Image.open(io.BytesIO(image)).size > (0, 0)


def test_parquet_export_with_urls_keeps_missing_images(source, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = source_documents(source)
    export("parquet", source, tmp_path / "urls", "--images", "urls")
    table = pq.read_table(tmp_path / "urls")
    assert table.schema.field("images").type == pa.list_(pa.string())
    rows = {json.loads(r["general_metadata"])["key"]: r for r in table.to_pylist()}
    for doc, _ in docs:
        assert rows[doc["key"]]["images"] == [im["url"] if im else None for im in doc["images"]]
        assert rows[doc["key"]]["texts"] == doc["texts"]
        statuses = [m["status"] if m else None for m in json.loads(rows[doc["key"]]["metadata"])]
        assert statuses == [im["status"] if im else None for im in doc["images"]]


# ----------------------------------------------------------------------------- MMC4


def read_mmc4(shards: list[str]) -> dict[str, dict]:
    """key -> the sample's JSON, for every KEY.json in the export's tars."""
    out = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                assert m.name.endswith(".json"), m.name  # MMC4 keeps everything in one JSON per sample
                out[m.name[: -len(".json")]] = json.loads(tar.extractfile(m).read())
    return out


def test_mmc4_export_keeps_page_order_images_and_matched_texts(source, tmp_path):
    docs = source_documents(source)
    dst = tmp_path / "mmc4"
    result = export("mmc4", source, dst)
    shards = sorted(str(p) for p in dst.glob("*.tar"))
    sizes = json.loads((dst / "sizes.json").read_text())
    assert sum(sizes.values()) == result["documents"] == len(docs) - result["skipped_documents"]
    loaded = read_mmc4(shards)
    assert len(loaded) == result["documents"]
    checked_images = 0
    for doc, media in docs:
        stored = [im for im in doc["images"] if im and im["status"] == "ok"]
        if doc["key"] not in loaded:
            continue
        info = loaded[doc["key"]]
        # the texts are the page's texts in order ('' stands where an image follows an image); the k-th
        # image is the k-th stored image on the page
        assert [t for t in info["text_list"] if t] == [t for t in doc["texts"] if t]
        assert len(info["image_info"]) == len(stored)
        for im, page_image in zip(info["image_info"], stored):
            assert base64.b64decode(im["image_base64"]) == media[page_image["file"]]
            assert set(im) >= {"image_name", "raw_url", "matched_text_index", "matched_sim", "image_base64"}
        checked_images += len(stored)
        # each image's similarity row peaks at its matched text, at a value OpenFlamingo's default threshold keeps
        matrix = np.array(info["similarity_matrix"])
        assert matrix.shape == (len(info["image_info"]), len(info["text_list"]))
        for row, im in zip(matrix, info["image_info"]):
            assert int(row.argmax()) == im["matched_text_index"] and im["matched_sim"] == row.max() >= 30
        _assert_matched_text_is_the_next_text(doc, info)
    assert checked_images > 0


def _assert_matched_text_is_the_next_text(doc: dict, info: dict[str, Any]) -> None:
    """Each image's matched text is the text right after it on the page ('' when another stored image
    or the end comes first; images without bytes are not exported, so they do not count)."""
    stored = [(i, im) for i, im in enumerate(doc["images"]) if im and im["status"] == "ok"]
    assert [im["raw_url"] for im in info["image_info"]] == [im["url"] for _, im in stored]
    for (position, _), im in zip(stored, info["image_info"]):
        after = ""
        for text, other in zip(doc["texts"][position + 1 :], doc["images"][position + 1 :]):
            if text is not None:
                after = text
                break
            if other["status"] == "ok":
                break
        assert info["text_list"][im["matched_text_index"]] == after

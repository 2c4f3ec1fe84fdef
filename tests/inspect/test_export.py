"""`m3w export`: OBELICS-style Parquet read by pyarrow, DuckDB and Hugging Face `datasets`;
MMC4 webdataset shards parsed by a faithful re-implementation of OpenFlamingo's MMC4 loader."""
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


# ----------------------------------------------------------------------------- MMC4 and OpenFlamingo's loader
# A faithful re-implementation of open_flamingo/train/data.py's MMC4 path (get_mmc4_dataset ->
# tarfile_to_samples_nothrow -> wds.to_tuple("json") -> preprocess_interleaved), with webdataset's
# own tar iterators, minus torch: images stay PIL images and the text is not tokenised.

MIN_KB = 10  # OpenFlamingo: images of <= 10 KB are skipped
SIM_THRESHOLD = 0.24  # --mmc4_textsim_threshold's usual value
EOS = "</s>"


def group_by_keys_nothrow(data, keys=None, lcase=True, suffixes=None, handler=None):
    from webdataset.tariterators import base_plus_ext, valid_sample

    keys = keys or base_plus_ext
    current_sample = None
    for filesample in data:
        assert isinstance(filesample, dict)
        fname, value = filesample["fname"], filesample["data"]
        prefix, suffix = keys(fname)
        if prefix is None:
            continue
        if lcase:
            suffix = suffix.lower()
        if current_sample is None or prefix != current_sample["__key__"] or suffix in current_sample:
            if valid_sample(current_sample):
                yield current_sample
            current_sample = dict(__key__=prefix, __url__=filesample["__url__"])
        if suffixes is None or suffix in suffixes:
            current_sample[suffix] = value
    if valid_sample(current_sample):
        yield current_sample


def log_and_continue(exn):
    return True


def tarfile_to_samples_nothrow(src, handler=log_and_continue):
    from webdataset.tariterators import tar_file_expander, url_opener

    streams = url_opener(src, handler=handler)
    # eof_value=None: the webdataset OpenFlamingo was written against had no end-of-shard marker; newer
    # webdataset yields {} there, which OpenFlamingo's group_by_keys_nothrow would fail on (KeyError 'fname').
    files = tar_file_expander(streams, handler=handler, eof_value=None)
    return group_by_keys_nothrow(files, handler=handler)


def preprocess_interleaved(sample, sim_threshold=SIM_THRESHOLD, min_kb=MIN_KB):
    """OpenFlamingo's MMC4 preprocessing up to the tokenizer: (PIL images, text with <image>/<|endofchunk|>)."""
    from scipy.optimize import linear_sum_assignment

    info = json.loads(sample[0])
    sentences = info["text_list"]
    sim_matrix = info["similarity_matrix"]
    valid_images, valid_image_indices = [], []
    for i, sample_image in enumerate(info["image_info"]):
        if "image_base64" not in sample_image:
            continue
        rawbytes = base64.b64decode(sample_image["image_base64"])
        if len(rawbytes) // 1000 <= min_kb:
            continue
        image = Image.open(io.BytesIO(rawbytes)).convert("RGB")
        valid_images.append(image)
        valid_image_indices.append(i)
    if len(valid_image_indices) == 0:
        raise ValueError("No images in sample")
    sim_matrix = np.array(sim_matrix)[valid_image_indices]
    image_indices, sentence_indices = linear_sum_assignment(-sim_matrix)
    images, sentence_ixs = [], []
    for i, sim_ix in zip(image_indices, sentence_indices):
        if sim_matrix[i][sim_ix] < sim_threshold:
            continue
        images.append(valid_images[i])
        sentence_ixs.append(sim_ix)
    if len(images) == 0:
        raise ValueError("No images in sample")
    for ix in sentence_ixs:
        sentences[ix] = f"<|endofchunk|><image>{sentences[ix]}"
    text = " ".join(sentences)
    text = text.replace("<|endofchunk|>", "", 1)
    text = text.replace(" <|endofchunk|>", "<|endofchunk|>").replace("<image> ", "<image>").replace(" <image>", "<image>")
    return images, f"{text}<|endofchunk|>{EOS}", json.loads(sample[0])  # a fresh copy: text_list was edited in place


def load_like_open_flamingo(shards: list[str], min_kb: int = MIN_KB) -> dict[str, tuple[list, str, dict]]:
    """key -> (images, text, json) for every sample the loader accepts (rejects are skipped, as there)."""
    out = {}
    for sample in tarfile_to_samples_nothrow([{"url": s} for s in shards]):
        try:
            images, text, info = preprocess_interleaved((sample["json"],), min_kb=min_kb)
        except ValueError:
            continue
        out[sample["__key__"]] = (images, text, info)
    return out


def page_order(doc: dict, media: dict[str, bytes], min_kb: int) -> tuple[list[str], list[bytes]]:
    """Words and <image> markers in page order, and the bytes of those images, from the M3W document."""
    tokens, images = [], []
    for text, im in zip(doc["texts"], doc["images"]):
        if text is not None:
            tokens += WORD.findall(text)
        elif im["status"] == "ok" and len(media[im["file"]]) // 1000 > min_kb:
            tokens.append("<image>")
            images.append(media[im["file"]])
    return tokens, images


@pytest.mark.parametrize("min_kb", [MIN_KB, -1])
def test_mmc4_export_reads_back_through_open_flamingos_loader_in_page_order(source, tmp_path, min_kb):
    docs = source_documents(source)
    dst = tmp_path / "mmc4"
    result = export("mmc4", source, dst)
    shards = sorted(str(p) for p in dst.glob("*.tar"))
    sizes = json.loads((dst / "sizes.json").read_text())
    assert sum(sizes.values()) == result["documents"] == len(docs) - result["skipped_documents"]
    loaded = load_like_open_flamingo(shards, min_kb)
    checked_images = 0
    for doc, media in docs:
        tokens, image_bytes = page_order(doc, media, min_kb)
        if not image_bytes:
            assert doc["key"] not in loaded  # OpenFlamingo rejects it too ("No images in sample")
            continue
        images, text, info = loaded[doc["key"]]
        # the text carries an <image> exactly where each image stood on the page ...
        assert re.findall(r"<image>|\w+", text.replace("<|endofchunk|>", " ").replace(EOS, "")) == tokens
        assert text.endswith(f"<|endofchunk|>{EOS}") and not text.startswith("<|endofchunk|>")
        # ... and the k-th image tensor is the k-th image on the page
        assert len(images) == len(image_bytes)
        for img, data in zip(images, image_bytes):
            assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        checked_images += len(images)
        # the older loader uses matched_text_index / matched_sim: the same positions, and the argmax of each row
        matrix = np.array(info["similarity_matrix"])
        assert matrix.shape == (len(info["image_info"]), len(info["text_list"]))
        for row, im in zip(matrix, info["image_info"]):
            assert int(row.argmax()) == im["matched_text_index"] and im["matched_sim"] >= SIM_THRESHOLD
            assert set(im) >= {"image_name", "raw_url", "matched_text_index", "matched_sim", "image_base64"}
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

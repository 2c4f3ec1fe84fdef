"""Export M3W corpora to the layouts other tools already read.

- `export_parquet`: OBELICS-style Parquet, one file per source shard. Columns exactly as
  HuggingFaceM4/OBELICS: `texts` (list of str|None) and `images` (list aligned with
  texts: image bytes, or URLs with `images="urls"`, None at text positions), `metadata`
  (a JSON string: a list as long as texts, None at texts and a dict per image), and
  `general_metadata` (a JSON string: the document URL and its WARC location, plus ours).
  pyarrow, DuckDB and Hugging Face `datasets` open it as is.
- `export_mmc4`: webdataset shards in the MMC4 layout OpenFlamingo's MMC4 loader reads:
  one `KEY.json` per document with `text_list`, `image_info` (`image_name`, `raw_url`,
  `matched_text_index`, `matched_sim`, `image_base64`) and `similarity_matrix`
  [n_images][n_texts]. We know where each image stood, so instead of CLIP scores the
  matrix encodes the page order: each image's row peaks (uniquely) at the text right
  after it, so both the loader's argmax / `matched_text_index` and its one-to-one
  `linear_sum_assignment` recover the page order. Images with no text of their own after
  them (consecutive images, an image at the end) get an empty text slot, since the MMC4
  format puts at most one image before each text.
"""
from __future__ import annotations

import base64
import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, ContextManager, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from m3w_pipeline.inspect.corpus import Corpus, M3WDocument, Opener, iter_m3w_documents, join_path, local_path, open_local

Writer = Callable[[str], ContextManager[BinaryIO]]  # path -> writable binary stream
Progress = Callable[[int, int], None]  # (documents, shards) just done: for the CLI's progress line


@contextmanager
def write_local(path: str) -> Iterator[BinaryIO]:
    """The default writer: local files, written under a temporary name and renamed when complete."""
    target = local_path(path)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            yield out
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass(frozen=True)
class ExportConfig:
    images: str = "bytes"  # parquet: "bytes" (stored image bytes) | "urls" (OBELICS' own convention)
    missing_images: str = "auto"  # keep | drop | auto (drop with bytes: no bytes to give; keep with URLs)
    row_group_size: int = 1000  # parquet rows per row group
    matched_sim: float = 1.0  # mmc4: similarity of an image to the text after it
    other_sim: float = 0.0  # mmc4: similarity to every other text
    min_images: int = 1  # mmc4: documents with fewer stored images are skipped (the loader rejects them)

    def __post_init__(self) -> None:
        if self.images not in ("bytes", "urls"):
            raise ValueError(f"images must be 'bytes' or 'urls', not {self.images!r}")
        if self.missing_images not in ("auto", "keep", "drop"):
            raise ValueError(f"missing_images must be auto, keep or drop, not {self.missing_images!r}")
        if self.matched_sim <= self.other_sim:
            raise ValueError("matched_sim must exceed other_sim, or the page order is not recoverable")

    @property
    def keep_missing(self) -> bool:
        return self.missing_images == "keep" or (self.missing_images == "auto" and self.images == "urls")


@dataclass
class ExportResult:
    files: list[str] = field(default_factory=list)
    documents: int = 0
    images: int = 0
    skipped_documents: int = 0  # mmc4: documents without enough stored images

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "documents": self.documents, "images": self.images, "skipped_documents": self.skipped_documents}


# ----------------------------------------------------------------------------- OBELICS-style Parquet


def obelics_schema(images: str) -> pa.Schema:
    image_type = pa.binary() if images == "bytes" else pa.string()
    return pa.schema(
        [
            pa.field("images", pa.list_(image_type)),
            pa.field("metadata", pa.string()),
            pa.field("general_metadata", pa.string()),
            pa.field("texts", pa.list_(pa.string())),
        ]
    )


def image_metadata(doc: dict[str, Any], im: dict[str, Any], key: str) -> dict[str, Any]:
    """OBELICS' per-image metadata keys, then ours (sizes after resizing, hashes, status)."""
    return {
        "document_url": doc.get("url"),
        "unformatted_src": im.get("url"),
        "src": im.get("url"),
        "formatted_filename": f"{key}.{im['file']}" if im.get("file") else None,
        "alt_text": im.get("alt"),
        "original_width": im.get("original_width"),
        "original_height": im.get("original_height"),
        "format": (im.get("original_format") or "").lower() or None,
        "title": im.get("title"),
        "caption": im.get("caption"),
        "width": im.get("width"),
        "height": im.get("height"),
        "bytes_format": im["file"].rsplit(".", 1)[-1] if im.get("file") else None,
        "sha256": im.get("sha256"),
        "phash": im.get("phash"),
        "status": im.get("status"),
    }


def general_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """OBELICS' document keys (URL and WARC location), then ours."""
    prov = doc.get("provenance") or {}
    return {
        "url": doc.get("url"),
        "warc_filename": prov.get("warc_file"),
        "warc_record_offset": prov.get("offset"),
        "warc_record_length": prov.get("length"),
        "key": doc.get("key"),
        "domain": doc.get("domain"),
        "title": doc.get("title"),
        "lang": doc.get("lang"),
        "capture_date": prov.get("capture_date"),
        "warc_record_id": prov.get("record_id"),
        "videos": doc.get("videos") or [],
    }


def obelics_row(item: M3WDocument, config: ExportConfig) -> dict[str, Any]:
    """One document as an OBELICS row; positions stay aligned (exactly one of text/image each)."""
    doc = item.doc
    texts: list[Optional[str]] = []
    images: list[Any] = []
    metadata: list[Optional[dict[str, Any]]] = []
    for position, (text, im) in enumerate(zip(doc["texts"], doc["images"])):
        if im is None:
            texts.append(text)
            images.append(None)
            metadata.append(None)
            continue
        stored = im.get("status") == "ok"
        if not stored and not config.keep_missing:
            continue
        if config.images == "bytes":
            value = item.image_bytes(position) if stored else None
        else:
            value = im.get("url")
        texts.append(None)
        images.append(value)
        metadata.append(image_metadata(doc, im, item.key))
    return {
        "images": images,
        "metadata": json.dumps(metadata, ensure_ascii=False),
        "general_metadata": json.dumps(general_metadata(doc), ensure_ascii=False),
        "texts": texts,
    }


def export_parquet(
    corpus: Corpus,
    dst: str,
    config: ExportConfig = ExportConfig(),
    opener: Opener = open_local,
    writer: Writer = write_local,
    progress: Optional[Progress] = None,
) -> ExportResult:
    """One OBELICS-style Parquet file per M3W shard, `DST/NAME.parquet`."""
    _require_m3w(corpus)
    result = ExportResult()
    schema = obelics_schema(config.images)
    for shard in corpus.shards:
        rows = [obelics_row(item, config) for item in iter_m3w_documents(shard, opener, with_media=config.images == "bytes")]
        table = pa.Table.from_pylist(rows, schema=schema)
        path = join_path(dst, f"{shard.name}.parquet")
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=config.row_group_size, compression="zstd")
        with writer(path) as out:
            out.write(buf.getvalue())
        result.files.append(path)
        result.documents += len(rows)
        result.images += sum(1 for r in rows for v in r["images"] if v is not None)
        if progress:
            progress(len(rows), 1)
    return result


# ----------------------------------------------------------------------------- MMC4 webdataset


def mmc4_alignment(texts: list[Optional[str]], images: list[Optional[dict[str, Any]]]) -> tuple[list[str], list[tuple[int, int]]]:
    """Page order -> (text_list, [(position of image in the document, index of its text)]).

    Each stored image is matched to the next text; a second image before the same text, or an
    image with no text after it, gets an empty text of its own so the matching stays one-to-one.
    """
    text_list: list[str] = []
    matches: list[tuple[int, int]] = []
    pending: Optional[int] = None  # a stored image waiting for the text after it
    for position, (text, im) in enumerate(zip(texts, images)):
        if text is not None:
            if pending is not None:
                matches.append((pending, len(text_list)))
                pending = None
            text_list.append(text)
        elif im is not None and im.get("status") == "ok":
            if pending is not None:
                matches.append((pending, len(text_list)))
                text_list.append("")
            pending = position
    if pending is not None:
        matches.append((pending, len(text_list)))
        text_list.append("")
    return text_list, matches


def mmc4_sample(item: M3WDocument, config: ExportConfig) -> Optional[dict[str, Any]]:
    """One document as an MMC4 `KEY.json` object, or None with fewer than `min_images` stored images."""
    doc = item.doc
    text_list, matches = mmc4_alignment(doc["texts"], doc["images"])
    if len(matches) < config.min_images:
        return None
    image_info, matrix = [], []
    for position, text_index in matches:
        im = doc["images"][position]
        data = item.image_bytes(position) or b""
        image_info.append(
            {
                "image_name": f"{item.key}.{im['file']}",
                "raw_url": im.get("url"),
                "matched_text_index": text_index,
                "matched_sim": config.matched_sim,
                "image_base64": base64.b64encode(data).decode("ascii"),
                "width": im.get("width"),
                "height": im.get("height"),
                "alt_text": im.get("alt"),
            }
        )
        row = [config.other_sim] * len(text_list)
        row[text_index] = config.matched_sim
        matrix.append(row)
    return {
        "url": doc.get("url"),
        "text_list": text_list,
        "image_info": image_info,
        "similarity_matrix": matrix,
        "could_have_url_duplicate": 0,
        "key": item.key,
        "general_metadata": general_metadata(doc),
    }


def export_mmc4(
    corpus: Corpus,
    dst: str,
    config: ExportConfig = ExportConfig(),
    opener: Opener = open_local,
    writer: Writer = write_local,
    progress: Optional[Progress] = None,
) -> ExportResult:
    """`DST/NAME.tar` per M3W shard (KEY.json per document) and `DST/sizes.json` (samples per tar)."""
    from m3w_pipeline.write.shards import DeterministicTarWriter, canonical_json

    _require_m3w(corpus)
    result = ExportResult()
    sizes: dict[str, int] = {}
    for shard in corpus.shards:
        path = join_path(dst, f"{shard.name}.tar")
        n = 0
        with writer(path) as out:
            tar = DeterministicTarWriter(out)
            for item in iter_m3w_documents(shard, opener):
                sample = mmc4_sample(item, config)
                if progress:
                    progress(1, 0)
                if sample is None:
                    result.skipped_documents += 1
                    continue
                tar.add(f"{item.key}.json", canonical_json(sample))
                n += 1
                result.images += len(sample["image_info"])
            tar.close()
        sizes[f"{shard.name}.tar"] = n
        result.files.append(path)
        result.documents += n
        if progress:
            progress(0, 1)
    sizes_path = join_path(dst, "sizes.json")
    with writer(sizes_path) as out:
        out.write(json.dumps(sizes, indent=2, sort_keys=True).encode("utf-8"))
    result.files.append(sizes_path)
    return result


def _require_m3w(corpus: Corpus) -> None:
    if corpus.kind != "m3w":
        raise ValueError(f"{corpus.root} is a {corpus.kind} corpus; export handles M3W documents (pair shards already follow img2dataset)")

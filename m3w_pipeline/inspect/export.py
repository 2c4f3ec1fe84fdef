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
  The matched similarity is 100: MMC4 and OpenFlamingo read these numbers on CLIP's logit
  scale (100 x cosine; `--mmc4_textsim_threshold` defaults to 30), and the page itself says
  which text goes with the image, so the match gets the scale's maximum (cosine 1).
  `window_tokens` cuts documents into samples whose every image lies inside OpenFlamingo's
  token window, and every export counts what OpenFlamingo's loader would still drop
  (m3w_pipeline/inspect/openflamingo.py).
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
from m3w_pipeline.inspect.openflamingo import MAX_IMAGES, LoaderLosses, TokenCounter, windows

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
    matched_sim: float = 100.0  # mmc4: similarity of an image to the text after it (CLIP logit scale, its maximum)
    other_sim: float = 0.0  # mmc4: similarity to every other text
    min_images: int = 1  # mmc4: documents with fewer stored images are skipped (the loader rejects them)
    window_tokens: int = 0  # mmc4: 0 = whole documents; N = cut so each <image> and the token after it lie in N tokens
    window_images: int = MAX_IMAGES  # mmc4, with window_tokens: images per window at most (--mmc4_max_num_images)
    tokenizer: Optional[str] = None  # mmc4: directory with the training tokenizer's tokenizer.json; None: count bytes

    def __post_init__(self) -> None:
        if self.images not in ("bytes", "urls"):
            raise ValueError(f"images must be 'bytes' or 'urls', not {self.images!r}")
        if self.missing_images not in ("auto", "keep", "drop"):
            raise ValueError(f"missing_images must be auto, keep or drop, not {self.missing_images!r}")
        if self.matched_sim <= self.other_sim:
            raise ValueError("matched_sim must exceed other_sim, or the page order is not recoverable")
        if self.window_tokens and self.window_tokens < 8:
            raise ValueError(f"window_tokens must be 0 (off) or at least 8, not {self.window_tokens}")
        if self.window_images < 1:
            raise ValueError(f"window_images must be >= 1, not {self.window_images}")

    @property
    def keep_missing(self) -> bool:
        return self.missing_images == "keep" or (self.missing_images == "auto" and self.images == "urls")


@dataclass
class ExportResult:
    files: list[str] = field(default_factory=list)
    documents: int = 0
    images: int = 0
    skipped_documents: int = 0  # mmc4: documents without enough stored images
    source_documents: int = 0  # mmc4: documents read (written whole, cut into windows, or skipped)
    cut_documents: int = 0  # mmc4: documents written as more than one window
    dropped_text_nodes: int = 0  # mmc4 windows: text that fit in no window with an image
    openflamingo: Optional[LoaderLosses] = None  # mmc4: what OpenFlamingo's loader would still drop

    def to_json(self) -> dict[str, Any]:
        out = {"files": self.files, "documents": self.documents, "images": self.images, "skipped_documents": self.skipped_documents}
        if self.openflamingo is not None:
            out.update(source_documents=self.source_documents, cut_documents=self.cut_documents,
                       dropped_text_nodes=self.dropped_text_nodes, openflamingo_defaults=self.openflamingo.to_json())
        return out


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


def mmc4_json(item: M3WDocument, text_list: list[str], matches: list[tuple[int, int]], config: ExportConfig) -> dict[str, Any]:
    """One MMC4 `KEY.json` object for these texts and (image position in the document, text index) matches."""
    doc = item.doc
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


def mmc4_sample(item: M3WDocument, config: ExportConfig) -> Optional[dict[str, Any]]:
    """One document as an MMC4 `KEY.json` object, or None with fewer than `min_images` stored images."""
    text_list, matches = mmc4_alignment(item.doc["texts"], item.doc["images"])
    if len(matches) < config.min_images:
        return None
    return mmc4_json(item, text_list, matches, config)


def mmc4_windows(item: M3WDocument, config: ExportConfig, counter: TokenCounter) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """(key, MMC4 object) per window of the document (`window_tokens`), and the text nodes dropped.
    Keys are KEY_wNNN; each object says which window of which document it is."""
    text_list, matches = mmc4_alignment(item.doc["texts"], item.doc["images"])
    if len(matches) < config.min_images:
        return [], 0
    image_at = {text_index: k for k, (_, text_index) in enumerate(matches)}
    runs, dropped = windows(text_list, image_at, counter, config.window_tokens, config.window_images)
    out = []
    for n, run in enumerate(runs):
        local = {t: i for i, t in enumerate(run)}
        window_matches = [(matches[image_at[t]][0], local[t]) for t in run if t in image_at]
        sample = mmc4_json(item, [text_list[t] for t in run], window_matches, config)
        sample["window"] = {"index": n, "of": len(runs), "source_key": item.key}
        out.append((f"{item.key}_w{n:03d}", sample))
    return out, dropped


def export_mmc4(
    corpus: Corpus,
    dst: str,
    config: ExportConfig = ExportConfig(),
    opener: Opener = open_local,
    writer: Writer = write_local,
    progress: Optional[Progress] = None,
) -> ExportResult:
    """`DST/NAME.tar` per M3W shard (KEY.json per document, or KEY_wNNN.json per window) and
    `DST/sizes.json` (samples per tar); the result counts what OpenFlamingo's loader would drop."""
    from m3w_pipeline.write.shards import DeterministicTarWriter, canonical_json

    _require_m3w(corpus)
    counter = TokenCounter(config.tokenizer)
    result = ExportResult(openflamingo=LoaderLosses(counter=counter.name))
    sizes: dict[str, int] = {}
    for shard in corpus.shards:
        path = join_path(dst, f"{shard.name}.tar")
        n = 0
        with writer(path) as out:
            tar = DeterministicTarWriter(out)
            for item in iter_m3w_documents(shard, opener):
                result.source_documents += 1
                if config.window_tokens:
                    samples, dropped = mmc4_windows(item, config, counter)
                    result.dropped_text_nodes += dropped
                    result.cut_documents += len(samples) > 1
                else:
                    sample = mmc4_sample(item, config)
                    samples = [] if sample is None else [(item.key, sample)]
                if progress:
                    progress(1, 0)
                if not samples:
                    result.skipped_documents += 1
                    continue
                for key, sample in samples:
                    tar.add(f"{key}.json", canonical_json(sample))
                    n += 1
                    result.images += len(sample["image_info"])
                    result.openflamingo.add(sample, [_decoded_size(im["image_base64"]) for im in sample["image_info"]], counter)
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


def _decoded_size(b64: str) -> int:
    return len(b64) * 3 // 4 - b64[-2:].count("=")


def _require_m3w(corpus: Corpus) -> None:
    if corpus.kind != "m3w":
        raise ValueError(f"{corpus.root} is a {corpus.kind} corpus; export handles M3W documents (pair shards already follow img2dataset)")

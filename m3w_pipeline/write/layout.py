"""Where each file of a corpus folder lives, and the small files that tell other readers about it.

    <corpus>/PREFIX-NNNNN.tar            webdataset shards
    <corpus>/PREFIX-NNNNN_stats.json     pairs and video: per-shard counts, as img2dataset writes them
    <corpus>/index/PREFIX-NNNNN.parquet  the Parquet indexes, alone in their folder
    <corpus>/sizes.json                  shard file -> samples (open_clip's `get_dataset_size`)
    <corpus>/README.md                   a Hugging Face dataset card: what `load_dataset(corpus)` reads
    <corpus>/manifest.json, rejects.jsonl, fetch_status-NNNNN.parquet

The indexes have their own folder because readers that take a folder (pyarrow.dataset,
pq.read_table, DuckDB, `load_dataset("parquet", data_dir=...)`) open every file in it: beside
the tars and the manifest they fail or read the wrong thing. `index_path` says where an index
is; everything that reads or writes one asks it. Corpora written before this layout kept
NAME.parquet beside NAME.tar (`legacy_index_path`); the readers still find those.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from m3w_pipeline.core.config import BuildConfig
from m3w_pipeline.write.shards import parquet_bytes
from schemas import load_json_schema

INDEX_DIR = "index"
SIZES_NAME = "sizes.json"
CARD_NAME = "README.md"


def _join(root: str, name: str) -> str:
    """Join with '/', which local paths and gs:// / s3:// URLs all accept."""
    return f"{root.rstrip('/')}/{name}" if root else name


def index_file(shard: str) -> str:
    """The index of shard NAME, relative to its corpus folder: index/NAME.parquet."""
    return f"{INDEX_DIR}/{shard}.parquet"


def index_dir(root: str) -> str:
    """The folder of a corpus's indexes: what pyarrow, DuckDB and HF `datasets` are pointed at."""
    return _join(root, INDEX_DIR)


def index_path(root: str, shard: str) -> str:
    return _join(root, index_file(shard))


def legacy_index_path(root: str, shard: str) -> str:
    """Where corpora written before the index/ folder kept the index: beside the tar."""
    return _join(root, f"{shard}.parquet")


def stats_file(shard: str) -> str:
    """img2dataset's per-shard stats name: NAME_stats.json beside NAME.tar."""
    return f"{shard}_stats.json"


# ----------------------------------------------------------------------------- img2dataset / open_clip files


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode("utf-8") + b"\n"


# The failure statuses of each sample kind's index (write/pairs.py, write/video_samples.py).
FAILED_STATUSES = {"pairs": ("failed_to_download", "failed_to_resize"), "video": ("failed_to_download", "failed_to_subsample")}


def shard_stats(rows: Iterable[Mapping[str, Any]], kind: str) -> bytes:
    """NAME_stats.json of a pair or video shard from its index rows (successes and failed rows).

    img2dataset's fields (video2dataset's for videos): count (candidates in the shard),
    successes, failed_to_download, failed_to_resize (pairs) or failed_to_subsample (video),
    status_dict (success, or the reason at the head of error_message -> count). `duration` is
    null: a build writes the same bytes every run, so it records no wall-clock time.
    """
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for row in rows:
        statuses[row["status"]] += 1
        reasons["success" if row["status"] == "success" else str(row.get("error_message") or row["status"]).split(":", 1)[0]] += 1
    stats: dict[str, Any] = {"count": sum(statuses.values()), "successes": statuses.pop("success", 0)}
    for status in FAILED_STATUSES[kind]:
        stats[status] = statuses.pop(status, 0)
    if statuses:
        raise ValueError(f"{kind} index rows with unknown statuses {sorted(statuses)}")
    stats.update(duration=None, status_dict=dict(sorted(reasons.items())))
    return _json_bytes(stats)


def shard_side_files(shard: str, index: Any) -> dict[str, bytes]:
    """The files written with shard NAME's tar, by path relative to the corpus folder: its index
    (a pyarrow Table) as Parquet, and for pairs and video its img2dataset-style NAME_stats.json."""
    files = {index_file(shard): parquet_bytes(index)}
    kind = _INDEX_KINDS.get((index.schema.metadata or {}).get(b"schema", b"").decode())
    if kind is not None:
        files[stats_file(shard)] = shard_stats(index.to_pylist(), kind)
    return files


_INDEX_KINDS = {"m3w.pair_index/1": "pairs", "m3w.video_index/1": "video"}  # Arrow schema name -> kind


def sizes_json(shards: Iterable[Mapping[str, Any]]) -> bytes:
    """sizes.json: {"NAME.tar": samples in the tar}, the file open_clip reads for the sample count."""
    return _json_bytes({f"{s['name']}.tar": int(s["samples"]) for s in sorted(shards, key=lambda s: s["name"])})


# ----------------------------------------------------------------------------- the Hugging Face dataset card


def dataset_card(corpus: str, config: BuildConfig, shards: Sequence[str]) -> bytes:
    """README.md whose YAML `configs` make `datasets.load_dataset(CORPUS_DIR)` read the samples.

    m3w: the indexes (one row per document: texts and image URLs in page order, as OBELICS,
    with metadata and quality scores); HF's webdataset builder cannot read the tars, whose
    image members differ per document. pairs and video: the tars through HF's webdataset
    builder, with their features declared here (from schemas/), so no sample is read to guess
    them. (`datasets` picks one builder per folder from the first config's files, so the
    indexes of pairs and video, with their failed candidates, are read with
    `load_dataset("parquet", data_dir=CORPUS_DIR/index)`.)
    """
    configs: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []

    def add(name: str, path: str, features: Optional[list[dict[str, Any]]] = None) -> None:
        entry: dict[str, Any] = {"config_name": name, "data_files": [{"split": "train", "path": path}]}
        if not configs:
            entry["default"] = True
        configs.append(entry)
        if features is not None:
            infos.append({"config_name": name, "features": features})

    if corpus == "m3w":
        add("default", f"{INDEX_DIR}/*.parquet")
    elif corpus == "pairs":
        features = pair_features(config)
        add("default", "*.tar", features)
        add("align", f"{config.pairs.align_prefix}-*.tar", features)
        add("ltip", f"{config.pairs.ltip_prefix}-*.tar", features)
    elif corpus == "video":
        add("default", "*.tar", video_features(config))
    else:
        raise ValueError(f"unknown corpus kind {corpus!r}")
    meta: dict[str, Any] = {"configs": configs}
    if infos:
        meta["dataset_info"] = infos
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{_CARD_BODY[corpus].format(n=len(shards), index=INDEX_DIR)}".encode("utf-8")


def _tar_feature(name: str, dtype: str) -> dict[str, Any]:
    return {"name": name, "dtype": dtype}


def pair_features(config: BuildConfig) -> list[dict[str, Any]]:
    """Features of a pair sample as HF's webdataset builder yields it: KEY.jpg, KEY.txt, KEY.json."""
    fmt = config.image.output_format.lower()
    return [
        _tar_feature("jpg" if fmt == "jpeg" else fmt, "image"),  # the extension media/images.py writes
        _tar_feature("txt", "string"),
        {"name": "json", "struct": json_schema_features(load_json_schema("pair_sample"))},
        _tar_feature("__key__", "string"),
        _tar_feature("__url__", "string"),
    ]


def video_features(config: BuildConfig) -> list[dict[str, Any]]:
    """Features of a video sample: KEY.json, KEY.txt, the video (one column per container the build
    may store, `binary`: decoding is the user's choice of library), the frames KEY.000.jpg ..."""
    from m3w_pipeline.media.video import frame_file

    containers = ("mp4",) if config.video.container == "mp4" else config.video.allowed_formats
    schema = load_json_schema("video_sample")
    return [
        {"name": "json", "struct": json_schema_features(schema, {"captions": config.video.caption_sources})},
        _tar_feature("txt", "string"),
        *[_tar_feature(ext, "binary") for ext in containers],
        *[_tar_feature(frame_file(i), "image") for i in range(config.video.num_frames)],
        _tar_feature("__key__", "string"),
        _tar_feature("__url__", "string"),
    ]


_JSON_DTYPES = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool", "null": "string"}


def json_schema_features(schema: Mapping[str, Any], open_keys: Mapping[str, Sequence[str]] = {}) -> list[dict[str, Any]]:
    """An object's JSON Schema as HF `datasets` features (the YAML list form of a struct).

    Objects with free keys (`additionalProperties`) become structs of `open_keys[name]`."""
    defs = schema.get("$defs", {})

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = node.get("$ref")
        return defs[ref.rsplit("/", 1)[-1]] if ref else node

    def feature(name: str, node: Mapping[str, Any]) -> dict[str, Any]:
        node = resolve(node)
        declared = node.get("type", [])
        declared = [declared] if isinstance(declared, str) else list(declared)
        kind = next((t for t in declared if t != "null"), declared[0] if declared else None)
        if kind == "object":
            keys = node.get("properties") or {k: node["additionalProperties"] for k in open_keys.get(name, ())}
            return {"name": name, "struct": [feature(k, v) for k, v in keys.items()]}
        if kind == "array":
            item = feature(name, node["items"])
            return {"name": name, "list": item.get("struct") or item["dtype"]}
        if kind is None:  # enum or const
            values = node.get("enum") or [node.get("const")]
            kind = "integer" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else "string"
        return {"name": name, "dtype": _JSON_DTYPES[kind]}

    return [feature(k, v) for k, v in schema["properties"].items()]


_CARD_BODY = {
    "m3w": """# M3W interleaved documents

Built by m3w from Common Crawl WARCs: {n} webdataset shard(s) `m3w-NNNNN.tar` (`KEY.json` +
`KEY.N.jpg`, schemas/m3w_document.schema.json) and one Parquet index per shard in `{index}/`.

`datasets.load_dataset(THIS_DIR)` and `load_dataset("parquet", data_dir=THIS_DIR/{index})` read the
indexes: one row per document, with `texts` and `images` (image URLs) aligned in page order as in
OBELICS, counts, provenance, quality scores, and `shard`/`offset`/`size` locating the document's
members (its JSON and image bytes) in the tar. `manifest.json` counts every input and drop.
""",
    "pairs": """# Image-text pairs (ALIGN, LTIP)

Built by m3w from Common Crawl WARCs: {n} webdataset shard(s) in img2dataset's layout
(`KEY.jpg`, `KEY.txt`, `KEY.json`), `NAME_stats.json` per shard, `sizes.json`, and one Parquet
index per shard in `{index}/` that also lists every failed candidate with its status.

`datasets.load_dataset(THIS_DIR)` reads the pairs (configs `align` and `ltip` read one kind);
`load_dataset("parquet", data_dir=THIS_DIR/{index})` reads the index rows, failed candidates included.
""",
    "video": """# Video-text pairs

Built by m3w from Common Crawl WARCs: {n} webdataset shard(s) in video2dataset's layout
(`KEY.json`, `KEY.txt`, the video, sampled frames `KEY.000.jpg` ...), `NAME_stats.json` per
shard, `sizes.json`, and one Parquet index per shard in `{index}/` that also lists every failed
candidate with its status.

`datasets.load_dataset(THIS_DIR)` reads the samples (the video as bytes in the column of its
container); `load_dataset("parquet", data_dir=THIS_DIR/{index})` reads the index rows, failed
candidates included.
""",
}

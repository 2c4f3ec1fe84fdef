"""Corpus validation: is every shard intact, every sample well-formed, and does the manifest tell the truth?

Checks, each reported as a `Problem` naming the file, tar member and sample key:
  - the manifest: present, counts reconcile (`accounting.reconciliation_errors` over the
    samples actually found), totals, no shard files it does not list;
  - each tar: size and sha256 as the manifest says, a complete archive (strict reader:
    truncation is found, not silently ignored), samples per shard;
  - each sample: its JSON against `schemas/` and the aligned-list invariants
    (`shards.validate_document_json`), member key == JSON key, every stored image present,
    decodable, of the recorded size and sha256, no stray members, metadata counts right;
  - keys unique within and across shards;
  - each Parquet index: size/sha256, Arrow schema, and row by row the same keys, byte
    offsets, sizes and counts as the tar.
Beam-free; files are opened through the caller's opener (`inspect.corpus`).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Optional

from m3w_pipeline.core.accounting import reconciliation_errors
from m3w_pipeline.core.document import count_words
from m3w_pipeline.inspect.corpus import (
    IMAGE_EXTS,
    MANIFEST_NAME,
    VIDEO_EXTS,
    Corpus,
    Lister,
    Opener,
    Sample,
    ShardRef,
    TarDamage,
    group_samples,
    iter_tar_members,
    join_path,
    list_local,
    open_corpus,
    open_local,
    sample_json,
    split_member_name,
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong, located as precisely as we can."""

    check: str  # short name: sha256, size, truncated, schema, duplicate-key, index, image-decode, ...
    file: str
    message: str
    member: Optional[str] = None
    key: Optional[str] = None

    def __str__(self) -> str:
        where = self.file + (f":{self.member}" if self.member else "")
        key = f" [key {self.key}]" if self.key else ""
        return f"{where}{key}: {self.check}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "file": self.file, "member": self.member, "key": self.key, "message": self.message}


@dataclass(frozen=True)
class ValidateConfig:
    decode_images: bool = True  # open and fully decode every stored image (the slow part)
    check_index: bool = True
    max_problems_per_shard: int = 200  # a badly broken shard should not drown the rest
    workers: int = 1  # shards checked in parallel processes (the opener must then be picklable); 0: auto


@dataclass
class ShardCheck:
    """What one shard's check found: its problems, and what it holds (for the cross-shard checks)."""

    name: str
    problems: list[Problem] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    samples: int = 0
    images: int = 0


@dataclass
class ValidationReport:
    root: str
    kind: str
    problems: list[Problem]
    shards: int
    samples: int
    images: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "kind": self.kind,
            "ok": self.ok,
            "shards": self.shards,
            "samples": self.samples,
            "images": self.images,
            "problems": [p.to_json() for p in self.problems],
        }


def open_checked(opener: Opener, path: str, name: str) -> BinaryIO | Problem:
    """The opened file, or the `missing-file` problem that names it: every check starts here."""
    try:
        return opener(path)
    except OSError as err:
        return Problem("missing-file", name, f"cannot open: {err}")


class _HashingReader:
    """Hashes and counts everything read through it, so one pass checks sha256, size and structure."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


# ----------------------------------------------------------------------------- one shard


def validate_shard(
    shard: ShardRef,
    expected: Optional[Mapping[str, Any]] = None,
    opener: Opener = open_local,
    config: ValidateConfig = ValidateConfig(),
) -> ShardCheck:
    """Check one shard's tar (and index) against itself and against its manifest entry `expected`."""
    check = ShardCheck(shard.name)
    tar_name = shard.tar.rsplit("/", 1)[-1]
    samples: list[Sample] = []
    stream = open_checked(opener, shard.tar, tar_name)
    if isinstance(stream, Problem):
        check.problems.append(stream)
        return check
    with stream:
        reader = _HashingReader(stream)
        try:
            for sample in group_samples(iter_tar_members(reader)):  # type: ignore[arg-type]
                samples.append(sample)
                check.problems.extend(_check_sample(sample, shard.kind, tar_name, config))
        except TarDamage as err:
            key = split_member_name(err.member)[0] if err.member else None
            check.problems.append(Problem("truncated", tar_name, f"damaged archive {err}", err.member, key))
        reader.drain()
    check.samples = len(samples)
    check.keys = [s.key for s in samples]
    check.images = sum(1 for s in samples for suffix in s.suffixes if suffix.rsplit(".", 1)[-1].lower() in IMAGE_EXTS)
    check.problems.extend(_duplicates_within(samples, tar_name))
    if expected is not None:
        check.problems.extend(_against_manifest(expected, tar_name, reader, len(samples)))
    if config.check_index and shard.index is not None:
        check.problems.extend(_check_index(shard, samples, expected, opener))
    del check.problems[config.max_problems_per_shard :]
    return check


def _against_manifest(expected: Mapping[str, Any], tar_name: str, reader: _HashingReader, n_samples: int) -> Iterator[Problem]:
    if "tar_bytes" in expected and reader.bytes != expected["tar_bytes"]:
        yield Problem("size", tar_name, f"{reader.bytes} bytes but the manifest says {expected['tar_bytes']}")
    if "tar_sha256" in expected and reader.sha256.hexdigest() != expected["tar_sha256"]:
        yield Problem("sha256", tar_name, f"sha256 {reader.sha256.hexdigest()} but the manifest says {expected['tar_sha256']}")
    if "samples" in expected and n_samples != expected["samples"]:
        yield Problem("samples", tar_name, f"{n_samples} samples but the manifest says {expected['samples']}")


def _duplicates_within(samples: list[Sample], tar_name: str) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.key in seen:
            yield Problem("duplicate-key", tar_name, f"key appears twice in this shard (samples {seen[s.key]} and {i})", s.members[0].name, s.key)
        else:
            seen[s.key] = i


# ----------------------------------------------------------------------------- one sample


def _check_sample(sample: Sample, kind: str, tar_name: str, config: ValidateConfig) -> list[Problem]:
    if kind == "m3w":
        return list(_check_m3w_sample(sample, tar_name, config))
    return list(_check_media_sample(sample, kind, tar_name, config))


def _check_m3w_sample(sample: Sample, tar_name: str, config: ValidateConfig) -> Iterator[Problem]:
    from m3w_pipeline.write.shards import validate_document_json

    key = sample.key
    json_member = sample.get("json")
    if json_member is None or json_member.data is None:
        yield Problem("missing-member", tar_name, "sample has no KEY.json", sample.members[0].name, key)
        return
    try:
        doc = json.loads(json_member.data)
    except ValueError as err:
        yield Problem("json", tar_name, f"not JSON: {err}", json_member.name, key)
        return
    if not isinstance(doc, dict):
        yield Problem("json", tar_name, "JSON is not an object", json_member.name, key)
        return
    for message in validate_document_json(doc, _document_validator()):
        yield Problem("schema", tar_name, message, json_member.name, key)
    if doc.get("key") != key:
        yield Problem("key", tar_name, f"JSON key {doc.get('key')!r} differs from the member key", json_member.name, key)
    yield from _check_metadata(doc, tar_name, json_member.name, key)
    yield from _check_m3w_images(sample, doc, tar_name, config)


_VALIDATOR: Any = None


def _document_validator() -> Any:
    """One compiled validator per process (compiling the schema per sample is slow)."""
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        from schemas import load_json_schema

        _VALIDATOR = jsonschema.Draft202012Validator(load_json_schema("m3w_document"))
    return _VALIDATOR


def content_counts(doc: Mapping[str, Any]) -> dict[str, int]:
    """What a document's `metadata` block must say, measured on its content."""
    texts = [t for t in doc.get("texts") or [] if isinstance(t, str)]
    images = [im for im in doc.get("images") or [] if isinstance(im, dict)]
    return {
        "n_words": sum(count_words(t) for t in texts),
        "n_text_nodes": len(texts),
        "n_images": sum(1 for im in images if im.get("status") == "ok"),
        "n_missing_images": sum(1 for im in images if im.get("status") == "missing"),
        "n_videos": len(doc.get("videos") or []),
    }


def _check_metadata(doc: Mapping[str, Any], tar_name: str, member: str, key: str) -> Iterator[Problem]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return
    for name, actual in content_counts(doc).items():
        if name in meta and meta[name] != actual:
            yield Problem("metadata", tar_name, f"metadata.{name}={meta[name]} but the content has {actual}", member, key)


def _check_m3w_images(sample: Sample, doc: Mapping[str, Any], tar_name: str, config: ValidateConfig) -> Iterator[Problem]:
    members = {split_member_name(m.name)[1]: m for m in sample.members}
    referenced = {"json"}
    images = doc.get("images") if isinstance(doc.get("images"), list) else []
    for position, im in enumerate(images):
        if not isinstance(im, dict) or im.get("status") != "ok" or not im.get("file"):
            continue
        suffix = str(im["file"])
        referenced.add(suffix)
        member = members.get(suffix)
        name = f"{sample.key}.{suffix}"
        if member is None or member.data is None:
            yield Problem("missing-member", tar_name, f"images[{position}] is stored as {name}, which is not in the tar", name, sample.key)
            continue
        yield from _check_image_bytes(member.data, im, tar_name, name, sample.key, config)
    for suffix, member in members.items():
        if suffix not in referenced:
            yield Problem("unexpected-member", tar_name, "member not referenced by the sample's JSON", member.name, sample.key)


def _check_image_bytes(data: bytes, im: Mapping[str, Any], tar_name: str, member: str, key: str, config: ValidateConfig) -> Iterator[Problem]:
    digest = hashlib.sha256(data).hexdigest()
    if im.get("sha256") and digest != im["sha256"]:
        yield Problem("image-sha256", tar_name, f"bytes hash to {digest}, the JSON says {im['sha256']}", member, key)
    if not config.decode_images:
        return
    size = _decode(data)
    if isinstance(size, str):
        yield Problem("image-decode", tar_name, size, member, key)
    elif im.get("width") and im.get("height") and size != (im["width"], im["height"]):
        yield Problem("image-size", tar_name, f"decodes to {size[0]}x{size[1]}, the JSON says {im['width']}x{im['height']}", member, key)


def _decode(data: bytes) -> Any:
    """(width, height) of fully decoded image bytes, or why they do not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad bytes
        return f"does not decode: {type(err).__name__}: {err}"


_MEDIA_SCHEMA_IDS = {"pairs": "m3w.pair", "video": "m3w.video"}
_MEDIA_VALIDATORS: dict[str, Any] = {}


def _media_validator(kind: str) -> Any:
    """The JSON Schema in schemas/ whose $id starts with m3w.pair / m3w.video, once one exists; else None."""
    if kind not in _MEDIA_VALIDATORS:
        from importlib import resources

        import jsonschema

        _MEDIA_VALIDATORS[kind] = None
        prefix = _MEDIA_SCHEMA_IDS.get(kind)
        for entry in sorted(resources.files("schemas").iterdir(), key=lambda e: e.name):
            if prefix and entry.name.endswith(".schema.json"):
                schema = json.loads(entry.read_text("utf-8"))
                if str(schema.get("$id", "")).startswith(prefix):
                    _MEDIA_VALIDATORS[kind] = jsonschema.Draft202012Validator(schema)
                    break
    return _MEDIA_VALIDATORS[kind]


def _check_media_sample(sample: Sample, kind: str, tar_name: str, config: ValidateConfig) -> Iterator[Problem]:
    """Pairs and video samples (img2dataset / video2dataset layouts): JSON parses, images decode."""
    key = sample.key
    for m in sample.members:
        suffix = split_member_name(m.name)[1]
        ext = suffix.rsplit(".", 1)[-1].lower()
        if m.data is None:
            continue
        if ext == "json":
            try:
                meta = json.loads(m.data)
            except ValueError as err:
                yield Problem("json", tar_name, f"not JSON: {err}", m.name, key)
                continue
            if isinstance(meta, dict) and meta.get("key") not in (None, key):
                yield Problem("key", tar_name, f"JSON key {meta.get('key')!r} differs from the member key", m.name, key)
            validator = _media_validator(kind)
            if validator is not None:
                for e in validator.iter_errors(meta):
                    yield Problem("schema", tar_name, f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}", m.name, key)
        elif ext in IMAGE_EXTS and config.decode_images:
            size = _decode(m.data)
            if isinstance(size, str):
                yield Problem("image-decode", tar_name, size, m.name, key)
    suffixes = {s.rsplit(".", 1)[-1].lower() for s in sample.suffixes}
    if kind == "pairs":
        yield from _check_pair_hash(sample, tar_name)
    if kind == "pairs" and not suffixes & IMAGE_EXTS:
        yield Problem("missing-member", tar_name, "pair sample has no image member", sample.members[0].name, key)
    if kind == "video" and not suffixes & VIDEO_EXTS:
        yield Problem("missing-member", tar_name, "video sample has no video member", sample.members[0].name, key)


def _check_pair_hash(sample: Sample, tar_name: str) -> Iterator[Problem]:
    """The stored image hashes to the JSON's output_sha256 (its sha256 is of the original bytes)."""
    meta = sample_json(sample)
    image = next((m for m in sample.members if split_member_name(m.name)[1].lower() in IMAGE_EXTS and m.data is not None), None)
    if image is not None and meta.get("output_sha256"):
        digest = hashlib.sha256(image.data or b"").hexdigest()
        if digest != meta["output_sha256"]:
            message = f"bytes hash to {digest}, the JSON's output_sha256 is {meta['output_sha256']}"
            yield Problem("image-sha256", tar_name, message, image.name, sample.key)


# ----------------------------------------------------------------------------- the index


def _check_index(shard: ShardRef, samples: list[Sample], expected: Optional[Mapping[str, Any]], opener: Opener) -> Iterator[Problem]:
    assert shard.index is not None
    name = shard.index.rsplit("/", 1)[-1]
    stream = open_checked(opener, shard.index, name)
    if isinstance(stream, Problem):
        yield stream
        return
    try:
        with stream:
            data = stream.read()
    except OSError as err:  # opened but unreadable (a remote file system's error)
        yield Problem("missing-file", name, f"cannot read: {err}")
        return
    if expected is not None:
        if expected.get("parquet_bytes") and len(data) != expected["parquet_bytes"]:
            yield Problem("size", name, f"{len(data)} bytes but the manifest says {expected['parquet_bytes']}")
        digest = hashlib.sha256(data).hexdigest()
        if expected.get("parquet_sha256") and digest != expected["parquet_sha256"]:
            yield Problem("sha256", name, f"sha256 {digest} but the manifest says {expected['parquet_sha256']}")
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for damaged files
        yield Problem("index", name, f"not a readable Parquet file: {err}")
        return
    if shard.kind == "m3w":
        yield from _check_m3w_index(table, samples, shard.name, name)


def _check_m3w_index(table: Any, samples: list[Sample], shard_name: str, name: str) -> Iterator[Problem]:
    from schemas import load_arrow_schema

    want = load_arrow_schema("m3w_index")
    got = {f.name: f.type for f in table.schema}
    for f in want:
        if f.name not in got:
            yield Problem("index-schema", name, f"column {f.name} is missing")
        elif got[f.name] != f.type:
            yield Problem("index-schema", name, f"column {f.name} is {got[f.name]}, the schema says {f.type}")
    if any(f.name not in got for f in want):
        return
    rows = table.to_pylist()
    if len(rows) != len(samples):
        yield Problem("index", name, f"{len(rows)} rows but the tar holds {len(samples)} samples")
    for i, (row, sample) in enumerate(zip(rows, samples)):
        yield from _check_index_row(row, sample, i, shard_name, name)


def _check_index_row(row: Mapping[str, Any], sample: Sample, i: int, shard_name: str, name: str) -> Iterator[Problem]:
    where = f"row {i}"
    if row["key"] != sample.key:
        yield Problem("index", name, f"{where}: key {row['key']} but the tar's sample {i} is {sample.key}", where, row["key"])
        return
    if row["offset"] != sample.offset or row["size"] != sample.end - sample.offset:
        yield Problem(
            "index",
            name,
            f"{where}: offset/size {row['offset']}/{row['size']} but the sample is at {sample.offset}/{sample.end - sample.offset} in the tar",
            where,
            sample.key,
        )
    if row["shard"] != shard_name:
        yield Problem("index", name, f"{where}: shard {row['shard']!r}, expected {shard_name!r}", where, sample.key)
    js = sample.get("json")
    try:
        doc = json.loads(js.data) if js is not None and js.data is not None else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return
    counts = content_counts(doc)
    for column, value in counts.items():
        if row.get(column) != value:
            yield Problem("index", name, f"{where}: {column}={row.get(column)} but the document has {value}", where, sample.key)
    for column in ("url", "domain", "title", "lang"):
        if row.get(column) != doc.get(column):
            yield Problem("index", name, f"{where}: {column}={row.get(column)!r} but the document has {doc.get(column)!r}", where, sample.key)


# ----------------------------------------------------------------------------- the corpus


def validate_corpus(
    root: str,
    opener: Opener = open_local,
    lister: Optional[Lister] = list_local,
    config: ValidateConfig = ValidateConfig(),
    progress: Optional[bool] = None,
) -> ValidationReport:
    """Validate every shard, then what only the whole corpus can show (duplicate keys, totals, stray files)."""
    from tqdm import tqdm

    problems: list[Problem] = []
    try:
        corpus = open_corpus(root, opener, lister)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return ValidationReport(root, "unknown", [Problem("manifest", MANIFEST_NAME, f"cannot open the corpus: {err}")], 0, 0, 0)
    if corpus.manifest is None:
        problems.append(Problem("manifest", MANIFEST_NAME, "missing: counts and checksums cannot be checked"))
    expected = {s["name"]: s for s in (corpus.manifest or {}).get("shards", [])}
    checks: list[ShardCheck] = []
    bar = tqdm(total=len(corpus.shards), desc="validate", unit="shard", disable=None if progress is None else not progress)
    for check in _check_shards(corpus.shards, expected, opener, config):
        checks.append(check)
        problems.extend(check.problems)
        bar.update()
    bar.close()
    problems.extend(_duplicates_across(checks))
    if corpus.manifest is not None:
        problems.extend(_manifest_problems(corpus, checks))
        problems.extend(_sample_count_files(corpus, checks, opener))
    problems.extend(_unlisted_files(corpus, lister))
    return ValidationReport(
        root, corpus.kind, problems, len(checks), sum(c.samples for c in checks), sum(c.images for c in checks)
    )


def _check_shards(
    shards: list[ShardRef], expected: Mapping[str, Any], opener: Opener, config: ValidateConfig
) -> Iterator[ShardCheck]:
    """`validate_shard` over every shard, in order; in worker processes when `config.workers` > 1
    (JSON Schema validation costs ~1-3 ms per document, so large corpora want every core)."""
    workers = config.workers or auto_workers(len(shards))
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:
            yield validate_shard(shard, expected.get(shard.name), opener, config)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(shards))) as pool:
        futures = [pool.submit(validate_shard, s, expected.get(s.name), opener, config) for s in shards]
        for future in futures:
            yield future.result()


def auto_workers(n_shards: int, shards_per_worker: int = 4) -> int:
    """Processes worth starting: a pool costs seconds, so small corpora stay in this process."""
    import os

    return max(1, min(8, os.cpu_count() or 1, n_shards // shards_per_worker))


def _duplicates_across(checks: Iterable[ShardCheck]) -> Iterator[Problem]:
    first: dict[str, str] = {}
    for check in checks:
        for key in dict.fromkeys(check.keys):  # within-shard duplicates are reported by the shard
            if key in first:
                yield Problem("duplicate-key", f"{check.name}.tar", f"key also in {first[key]}.tar", f"{key}.json", key)
            else:
                first[key] = check.name


def _manifest_problems(corpus: Corpus, checks: list[ShardCheck]) -> Iterator[Problem]:
    manifest = corpus.manifest or {}
    counted = sum(c.samples for c in checks)
    totals = manifest.get("totals") or {}
    if totals.get("samples") is not None and totals["samples"] != counted:
        yield Problem("manifest", MANIFEST_NAME, f"totals.samples={totals['samples']} but the shards hold {counted} samples")
    if totals.get("shards") is not None and totals["shards"] != len(checks):
        yield Problem("manifest", MANIFEST_NAME, f"totals.shards={totals['shards']} but it lists {len(checks)} shards")
    if manifest.get("stages"):
        shards = [{"name": c.name, "samples": c.samples} for c in checks]
        for error in reconciliation_errors(manifest["stages"], shards, manifest.get("corpus", corpus.kind)):
            yield Problem("manifest", MANIFEST_NAME, f"counts do not reconcile: {error}")
    if manifest.get("reconciles") is False:
        yield Problem("manifest", MANIFEST_NAME, "the build recorded reconciles=false: " + "; ".join(manifest.get("reconciliation_errors", [])))


def _sample_count_files(corpus: Corpus, checks: list[ShardCheck], opener: Opener) -> Iterator[Problem]:
    """sizes.json and NAME_stats.json (`write.layout`) agree with the samples the tars hold."""
    from m3w_pipeline.write.layout import SIZES_NAME, stats_file

    def read(name: str) -> Optional[dict[str, Any]]:
        try:
            with opener(join_path(corpus.root, name)) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    sizes = read(SIZES_NAME)
    for check in checks:
        if sizes is not None and sizes.get(f"{check.name}.tar") != check.samples:
            yield Problem("sizes", SIZES_NAME, f"{check.name}.tar: {sizes.get(f'{check.name}.tar')} but the tar holds {check.samples} samples")
        stats = read(stats_file(check.name)) if corpus.kind != "m3w" else None
        if stats is not None and stats.get("successes") != check.samples:
            yield Problem("sizes", stats_file(check.name), f"successes={stats.get('successes')} but the tar holds {check.samples} samples")


def _unlisted_files(corpus: Corpus, lister: Optional[Lister]) -> Iterator[Problem]:
    """Shard files in the directory that the manifest does not list (stale or foreign data)."""
    if lister is None or corpus.manifest is None:
        return
    try:
        files = lister(corpus.root)
    except OSError:
        return
    listed = {s.name for s in corpus.shards}
    for f in files:
        if f.endswith((".tar", ".parquet")) and f.rsplit(".", 1)[0] not in listed:
            yield Problem("unlisted-file", f, "shard file not listed in the manifest")
    for f in files:
        if ".tmp-" in f:
            yield Problem("unlisted-file", f, "temporary file left by an interrupted write")


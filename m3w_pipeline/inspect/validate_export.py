"""Validating what `m3w export` writes, as the format it is (not as an M3W corpus).

- MMC4 (`export_mmc4`): NAME.tar shards of KEY.json samples and sizes.json. Each sample must
  hold what OpenFlamingo's MMC4 loader reads: `text_list` (strings), `image_info` (at least one;
  `image_name`, `raw_url`, `matched_text_index` inside text_list, `matched_sim`, `image_base64`
  that decodes to an image of the recorded size) and `similarity_matrix` [n_images][n_texts]
  whose row maxima are the matched texts (that is how the page order survives the loader).
  sizes.json must count each tar's samples.
- OBELICS-style Parquet (`export_parquet`): the four OBELICS columns; per row, `texts`,
  `images` and the `metadata` JSON list aligned (a text or an image at each position, metadata
  a dict exactly at image positions), `general_metadata` a JSON object with the document URL,
  image bytes that decode and hash to the recorded sha256.
Both: every file complete and readable, keys unique, no leftover temporary files.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from typing import Any, Iterator, Mapping, Optional

from m3w_pipeline.inspect.corpus import (
    Lister,
    Opener,
    TarDamage,
    group_samples,
    iter_tar_members,
    join_path,
    list_local,
    open_local,
    seekable,
    split_member_name,
)
from m3w_pipeline.inspect.validate import Problem, ShardCheck, ValidateConfig, ValidationReport, _decode, open_checked

SIZES_NAME = "sizes.json"  # = export.export_mmc4's samples-per-tar file


def validate_export(
    root: str,
    layout: str,
    opener: Opener = open_local,
    lister: Optional[Lister] = list_local,
    config: ValidateConfig = ValidateConfig(),
    progress: Optional[bool] = None,
) -> ValidationReport:
    """Validate an export folder whose `layout` (`corpus.locate`) is mmc4 or obelics."""
    from tqdm import tqdm

    if layout not in ("mmc4", "obelics"):
        raise ValueError(f"layout must be mmc4 or obelics, not {layout!r}")
    files = sorted(lister(root)) if lister is not None else []
    ext = ".tar" if layout == "mmc4" else ".parquet"
    names = [f for f in files if f.endswith(ext)]
    check_file = _check_mmc4_tar if layout == "mmc4" else _check_obelics_file
    problems: list[Problem] = []
    checks: list[ShardCheck] = []
    for name in tqdm(names, desc=f"validate {layout}", unit="file", disable=None if progress is None else not progress):
        check = ShardCheck(name)
        check.problems.extend(check_file(join_path(root, name), name, check, opener, config))
        del check.problems[config.max_problems_per_shard :]
        checks.append(check)
        problems.extend(check.problems)
    problems.extend(_duplicate_keys(checks))
    if layout == "mmc4":
        problems.extend(_check_sizes(root, checks, opener))
    problems.extend(Problem("unlisted-file", f, "temporary file left by an interrupted write") for f in files if ".tmp-" in f)
    return ValidationReport(root, layout, problems, len(checks), sum(c.samples for c in checks), sum(c.images for c in checks))


def _duplicate_keys(checks: list[ShardCheck]) -> Iterator[Problem]:
    first: dict[str, str] = {}
    for check in checks:
        for key in check.keys:
            if key in first:
                yield Problem("duplicate-key", check.name, f"key also in {first[key]}", key=key)
            else:
                first[key] = check.name


# ----------------------------------------------------------------------------- MMC4


def _check_mmc4_tar(path: str, name: str, check: ShardCheck, opener: Opener, config: ValidateConfig) -> Iterator[Problem]:
    stream = open_checked(opener, path, name)
    if isinstance(stream, Problem):
        yield stream
        return
    with stream:
        try:
            for sample in group_samples(iter_tar_members(stream)):
                check.samples += 1
                check.keys.append(sample.key)
                yield from _check_mmc4_sample(sample.key, sample.members, name, check, config)
        except TarDamage as err:
            key = split_member_name(err.member)[0] if err.member else None
            yield Problem("truncated", name, f"damaged archive {err}", err.member, key)


def _check_mmc4_sample(key: str, members: list[Any], name: str, check: ShardCheck, config: ValidateConfig) -> Iterator[Problem]:
    json_member = None
    for m in members:
        if split_member_name(m.name)[1] == "json":
            json_member = m
        else:
            yield Problem("unexpected-member", name, "an MMC4 sample is one KEY.json (images are inline, base64)", m.name, key)
    if json_member is None or json_member.data is None:
        yield Problem("missing-member", name, "sample has no KEY.json", members[0].name, key)
        return
    member = json_member.name
    try:
        doc = json.loads(json_member.data)
    except ValueError as err:
        yield Problem("json", name, f"not JSON: {err}", member, key)
        return
    if not isinstance(doc, dict):
        yield Problem("json", name, "JSON is not an object", member, key)
        return
    if doc.get("key") is not None and not _key_matches(key, doc):
        yield Problem("key", name, f"JSON key {doc.get('key')!r} differs from the member key", member, key)
    if not isinstance(doc.get("url"), str):
        yield Problem("schema", name, "url: a string is expected", member, key)
    texts = doc.get("text_list")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        yield Problem("schema", name, "text_list: a list of strings is expected", member, key)
        return
    infos = doc.get("image_info")
    if not isinstance(infos, list) or not infos:
        yield Problem("schema", name, "image_info: a non-empty list is expected (the loader skips documents without images)", member, key)
        return
    matrix = doc.get("similarity_matrix")
    if not isinstance(matrix, list) or len(matrix) != len(infos):
        n_rows = len(matrix) if isinstance(matrix, list) else None
        yield Problem("schema", name, f"similarity_matrix: {len(infos)} rows (one per image) expected, found {n_rows}", member, key)
        matrix = None
    for i, info in enumerate(infos):
        row = matrix[i] if matrix is not None else None
        problems = list(_check_mmc4_image(info, row, len(texts), config))
        check.images += 1
        yield from (Problem(check_name, name, f"image_info[{i}]: {message}", member, key) for check_name, message in problems)


def _key_matches(member_key: str, doc: Mapping[str, Any]) -> bool:
    """The member key is the document's, or for a window of it (`"window"` in the JSON), KEY_wNNN."""
    if isinstance(doc.get("window"), dict):
        return member_key.startswith(f"{doc['key']}_w")
    return member_key == doc["key"]


def _check_mmc4_image(info: Any, row: Any, n_texts: int, config: ValidateConfig) -> Iterator[tuple[str, str]]:
    if not isinstance(info, dict):
        yield "schema", "an object is expected"
        return
    for field, types in (("image_name", (str,)), ("raw_url", (str, type(None))), ("image_base64", (str,))):
        if not isinstance(info.get(field), types):
            yield "schema", f"{field}: {' or '.join(t.__name__ for t in types)} expected, found {type(info.get(field)).__name__}"
    index, sim = info.get("matched_text_index"), info.get("matched_sim")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n_texts:
        yield "schema", f"matched_text_index {index!r} is not an index into text_list ({n_texts} texts)"
        index = None
    if not isinstance(sim, (int, float)) or isinstance(sim, bool):
        yield "schema", f"matched_sim {sim!r} is not a number"
        sim = None
    if row is not None:
        if not isinstance(row, list) or len(row) != n_texts or not all(isinstance(v, (int, float)) for v in row):
            yield "similarity", f"its similarity_matrix row must hold {n_texts} numbers (one per text)"
        elif index is not None:
            best = max(row)
            if row[index] != best or row.count(best) != 1:
                yield "similarity", f"its similarity row peaks at text {row.index(best)}, not (uniquely) at matched_text_index {index}"
            elif sim is not None and row[index] != sim:
                yield "similarity", f"matched_sim {sim} but the matrix says {row[index]}"
    if isinstance(info.get("image_base64"), str):
        try:
            data = base64.b64decode(info["image_base64"], validate=True)
        except (binascii.Error, ValueError) as err:
            yield "image-decode", f"image_base64 is not base64: {err}"
            return
        if not data:
            yield "image-decode", "image_base64 is empty"
        elif config.decode_images:
            size = _decode(data)
            if isinstance(size, str):
                yield "image-decode", size
            elif info.get("width") and info.get("height") and size != (info["width"], info["height"]):
                yield "image-size", f"decodes to {size[0]}x{size[1]}, the JSON says {info['width']}x{info['height']}"


def _check_sizes(root: str, checks: list[ShardCheck], opener: Opener) -> Iterator[Problem]:
    try:
        with opener(join_path(root, SIZES_NAME)) as f:
            sizes = json.loads(f.read())
    except OSError:
        yield Problem("missing-file", SIZES_NAME, "missing: samples per tar cannot be checked")
        return
    except ValueError as err:
        yield Problem("json", SIZES_NAME, f"not JSON: {err}")
        return
    if not isinstance(sizes, dict):
        yield Problem("json", SIZES_NAME, "not an object of tar name -> samples")
        return
    found = {c.name: c.samples for c in checks}
    for tar, n in sorted(found.items()):
        if tar not in sizes:
            yield Problem("sizes", SIZES_NAME, f"{tar} is not listed")
        elif sizes[tar] != n:
            yield Problem("sizes", SIZES_NAME, f"{tar}: {sizes[tar]} samples listed but the tar holds {n}")
    for tar in sorted(set(sizes) - set(found)):
        yield Problem("sizes", SIZES_NAME, f"lists {tar}, which is not in the folder")


# ----------------------------------------------------------------------------- OBELICS-style Parquet


def _check_obelics_file(path: str, name: str, check: ShardCheck, opener: Opener, config: ValidateConfig) -> Iterator[Problem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from m3w_pipeline.inspect.corpus import OBELICS_COLUMNS

    stream = open_checked(opener, path, name)
    if isinstance(stream, Problem):
        yield stream
        return
    with stream:
        try:
            parquet = pq.ParquetFile(stream if seekable(stream) else io.BytesIO(stream.read()))
        except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for damaged files
            yield Problem("parquet", name, f"not a readable Parquet file: {err}")
            return
        schema = parquet.schema_arrow
        want = {"texts": [pa.list_(pa.string())], "images": [pa.list_(pa.binary()), pa.list_(pa.string())],
                "metadata": [pa.string()], "general_metadata": [pa.string()]}
        bad = [c for c in OBELICS_COLUMNS if c not in schema.names or schema.field(c).type not in want[c]]
        for column in bad:
            found = schema.field(column).type if column in schema.names else "missing"
            yield Problem("schema", name, f"column {column}: {' or '.join(map(str, want[column]))} expected, found {found}")
        if bad:
            return
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=64, columns=list(OBELICS_COLUMNS)):
                for record in batch.to_pylist():
                    yield from _check_obelics_row(record, row, name, check, config)
                    row += 1
        except Exception as err:  # noqa: BLE001 - a damaged row group surfaces as ArrowInvalid / OSError
            yield Problem("parquet", name, f"row group after row {row} does not read: {err}")


def _check_obelics_row(record: Mapping[str, Any], row: int, name: str, check: ShardCheck, config: ValidateConfig) -> Iterator[Problem]:
    where = f"row {row}"
    check.samples += 1
    try:
        general = json.loads(record["general_metadata"] or "null")
    except ValueError as err:
        general = None
        yield Problem("json", name, f"general_metadata is not JSON: {err}", where)
    key = general.get("key") if isinstance(general, dict) else None
    if key is not None:
        check.keys.append(str(key))
    if not isinstance(general, dict) or not isinstance(general.get("url"), str):
        yield Problem("schema", name, "general_metadata: a JSON object with the document url is expected", where, key)
    texts, images = record["texts"] or [], record["images"] or []
    try:
        metadata = json.loads(record["metadata"] or "null")
    except ValueError as err:
        yield Problem("json", name, f"metadata is not JSON: {err}", where, key)
        return
    if len(texts) != len(images) or not isinstance(metadata, list) or len(metadata) != len(texts):
        n_meta = len(metadata) if isinstance(metadata, list) else "not a list"
        yield Problem("aligned", name, f"texts ({len(texts)}), images ({len(images)}) and metadata ({n_meta}) must be aligned", where, key)
        return
    for i, (text, image, meta) in enumerate(zip(texts, images, metadata)):
        if text is not None and (image is not None or meta is not None):
            yield Problem("aligned", name, f"position {i} holds a text and an image (or image metadata)", where, key)
        elif text is None and not isinstance(meta, dict):
            yield Problem("aligned", name, f"position {i} holds neither a text nor image metadata", where, key)
        elif text is None:
            if image is not None:
                check.images += 1
            if image is None and meta.get("status") == "ok":
                yield Problem("missing-image", name, f"position {i}: a stored image (status ok) without bytes or URL", where, key)
            elif isinstance(image, bytes):
                yield from _check_obelics_bytes(image, meta, i, where, name, key, config)


def _check_obelics_bytes(data: bytes, meta: Mapping[str, Any], i: int, where: str, name: str, key: Any, config: ValidateConfig) -> Iterator[Problem]:
    digest = hashlib.sha256(data).hexdigest()
    if meta.get("sha256") and digest != meta["sha256"]:
        yield Problem("image-sha256", name, f"position {i}: bytes hash to {digest}, the metadata says {meta['sha256']}", where, key)
    if config.decode_images:
        size = _decode(data)
        if isinstance(size, str):
            yield Problem("image-decode", name, f"position {i}: {size}", where, key)
        elif meta.get("width") and meta.get("height") and size != (meta["width"], meta["height"]):
            yield Problem("image-size", name, f"position {i}: decodes to {size[0]}x{size[1]}, the metadata says {meta['width']}x{meta['height']}",
                          where, key)

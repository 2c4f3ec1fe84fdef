"""Pair shards (img2dataset layout) and video shards (video2dataset layout), deterministic.

Pairs:  KEY.jpg, KEY.txt (the caption), KEY.json (schemas/pair_sample.schema.json)
Videos: KEY.json, KEY.txt, KEY.<mp4|mov|webm|mkv> (the crawled bytes, unchanged; or KEY.mp4 for
        every video with VideoConfig.container "mp4": remuxed or re-encoded, stored_via says which) and
        KEY.000.jpg, KEY.001.jpg, ... (sampled frames in time order; their timestamps
        are `frames[i].timestamp` in KEY.json; schemas/video_sample.schema.json)

Each tar has a Parquet index, index/NAME.parquet (`layout.index_path`; schemas/pair_index.arrow.json,
video_index.arrow.json), with one row per sample AND one per failed candidate, as img2dataset writes failed rows:
status success | failed_to_download | failed_to_resize (pairs) | failed_to_subsample
(videos), with error_message. Failed rows have no tar members (offset/size null).

A pair's `sha256` is img2dataset's: of the image bytes as crawled (`output_sha256`: KEY.jpg).
Tars are written with shards.DeterministicTarWriter (fixed member metadata), samples
sorted by key; the caller owns temp-then-rename, as for M3W shards.
"""
from __future__ import annotations

from typing import Any, BinaryIO, Callable, Iterable, Optional, Union

import pyarrow as pa

from m3w_pipeline.core.web import Provenance, url_domain
from m3w_pipeline.media.video import frame_file
from m3w_pipeline.write.pairs import Pair
from m3w_pipeline.write.shards import DeterministicTarWriter, ShardInfo, canonical_json
from m3w_pipeline.write.video_samples import VideoSample
from schemas import load_arrow_schema

PAIR_SCHEMA_ID = "m3w.pair/1"
VIDEO_SCHEMA_ID = "m3w.video/1"


def _provenance(p: Provenance) -> dict[str, Any]:
    return {"warc_file": p.warc_file, "offset": p.offset, "length": p.length, "record_id": p.record_id,
            "capture_date": p.capture_date}


def _provenance_columns(p: Provenance) -> dict[str, Any]:
    return {"warc_file": p.warc_file, "warc_offset": p.offset, "warc_length": p.length,
            "warc_record_id": p.record_id, "capture_date": p.capture_date}


# ----------------------------------------------------------------------------- pairs


def pair_to_json(pair: Pair) -> dict[str, Any]:
    im = pair.image
    return {
        "schema": PAIR_SCHEMA_ID,
        "key": pair.key,
        "kind": pair.kind,
        "status": pair.status,
        "error_message": pair.error_message,
        "url": pair.url,
        "page_url": pair.page_url,
        "domain": url_domain(pair.page_url),
        "caption": pair.caption,
        "caption_source": pair.caption_source,
        "alt": pair.alt,
        "title": pair.title,
        "width": im.width if im else None,
        "height": im.height if im else None,
        "original_width": im.original_width if im else None,
        "original_height": im.original_height if im else None,
        "original_format": im.original_format if im else None,
        "original_bytes": im.original_bytes if im else None,
        "sha256": im.original_sha256 if im else None,
        "output_sha256": im.sha256 if im else None,
        "phash": im.phash if im else None,
        "exif": im.exif if im else None,
        "lang": pair.lang,
        "doc_key": pair.doc_key,
        "position": pair.position,
        "provenance": _provenance(pair.provenance),
    }


def pair_members(pair: Pair) -> list[tuple[str, bytes]]:
    """KEY.<jpg>, KEY.txt, KEY.json, as img2dataset orders them."""
    assert pair.image is not None, "failed rows have no tar members"
    return [
        (f"{pair.key}.{pair.image.ext}", pair.image.data),
        (f"{pair.key}.txt", pair.caption.encode("utf-8")),
        (f"{pair.key}.json", canonical_json(pair_to_json(pair))),
    ]


def pair_index_row(pair: Pair, shard: str, offset: Optional[int], size: Optional[int]) -> dict[str, Any]:
    row = {k: v for k, v in pair_to_json(pair).items() if k not in ("schema", "provenance", "domain")}
    row.update(_provenance_columns(pair.provenance), shard=shard, offset=offset, size=size)
    return row


# ----------------------------------------------------------------------------- videos


def video_to_json(sample: VideoSample) -> dict[str, Any]:
    c, v, p = sample.candidate, sample.video, sample.probe
    frames = v.frames if v else []
    return {
        "schema": VIDEO_SCHEMA_ID,
        "key": sample.key,
        "status": sample.status,
        "error_message": sample.error_message,
        "url": sample.url,
        "page_url": c.page_url,
        "domain": url_domain(c.page_url),
        "caption": sample.caption,
        "caption_source": sample.caption_source,
        "captions": dict(sorted(c.captions.items())),
        "origin": c.origin,
        "sources": list(c.sources),
        "poster": c.poster,
        "tracks": list(c.tracks),
        "format": p.format if p else None,
        "codec": p.codec if p else None,
        "duration": round(p.duration, 6) if p and p.duration else None,
        "duration_source": p.duration_source if p and p.duration else None,
        "fps": round(p.fps, 6) if p and p.fps else None,
        "width": frames[0].width if frames else None,
        "height": frames[0].height if frames else None,
        "original_width": p.width if p else None,
        "original_height": p.height if p else None,
        "rotation": p.rotation if p else None,
        "pix_fmt": p.pix_fmt if p else None,
        "has_alpha": p.has_alpha if p else None,
        "has_audio": p.has_audio if p else None,
        "bytes": p.bytes if p else None,
        "sha256": v.sha256 if v else None,
        "stored_format": v.stored[0] if v else None,
        "stored_via": (v.mp4_via or "original") if v else None,
        "output_sha256": (v.mp4_sha256 or v.sha256) if v else None,
        "partial": v.partial if v else False,
        "frames": [
            {"file": frame_file(i), "timestamp": f.timestamp, "target": f.target, "width": f.width,
             "height": f.height, "sha256": f.sha256}
            for i, f in enumerate(frames)
        ],
        "lang": c.lang,
        "doc_key": c.doc_key,
        "position": c.position,
        "provenance": _provenance(c.provenance),
    }


def video_members(sample: VideoSample) -> list[tuple[str, bytes]]:
    """KEY.json, KEY.txt, KEY.<container> (as crawled, or mp4: VideoConfig.container), then KEY.NNN.jpg frames in time order."""
    v = sample.video
    assert v is not None and sample.caption is not None, "failed rows have no tar members"
    ext, data = v.stored
    members = [
        (f"{sample.key}.json", canonical_json(video_to_json(sample))),
        (f"{sample.key}.txt", sample.caption.encode("utf-8")),
        (f"{sample.key}.{ext}", data),
    ]
    members += [(f"{sample.key}.{frame_file(i)}", f.data) for i, f in enumerate(v.frames)]
    return members


def video_index_row(sample: VideoSample, shard: str, offset: Optional[int], size: Optional[int]) -> dict[str, Any]:
    js = video_to_json(sample)
    drop = ("schema", "provenance", "domain", "captions", "sources", "tracks", "frames", "duration_source", "pix_fmt", "has_alpha", "poster")
    row = {k: v for k, v in js.items() if k not in drop}
    row.update(n_frames=len(js["frames"]), **_provenance_columns(sample.candidate.provenance), shard=shard, offset=offset, size=size)
    return row


# ----------------------------------------------------------------------------- writing

Sample = Union[Pair, VideoSample]


def _write(samples: Iterable[Sample], name: str, stream: BinaryIO, members, row, schema: str,
           images: Callable[[Any], int]) -> tuple[ShardInfo, pa.Table]:
    """The tar of the written samples (sorted by key), every row (failed ones too) in the index; `images(sample)`: its stored images."""
    writer = DeterministicTarWriter(stream)
    rows = []
    written = stored = 0
    for sample in sorted(samples, key=lambda s: (s.key, s.status)):
        if not sample.ok:
            rows.append(row(sample, name, None, None))
            continue
        start = writer.position
        for member, data in members(sample):
            writer.add(member, data)
        rows.append(row(sample, name, start, writer.position - start))
        written += 1
        stored += images(sample)
    size, digest = writer.close()
    table = pa.Table.from_pylist(rows, schema=load_arrow_schema(schema))
    return ShardInfo(name=name, samples=written, tar_bytes=size, tar_sha256=digest, images=stored), table


def write_pair_shard(pairs: Iterable[Pair], name: str, tar_stream: BinaryIO) -> tuple[ShardInfo, pa.Table]:
    """Successful pairs into the tar (sorted by key), every pair into the index table.

    Keys must be unique among successes (dedup first: pairs.dedup_samples).
    """
    return _write(pairs, name, tar_stream, pair_members, pair_index_row, "pair_index", lambda pair: 1)


def write_video_shard(samples: Iterable[VideoSample], name: str, tar_stream: BinaryIO) -> tuple[ShardInfo, pa.Table]:
    """Successful videos into the tar (sorted by key), every row into the index table."""
    return _write(samples, name, tar_stream, video_members, video_index_row, "video_index", lambda sample: len(sample.video.frames))

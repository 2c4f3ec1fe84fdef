"""Media bytes move once: where a sample's image and video bytes leave it, and where they come back.

Documents, pairs and video samples carry media metadata only (URL, sha256, phash, sizes) through
the build's joins, filters and dedup; the bytes travel apart, keyed by content, and meet each
shard that keeps them just before it is written (the wiring is `beam_jobs.image_bytes`):

    process_image / process_video once per URL
      -> split_image_bytes / split_video_bytes: (content key, bytes) once, the result without bytes per reference
    each kept sample, in its shard -> needs: (content key, (corpus, shard)) per distinct content
    the bytes of a content key + every (corpus, shard) that needs it -> shipments: once per shard
    a shard's samples + its bytes -> grouped_with_bytes: the samples as they were before the split

Content keys: an image's sha256; a video's "video:<sha256>" (its bytes, its frames' bytes, its MP4).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional

from m3w_pipeline.core.document import DocImage, Document
from m3w_pipeline.filter.dedup import without_hot
from m3w_pipeline.media.images import ImageResult
from m3w_pipeline.media.video import VideoResult

VideoBytes = tuple[bytes, tuple[bytes, ...], Optional[bytes]]  # a video's bytes, its frames' bytes, its MP4 (or None)
Hashes = Callable[[Any], Iterable[str]]  # a sample -> the content key of every media item whose bytes it needs
Fill = Callable[[Any, dict[str, Any]], Any]  # a sample and its shard's bytes by content key -> the sample with its bytes


# ----------------------------------------------------------------------------- leaving


def split_image_bytes(result: ImageResult) -> tuple[Optional[tuple[str, bytes]], ImageResult]:
    """An ImageResult -> ((sha256, bytes) when it holds an image, else None; the result without its bytes)."""
    if result.image is None:
        return None, result
    return (result.image.sha256, result.image.data), dataclasses.replace(result, image=dataclasses.replace(result.image, data=b""))


def video_content_key(sha256: str) -> str:
    return f"video:{sha256}"


def split_video_bytes(result: VideoResult) -> tuple[Optional[tuple[str, VideoBytes]], VideoResult]:
    """A VideoResult -> ((video key, (bytes, frame bytes, MP4 bytes or None)) when it holds a video,
    else None; the result without bytes)."""
    video = result.video
    if video is None:
        return None, result
    content = (video_content_key(video.sha256), (video.data, tuple(f.data for f in video.frames), video.mp4))
    frames = [dataclasses.replace(f, data=b"") for f in video.frames]
    return content, dataclasses.replace(result, video=dataclasses.replace(video, data=b"", frames=frames, mp4=None))


# ----------------------------------------------------------------------------- what each sample needs


def document_hashes(doc: Document) -> Iterator[str]:
    """An M3W document's stored images."""
    for im in doc.images:
        if im is not None and im.image is not None:
            yield im.image.sha256


def sample_hashes(sample: Any) -> Iterator[str]:
    """A pair's image (failed rows have none)."""
    if getattr(sample, "image", None) is not None:
        yield sample.image.sha256


def video_hashes(sample: Any) -> Iterator[str]:
    """A video sample's video (failed rows have none)."""
    if getattr(sample, "video", None) is not None:
        yield video_content_key(sample.video.sha256)


def kept_keys_needs(images: Iterable[tuple[str, Optional[str]]], hot: frozenset[str], min_images: int) -> Optional[list[str]]:
    """A document that survived dedup's drop stages, seen through its dedup image ids ((URL key,
    "sha256:" key or None), `filter.dedup.image_ids`): None when it will not be written (after the hot
    images leave it has fewer than `min_images` stored images: `enough_images_after_dedup`), else
    the sha256 of every stored image it keeps, sorted and distinct. The same decision the writer
    makes on the document itself, made before documents move, so the shard count and the bytes
    each shard needs are known when the documents first cross a shuffle."""
    stored = [sha.removeprefix("sha256:") for _, sha in without_hot(images, hot) if sha is not None]
    return sorted(set(stored)) if len(stored) >= min_images else None


def needs(element: tuple[Any, Any], corpus: str, hashes: Hashes) -> list[tuple[str, tuple[str, Any]]]:
    """(shard key, sample) -> (content key, (corpus, shard key)) for each distinct content it needs, sorted."""
    shard, sample = element
    return [(key, (corpus, shard)) for key in sorted(set(hashes(sample)))]


def shipments(key: str, contents: Iterable[Any], needed_by: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, tuple[Any, tuple[str, Any]]]]:
    """A content key, its bytes (one value, or none) and every (corpus, shard) that needs it ->
    (corpus, (shard, (key, bytes))) once per distinct shard, sorted. Content no kept sample needs
    (a hot banner) stops here; needed content without bytes is a wiring bug, so it raises."""
    targets = sorted(set(needed_by))
    if not targets:
        return
    data = next(iter(contents), None)
    if data is None:  # every metadata comes with its bytes: a missing one is a bug, not data
        raise ValueError(f"content {key} is needed by {targets[:3]} but no bytes were produced for it")
    for corpus, shard in targets:
        yield corpus, (shard, (key, data))


# ----------------------------------------------------------------------------- coming back


def with_document_bytes(doc: Document, by_sha: dict[str, bytes]) -> Document:
    """The document with each image's bytes back in place (the written sample is as before the split)."""
    images = [im if im is None or im.image is None else DocImage(im.ref, im.status, dataclasses.replace(im.image, data=by_sha[im.image.sha256]))
              for im in doc.images]
    return dataclasses.replace(doc, images=images)


def with_sample_bytes(sample: Any, by_sha: dict[str, bytes]) -> Any:
    """A pair with its image's bytes back in place."""
    if getattr(sample, "image", None) is None:
        return sample
    return dataclasses.replace(sample, image=dataclasses.replace(sample.image, data=by_sha[sample.image.sha256]))


def with_video_bytes(sample: Any, by_key: dict[str, VideoBytes]) -> Any:
    """A video sample with its video's bytes, frames and MP4 back in place."""
    if getattr(sample, "video", None) is None:
        return sample
    data, frames, mp4 = by_key[video_content_key(sample.video.sha256)]
    restored = [dataclasses.replace(f, data=d) for f, d in zip(sample.video.frames, frames)]
    return dataclasses.replace(sample, video=dataclasses.replace(sample.video, data=data, frames=restored, mp4=mp4))


def grouped_with_bytes(grouped: dict[str, Iterable[Any]], fill: Fill) -> list[Any]:
    """A shard's {samples, bytes} -> its samples with their bytes back."""
    by_key = dict(grouped["bytes"])
    return [fill(sample, by_key) for sample in grouped["samples"]]

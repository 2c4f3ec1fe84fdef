"""Media bytes move once: documents and samples carry image and video metadata, the bytes travel apart.

    ResolveImages / FetchMedia: process_image once per URL
      -> metadata per reference: the ImageResult with its ProcessedImage's `data` emptied (URL,
         sha256, phash, sizes), for the document join, the filters, dedup and the pairs
      -> IMAGE_BYTES: (sha256, data) once per URL
    each corpus: its kept samples keyed by their shard -> needs (sha256, (corpus, shard key))
    ShipImageBytes: CoGroupByKey by sha256 {bytes, needs} -> (shard key, (sha256, data)) once per
      shard that keeps the image; an image no kept sample uses (a hot banner) goes no further
    each corpus: CoGroupByKey by shard {samples, bytes} -> samples get their bytes back -> writer

Videos go the same way: ResolveVideos / FetchVideos send a video's bytes and its sampled frames
once, keyed "video:<sha256>", and every candidate that lists it gets the metadata.

So an image referenced by a million pages is processed once, its bytes cross the ShipImageBytes
join once and reach each shard that keeps it once; the document join and dedup move ~200 bytes
of metadata per reference instead. Why not a staging store (bytes written under their sha256 to
an object store, read back by the writers): docs/ARCHITECTURE.md, "Data movement".
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs.counting import CountedSteps
from m3w_pipeline.core.document import DocImage, Document
from m3w_pipeline.media.images import ImageResult
from m3w_pipeline.media.video import VideoResult

IMAGE_BYTES = "image_bytes"  # the output tag of (sha256, processed bytes), once per processed URL
VIDEO_BYTES = "video_bytes"  # the output tag of ("video:" sha256, (video bytes, frame bytes)), once per processed URL

Hashes = Callable[[Any], Iterable[str]]  # a sample -> the sha256 of every image whose bytes it needs
Writer = Callable[[beam.PCollection], beam.PCollection]  # (shard key, {samples, bytes}) -> shard infos


def split_bytes(result: ImageResult) -> Iterator[Any]:
    """An ImageResult -> (sha256, bytes) under IMAGE_BYTES (when it holds an image), then the
    result without its bytes (last): what every reference to it gets."""
    if result.image is None:
        yield result
        return
    yield TaggedOutput(IMAGE_BYTES, (result.image.sha256, result.image.data))
    yield dataclasses.replace(result, image=dataclasses.replace(result.image, data=b""))


def split_video_bytes(result: VideoResult) -> Iterator[Any]:
    """A VideoResult -> (video key, (bytes, frame bytes, MP4 bytes or None)) under VIDEO_BYTES (when it
    holds a video), then the result without bytes (last)."""
    video = result.video
    if video is None:
        yield result
        return
    yield TaggedOutput(VIDEO_BYTES, (video_content_key(video.sha256), (video.data, tuple(f.data for f in video.frames), video.mp4)))
    frames = [dataclasses.replace(f, data=b"") for f in video.frames]
    yield dataclasses.replace(result, video=dataclasses.replace(video, data=b"", frames=frames, mp4=None))


def video_content_key(sha256: str) -> str:
    return f"video:{sha256}"


def video_hashes(sample: Any) -> Iterator[str]:
    if getattr(sample, "video", None) is not None:
        yield video_content_key(sample.video.sha256)


def with_video_bytes(sample: Any, by_key: dict[str, Any]) -> Any:
    """A video sample with its video's bytes and frames back in place."""
    if getattr(sample, "video", None) is None:
        return sample
    data, frames, mp4 = by_key[video_content_key(sample.video.sha256)]
    frames = [dataclasses.replace(f, data=d) for f, d in zip(sample.video.frames, frames)]
    video = dataclasses.replace(sample.video, data=data, frames=frames, mp4=mp4)
    return dataclasses.replace(sample, video=video)


def document_hashes(doc: Document) -> Iterator[str]:
    for im in doc.images:
        if im is not None and im.image is not None:
            yield im.image.sha256


def with_document_bytes(doc: Document, by_sha: dict[str, bytes]) -> Document:
    """The document with each image's bytes back in place (the written sample is as before)."""
    images = [im if im is None or im.image is None else DocImage(im.ref, im.status, dataclasses.replace(im.image, data=by_sha[im.image.sha256]))
              for im in doc.images]
    return dataclasses.replace(doc, images=images)


def sample_hashes(sample: Any) -> Iterator[str]:
    """A pair's image (failed rows have none)."""
    if getattr(sample, "image", None) is not None:
        yield sample.image.sha256


def with_sample_bytes(sample: Any, by_sha: dict[str, bytes]) -> Any:
    if getattr(sample, "image", None) is None:
        return sample
    return dataclasses.replace(sample, image=dataclasses.replace(sample.image, data=by_sha[sample.image.sha256]))


def grouped_with_bytes(grouped: dict[str, Iterable[Any]], fill: Callable[[Any, dict[str, bytes]], Any]) -> list[Any]:
    """A shard's {samples, bytes} -> its samples with their image bytes back."""
    by_sha = dict(grouped["bytes"])
    return [fill(sample, by_sha) for sample in grouped["samples"]]


def _needs(element: tuple[Any, Any], corpus: str, hashes: Hashes) -> list[tuple[str, tuple[str, Any]]]:
    """(shard key, sample) -> (content key, (corpus, shard key)) for each distinct content it needs."""
    shard, sample = element
    return [(key, (corpus, shard)) for key in sorted(set(hashes(sample)))]


class ShipFn(beam.DoFn):
    """(sha256, {bytes, needs}) -> (shard key, (sha256, bytes)) under each needing corpus's tag, once per shard."""

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        sha, grouped = element
        needs = sorted(set(grouped["needs"]))
        if not needs:
            return  # no kept sample uses it: the bytes stop here
        data: Optional[bytes] = next(iter(grouped["bytes"]), None)
        if data is None:  # every image's metadata comes with its bytes: this is a wiring bug, not data
            raise ValueError(f"image {sha} is needed by {needs[:3]} but no bytes were produced for it")
        for corpus, shard in needs:
            yield TaggedOutput(corpus, (shard, (sha, data)))


class ImageShipment:
    """Collects each corpus's samples keyed by shard, then ships every needed image's bytes to the
    shards that need them in one join, and hands each corpus's writer its shards with their bytes."""

    def __init__(self, steps: CountedSteps, image_bytes: beam.PCollection, name: str = ""):
        self.steps = steps
        self.name = name  # a prefix of its labels, for a second shipment in one pipeline
        self.sources = [image_bytes]  # (content key, bytes) PCollections: images, then videos
        self.corpora: dict[str, tuple[beam.PCollection, Hashes, Writer]] = {}

    def add_bytes(self, content: beam.PCollection) -> None:
        """More (content key, bytes) to ship (the video corpus's)."""
        self.sources.append(content)

    def need(self, corpus: str, keyed: beam.PCollection, hashes: Hashes, write: Writer) -> None:
        """`keyed` (shard key, sample) will be written by `write` once its images' bytes are there."""
        self.corpora[corpus] = (keyed, hashes, write)

    def ship(self) -> dict[str, beam.PCollection]:
        """corpus -> what its writer returned."""
        if not self.corpora:
            return {}
        needs = [
            keyed | f"{self.name}ImageNeeds_{corpus}" >> beam.FlatMap(_needs, corpus, hashes)
            for corpus, (keyed, hashes, _) in self.corpora.items()
        ] | f"{self.name}AllImageNeeds" >> beam.Flatten()
        content = self.sources[0] if len(self.sources) == 1 else self.sources | f"{self.name}AllMediaBytes" >> beam.Flatten()
        joined = self.steps.cogroup({"bytes": content, "needs": needs}, f"{self.name}ShipImageBytes")
        shipped = joined | f"{self.name}ShipBytes" >> beam.ParDo(ShipFn()).with_outputs(*self.corpora)
        written = {}
        for corpus, (keyed, _, write) in self.corpora.items():
            grouped = self.steps.cogroup({"samples": keyed, "bytes": shipped[corpus]}, f"ShardWithBytes_{corpus}")
            written[corpus] = write(grouped)
        return written

"""Image bytes move once: documents and pairs carry image metadata, the bytes travel apart.

    ResolveImages / FetchMedia: process_image once per URL
      -> metadata per reference: the ImageResult with its ProcessedImage's `data` emptied (URL,
         sha256, phash, sizes), for the document join, the filters, dedup and the pairs
      -> IMAGE_BYTES: (sha256, data) once per URL
    each corpus: its kept samples keyed by their shard -> needs (sha256, (corpus, shard key))
    ShipImageBytes: CoGroupByKey by sha256 {bytes, needs} -> (shard key, (sha256, data)) once per
      shard that keeps the image; an image no kept sample uses (a hot banner) goes no further
    each corpus: CoGroupByKey by shard {samples, bytes} -> samples get their bytes back -> writer

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

IMAGE_BYTES = "image_bytes"  # the output tag of (sha256, processed bytes), once per processed URL

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

    def __init__(self, steps: CountedSteps, image_bytes: beam.PCollection):
        self.steps = steps
        self.image_bytes = image_bytes
        self.corpora: dict[str, tuple[beam.PCollection, Hashes, Writer]] = {}

    def need(self, corpus: str, keyed: beam.PCollection, hashes: Hashes, write: Writer) -> None:
        """`keyed` (shard key, sample) will be written by `write` once its images' bytes are there."""
        self.corpora[corpus] = (keyed, hashes, write)

    def ship(self) -> dict[str, beam.PCollection]:
        """corpus -> what its writer returned."""
        if not self.corpora:
            return {}
        needs = [
            keyed | f"ImageNeeds_{corpus}" >> beam.FlatMap(lambda kv, c, h: [(sha, (c, kv[0])) for sha in sorted(set(h(kv[1])))], corpus, hashes)
            for corpus, (keyed, hashes, _) in self.corpora.items()
        ] | "AllImageNeeds" >> beam.Flatten()
        joined = self.steps.cogroup({"bytes": self.image_bytes, "needs": needs}, "ShipImageBytes")
        shipped = joined | "ShipBytes" >> beam.ParDo(ShipFn()).with_outputs(*self.corpora)
        written = {}
        for corpus, (keyed, _, write) in self.corpora.items():
            grouped = self.steps.cogroup({"samples": keyed, "bytes": shipped[corpus]}, f"ShardWithBytes_{corpus}")
            written[corpus] = write(grouped)
        return written

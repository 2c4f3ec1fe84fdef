"""Media bytes move once: the Beam wiring of `m3w_pipeline.write.media_bytes`.

    ProcessImageRecords (once per record, where it was read) / FetchMedia (once per fetched URL): process_image
      -> metadata per reference: the ImageResult with its ProcessedImage's `data` emptied (URL,
         sha256, phash, sizes), for the media join, the document join, the filters, dedup and the pairs
      -> IMAGE_BYTES: (sha256, data) once per processed record or URL
    each corpus: its kept samples keyed by their shard -> needs (sha256, (corpus, shard key));
      the M3W corpus declares its needs from dedup's keys (`need_declared`), its documents meeting
      dedup's drops in the shard join
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

from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs.counting import CountedSteps
from m3w_pipeline.write.media_bytes import Hashes, needs, shipments

IMAGE_BYTES = "image_bytes"  # the output tag of (sha256, processed bytes), once per processed URL
VIDEO_BYTES = "video_bytes"  # the output tag of ("video:" sha256, (video bytes, frame bytes, MP4)), once per processed URL

Writer = Callable[[beam.PCollection], beam.PCollection]  # (shard key, {samples, bytes}) -> shard infos


class ShipFn(beam.DoFn):
    """(content key, {bytes, needs}) -> (shard key, (content key, bytes)) under each needing corpus's tag, once per shard."""

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        key, grouped = element
        for corpus, shipped in shipments(key, grouped["bytes"], grouped["needs"]):
            yield TaggedOutput(corpus, shipped)


class ImageShipment:
    """Collects each corpus's samples keyed by shard, then ships every needed image's bytes to the
    shards that need them in one join, and hands each corpus's writer its shards with their bytes."""

    def __init__(self, steps: CountedSteps, image_bytes: beam.PCollection, name: str = ""):
        self.steps = steps
        self.name = name  # a prefix of its labels, for a second shipment in one pipeline
        self.sources = [image_bytes]  # (content key, bytes) PCollections: images, then videos
        self.corpora: dict[str, tuple[beam.PCollection, Any, Writer]] = {}  # keyed samples, their Hashes or declared needs, writer
        self.extra: dict[str, dict[str, beam.PCollection]] = {}

    def add_bytes(self, content: beam.PCollection) -> None:
        """More (content key, bytes) to ship (the video corpus's)."""
        self.sources.append(content)

    def need(self, corpus: str, keyed: beam.PCollection, hashes: Hashes, write: Writer) -> None:
        """`keyed` (shard key, sample) will be written by `write` once its images' bytes are there."""
        self.corpora[corpus] = (keyed, hashes, write)

    def need_declared(self, corpus: str, keyed: beam.PCollection, wanted: beam.PCollection, write: Writer,
                      extra: dict[str, beam.PCollection]) -> None:
        """Like `need`, when what each shard needs is decided apart from the samples: `wanted` holds
        (content key, (corpus, shard key)), and `extra` joins the shards too (the M3W corpus: dedup's
        drops, so the documents cross this one join instead of a dedup join and then this one)."""
        self.corpora[corpus] = (keyed, wanted, write)
        self.extra[corpus] = extra

    def ship(self) -> dict[str, beam.PCollection]:
        """corpus -> what its writer returned."""
        if not self.corpora:
            return {}
        wanted = [
            hashes if isinstance(hashes, beam.PCollection) else keyed | f"{self.name}ImageNeeds_{corpus}" >> beam.FlatMap(needs, corpus, hashes)
            for corpus, (keyed, hashes, _) in self.corpora.items()
        ] | f"{self.name}AllImageNeeds" >> beam.Flatten()
        content = self.sources[0] if len(self.sources) == 1 else self.sources | f"{self.name}AllMediaBytes" >> beam.Flatten()
        joined = self.steps.cogroup({"bytes": content, "needs": wanted}, f"{self.name}ShipImageBytes")
        shipped = joined | f"{self.name}ShipBytes" >> beam.ParDo(ShipFn()).with_outputs(*self.corpora)
        written = {}
        for corpus, (keyed, _, write) in self.corpora.items():
            inputs = {"samples": keyed, **self.extra.get(corpus, {}), "bytes": shipped[corpus]}
            grouped = self.steps.cogroup(inputs, f"ShardWithBytes_{corpus}")
            written[corpus] = write(grouped)
        return written

"""Beam wiring for media fetching: distinct media URLs -> fetched, processed media per reference.

    refs (url, (doc key, node index, rank, fallbacks))  the best candidate of each node the crawl lacks
      -> GroupByKey(url)                 one element per distinct URL
      -> BatchElements                   a batch keeps every fetch thread of a worker busy
      -> FetchMediaFn                    fetch each URL once, process_image once, fan out to refs;
                                         a failed fetch sends its refs on to their next candidate
           main:          (doc key, (node index, rank, ImageResult without bytes))  for every ref
           "image_bytes":  (sha256, processed bytes) once per URL (beam_jobs.image_bytes)
           "fetch_status": one status row per URL (schemas/fetch_status.arrow.json)
           "counts":       fetch/in and fetch/<status> per URL

`fetch_media` builds that chain; `FetchMediaFn` can be used on its own after any
batching that yields lists of (url, refs). `FetchFn` is the shared part (one Fetcher per
DoFn instance, counts per status under the subclass's stage, status rows); the video
corpus subclasses it (`pairs_video_stages.FetchVideosFn`, stage "video_fetch").
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs.counting import COUNTS, count
from beam_jobs.image_bytes import IMAGE_BYTES
from m3w_pipeline.core.config import FetchConfig, ImageConfig
from m3w_pipeline.media.fetch import Fetcher, FetchResult
from m3w_pipeline.media.images import ImageResult, process_image
from m3w_pipeline.write.media_bytes import split_image_bytes

FETCH_STATUS = "fetch_status"
FETCH_STAGE = "fetch"
UNRESOLVED = "unresolved"  # the output tag of resolve DoFns for URLs no record holds: (url, refs)

Ref = tuple  # (doc key, node index, candidate rank, fallback (rank, url)s) for images; any tuple for other media


def _merge_refs(batch: Iterable[tuple[str, Iterable[Ref]]]) -> dict[str, list[Ref]]:
    """url -> all its refs, in first-seen order (a batch may hold a URL more than once)."""
    merged: dict[str, list[Ref]] = {}
    for url, refs in batch:
        merged.setdefault(url, []).extend(refs)
    return merged


def _as_batch(element: Any) -> list[tuple[str, Iterable[Ref]]]:
    """A batch from BatchElements, or a single (url, refs) element when used unbatched."""
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], str):
        return [element]
    return list(element)


def image_result_for(fetched: FetchResult, config: ImageConfig) -> ImageResult:
    """What every reference to this URL gets: the processed image, or why there is none."""
    if not fetched.ok or fetched.data is None:
        return ImageResult(None, f"fetch-{fetched.status}", fetched.error)
    return process_image(fetched.data, config)


class FetchFn(beam.DoFn):
    """Batches of (url, refs) -> one fetch per URL, its status row and counts; `results` fans out.

    One Fetcher (thread pool, connection pool, host gates) per DoFn instance, made
    in setup and closed in teardown. Media are processed in the DoFn thread while
    the Fetcher's threads keep downloading the rest of the batch. Subclasses set
    `stage` (the accounting stage: in + one outcome per status) and implement `results`.
    """

    stage = FETCH_STAGE

    def __init__(self, fetch_config: FetchConfig):
        self.fetch_config = fetch_config
        self._fetcher: Optional[Fetcher] = None

    def fetcher_config(self) -> FetchConfig:
        return self.fetch_config

    def setup(self) -> None:
        self._fetcher = Fetcher(self.fetcher_config())

    def teardown(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def wanted_kinds(self, refs: list[Ref]) -> tuple[str, ...]:
        """The media kinds (`FetchResult.media_kind`) these refs can use; an ok fetch of another
        kind is counted as not-media."""
        raise NotImplementedError

    def results(self, fetched: FetchResult, refs: list[Ref]) -> Iterator[Any]:
        raise NotImplementedError

    def process(self, element: Any) -> Iterator[Any]:
        if self._fetcher is None:  # runners call setup first; this keeps direct calls working
            self.setup()
        assert self._fetcher is not None
        yield from self.fetch_and_count(_merge_refs(_as_batch(element)))

    def fetch_and_count(self, refs_by_url: dict[str, list[Ref]]) -> Iterator[Any]:
        assert self._fetcher is not None
        for fetched in self._fetcher.fetch_many(refs_by_url):
            refs = refs_by_url[fetched.url]
            wanted = self.wanted_kinds(refs)
            if fetched.ok and fetched.media_kind not in wanted:
                fetched.status, fetched.data = "not-media", None
                fetched.error = f"{fetched.media_kind} ({fetched.sniffed_type}) where {' or '.join(wanted)} was expected"
            yield count(self.stage, "in")
            yield count(self.stage, fetched.status)
            yield TaggedOutput(FETCH_STATUS, fetched.to_row())
            yield from self.results(fetched, refs)
            fetched.data = None  # the processed media is what travels on


class FetchMediaFn(FetchFn):
    """Batches of (url, refs) -> one fetch and one process_image per URL, a result (without bytes)
    per ref; the bytes once under IMAGE_BYTES."""

    def __init__(self, fetch_config: FetchConfig, image_config: ImageConfig):
        super().__init__(fetch_config)
        self.image_config = image_config

    def wanted_kinds(self, refs: list[Ref]) -> tuple[str, ...]:
        return ("image", "video")  # a video body fails in process_image, counted there

    def results(self, fetched: FetchResult, refs: list[Ref]) -> Iterator[Any]:
        """A result per ref; refs whose best candidate failed try their next candidates, in order."""
        content, result = split_image_bytes(image_result_for(fetched, self.image_config))
        if content is not None:
            yield TaggedOutput(IMAGE_BYTES, content)
        retry: dict[str, list[Ref]] = {}
        for doc_key, node_index, rank, fallbacks in refs:
            if result.image is None and fallbacks:
                (next_rank, next_url), rest = fallbacks[0], tuple(fallbacks[1:])
                retry.setdefault(next_url, []).append((doc_key, node_index, next_rank, rest))
            else:
                yield (doc_key, (node_index, rank, result))
        if retry:
            yield from self.fetch_and_count(retry)


def fetch_batches(
    unresolved: beam.PCollection, fn: FetchFn, label: str, min_batch_size: int = 8, max_batch_size: int = 256, main: str = "images",
    tags: tuple[str, ...] = (),
) -> beam.pvalue.DoOutputsTuple:
    """(url, refs) per distinct URL -> batches -> `fn`: outputs main, FETCH_STATUS, COUNTS and `tags`."""
    return (
        unresolved
        | f"{label}/Batch" >> beam.BatchElements(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        | f"{label}/Fetch" >> beam.ParDo(fn).with_outputs(FETCH_STATUS, COUNTS, *tags, main=main)
    )


def _group_refs(element: tuple[str, Iterable[Ref]]) -> tuple[str, list[Ref]]:
    url, refs = element
    return url, sorted(refs)


def fetch_media(
    refs: beam.PCollection,
    fetch_config: FetchConfig,
    image_config: ImageConfig,
    min_batch_size: int = 8,
    max_batch_size: int = 256,
    label: str = "FetchMedia",
) -> beam.pvalue.DoOutputsTuple:
    """(url, (doc key, node index)) refs -> outputs main ("images"), "image_bytes", "fetch_status", "counts"."""
    grouped = refs | f"{label}/GroupByUrl" >> beam.GroupByKey() | f"{label}/Refs" >> beam.Map(_group_refs)
    return fetch_batches(grouped, FetchMediaFn(fetch_config, image_config), label, min_batch_size, max_batch_size, tags=(IMAGE_BYTES,))

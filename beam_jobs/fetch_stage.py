"""Beam wiring for media fetching: distinct media URLs -> fetched, processed images per reference.

    refs (url, (doc key, node index))
      -> GroupByKey(url)                 one element per distinct URL
      -> BatchElements                   a batch keeps every fetch thread of a worker busy
      -> FetchMediaFn                    fetch each URL once, process_image once, fan out to refs
           main:          (doc key, (node index, ImageResult))  for every ref
           "fetch_status": one status row per URL (schemas/fetch_status.arrow.json)
           "counts":       fetch/in and fetch/<status> per URL

`fetch_media` builds that chain; `FetchMediaFn` can be used on its own after any
batching that yields lists of (url, refs).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs.counting import COUNTS, count
from m3w_pipeline.config import FetchConfig, ImageConfig
from m3w_pipeline.fetch import FetchResult, Fetcher
from m3w_pipeline.media import ImageResult, process_image

FETCH_STATUS = "fetch_status"
FETCH_STAGE = "fetch"

Ref = tuple[str, int]  # (doc key, node index)


def _count(outcome: str, n: int = 1) -> TaggedOutput:
    return count(FETCH_STAGE, outcome, n)


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


class FetchMediaFn(beam.DoFn):
    """Batches of (url, refs) -> one fetch and one process_image per URL, a result per ref.

    One Fetcher (thread pool, connection pool, host gates) per DoFn instance, made
    in setup and closed in teardown. Images are processed in the DoFn thread while
    the Fetcher's threads keep downloading the rest of the batch.
    """

    def __init__(self, fetch_config: FetchConfig, image_config: ImageConfig):
        self.fetch_config = fetch_config
        self.image_config = image_config
        self._fetcher: Optional[Fetcher] = None

    def setup(self) -> None:
        self._fetcher = Fetcher(self.fetch_config)

    def teardown(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def process(self, element: Any) -> Iterator[Any]:
        if self._fetcher is None:  # runners call setup first; this keeps direct calls working
            self.setup()
        assert self._fetcher is not None
        refs_by_url = _merge_refs(_as_batch(element))
        for fetched in self._fetcher.fetch_many(refs_by_url):
            yield _count("in")
            yield _count(fetched.status)
            yield TaggedOutput(FETCH_STATUS, fetched.to_row())
            result = image_result_for(fetched, self.image_config)
            fetched.data = None  # the processed image is what travels on
            for doc_key, node_index in refs_by_url[fetched.url]:
                yield (doc_key, (node_index, result))


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
    """(url, (doc key, node index)) refs -> outputs main ("images"), "fetch_status", "counts"."""
    return (
        refs
        | f"{label}/GroupByUrl" >> beam.GroupByKey()
        | f"{label}/Refs" >> beam.Map(_group_refs)
        | f"{label}/Batch" >> beam.BatchElements(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        | f"{label}/Fetch" >> beam.ParDo(FetchMediaFn(fetch_config, image_config)).with_outputs(FETCH_STATUS, COUNTS, main="images")
    )

"""Beam stages for the image-text (ALIGN, LTIP) and video-text (VTP) corpora.

Thin wiring over `m3w_pipeline.write.pairs`, `.video` and `.pair_shards`, fed by the same read
and the same extraction as the M3W build:

    read[MEDIA] -> split_media -> image records -> (M3W image join, unchanged)
                               -> video records (containers, WebVTT) -+
    JoinByDocument (page + image results, before the M3W filters)     |
      -> AssemblePairInputsFn -> PairInput (Document + failed images) |
           -> ExtractPairsFn -> pairs -> write_sample_shards (align-*, ltip-*; image bytes shipped)
           -> VideoCandidatesFn -> candidates (by key) ----------------------------+
                                -> source/track refs (by URL) -+                   |
                                -> failed rows (unfetchable)   |                   |
                        video records (by URL) ----------------+-> ResolveVideosFn |
                              (probe + sample each URL once) -> results by key ---+-> BuildVideoSamplesFn
                 with --fetch-media: refs of URLs no record holds                 |   -> write_sample_shards (video-*)
                   -> FetchVideosFn (fetch once per URL; probe + sample a video, parse a track) -> results by key

Every step records what it consumes per (stage, outcome) in a Tally (`beam_jobs.counting`);
the stage table (kept outcomes, links between stages) is in `m3w_pipeline.core.accounting`.
Shards: samples go to shard int(key[:15], 16) % n, n from the kept count per shard set, so
identical pairs (same key) meet in one shard, where `dedup_samples` keeps one; the
writer counts <set>_samples: in / written / duplicate.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import AsDict, TaggedOutput

from beam_jobs.counting import COUNTS, CountedSteps, CountingFn, counting
from beam_jobs.fetch_stage import FETCH_STATUS, UNRESOLVED, FetchFn, fetch_batches
from beam_jobs.image_bytes import VIDEO_BYTES, ImageShipment
from beam_jobs.outputs import Corpus, n_shards, shard_of, write_shard_files
from m3w_pipeline.core import web
from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import BuildConfig, FetchConfig, ImageConfig, PairConfig, VideoConfig
from m3w_pipeline.core.document import choose_candidates, choose_record
from m3w_pipeline.media.fetch import FetchResult
from m3w_pipeline.media.images import ImageResult
from m3w_pipeline.media.video import VideoResult, media_kind, process_video, webvtt_text
from m3w_pipeline.read import warc as warc_lib
from m3w_pipeline.write.media_bytes import grouped_with_bytes, sample_hashes, split_video_bytes, video_hashes, with_sample_bytes, with_video_bytes
from m3w_pipeline.write.pair_shards import write_pair_shard, write_video_shard
from m3w_pipeline.write.pairs import Pair, PairInput, assemble_pair_input, dedup_samples, extract_pairs
from m3w_pipeline.write.shards import shard_name
from m3w_pipeline.write.video_samples import VIDEO_CANDIDATE, build_video_sample, track_caption, unfetchable_sample, video_candidates

VIDEO_MEDIA = "video_media"
VIDEO_REFS = "video_refs"
VIDEO_ROWS = "video_rows"
SOURCE, TRACK = "source", "track"
VIDEO_FETCH_STAGE = "video_fetch"

# The stages these DoFns count, their kept outcomes and how they link: m3w_pipeline.core.accounting.


# ----------------------------------------------------------------------------- media split


@counting
def split_media(element: tuple[str, warc_lib.MediaRecord], tally: Tally) -> Iterator[Any]:
    """(url, media record) -> main (images, as before) or VIDEO_MEDIA (video containers, WebVTT)."""
    _, record = element
    kind = media_kind(record.content_type, record.data)
    tally.add("media_kind", kind)
    yield element if kind == "image" else TaggedOutput(VIDEO_MEDIA, element)


# ----------------------------------------------------------------------------- documents


class AssemblePairInputsFn(beam.DoFn):
    """JoinByDocument output (doc key, {page, images}) -> PairInput for every extracted page.

    Counts nothing: AssembleFn counts the same image refs and documents for M3W.
    """

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[PairInput]:
        key, grouped = element
        for value in list(grouped["page"])[:1]:  # none cannot happen: results exist only for pages
            page, provenance, opted_out = (tuple(value) + (None,))[:3]  # (page, provenance[, images opt-out])
            page, chosen = choose_candidates(page, grouped["images"])
            results: dict[int, Optional[ImageResult]] = {} if opted_out else dict(chosen)
            yield assemble_pair_input(key, page, provenance, results, opted_out)


def _as_input(item: Any) -> PairInput:
    return item if isinstance(item, PairInput) else PairInput(item)


class ExtractPairsFn(CountingFn):
    """PairInput (or Document) -> Pair (successes and failed rows); stages pair_documents, pair_candidates."""

    def __init__(self, config: PairConfig):
        self.config = config

    def step(self, item: Any, tally: Tally) -> Iterator[Any]:
        pin = _as_input(item)
        if pin.opted_out:  # noimageai: none of the page's images may be used
            tally.add("pair_documents", pin.opted_out)
            return
        pairs, outcomes = extract_pairs(pin.doc, self.config, pin.failed_images)
        tally.add("pair_documents", "with-candidates" if outcomes else "no-candidates")
        tally.add_all("pair_candidates", outcomes)
        yield from pairs


# ----------------------------------------------------------------------------- videos


class VideoCandidatesFn(CountingFn):
    """PairInput (or Document) -> candidates (main, by key), URL refs and unfetchable rows; stage video_refs."""

    def __init__(self, config: VideoConfig, captions: PairConfig):
        self.config = config
        self.captions = captions

    def step(self, item: Any, tally: Tally) -> Iterator[Any]:
        pin = _as_input(item)
        for cand in video_candidates(pin.doc, self.config, self.captions):
            if pin.opted_out:  # noimageai covers video frames too: counted, no row
                tally.add("video_refs", pin.opted_out)
                continue
            tally.add("video_refs", cand.reason)
            if cand.reason != VIDEO_CANDIDATE:
                yield TaggedOutput(VIDEO_ROWS, unfetchable_sample(cand, self.config))
                continue
            yield (cand.key, cand)
            for rank, url in enumerate(cand.fetchable):
                yield TaggedOutput(VIDEO_REFS, (web.normalize_url(url), (cand.key, rank, SOURCE, url)))
            for rank, url in enumerate(cand.tracks):
                yield TaggedOutput(VIDEO_REFS, (web.normalize_url(url), (cand.key, rank, TRACK, url)))


def source_results(refs: Iterable[tuple], result: VideoResult) -> Iterator[Any]:
    """The one result of a video URL, handed (without its bytes) to every candidate that lists it
    as a source; the bytes and frames once under VIDEO_BYTES."""
    content, result = split_video_bytes(result)
    if content is not None:
        yield TaggedOutput(VIDEO_BYTES, content)
    for cand_key, rank, role, url in sorted(refs):
        if role == SOURCE:
            yield (cand_key, (SOURCE, rank, url, result))


def track_results(refs: Iterable[tuple], data: bytes, config: VideoConfig, captions: PairConfig) -> Iterator[Any]:
    """The caption of a WebVTT track URL, handed to every candidate that lists it as a track
    (nothing when no ref is a track or the cues make no valid caption)."""
    tracks = sorted(r for r in refs if r[2] == TRACK)
    text = track_caption(webvtt_text(data, config.max_track_bytes), config, captions) if tracks else None
    if text:
        for cand_key, rank, _, url in tracks:
            yield (cand_key, (TRACK, rank, url, text))


class ResolveVideosFn(CountingFn):
    """Per URL: choose one record (latest capture), probe + sample it ONCE, hand the result to
    every candidate that lists it; tracks are parsed as WebVTT. Counts video_media_records.

    A URL no record holds: with `fetch`, its refs (sources and tracks) go to the UNRESOLVED
    output for FetchVideosFn, counted per URL under video_unresolved; without, nothing is
    emitted and the candidate ends as not-in-crawl.
    """

    def __init__(self, config: VideoConfig, image: ImageConfig, captions: PairConfig, fetch: bool = False):
        self.config = config
        self.image = image
        self.captions = captions
        self.fetch = fetch

    def step(self, element: tuple[str, dict[str, Iterable[Any]]], tally: Tally) -> Iterator[Any]:
        url, grouped = element
        refs = list(grouped["refs"])
        records = sorted(grouped["media"], key=warc_lib.capture_order)
        if records:
            record = choose_record(records, bool(refs), "video_media_records", tally)
            if refs:
                yield from self._resolve(record, refs)
        elif refs and self.fetch:
            tally.add("video_unresolved", "to-fetch")
            yield TaggedOutput(UNRESOLVED, (url, sorted(refs)))

    def _resolve(self, record: warc_lib.MediaRecord, refs: list) -> Iterator[Any]:
        if any(role == SOURCE for _, _, role, _ in refs):
            yield from source_results(refs, process_video(record.data, self.config, self.image))
        yield from track_results(refs, record.data, self.config, self.captions)


class FetchVideosFn(FetchFn):
    """Batches of (url, refs) -> one fetch (capped at VideoConfig.max_video_bytes) per URL: a
    video source is probed and sampled once (process_video), a WebVTT track parsed once, and
    the result goes to every ref as ResolveVideosFn gives it; counts video_fetch. A body of the
    wrong kind (an image, or a track where a video was expected) ends as not-media."""

    stage = VIDEO_FETCH_STAGE

    def __init__(self, fetch_config: FetchConfig, config: VideoConfig, image: ImageConfig, captions: PairConfig):
        super().__init__(fetch_config)
        self.config = config
        self.image = image
        self.captions = captions

    def fetcher_config(self) -> FetchConfig:
        return dataclasses.replace(self.fetch_config, max_bytes=self.config.max_video_bytes)

    def wanted_kinds(self, refs: list) -> tuple[str, ...]:
        return tuple(sorted({"video" if role == SOURCE else "track" for _, _, role, _ in refs}))

    def results(self, fetched: FetchResult, refs: list) -> Iterator[Any]:
        body = fetched.data if fetched.ok else None
        if any(role == SOURCE for _, _, role, _ in refs):
            if body is not None and fetched.media_kind == "video":
                result = process_video(body, self.config, self.image)
            else:  # failed, or the URL's body is a track: no video here
                status = fetched.status if not fetched.ok else "not-media"
                result = VideoResult(None, f"fetch-{status}", fetched.error or f"{fetched.media_kind} where video was expected")
            yield from source_results(refs, result)
        if body is not None and fetched.media_kind == "track":
            yield from track_results(refs, body, self.config, self.captions)


class BuildVideoSamplesFn(CountingFn):
    """(candidate key, {candidate, resolved}) -> VideoSample (success or failed row); stage video_candidates."""

    def __init__(self, config: VideoConfig):
        self.config = config

    def step(self, element: tuple[str, dict[str, Iterable[Any]]], tally: Tally) -> Iterator[Any]:
        _, grouped = element
        resolved = list(grouped["resolved"])
        results = [(rank, url, r) for role, rank, url, r in resolved if role == SOURCE]
        tracks = [(rank, text) for role, rank, _, text in resolved if role == TRACK]
        for candidate in list(grouped["candidate"])[:1]:  # results only exist for candidates
            sample, outcome = build_video_sample(candidate, results, tracks, self.config)
            tally.add("video_candidates", outcome)
            if sample is not None:
                yield sample


# ----------------------------------------------------------------------------- shards


class WriteShardGroupFn(CountingFn):
    """((prefix, index), samples or {samples, bytes}) -> PREFIX-NNNNN.tar + .parquet; dedups, stage
    <set>_samples (in, written, duplicate). Pairs come with their images' bytes beside them
    (beam_jobs.image_bytes), which go back into the samples here."""

    def __init__(self, output_dir: str, writer: Callable, stages: dict[str, str], fill: Callable = with_sample_bytes):
        self.output_dir = output_dir
        self.writer = writer
        self.stages = stages  # prefix -> accounting stage
        self.fill = fill  # (sample, bytes by content key) -> the sample with its bytes back

    def step(self, element: tuple[tuple[str, int], Any], tally: Tally) -> Iterator[Any]:
        (prefix, index), grouped = element
        samples = grouped_with_bytes(grouped, self.fill) if isinstance(grouped, dict) else list(grouped)
        unique, duplicates = dedup_samples(samples)
        stage = self.stages[prefix]
        tally.add(stage, "written", sum(1 for s in samples if s.ok) - duplicates)
        tally.add(stage, "duplicate", duplicates)
        name = shard_name(prefix, index)
        info, table = write_shard_files(self.output_dir, name, lambda out: self.writer(unique, name, out))
        yield dict(dataclasses.asdict(info), rows=table.num_rows)


def write_sample_shards(steps: CountedSteps, samples: beam.PCollection, label: str, output_dir: str, prefix_of: Callable[[Any], str],
                        stages: dict[str, str], per_shard: int, writer: Callable,
                        shipment: Optional[ImageShipment] = None, corpus: str = "",
                        hashes: Callable = sample_hashes, fill: Callable = with_sample_bytes) -> Optional[beam.PCollection]:
    """Samples (and failed rows) -> shard files per prefix; the shard dicts. With a `shipment`, the
    samples carry media metadata only (`hashes` names the bytes each needs, `fill` puts them back):
    they are written once it ships their bytes (returns None)."""
    kept = (
        samples
        | f"{label}/OkPrefixes" >> beam.FlatMap(lambda s: [prefix_of(s)] if s.ok else [])
        | f"{label}/CountPerPrefix" >> beam.combiners.Count.PerElement()
    )

    def assign(sample: Any, counts: dict[str, int]) -> tuple[tuple[str, int], Any]:
        prefix = prefix_of(sample)
        return (prefix, shard_of(sample.key, n_shards(counts.get(prefix, 0), per_shard))), sample

    def write(grouped: beam.PCollection) -> beam.PCollection:
        written = steps(grouped, f"{label}/WriteShards", WriteShardGroupFn(output_dir, writer, stages, fill), main="shards")
        return written.shards

    keyed = samples | f"{label}/AssignShard" >> beam.Map(assign, AsDict(kept))
    if shipment is not None:
        shipment.need(corpus, keyed, hashes, write)
        return None
    return write(steps.group(keyed, f"{label}/GroupShards"))


# ----------------------------------------------------------------------------- corpora


def pair_prefix(config: PairConfig) -> Callable[[Pair], str]:
    prefixes = {"align": config.align_prefix, "ltip": config.ltip_prefix}
    return lambda pair: prefixes[pair.kind]


def add_pair_corpus(pair_inputs: beam.PCollection, output_dir: str, config: BuildConfig, shipment: ImageShipment,
                    corpus: str = "pairs") -> Corpus:
    """ALIGN + LTIP shards (PREFIX-NNNNN.tar/.parquet in output_dir) from PairInputs or Documents,
    written once `shipment` ships the images' bytes."""
    pc, steps = config.pairs, CountedSteps()
    pairs = steps(pair_inputs, "ExtractPairs", ExtractPairsFn(pc), main="pairs")
    stages = {pc.align_prefix: "align_samples", pc.ltip_prefix: "ltip_samples"}
    write_sample_shards(steps, pairs.pairs, "PairShards", output_dir, pair_prefix(pc), stages, pc.samples_per_shard, write_pair_shard,
                        shipment, corpus)
    return Corpus((pc.align_prefix, pc.ltip_prefix), None, steps.counts)


def add_video_corpus(
    pair_inputs: beam.PCollection, video_media: beam.PCollection, output_dir: str, config: BuildConfig,
    shipment: Optional[ImageShipment] = None, corpus: str = "video",
) -> Corpus:
    """Video shards (PREFIX-NNNNN.tar/.parquet) from PairInputs/Documents and (url, MediaRecord) video
    records. Samples carry video metadata; the bytes and frames go through `shipment` (the build's,
    with the images; without one, the corpus ships its own) and are written once it ships them."""
    vc, steps = config.video, CountedSteps()
    cands = steps(pair_inputs, "VideoCandidates", VideoCandidatesFn(vc, config.pairs), VIDEO_REFS, VIDEO_ROWS, main="candidates")
    joined = steps.cogroup({"refs": cands[VIDEO_REFS], "media": video_media}, "JoinVideoMediaByUrl")
    fetch = config.fetch.enabled
    resolved = steps(joined, "ResolveVideos", ResolveVideosFn(vc, config.image, config.pairs, fetch), UNRESOLVED, VIDEO_BYTES,
                     main="results")
    results, status_rows, video_bytes = resolved.results, [], [resolved[VIDEO_BYTES]]
    if fetch:  # batches no larger than the thread pool: at most that many video bodies held at once
        fetched = fetch_batches(resolved[UNRESOLVED], FetchVideosFn(config.fetch, vc, config.image, config.pairs), "FetchVideos",
                                min_batch_size=1, max_batch_size=max(1, config.fetch.workers), main="results", tags=(VIDEO_BYTES,))
        video_bytes.append(fetched[VIDEO_BYTES])
        results = (results, fetched.results) | "AllVideoResults" >> beam.Flatten()
        steps.add(fetched[COUNTS])
        status_rows.append(fetched[FETCH_STATUS])
    joined = steps.cogroup({"candidate": cands.candidates, "resolved": results}, "JoinVideoCandidates")
    built = steps(joined, "BuildVideoSamples", BuildVideoSamplesFn(vc), main="samples")
    samples = (built.samples, cands[VIDEO_ROWS]) | "VideoSamplesAndRows" >> beam.Flatten()
    content = video_bytes[0] if len(video_bytes) == 1 else video_bytes | "AllVideoBytes" >> beam.Flatten()
    own = shipment is None
    if shipment is None:
        shipment = ImageShipment(steps, content, "Video")
    else:
        shipment.add_bytes(content)
    write_sample_shards(steps, samples, "VideoShards", output_dir, lambda s: vc.prefix, {vc.prefix: "video_samples"},
                        vc.samples_per_shard, write_video_shard, shipment, corpus, video_hashes, with_video_bytes)
    return Corpus((vc.prefix,), shipment.ship()[corpus] if own else None, steps.counts, status_rows)

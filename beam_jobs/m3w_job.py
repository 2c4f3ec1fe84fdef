"""The corpus build as a Beam pipeline: a list of named stages over `m3w_pipeline` functions.

    WARC files -> ReadWarc -> pages -> Extract ------------------------------------+
                           -> media records (by URL) ---------------------------+     |
                              every candidate URL of every image + URLs held ---+-> ChooseCandidate (per node, URLs only)
                              image records -> ProcessImageRecords (where read): metadata by URL; bytes (sha256, data) -> [bytes]
                              chosen URL (by URL) + record metadata -> ResolveImages (once per URL; FetchMedia for the rest)
                                -> image metadata per reference (by doc key)
    JoinByDocument (page + its image metadata) -> AssembleAndFilter -> M3W: dedup decisions -> shard join -> kept documents
                                               -> AssemblePairInputs -> pairs (ALIGN, LTIP) -> kept pairs
                                                                     -> video corpus -> kept videos (bytes, frames -> [bytes])
    ShipImageBytes: [bytes] to the shards that keep them, once per shard (beam_jobs.image_bytes)
      -> ShardWithBytes_<corpus>: each shard's samples and bytes -> M3W, pair and video shards
    every corpus -> manifest.json (write_manifests), with the bytes entering every grouping (shuffle_bytes)

Each step records what became of every element in a Tally; `beam_jobs.counting` emits it as
Beam metrics and as data, so the manifest can be reconciled on any runner.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs import fsio
from beam_jobs.counting import COUNTS, REJECTS, CountedSteps, CountingFn, SampleRejects, counting, write_rejects
from beam_jobs.dedup_stages import DedupDecisions
from beam_jobs.fetch_stage import FETCH_STATUS, UNRESOLVED, FetchMediaFn, fetch_batches
from beam_jobs.image_bytes import IMAGE_BYTES, ImageShipment
from beam_jobs.outputs import Corpus, write_deduped_m3w_shards, write_m3w_shards, write_manifests
from beam_jobs.pairs_video_stages import VIDEO_MEDIA, AssemblePairInputsFn, add_pair_corpus, add_video_corpus, split_media
from m3w_pipeline.core import web
from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import BuildConfig, ExtractConfig, FilterConfig, ImageConfig, WarcConfig
from m3w_pipeline.core.document import Document, assemble_document, choose_candidates, choose_record, document_key, image_candidates
from m3w_pipeline.extract.optout import page_opt_out
from m3w_pipeline.extract.timed import ExtractTimeout, TimedExtractor
from m3w_pipeline.filter.filters import POST_DEDUP, M3WFilters, enough_images_after_dedup
from m3w_pipeline.media.images import process_image
from m3w_pipeline.read import warc as warc_lib
from m3w_pipeline.write.media_bytes import split_image_bytes

MEDIA = "media"
BROKEN = "broken"
CORPORA = ("m3w", "pairs", "video")


# ----------------------------------------------------------------------------- steps


class ReadWarcFn(CountingFn):
    """One WARC file -> pages (main), media keyed by URL, broken-file reports; stage `records`."""

    def __init__(self, config: WarcConfig):
        self.config = config

    def step(self, path: str, tally: Tally) -> Iterator[Any]:
        try:
            stream = fsio.open_input(path)
        except Exception as err:  # noqa: BLE001 - missing, forbidden, network: the file is reported, the job goes on
            yield TaggedOutput(BROKEN, dataclasses.asdict(warc_lib.BrokenFile(path, "unreadable", f"{type(err).__name__}: {err}", 0)))
            return
        with stream:
            for item in warc_lib.iter_warc(stream, path, self.config):
                if isinstance(item, warc_lib.BrokenFile):
                    yield TaggedOutput(BROKEN, dataclasses.asdict(item))
                elif isinstance(item, warc_lib.Page):
                    tally.add("records", "page")
                    yield item
                elif isinstance(item, warc_lib.MediaRecord):
                    tally.add("records", "media")
                    yield TaggedOutput(MEDIA, (web.normalize_url(item.url), item))
                else:
                    tally.add("records", item.reason)


class ExtractFn(CountingFn):
    """Page -> (doc key, (ExtractedPage, Provenance, images opt-out)); the one parse of each page, within
    `extract.timeout_s` (a warm child process per DoFn instance). Stage `pages`."""

    def __init__(self, config: ExtractConfig):
        self.config = config

    def setup(self) -> None:
        self.extractor = TimedExtractor(self.config)

    def teardown(self) -> None:
        self.extractor.close()

    def step(self, page: warc_lib.Page, tally: Tally) -> Iterator[Any]:
        try:
            extracted = self.extractor.extract(page.html, page.url)
        except ExtractTimeout:
            tally.add("pages", "extract-timeout")
            return
        except Exception:  # noqa: BLE001 - the extractor is meant never to raise; if it does, the page is counted, not lost
            tally.add("pages", "extract-error")
            return
        opt_out = page_opt_out(page.headers, extracted)
        outcome = opt_out.document if opt_out.document is not None else ("extracted" if extracted.nodes else "empty-extraction")
        tally.add("pages", outcome)
        tally.add("page_images", "image-node", len(extracted.image_refs()))
        tally.add_all("page_images", extracted.dropped_images)
        if outcome == "extracted":
            yield (document_key(page.url, page.provenance), (extracted, page.provenance, opt_out.images))


def image_refs(keyed_doc: tuple[str, Any]) -> Iterator[tuple[str, tuple[str, int, int]]]:
    """(doc key, page) -> (normalised candidate URL, (doc key, node index, candidate rank)) for every
    candidate URL of every image node we may use: the crawl may hold any of them."""
    key, (page, _, images_opted_out) = keyed_doc
    if images_opted_out:
        return
    for index, node in enumerate(page.nodes):
        if node.type == "image" and node.image is not None:
            for rank, url in enumerate(image_candidates(node.image)):
                yield (web.normalize_url(url), (key, index, rank))


def candidate_presence(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[tuple[tuple[str, int], tuple[int, str, bool]]]:
    """(candidate URL, {refs, held}) -> ((doc key, node index), (rank, URL, whether the crawl holds it)) per ref."""
    url, grouped = element
    held = bool(list(grouped["held"]))
    for key, index, rank in grouped["refs"]:
        yield ((key, index), (rank, url, held))


def choose_candidate(element: tuple[tuple[str, int], Iterable[tuple[int, str, bool]]]) -> Iterator[Any]:
    """Per image node: the best-ranked candidate the crawl holds -> (URL, (doc key, node index, rank));
    none held -> UNRESOLVED (best URL, (doc key, node index, rank, fallback (rank, URL)s)) for the fetcher."""
    (key, index), options = element
    options = sorted(options)
    held = [(rank, url) for rank, url, present in options if present]
    if held:
        rank, url = held[0]
        yield (url, (key, index, rank))
    else:
        (rank, url), fallbacks = options[0][:2], tuple((r, u) for r, u, _ in options[1:])
        yield TaggedOutput(UNRESOLVED, (url, (key, index, rank, fallbacks)))


class ProcessImageRecordsFn(CountingFn):
    """(URL, image record) -> (URL, (the record without its bytes, the ImageResult without its bytes));
    the processed bytes once under IMAGE_BYTES. Every image record is processed where it was read,
    before any shuffle, so the media join carries metadata and the raw bytes never cross a shuffle:
    they were the largest one (1.0x the image records; the processed bytes are ~0.3x). The price:
    records no page uses, and older captures of a URL, are processed too."""

    def __init__(self, config: ImageConfig):
        self.config = config

    def step(self, element: tuple[str, warc_lib.MediaRecord], tally: Tally) -> Iterator[Any]:
        url, record = element
        content, result = split_image_bytes(process_image(record.data, self.config))
        if content is not None:
            yield TaggedOutput(IMAGE_BYTES, content)
        yield url, (dataclasses.replace(record, data=b""), result)


class ResolveImagesFn(CountingFn):
    """Per URL: choose one media record and hand its result (processed where it was read, without
    bytes) to every node that chose this URL. Records no node chose are counted as unreferenced.
    Stage `media_records`."""

    def step(self, element: tuple[str, dict[str, Iterable[Any]]], tally: Tally) -> Iterator[Any]:
        url, grouped = element
        refs = sorted(grouped["refs"])
        records = sorted(grouped["media"], key=lambda processed: warc_lib.capture_order(processed[0]))
        if records:
            chosen = choose_record([record for record, _ in records], bool(refs), "media_records", tally)
            result = next(result for record, result in records if record is chosen)
            for doc_key, node_index, rank in refs:
                yield (doc_key, (node_index, rank, result))


class AssembleFn(CountingFn):
    """(doc key, {page, images}) -> the filtered Document; stages image_refs, text_nodes, image_nodes, documents."""

    def __init__(self, config: FilterConfig):
        self.config = config

    def setup(self) -> None:
        self.filters = M3WFilters(self.config)

    def step(self, element: tuple[str, dict[str, Iterable[Any]]], tally: Tally) -> Iterator[Document]:
        key, grouped = element
        for page, provenance, images_opted_out in list(grouped["page"])[:1]:  # image results exist only for extracted pages
            page, results = choose_candidates(page, grouped["images"])
            doc, outcomes = assemble_document(key, page, provenance, results, images_opted_out)
            tally.add_all("image_refs", outcomes)
            kept = self.filters(doc, tally)
            if kept is not None:
                yield kept


@counting
def final_image_check(doc: Document, tally: Tally, config: FilterConfig) -> Iterator[Document]:
    """After dedup removed hot and repeated images, a document may no longer have enough. Stage `post_dedup`."""
    if enough_images_after_dedup(doc, config, tally):
        yield doc


# ----------------------------------------------------------------------------- the build


def corpus_dirs(corpus: str, output_dir: str) -> dict[str, str]:
    """Where each corpus goes: OUTPUT itself for one corpus, OUTPUT/<corpus> for `all`."""
    if corpus == "all":
        return {c: fsio.join(output_dir, c) for c in CORPORA}
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: one of {CORPORA + ('all',)}")
    return {corpus: output_dir}


def resolve_images(steps: CountedSteps, pages: beam.PCollection, media: beam.PCollection,
                   config: BuildConfig) -> tuple[beam.PCollection, beam.PCollection, Optional[beam.PCollection]]:
    """(doc key, (node index, rank, ImageResult without bytes)) for every image ref, (sha256, bytes)
    once per processed URL, and the fetch status rows when fetching is on."""
    # Which candidate each node uses is decided on URLs alone, before any bytes move or decode.
    candidates = pages | "ImageCandidates" >> beam.FlatMap(image_refs)
    held = steps.distinct(media | "HeldUrls" >> beam.Map(lambda kv: (kv[0], True)), "DistinctHeld")
    chosen = (
        steps.cogroup({"refs": candidates, "held": held}, "JoinCandidatesWithCrawl")
        | "CandidatesByNode" >> beam.FlatMap(candidate_presence)
    )
    chosen = steps.group(chosen, "GroupByNode") | "ChooseCandidate" >> beam.FlatMap(choose_candidate).with_outputs(UNRESOLVED, main="refs")
    processed = steps(media, "ProcessImageRecords", ProcessImageRecordsFn(config.image), IMAGE_BYTES, main="records")
    joined = steps.cogroup({"refs": chosen.refs, "media": processed.records}, "JoinMediaByUrl")
    resolved = steps(joined, "ResolveImages", ResolveImagesFn(), main="images")
    if not config.fetch.enabled:
        return resolved.images, processed[IMAGE_BYTES], None
    unresolved = steps.group(chosen[UNRESOLVED], "GroupByBestUrl") | "SortRefs" >> beam.MapTuple(lambda url, refs: (url, sorted(refs)))
    fetched = fetch_batches(unresolved, FetchMediaFn(config.fetch, config.image), "FetchMedia", tags=(IMAGE_BYTES,))
    steps.add(fetched[COUNTS])
    images = (resolved.images, fetched.images) | "AllImageResults" >> beam.Flatten()
    image_bytes = (processed[IMAGE_BYTES], fetched[IMAGE_BYTES]) | "AllImageBytes" >> beam.Flatten()
    return images, image_bytes, fetched[FETCH_STATUS]


def add_m3w_corpus(docs: beam.PCollection, rejects: beam.PCollection, output_dir: str, config: BuildConfig,
                   shipment: ImageShipment) -> Corpus:
    """Filtered documents -> dedup's decisions -> shards (written once `shipment` ships the bytes),
    the documents meeting the decisions in the shard join; the reject sample -> rejects.jsonl.
    Without dedup: FinalImageCheck -> shards."""
    steps = CountedSteps()
    corpus = Corpus((config.shards.prefix,), None, steps.counts)

    def write_all_rejects(sampled: list[beam.PCollection], written: list[beam.PCollection]) -> None:
        """The sample of filter and dedup rejects and every post_dedup reject (as before) -> rejects.jsonl."""
        sample = sampled | "FilterAndDedupRejects" >> beam.Flatten() | "SampleRejects" >> SampleRejects(config.dedup.reject_sample_size)
        corpus.files.append(write_rejects([sample, *written], output_dir, steps))

    if not config.dedup.enabled:
        final = steps(docs, "FinalImageCheck", final_image_check, REJECTS, main="docs", args=(config.filters,))
        write_all_rejects([rejects], [final[REJECTS]])
        write_m3w_shards(final.docs, output_dir, config.shards, shipment)
        return corpus
    decided = docs | "Dedup" >> DedupDecisions(config.dedup)
    steps.add(decided["counts"] | "DedupCounts" >> beam.Flatten())

    def writer_rejects(written: beam.PCollection) -> None:
        post, hot = written | "SplitWriterRejects" >> beam.Partition(lambda r, _: 0 if r.stage == POST_DEDUP else 1, 2)
        write_all_rejects([rejects, *decided["rejects"], hot], [post])

    write_deduped_m3w_shards(decided, output_dir, config, shipment, steps, writer_rejects)
    return corpus


def build_pipeline(pipeline: beam.Pipeline, inputs: list[str], dirs: dict[str, str], config: BuildConfig) -> list[beam.PCollection]:
    """One read and one extraction of every page, feeding each requested corpus; one manifest per corpus."""
    steps = CountedSteps()  # the shared funnel; each corpus branch counts its own stages
    files = steps.reshuffle(pipeline | "Inputs" >> beam.Create(sorted(inputs)), "SpreadFiles")
    read = steps(files, "ReadWarc", ReadWarcFn(config.warc), MEDIA, BROKEN, main="pages")
    pages = steps(read.pages, "Extract", ExtractFn(config.extract), main="docs").docs
    image_media, video_media = read[MEDIA], None
    if "video" in dirs:  # video records go to the video join, images to the image join
        split = steps(read[MEDIA], "SplitMedia", split_media, VIDEO_MEDIA, main="images")
        image_media, video_media = split.images, split[VIDEO_MEDIA]
    image_results, image_bytes, image_fetch_status = resolve_images(steps, pages, image_media, config)
    by_doc = steps.cogroup({"page": pages, "images": image_results}, "JoinByDocument")
    # M3W assembly always runs: it accounts for every image reference and document.
    assembled = steps(by_doc, "AssembleAndFilter", AssembleFn(config.filters), REJECTS, main="docs")

    corpora: dict[str, Corpus] = {}
    shipment = ImageShipment(steps, image_bytes)
    if "m3w" in dirs:
        corpora["m3w"] = add_m3w_corpus(assembled.docs, assembled[REJECTS], dirs["m3w"], config, shipment)
    if "pairs" in dirs or "video" in dirs:
        pair_inputs = by_doc | "AssemblePairInputs" >> beam.ParDo(AssemblePairInputsFn())
        if "pairs" in dirs:
            corpora["pairs"] = add_pair_corpus(pair_inputs, dirs["pairs"], config, shipment)
        if "video" in dirs:
            corpora["video"] = add_video_corpus(pair_inputs, video_media, dirs["video"], config, shipment)
    for name, shards in shipment.ship().items():  # the bytes each kept sample needs, once per shard
        corpora[name].shards = shards
    if image_fetch_status is not None:  # images are fetched once for every corpus: their status goes with the first
        corpora[next(iter(dirs))].status_rows.insert(0, image_fetch_status)
    return write_manifests(pipeline, inputs, dirs, config, corpora, steps.counts, read[BROKEN])

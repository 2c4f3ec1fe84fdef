"""The M3W build as a Beam pipeline: thin wiring over `m3w_pipeline` functions.

    WARC files -> records -> pages -> extract ----------------------+
                         -> media records (by URL) -+                |
                             image refs (by URL) ---+-> CoGroupByKey -> resolve once per URL
                                                                     |
                              (doc key) <----------------------------+
    CoGroupByKey(doc key) -> assemble -> filters -> shards -> manifest

Every DoFn counts each element it consumes under (stage, outcome), both as a
Beam metric and as data, so the manifest can be reconciled on any runner.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import AsDict, AsList, AsSingleton, TaggedOutput

from beam_jobs import fsio
from beam_jobs.counting import COUNTS, count
from beam_jobs.dedup_stages import Dedup, SampleRejects
from beam_jobs.fetch_stage import FETCH_STATUS, UNRESOLVED, FetchMediaFn, fetch_batches
from beam_jobs.pairs_video_stages import VIDEO_MEDIA, AssemblePairInputsFn, add_pair_corpus, add_video_corpus, split_media
from m3w_pipeline.core.accounting import IN, build_manifest
from m3w_pipeline.core.config import BuildConfig, ExtractConfig, FilterConfig, ImageConfig, ShardConfig, WarcConfig
from m3w_pipeline.core.document import assemble_document, document_key
from m3w_pipeline.extract.optout import page_opt_out
from m3w_pipeline.extract.page import extract_page
from m3w_pipeline.filter.filters import Reject, document_filters, filter_nodes, first_failure
from m3w_pipeline.filter.quality import ScoreCache
from m3w_pipeline.media.images import ImageResult, process_image
from m3w_pipeline.read import warc as warc_lib
from m3w_pipeline.write.shards import parquet_bytes, sha256_bytes, shard_name, write_m3w_shard

MEDIA = "media"
BROKEN = "broken"
REJECTS = "rejects"
REJECTS_NAME = "rejects.jsonl"
MANIFEST_NAME = "manifest.json"


class ReadWarcFn(beam.DoFn):
    """One WARC file -> pages (main), media keyed by URL, broken-file reports, counts."""

    def __init__(self, config: WarcConfig):
        self.config = config

    def process(self, path: str) -> Iterator[Any]:
        try:
            stream = fsio.open_input(path)
        except Exception as err:  # noqa: BLE001 - missing, forbidden, network: the file is reported, the job goes on
            yield TaggedOutput(BROKEN, dataclasses.asdict(warc_lib.BrokenFile(path, "unreadable", f"{type(err).__name__}: {err}", 0)))
            return
        with stream:
            for item in warc_lib.iter_warc(stream, path, self.config):
                if isinstance(item, warc_lib.BrokenFile):
                    yield TaggedOutput(BROKEN, dataclasses.asdict(item))
                    continue
                yield count("records", IN)
                if isinstance(item, warc_lib.Page):
                    yield count("records", "page")
                    yield item
                elif isinstance(item, warc_lib.MediaRecord):
                    yield count("records", "media")
                    yield TaggedOutput(MEDIA, (warc_lib.normalize_url(item.url), item))
                else:
                    yield count("records", item.reason)


class ExtractFn(beam.DoFn):
    """Page -> (doc key, (ExtractedPage, Provenance)); the one parse of each page."""

    def __init__(self, config: ExtractConfig):
        self.config = config

    def process(self, page: warc_lib.Page) -> Iterator[Any]:
        yield count("pages", IN)
        try:
            extracted = extract_page(page.html, page.url, self.config)
        except Exception:  # noqa: BLE001 - the extractor is meant never to raise; if it does, the page is counted, not lost
            yield count("pages", "extract-error")
            return
        opt_out = page_opt_out(page.headers, extracted)
        if opt_out.document is not None:
            yield count("pages", opt_out.document)
        elif not extracted.nodes:
            yield count("pages", "empty-extraction")
        else:
            yield count("pages", "extracted")
            yield (document_key(page.url, page.provenance), (extracted, page.provenance, opt_out.images))


def image_refs(keyed_doc: tuple[str, Any]) -> Iterator[tuple[str, tuple[str, int]]]:
    """(doc key, page) -> (normalised image URL, (doc key, node index)) per image node we may use."""
    key, (page, _, images_opted_out) = keyed_doc
    if images_opted_out:
        return
    for index, node in enumerate(page.nodes):
        if node.type == "image" and node.image is not None:
            yield (warc_lib.normalize_url(node.image.url), (key, index))


class ResolveImagesFn(beam.DoFn):
    """Per URL: choose one media record, process it once, hand the result to every referencing node.

    A URL no record holds goes to the `unresolved` output (for the fetch stage) when
    fetching is on; otherwise its refs stay missing.
    """

    def __init__(self, config: ImageConfig, fetch: bool = False):
        self.config = config
        self.fetch = fetch

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        url, grouped = element
        refs = sorted(grouped["refs"])
        records = sorted(grouped["media"], key=warc_lib.capture_order)
        if records:
            yield count("media_records", IN, len(records))
            yield from self._resolve(refs, records)
        elif refs and self.fetch:
            yield TaggedOutput(UNRESOLVED, (url, refs))

    def _resolve(self, refs: list, records: list) -> Iterator[Any]:
        chosen, duplicates = records[-1], records[:-1]  # the most recent capture wins
        if duplicates:
            yield count("media_records", "duplicate-url", len(duplicates))
        if not refs:
            yield count("media_records", "unreferenced")
        else:
            yield count("media_records", "used")
            result = process_image(chosen.data, self.config)
            for doc_key, node_index in refs:
                yield (doc_key, (node_index, result))


class AssembleFn(beam.DoFn):
    """(doc key, {page, images}) -> a filtered Document; counts image-ref, node and document outcomes."""

    def __init__(self, config: FilterConfig):
        self.config = config

    def setup(self) -> None:
        self.scores = ScoreCache(self.config)
        self.filters = document_filters(self.config, self.scores)

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        key, grouped = element
        pages = list(grouped["page"])
        if not pages:  # cannot happen: image results only exist for extracted pages
            return
        page, provenance, images_opted_out = pages[0]
        results: dict[int, Optional[ImageResult]] = dict(grouped["images"])
        if images_opted_out:
            results = {i: ImageResult(None, images_opted_out) for i, n in enumerate(page.nodes) if n.type == "image"}
        doc, outcomes = assemble_document(key, page, provenance, results)
        yield count("image_refs", IN, sum(outcomes.values()))
        for outcome, n in sorted(outcomes.items()):
            yield count("image_refs", outcome, n)
        nodes = filter_nodes(doc, self.config)
        for (stage, outcome), n in sorted(nodes.counts.items()):
            yield count(stage, outcome, n)
        for reject in nodes.rejects:
            yield TaggedOutput(REJECTS, reject)
        doc = nodes.doc
        yield count("documents", IN)
        reason = first_failure(doc, self.filters)
        if reason is not None:
            yield count("documents", reason)
            yield TaggedOutput(REJECTS, Reject("documents", reason, doc.key, doc.url))
            return
        doc.scores = self.scores(doc)
        yield count("documents", "kept")
        yield doc


def final_image_check(doc: Any, min_images: int) -> Iterator[Any]:
    """After dedup removed hot and repeated images, a document may no longer have enough."""
    yield count("post_dedup", IN)
    if doc.n_images < min_images:
        yield count("post_dedup", "no-image")
        yield TaggedOutput(REJECTS, Reject("post_dedup", "no-image", doc.key, doc.url))
    else:
        yield count("post_dedup", "kept")
        yield doc


class WriteRejectsFn(beam.DoFn):
    """The bounded reject sample -> rejects.jsonl beside the shards, one JSON object per line, sorted."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element: tuple[None, Iterable[Any]]) -> Iterator[str]:
        import json

        rows = [dataclasses.asdict(r) for r in element[1]]
        rows.sort(key=lambda r: (r["stage"], r["reason"], r["key"], r["url"], r["detail"]))
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
        fsio.write_bytes_atomic(fsio.join(self.output_dir, REJECTS_NAME), data)
        yield REJECTS_NAME


class WriteShardFn(beam.DoFn):
    """(shard index, documents) -> NAME.tar + NAME.parquet, each written to a temp name then renamed."""

    def __init__(self, output_dir: str, config: ShardConfig):
        self.output_dir = output_dir
        self.config = config

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[dict[str, Any]]:
        index, docs = element
        name = shard_name(self.config.prefix, index)
        holder: dict[str, Any] = {}

        def write_tar(out):
            holder["info"], holder["table"] = write_m3w_shard(docs, name, out)

        fsio.write_atomic(fsio.join(self.output_dir, f"{name}.tar"), write_tar)
        info, table = holder["info"], holder["table"]
        index_bytes = parquet_bytes(table)
        fsio.write_bytes_atomic(fsio.join(self.output_dir, f"{name}.parquet"), index_bytes)
        info.parquet_bytes, info.parquet_sha256 = len(index_bytes), sha256_bytes(index_bytes)
        yield dataclasses.asdict(info)


class WriteManifestFn(beam.DoFn):
    """Runs once per corpus, after every shard: writes manifest.json, removes files a previous build left."""

    def __init__(self, output_dir: str, inputs: list[str], config: BuildConfig, corpus: str, prefixes: tuple[str, ...]):
        self.output_dir = output_dir
        self.inputs = inputs
        self.config = config
        self.corpus = corpus
        self.prefixes = prefixes  # shard name prefixes this corpus owns in output_dir

    def process(self, _: Any, counts: dict, broken: list, shards: list, status_files: list, extra_files: list) -> Iterator[dict[str, Any]]:
        import json

        manifest = build_manifest(counts, shards, broken, self.inputs, self.config.to_dict(), self.corpus)
        manifest["fetch_status_files"] = sorted(status_files)
        manifest["other_files"] = sorted(extra_files)
        if self.corpus == "m3w" and REJECTS_NAME not in extra_files and fsio.exists(fsio.join(self.output_dir, REJECTS_NAME)):
            fsio.delete_matching(fsio.join(self.output_dir, REJECTS_NAME), set())  # a previous build's sample
        keep = {fsio.join(self.output_dir, f"{s['name']}.{ext}") for s in shards for ext in ("tar", "parquet")}
        keep |= {fsio.join(self.output_dir, f) for f in status_files}
        patterns = [f"{p}-*.{ext}" for p in self.prefixes for ext in ("tar", "parquet")]
        if status_files or self.config.fetch.enabled:
            patterns.append("fetch_status-*.parquet")
        manifest["removed_stale_files"] = sorted(
            path.rsplit("/", 1)[-1] for pattern in patterns for path in fsio.delete_matching(fsio.join(self.output_dir, pattern), keep)
        )
        data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        fsio.write_bytes_atomic(fsio.join(self.output_dir, MANIFEST_NAME), data)
        yield manifest


class WriteStatusTableFn(beam.DoFn):
    """(bucket, rows) -> NAME-NNNNN.parquet, rows sorted by URL, written to a temp name then renamed."""

    def __init__(self, output_dir: str, prefix: str, schema: str):
        self.output_dir = output_dir
        self.prefix = prefix
        self.schema = schema

    def process(self, element: tuple[int, Iterable[dict[str, Any]]]) -> Iterator[str]:
        import pyarrow as pa

        from m3w_pipeline.write.shards import load_arrow_schema

        bucket, rows = element
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["url"]), schema=load_arrow_schema(self.schema))
        name = f"{shard_name(self.prefix, bucket)}.parquet"
        fsio.write_bytes_atomic(fsio.join(self.output_dir, name), parquet_bytes(table))
        yield name


def write_status_table(rows: beam.PCollection, output_dir: str, prefix: str, schema: str, rows_per_file: int = 1_000_000,
                       label: str = "") -> beam.PCollection:
    """Status rows (one per URL) -> bucketed Parquet files beside the shards, like img2dataset's."""
    label = label or prefix
    n_files = rows | f"Count{label}" >> beam.combiners.Count.Globally() | f"Files{label}" >> beam.Map(_n_shards, rows_per_file)
    return (
        rows
        | f"Bucket{label}" >> beam.Map(lambda r, n: (int(hashlib.sha1(r["url"].encode()).hexdigest()[:15], 16) % n, r), AsSingleton(n_files))
        | f"Group{label}" >> beam.GroupByKey()
        | f"Write{label}" >> beam.ParDo(WriteStatusTableFn(output_dir, prefix, schema))
    )


def write_fetch_status_files(rows_by_dir: dict[str, list]) -> dict[str, beam.PCollection]:
    """Fetch status rows per corpus directory (images: the first corpus; videos: the video corpus)
    -> fetch_status-NNNNN.parquet there; output dir -> PCollection of the file names written."""
    files = {}
    for i, (out, rows) in enumerate(rows_by_dir.items()):
        merged = rows[0] if len(rows) == 1 else rows | f"FetchStatusRows{i}" >> beam.Flatten()
        files[out] = write_status_table(merged, out, "fetch_status", "fetch_status", label=f"fetch_status{i or ''}")
    return files


def _shard_of(doc: Any, n_shards: int) -> tuple[int, Any]:
    return int(doc.key[:15], 16) % n_shards, doc


def _n_shards(n_docs: int, per_shard: int) -> int:
    return max(1, math.ceil(n_docs / per_shard))


CORPORA = ("m3w", "pairs", "video")


def corpus_dirs(corpus: str, output_dir: str) -> dict[str, str]:
    """Where each corpus goes: OUTPUT itself for one corpus, OUTPUT/<corpus> for `all`."""
    if corpus == "all":
        return {c: fsio.join(output_dir, c) for c in CORPORA}
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: one of {CORPORA + ('all',)}")
    return {corpus: output_dir}


def build_pipeline(pipeline: beam.Pipeline, inputs: list[str], dirs: dict[str, str], config: BuildConfig) -> list[beam.PCollection]:
    """One read and one extraction of every page, feeding each requested corpus; one manifest per corpus."""
    read = (
        pipeline
        | "Inputs" >> beam.Create(sorted(inputs))
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadWarc" >> beam.ParDo(ReadWarcFn(config.warc)).with_outputs(MEDIA, BROKEN, COUNTS, main="pages")
    )
    extracted = read.pages | "Extract" >> beam.ParDo(ExtractFn(config.extract)).with_outputs(COUNTS, main="docs")
    count_streams = [read[COUNTS], extracted[COUNTS]]
    image_media = read[MEDIA]
    if "video" in dirs:  # video records go to the video join, images to the image join
        split = read[MEDIA] | "SplitMedia" >> beam.FlatMap(split_media).with_outputs(VIDEO_MEDIA, COUNTS, main="images")
        image_media = split.images
        count_streams.append(split[COUNTS])
    refs = extracted.docs | "ImageRefs" >> beam.FlatMap(image_refs)
    resolved = (
        {"refs": refs, "media": image_media}
        | "JoinMediaByUrl" >> beam.CoGroupByKey()
        | "ResolveImages"
        >> beam.ParDo(ResolveImagesFn(config.image, config.fetch.enabled)).with_outputs(COUNTS, UNRESOLVED, main="images")
    )
    image_results = resolved.images
    count_streams.append(resolved[COUNTS])
    first_dir = next(iter(dirs.values()))
    status_rows: dict[str, list] = {}  # corpus dir -> fetch status row PCollections written there
    if config.fetch.enabled:
        fetched = fetch_batches(resolved[UNRESOLVED], FetchMediaFn(config.fetch, config.image), "FetchMedia")
        image_results = (resolved.images, fetched.images) | "AllImageResults" >> beam.Flatten()
        count_streams.append(fetched[COUNTS])
        status_rows.setdefault(first_dir, []).append(fetched[FETCH_STATUS])
    by_doc = {"page": extracted.docs, "images": image_results} | "JoinByDocument" >> beam.CoGroupByKey()
    # M3W assembly always runs: it accounts for every image reference and document.
    assembled = by_doc | "AssembleAndFilter" >> beam.ParDo(AssembleFn(config.filters)).with_outputs(COUNTS, REJECTS, main="docs")
    count_streams.append(assembled[COUNTS])

    shards: dict[str, Any] = {}
    prefixes: dict[str, tuple[str, ...]] = {}
    extra_files: dict[str, Any] = {}  # corpus -> PCollection of other file names it wrote
    if "m3w" in dirs:
        docs, rejects = assembled.docs, [assembled[REJECTS] | "SampleNodeRejects" >> SampleRejects(config.dedup.reject_sample_size)]
        if config.dedup.enabled:
            deduped = docs | "Dedup" >> Dedup(config.dedup)
            docs = deduped["docs"]
            count_streams.append(deduped["counts"])
            rejects.append(deduped["rejects"])
        final = docs | "FinalImageCheck" >> beam.FlatMap(final_image_check, config.filters.min_images_per_document).with_outputs(
            COUNTS, REJECTS, main="docs")
        count_streams.append(final[COUNTS])
        rejects.append(final[REJECTS])
        extra_files["m3w"] = (
            rejects
            | "AllRejects" >> beam.Flatten()
            | "RejectsTogether" >> beam.Map(lambda r: (None, r))
            | "GroupRejects" >> beam.GroupByKey()
            | "WriteRejects" >> beam.ParDo(WriteRejectsFn(dirs["m3w"]))
        )
        shards["m3w"] = write_m3w_corpus(final.docs, dirs["m3w"], config)
        prefixes["m3w"] = (config.shards.prefix,)
    if "pairs" in dirs or "video" in dirs:
        pair_inputs = by_doc | "AssemblePairInputs" >> beam.ParDo(AssemblePairInputsFn())
        if "pairs" in dirs:
            pairs = add_pair_corpus(pair_inputs, dirs["pairs"], config)
            shards["pairs"], prefixes["pairs"] = pairs.shards, (config.pairs.align_prefix, config.pairs.ltip_prefix)
            count_streams += pairs.counts
        if "video" in dirs:
            videos = add_video_corpus(pair_inputs, split[VIDEO_MEDIA], dirs["video"], config)
            shards["video"], prefixes["video"] = videos.shards, (config.video.prefix,)
            count_streams += videos.counts
            if videos.fetch_status is not None:
                status_rows.setdefault(dirs["video"], []).append(videos.fetch_status)
    status_files = write_fetch_status_files(status_rows)
    counts = (
        count_streams
        | "AllCounts" >> beam.Flatten()
        | "CountKey" >> beam.Map(lambda c: ((c.stage, c.outcome), c.n))
        | "SumCounts" >> beam.CombinePerKey(sum)
    )
    no_files = pipeline | "NoFiles" >> beam.Create([])
    manifests = []
    for corpus, out in dirs.items():
        manifests.append(
            pipeline
            | f"ManifestTrigger_{corpus}" >> beam.Create([None])
            | f"WriteManifest_{corpus}"
            >> beam.ParDo(
                WriteManifestFn(out, inputs, config, corpus, prefixes[corpus]),
                counts=AsDict(counts),
                broken=AsList(read[BROKEN]),
                shards=AsList(shards[corpus]),
                status_files=AsList(status_files.get(out, no_files)),
                extra_files=AsList(extra_files.get(corpus, no_files)),
            )
        )
    return manifests


def write_m3w_corpus(docs: beam.PCollection, output_dir: str, config: BuildConfig) -> beam.PCollection:
    """Kept documents -> PREFIX-NNNNN.tar/.parquet, documents spread over shards by key hash."""
    n_shards = docs | "CountKept" >> beam.combiners.Count.Globally() | "ShardCount" >> beam.Map(_n_shards, config.shards.samples_per_shard)
    return (
        docs
        | "AssignShard" >> beam.Map(_shard_of, AsSingleton(n_shards))
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(output_dir, config.shards))
    )

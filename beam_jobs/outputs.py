"""What a build writes beside its shards, and the shards themselves: each file under a temporary
name, then renamed, so readers never see half a file.

Every corpus branch of the build (M3W, pairs, video) returns a `Corpus`: its shard infos, the
counts of its own stages, the fetch status rows of media it fetched and the names of other files
it wrote. `write_manifests` turns those, the build's shared counts and the broken input files
into one manifest.json per corpus folder (and removes files a previous build left there).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import AsDict, AsList, AsSingleton

from beam_jobs import fsio
from beam_jobs.counting import REJECTS, REJECTS_NAME, SHUFFLE_BYTES, SHUFFLE_ELEMENTS, SHUFFLE_STAGES, CountedSteps, CountingFn
from beam_jobs.image_bytes import ImageShipment
from m3w_pipeline.core.accounting import Tally, build_manifest
from m3w_pipeline.core.config import BuildConfig, FilterConfig, ShardConfig
from m3w_pipeline.filter.dedup import DedupKeys, remove_hot_images
from m3w_pipeline.filter.filters import enough_images_after_dedup
from m3w_pipeline.write.layout import CARD_NAME, SIZES_NAME, dataset_card, index_file, shard_side_files, sizes_json, stats_file
from m3w_pipeline.write.media_bytes import document_hashes, grouped_with_bytes, kept_keys_needs, with_document_bytes
from m3w_pipeline.write.shards import ShardInfo, parquet_bytes, sha256_bytes, shard_name, write_m3w_shard
from schemas import load_arrow_schema

MANIFEST_NAME = "manifest.json"
STATUS_PREFIX = "fetch_status"


@dataclass
class Corpus:
    """What one corpus branch of the build wrote, for its manifest."""

    prefixes: tuple[str, ...]  # shard name prefixes it owns in its folder (older shards with them are removed)
    shards: Optional[beam.PCollection]  # one dict per shard: ShardInfo fields (pairs and video add rows); set once image bytes ship
    counts: list[beam.PCollection]  # accounting.Count elements of its own stages
    status_rows: list[beam.PCollection] = field(default_factory=list)  # fetch status rows of media it fetched
    files: list[beam.PCollection] = field(default_factory=list)  # names of other files it wrote


# ----------------------------------------------------------------------------- shards


def n_shards(n_samples: int, per_shard: int) -> int:
    return max(1, math.ceil(n_samples / per_shard))


def shard_of(key: str, n: int) -> int:
    """Samples go to shard int(key[:15], 16) % n: spread evenly, and equal keys meet in one shard."""
    return int(key[:15], 16) % n


def write_shard_files(output_dir: str, name: str, write_tar: Callable[[BinaryIO], tuple[ShardInfo, pa.Table]]) -> tuple[ShardInfo, pa.Table]:
    """NAME.tar (written by `write_tar`), its index index/NAME.parquet and its other files
    (`layout.shard_side_files`); the info gets the index's size and hash."""
    holder: dict[str, Any] = {}

    def write(out: BinaryIO) -> None:
        holder["info"], holder["table"] = write_tar(out)

    fsio.write_atomic(fsio.join(output_dir, f"{name}.tar"), write)
    info, table = holder["info"], holder["table"]
    files = shard_side_files(name, table)
    for path, data in files.items():
        fsio.write_bytes_atomic(fsio.join(output_dir, path), data)
    index_bytes = files[index_file(name)]
    info.parquet_bytes, info.parquet_sha256 = len(index_bytes), sha256_bytes(index_bytes)
    return info, table


class WriteM3WShardFn(beam.DoFn):
    """(shard index, {samples: documents, bytes: (sha256, image bytes)}) -> PREFIX-NNNNN.tar + .parquet; the shard's info."""

    def __init__(self, output_dir: str, config: ShardConfig):
        self.output_dir = output_dir
        self.config = config

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[dict[str, Any]]:
        index, grouped = element
        docs = grouped_with_bytes(grouped, with_document_bytes)
        name = shard_name(self.config.prefix, index)
        info, _ = write_shard_files(self.output_dir, name, lambda out: write_m3w_shard(docs, name, out))
        yield dataclasses.asdict(info)


def write_m3w_shards(docs: beam.PCollection, output_dir: str, config: ShardConfig, shipment: ImageShipment, corpus: str = "m3w") -> None:
    """Kept documents -> PREFIX-NNNNN.tar/.parquet, documents spread over shards by key hash; each
    shard gets the bytes of its documents' images once (`shipment.ship` writes it)."""
    n = docs | "CountKept" >> beam.combiners.Count.Globally() | "ShardCount" >> beam.Map(n_shards, config.samples_per_shard)
    keyed = docs | "AssignShard" >> beam.Map(lambda doc, n: (shard_of(doc.key, n), doc), AsSingleton(n))
    shipment.need(corpus, keyed, document_hashes, lambda grouped: grouped | "WriteShards" >> beam.ParDo(WriteM3WShardFn(output_dir, config)))


class WriteDedupedM3WShardFn(CountingFn):
    """(shard index, {samples: documents after in-document dedup, drops: keys dedup dropped, bytes})
    -> the shard of the documents dedup kept, once the hot images left them and they still have
    enough images; stages images_hot and post_dedup (the writer is where documents meet dedup's
    decisions). A shard none of whose documents is kept is not written."""

    def __init__(self, output_dir: str, config: ShardConfig, filters: FilterConfig):
        self.output_dir = output_dir
        self.config = config
        self.filters = filters

    def step(self, element: tuple[int, dict[str, Iterable[Any]]], tally: Tally, hot: list) -> Iterator[dict[str, Any]]:
        index, grouped = element
        dropped, hot_keys = set(grouped["drops"]), frozenset(hot)
        docs = []
        for doc in grouped["samples"]:
            if doc.key in dropped:
                continue  # counted where dedup decided it
            doc = remove_hot_images(doc, hot_keys, tally)
            if enough_images_after_dedup(doc, self.filters, tally):
                docs.append(doc)
        if not docs:
            return
        by_sha = dict(grouped["bytes"])
        missing = sorted({sha for doc in docs for sha in document_hashes(doc)} - by_sha.keys())
        if missing:  # the keys decided what this shard needs: a difference is a wiring bug, not data
            raise ValueError(f"shard {index}: kept documents need images {missing[:3]} that dedup's keys did not ship")
        docs = [with_document_bytes(doc, by_sha) for doc in docs]
        name = shard_name(self.config.prefix, index)
        info, _ = write_shard_files(self.output_dir, name, lambda out: write_m3w_shard(docs, name, out))
        yield dataclasses.asdict(info)


def _kept_needs(keys: DedupKeys, n: int, hot: list, min_images: int) -> Iterator[tuple[str, tuple[str, int]]]:
    """Surviving dedup keys -> (sha256, ("m3w", shard)) for each stored image of a document that will be written."""
    shas = kept_keys_needs(keys.images, frozenset(hot), min_images)
    for sha in shas or ():
        yield sha, ("m3w", shard_of(keys.key, n))


def _written_one(keys: DedupKeys, hot: list, min_images: int) -> Iterator[int]:
    if kept_keys_needs(keys.images, frozenset(hot), min_images) is not None:
        yield 1


def write_deduped_m3w_shards(decided: dict[str, Any], output_dir: str, config: BuildConfig, shipment: ImageShipment,
                             steps: CountedSteps, on_rejects: Callable[[beam.PCollection], None]) -> None:
    """Dedup's decisions -> M3W shards, the documents crossing one shuffle: the shard join.

    The shard count and the images each shard needs are decided on the small keys (the documents
    that survive dedup's drop stages and will still have enough images once the hot ones leave);
    every document after in-document dedup goes to its shard by key hash, dedup's drops go there too,
    and the writer keeps the undropped ones, removes their hot images and checks them again, counting
    both. Before, the documents crossed a dedup join by document key and then the shard join.
    `on_rejects` gets the writer's rejects (images_hot and post_dedup) once `shipment.ship` applies it."""
    hot, survivors, min_images = AsList(decided["hot"]), decided["survivors"], config.filters.min_images_per_document
    n = (
        survivors
        | "WrittenAfterDedup" >> beam.FlatMap(_written_one, hot, min_images)
        | "CountKept" >> beam.CombineGlobally(sum)
        | "ShardCount" >> beam.Map(n_shards, config.shards.samples_per_shard)
    )
    keyed = decided["docs"] | "AssignShard" >> beam.Map(lambda doc, n: (shard_of(doc.key, n), doc), AsSingleton(n))
    drops = decided["drops"] | "DropsToShards" >> beam.Map(lambda drop, n: (shard_of(drop[0], n), drop[0]), AsSingleton(n))
    wanted = survivors | "ImageNeeds_m3w" >> beam.FlatMap(_kept_needs, AsSingleton(n), hot, min_images)

    def write(grouped: beam.PCollection) -> beam.PCollection:
        written = steps(grouped, "WriteShards", WriteDedupedM3WShardFn(output_dir, config.shards, config.filters), REJECTS,
                        main="shards", args=(hot,))
        on_rejects(written[REJECTS])
        return written.shards

    shipment.need_declared("m3w", keyed, wanted, write, {"drops": drops})


# ----------------------------------------------------------------------------- fetch status tables


class WriteStatusTableFn(beam.DoFn):
    """(bucket, rows) -> NAME-NNNNN.parquet, rows sorted by URL."""

    def __init__(self, output_dir: str, prefix: str, schema: str):
        self.output_dir = output_dir
        self.prefix = prefix
        self.schema = schema

    def process(self, element: tuple[int, Iterable[dict[str, Any]]]) -> Iterator[str]:
        bucket, rows = element
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["url"]), schema=load_arrow_schema(self.schema))
        name = f"{shard_name(self.prefix, bucket)}.parquet"
        fsio.write_bytes_atomic(fsio.join(self.output_dir, name), parquet_bytes(table))
        yield name


def write_status_table(rows: beam.PCollection, output_dir: str, label: str, rows_per_file: int = 1_000_000) -> beam.PCollection:
    """Fetch status rows (one per URL) -> fetch_status-NNNNN.parquet beside the shards, like img2dataset's."""
    n = rows | f"Count{label}" >> beam.combiners.Count.Globally() | f"Files{label}" >> beam.Map(n_shards, rows_per_file)
    return (
        rows
        | f"Bucket{label}" >> beam.Map(lambda r, n: (int(hashlib.sha1(r["url"].encode()).hexdigest()[:15], 16) % n, r), AsSingleton(n))
        | f"Group{label}" >> beam.GroupByKey()
        | f"Write{label}" >> beam.ParDo(WriteStatusTableFn(output_dir, STATUS_PREFIX, "fetch_status"))
    )


# ----------------------------------------------------------------------------- manifests


class WriteManifestFn(beam.DoFn):
    """Runs once per corpus, after every file it lists: writes manifest.json, removes files a previous build left."""

    def __init__(self, output_dir: str, inputs: list[str], config: BuildConfig, corpus: str, prefixes: tuple[str, ...]):
        self.output_dir = output_dir
        self.inputs = inputs
        self.config = config
        self.corpus = corpus
        self.prefixes = prefixes  # shard name prefixes this corpus owns in output_dir

    def process(self, _: Any, counts: dict, broken: list, written: list) -> Iterator[dict[str, Any]]:
        files: dict[str, list] = defaultdict(list)  # shards, fetch_status_files, other_files
        for kind, item in written:
            files[kind].append(item)
        shards, status_files, other_files = files["shards"], files["fetch_status_files"], files["other_files"]
        shard_files = [f for s in shards for f in (f"{s['name']}.tar", index_file(s["name"]), stats_file(s["name"]))]
        side = {SIZES_NAME: sizes_json(shards), CARD_NAME: dataset_card(self.corpus, self.config, [s["name"] for s in shards])}
        for name, data in side.items():
            fsio.write_bytes_atomic(fsio.join(self.output_dir, name), data)
        other_files = [*other_files, *side]
        stage_counts = {k: n for k, n in counts.items() if k[0] not in SHUFFLE_STAGES}
        manifest = build_manifest(stage_counts, shards, broken, self.inputs, self.config.to_dict(), self.corpus)
        manifest["shuffle_bytes"] = shuffle_block(counts)
        manifest["fetch_status_files"] = sorted(status_files)
        manifest["other_files"] = sorted(other_files)
        if self.corpus == "m3w" and REJECTS_NAME not in other_files and fsio.exists(fsio.join(self.output_dir, REJECTS_NAME)):
            fsio.delete_matching(fsio.join(self.output_dir, REJECTS_NAME), set())  # a previous build's sample
        keep = {fsio.join(self.output_dir, f) for f in [*shard_files, *status_files]}
        # This layout's shard files, and the indexes an older layout kept beside the tars.
        patterns = [f"{p}-*{end}" for p in self.prefixes for end in (".tar", ".parquet", "_stats.json")]
        patterns += [index_file(f"{p}-*") for p in self.prefixes]
        if status_files or self.config.fetch.enabled:
            patterns.append(f"{STATUS_PREFIX}-*.parquet")
        manifest["removed_stale_files"] = sorted(
            path.rsplit("/", 1)[-1] for pattern in patterns for path in fsio.delete_matching(fsio.join(self.output_dir, pattern), keep)
        )
        data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        fsio.write_bytes_atomic(fsio.join(self.output_dir, MANIFEST_NAME), data)
        yield manifest


def shuffle_block(counts: dict) -> dict[str, Any]:
    """The manifest's `shuffle_bytes`: payload bytes and elements entering each grouping of the
    build (a join lists each input as JOIN/INPUT), and their total."""
    groupings = sorted({label for (stage, label) in counts if stage in SHUFFLE_STAGES})
    by_grouping = {g: {"bytes": counts.get((SHUFFLE_BYTES, g), 0), "elements": counts.get((SHUFFLE_ELEMENTS, g), 0)} for g in groupings}
    return {"total_bytes": sum(g["bytes"] for g in by_grouping.values()), "by_grouping": by_grouping}


def _tagged(pcolls: list[beam.PCollection], kind: str, label: str) -> list[beam.PCollection]:
    return [p | f"{label}{i}" >> beam.Map(lambda item: (kind, item)) for i, p in enumerate(pcolls)]


def write_manifests(pipeline: beam.Pipeline, inputs: list[str], dirs: dict[str, str], config: BuildConfig,
                    corpora: dict[str, Corpus], counts: list[beam.PCollection], broken: beam.PCollection) -> list[beam.PCollection]:
    """One manifest per corpus folder. Every manifest holds all of the build's counts (one funnel, one run)."""
    all_counts = counts + [c for corpus in corpora.values() for c in corpus.counts]
    summed = (
        all_counts
        | "AllCounts" >> beam.Flatten()
        | "CountKey" >> beam.Map(lambda c: ((c.stage, c.outcome), c.n))
        | "SumCounts" >> beam.CombinePerKey(sum)
    )
    manifests = []
    for i, (name, out) in enumerate(dirs.items()):
        corpus = corpora[name]
        status_files = []
        if corpus.status_rows:
            rows = corpus.status_rows[0] if len(corpus.status_rows) == 1 else corpus.status_rows | f"FetchStatusRows{i}" >> beam.Flatten()
            status_files.append(write_status_table(rows, out, f"fetch_status{i or ''}"))
        written = (
            _tagged([corpus.shards], "shards", f"Shards_{name}")
            + _tagged(status_files, "fetch_status_files", f"StatusFiles_{name}")
            + _tagged(corpus.files, "other_files", f"OtherFiles_{name}")
        ) | f"Written_{name}" >> beam.Flatten()
        manifests.append(
            pipeline
            | f"ManifestTrigger_{name}" >> beam.Create([None])
            | f"WriteManifest_{name}"
            >> beam.ParDo(WriteManifestFn(out, inputs, config, name, corpus.prefixes), AsDict(summed), AsList(broken), AsList(written))
        )
    return manifests

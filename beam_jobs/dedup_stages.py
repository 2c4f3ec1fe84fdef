"""Corpus-scale dedup as Beam composite transforms over a PCollection of `Document`.

Each transform returns a dict of PCollections:
    "docs"    : the documents it keeps (possibly with images removed),
    "counts"  : `accounting.Count` elements, the same ones `m3w_job.count` emits (also as
                Beam metrics), under the transform's stage: in = kept + each drop reason;
    "rejects" : a bounded, deterministic sample of what it rejected (`filters.Reject`,
                the `reject_sample_size` smallest by key per stage and reason).

Memory stays bounded per worker: grouped values are small (ranks, keys, hashes) and
streamed in two passes (Beam iterables are re-iterable), hot image keys are counted with
a lifted CombinePerKey, and the decisions are joined back to the documents by key, so no
worker holds a corpus-sized set. (The hot-image side input holds only keys found in more
than `max_docs_per_image` documents: at most refs / max_docs_per_image of them.)

The single transforms (DedupUrls, DedupExactText, DedupNearText, DedupImagesInDocument,
RemoveHotImages, DedupImageSets) each join their decisions to the documents, i.e. each
document-level one moves the documents through a shuffle. `Dedup` runs all of them with
the same results but decides on small `DedupKeys` and signatures and joins the documents
once (see benchmarks/RESULTS.md for what that costs on the embedded runner).

Near-duplicate clusters are connected components computed by min-label propagation:
every node of a candidate edge starts with its own rank, each round takes the minimum over
itself and its neighbours (one CoGroupByKey + one CombinePerKey), for `cc_rounds` rounds.
Buckets link members to their preferred member (stars), so components are shallow and a
few rounds converge; a component wider than `cc_rounds` hops keeps more than one document,
never none (the component's preferred document always keeps its own label). Nodes whose
label still changed in the last round are counted in the Beam metric
`m3w.dedup_text_near_cc/changed-in-last-round`. We chose propagation over gathering the
pairs for one global union-find because the number of near-duplicate pairs grows with the
corpus (a third of CC pages), which one worker's memory does not.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList, TaggedOutput

from beam_jobs.counting import COUNTS, count
from m3w_pipeline.core.accounting import IN
from m3w_pipeline.core.config import DedupConfig
from m3w_pipeline.core.document import Document
from m3w_pipeline.filter import dedup as dd
from m3w_pipeline.filter.filters import KEPT, Reject

REJECTS = "rejects"


# ----------------------------------------------------------------------------- rejects


class SampleRejects(beam.PTransform):
    """PCollection[Reject] -> the `n` smallest (by key, url, detail) per (stage, reason): deterministic, bounded."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def expand(self, rejects: beam.PCollection) -> beam.PCollection:
        return (
            rejects
            | "ByReason" >> beam.Map(lambda r: ((r.stage, r.reason), r))
            | "Smallest" >> beam.combiners.Top.PerKey(self.n, key=lambda r: (r.key, r.url, r.detail), reverse=True)
            | "Flatten" >> beam.FlatMap(lambda kv: kv[1])
        )


def _outputs(result: Any, n_samples: int, label: str) -> dict[str, beam.PCollection]:
    return {"docs": result.docs, "counts": result[COUNTS], "rejects": result[REJECTS] | label >> SampleRejects(n_samples)}


# ----------------------------------------------------------------------------- decisions -> documents


class _ApplyDecisionsFn(beam.DoFn):
    """(doc key, {doc: [Document or DedupKeys], drop: [(reason, kept key)]}) -> the kept ones; counts every one."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, grouped = element
        drops = sorted(grouped["drop"])
        for doc in grouped["doc"]:
            yield count(self.stage, IN)
            if drops:
                reason, kept_key = drops[0]
                yield count(self.stage, reason)
                yield TaggedOutput(REJECTS, Reject(self.stage, reason, doc.key, doc.url, kept_key))
            else:
                yield count(self.stage, KEPT)
                yield doc


def _apply_decisions(docs: beam.PCollection, drops: beam.PCollection, stage: str, n_samples: int) -> dict[str, beam.PCollection]:
    """Join drop decisions (doc key, (reason, kept key)) back to the documents by key."""
    keyed = docs | "KeyByDoc" >> beam.Map(lambda d: (d.key, d))
    result = (
        {"doc": keyed, "drop": drops}
        | "JoinDecisions" >> beam.CoGroupByKey()
        | "Apply" >> beam.ParDo(_ApplyDecisionsFn(stage)).with_outputs(COUNTS, REJECTS, main="docs")
    )
    return _outputs(result, n_samples, "SampleRejects")


def _group_losers(element: tuple[str, Iterable[dd.Rank]], reason: str) -> Iterator[tuple[str, tuple[str, str]]]:
    """(group key, ranks) -> (dropped doc key, (reason, kept doc key)) for all but the preferred rank."""
    _, ranks = element
    best = min(ranks)
    for rank in ranks:
        if rank != best:
            yield rank[1], (reason, best[1])


def _keyed_rank(doc: Document, key_fn: Callable[[Document], Optional[str]]) -> Iterator[tuple[str, dd.Rank]]:
    k = key_fn(doc)
    if k is not None:
        yield k, dd.preference(doc)


class _DedupByKey(beam.PTransform):
    """Keep the preferred document (most recent, then smallest key) per value of `key_fn`."""

    def __init__(self, stage: str, reason: str, key_fn: Callable[[Document], Optional[str]], config: DedupConfig) -> None:
        super().__init__()
        self.stage, self.reason, self.key_fn, self.config = stage, reason, key_fn, config

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        drops = (
            docs
            | "GroupKey" >> beam.FlatMap(_keyed_rank, self.key_fn)
            | "Group" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(_group_losers, self.reason)
        )
        return _apply_decisions(docs, drops, self.stage, self.config.reject_sample_size)


class DedupUrls(_DedupByKey):
    """One document per normalised URL (`warc.normalize_url`): the most recent capture."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__(dd.URL_STAGE, dd.URL_REASON, dd.url_key, config)


class DedupExactText(_DedupByKey):
    """One document per normalised text (words, lower case)."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__(dd.EXACT_STAGE, dd.EXACT_REASON, dd.text_key, config)


class DedupImageSets(_DedupByKey):
    """One document per identical set of images (sha256, or URL when missing)."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__(dd.IMAGE_SET_STAGE, dd.IMAGE_SET_REASON, dd.image_set_key, config)


# ----------------------------------------------------------------------------- near-duplicate text


class _SignatureFn(beam.DoFn):
    """Document -> (key, (rank, signature bytes)); documents without words have none."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.hasher = dd.MinHasher(self.config)

    def process(self, doc: Document) -> Iterator[tuple[str, tuple[dd.Rank, bytes]]]:
        sig = dd.doc_signature(doc, self.hasher)
        if sig is not None:
            yield doc.key, (dd.preference(doc), sig.tobytes())


class _BandKeysFn(beam.DoFn):
    def __init__(self, config: DedupConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.hasher = dd.MinHasher(self.config)

    def process(self, element: tuple[str, tuple[dd.Rank, bytes]]) -> Iterator[tuple[str, dd.Rank]]:
        _, (rank, sig) = element
        for band_key in self.hasher.band_keys(np.frombuffer(sig, dtype=np.uint32)):
            yield band_key, rank


def _bucket_pairs(element: tuple[str, Iterable[dd.Rank]]) -> Iterator[tuple[dd.Rank, dd.Rank]]:
    yield from dd.bucket_pairs(element[1])


def _attach_member_signature(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[tuple[str, tuple[dd.Rank, dd.Rank, bytes]]]:
    """(member key, {pair: [(member, rep)], sig: [(rank, sig)]}) -> (rep key, (member, rep, member sig))."""
    _, grouped = element
    sigs = list(grouped["sig"])
    if not sigs:
        return
    sig = sigs[0][1]
    for member, rep in grouped["pair"]:
        yield rep[1], (member, rep, sig)


def _verify_against_rep(element: tuple[str, dict[str, Iterable[Any]]], min_jaccard: float) -> Iterator[tuple[dd.Rank, dd.Rank]]:
    """(rep key, {pair: [(member, rep, member sig)], sig: [(rank, rep sig)]}) -> verified edges."""
    _, grouped = element
    sigs = list(grouped["sig"])
    if not sigs:
        return
    rep_sig = np.frombuffer(sigs[0][1], dtype=np.uint32)
    for member, rep, member_sig in grouped["pair"]:
        if dd.estimated_jaccard(np.frombuffer(member_sig, dtype=np.uint32), rep_sig) >= min_jaccard:
            yield member, rep


def _both_directions(edge: tuple[dd.Rank, dd.Rank]) -> Iterator[tuple[dd.Rank, dd.Rank]]:
    u, v = edge
    yield u, v
    yield v, u


def _spread_label(element: tuple[dd.Rank, dict[str, Iterable[Any]]]) -> Iterator[tuple[dd.Rank, dd.Rank]]:
    """One propagation step: a node sends its label to itself and to each neighbour."""
    node, grouped = element
    label = min(grouped["label"], default=node)
    yield node, label
    for neighbour in grouped["adj"]:
        yield neighbour, label


class _CountChanged(beam.DoFn):
    def process(self, element: tuple[dd.Rank, dict[str, Iterable[Any]]]) -> Iterator[tuple[dd.Rank, dd.Rank]]:
        node, grouped = element
        before, after = min(grouped["before"]), min(grouped["after"])
        if before != after:
            Metrics.counter(f"m3w.{dd.NEAR_STAGE}_cc", "changed-in-last-round").inc()
        yield node, after


class ConnectedComponents(beam.PTransform):
    """PCollection[(u, v)] edges between ranks -> PCollection[(node, smallest rank of its component)].

    Min-label propagation for a fixed number of rounds; exact when every component's
    diameter is <= rounds (see the module docstring)."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = max(1, rounds)

    def expand(self, edges: beam.PCollection) -> beam.PCollection:
        adjacency = edges | "Adjacency" >> beam.FlatMap(_both_directions)
        labels = adjacency | "InitLabels" >> beam.Map(lambda kv: (kv[0], min(kv))) | "InitMin" >> beam.CombinePerKey(min)
        previous = labels
        for i in range(self.rounds):
            previous = labels
            labels = (
                {"label": labels, "adj": adjacency}
                | f"Round{i}Join" >> beam.CoGroupByKey()
                | f"Round{i}Spread" >> beam.FlatMap(_spread_label)
                | f"Round{i}Min" >> beam.CombinePerKey(min)
            )
        return (
            {"before": previous, "after": labels}
            | "CompareLastRound" >> beam.CoGroupByKey()
            | "CountChanged" >> beam.ParDo(_CountChanged())
        )


def _near_drop(element: tuple[dd.Rank, dd.Rank]) -> Iterator[tuple[str, tuple[str, str]]]:
    node, label = element
    if label != node:
        yield node[1], (dd.NEAR_REASON, label[1])


class _NearDrops(beam.PTransform):
    """PCollection[(doc key, (rank, signature bytes))] -> (dropped key, (reason, kept key))."""

    def __init__(self, config: DedupConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, sigs: beam.PCollection) -> beam.PCollection:
        pairs = (
            sigs
            | "BandKeys" >> beam.ParDo(_BandKeysFn(self.config))
            | "Buckets" >> beam.GroupByKey()
            | "BucketPairs" >> beam.FlatMap(_bucket_pairs)
            | "DistinctPairs" >> beam.Distinct()
        )
        with_member_sig = (
            {"pair": pairs | "ByMember" >> beam.Map(lambda p: (p[0][1], p)), "sig": sigs}
            | "JoinMemberSig" >> beam.CoGroupByKey()
            | "AttachMemberSig" >> beam.FlatMap(_attach_member_signature)
        )
        edges = (
            {"pair": with_member_sig, "sig": sigs}
            | "JoinRepSig" >> beam.CoGroupByKey()
            | "Verify" >> beam.FlatMap(_verify_against_rep, self.config.min_jaccard)
        )
        return edges | "Components" >> ConnectedComponents(self.config.cc_rounds) | "NearDrops" >> beam.FlatMap(_near_drop)


class DedupNearText(beam.PTransform):
    """Near-duplicate text by MinHash LSH (parameters and S-curve: `m3w_pipeline.filter.dedup`):

    signatures -> (band key, rank) -> GroupByKey per bucket -> (member, preferred member)
    pairs -> Distinct -> verified against the signatures (two joins by key, so only
    candidate pairs carry a signature) -> connected components -> all but each
    component's preferred document dropped."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__()
        self.config = config

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        drops = docs | "Signatures" >> beam.ParDo(_SignatureFn(self.config)) | "Near" >> _NearDrops(self.config)
        return _apply_decisions(docs, drops, dd.NEAR_STAGE, self.config.reject_sample_size)


# ----------------------------------------------------------------------------- images


def _emit_edit(edit: dd.ImageEdit) -> Iterator[Any]:
    for (stage, outcome), n in sorted(edit.counts.items()):
        yield count(stage, outcome, n)
    for reject in edit.rejects:
        yield TaggedOutput(REJECTS, reject)
    yield edit.doc


class _InDocumentImagesFn(beam.DoFn):
    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance

    def process(self, doc: Document) -> Iterator[Any]:
        yield from _emit_edit(dd.dedup_images_in_document(doc, self.max_distance))


class DedupImagesInDocument(beam.PTransform):
    """Within each document, drop later repeats of an image (same sha256, or phash distance <= max)."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__()
        self.config = config

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        result = docs | "InDocImages" >> beam.ParDo(_InDocumentImagesFn(self.config.max_phash_distance)).with_outputs(
            COUNTS, REJECTS, main="docs"
        )
        return _outputs(result, self.config.reject_sample_size, "SampleRejects")


class _RemoveHotFn(beam.DoFn):
    def setup(self) -> None:
        self._source: Optional[list] = None
        self._hot: frozenset[str] = frozenset()

    def process(self, doc: Document, hot: list) -> Iterator[Any]:
        if hot is not self._source:  # the side input is materialised once per bundle at most
            self._source, self._hot = hot, frozenset(hot)
        yield from _emit_edit(dd.remove_hot_images(doc, self._hot))


class RemoveHotImages(beam.PTransform):
    """Remove images whose URL or sha256 occurs in more than `max_docs_per_image` documents.

    Per document each key counts once; a CombinePerKey(sum) pre-aggregates on the map side
    (combiner lifting), so a logo on a million pages is a few partial sums per worker, not a
    million shuffled records. The hot keys reach every worker as a side input. A document
    left without images is the job's no-image filter's business, not this stage's.
    """

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__()
        self.config = config

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        limit = self.config.max_docs_per_image
        hot = (
            docs
            | "ImageKeys" >> beam.FlatMap(lambda d: [(k, 1) for k in sorted(dd.image_keys(d))])
            | "DocsPerKey" >> beam.CombinePerKey(sum)
            | "Hot" >> beam.Filter(lambda kv: kv[1] > limit)
            | "HotKeys" >> beam.Keys()
        )
        result = docs | "RemoveHot" >> beam.ParDo(_RemoveHotFn(), hot=AsList(hot)).with_outputs(COUNTS, REJECTS, main="docs")
        return _outputs(result, self.config.reject_sample_size, "SampleRejects")


# ----------------------------------------------------------------------------- all stages


def _rank_by(key_fn: Callable[[dd.DedupKeys], Optional[str]]) -> Callable[[dd.DedupKeys], Iterator[tuple[str, dd.Rank]]]:
    def ranked(keys: dd.DedupKeys) -> Iterator[tuple[str, dd.Rank]]:
        k = key_fn(keys)
        if k is not None:
            yield k, keys.rank

    return ranked


def _decide(keys: beam.PCollection, drops: beam.PCollection, stage: str, label: str) -> Any:
    """Survivors of one stage, counted under it: the stage's decisions joined to the small keys."""
    return (
        {"doc": keys | f"{label}KeyByDoc" >> beam.Map(lambda k: (k.key, k)), "drop": drops}
        | f"{label}Join" >> beam.CoGroupByKey()
        | f"{label}Apply" >> beam.ParDo(_ApplyDecisionsFn(stage)).with_outputs(COUNTS, REJECTS, main="docs")
    )


def _losers_by(keys: beam.PCollection, key_fn: Callable[[dd.DedupKeys], Optional[str]], reason: str, label: str) -> beam.PCollection:
    return (
        keys
        | f"{label}GroupKey" >> beam.FlatMap(_rank_by(key_fn))
        | f"{label}Group" >> beam.GroupByKey()
        | f"{label}Losers" >> beam.FlatMap(_group_losers, reason)
    )


class _ImageSetRankFn(beam.DoFn):
    """DedupKeys -> (image-set key after hot images leave, rank)."""

    def setup(self) -> None:
        self._source: Optional[list] = None
        self._hot: frozenset[str] = frozenset()

    def process(self, keys: dd.DedupKeys, hot: list) -> Iterator[tuple[str, dd.Rank]]:
        if hot is not self._source:
            self._source, self._hot = hot, frozenset(hot)
        k = dd.image_set_key_of(dd.without_hot(keys.images, self._hot))
        if k is not None:
            yield k, keys.rank


def _keep_undropped(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Document]:
    _, grouped = element
    if not list(grouped["drop"]):
        yield from grouped["doc"]


def _hot_keys(keys: beam.PCollection, limit: int) -> beam.PCollection:
    return (
        keys
        | "ImageKeys" >> beam.FlatMap(lambda k: [(key, 1) for key in sorted(dd.image_keys_of(k.images))])
        | "DocsPerKey" >> beam.CombinePerKey(sum)
        | "Hot" >> beam.Filter(lambda kv: kv[1] > limit)
        | "HotKeys" >> beam.Keys()
    )


class Dedup(beam.PTransform):
    """Every dedup stage in the order the build runs them, with the same results and counts as
    chaining the single transforms:

        images in a document -> URL -> exact text -> near text -> hot images -> image sets

    but the documents cross one shuffle only: the document-level decisions are made on
    `DedupKeys` (key, rank, URL/text/image keys: ~200 bytes) and MinHash signatures, each
    stage's survivors feeding the next, and all drops are joined to the documents once at the
    end. Hot images are counted after the text dedup, so re-captures of one page do not make
    its images look like boilerplate. Returns docs, counts and rejects of all stages."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__()
        self.config = config

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        c, n = self.config, self.config.reject_sample_size
        in_doc = docs | "ImagesInDocument" >> DedupImagesInDocument(c)
        docs = in_doc["docs"]
        keys = docs | "Keys" >> beam.Map(dd.dedup_keys)
        sigs = docs | "Signatures" >> beam.ParDo(_SignatureFn(c))

        url_drops = _losers_by(keys, lambda k: k.url_key, dd.URL_REASON, "Url")
        urls = _decide(keys, url_drops, dd.URL_STAGE, "Url")
        exact_drops = _losers_by(urls.docs, lambda k: k.text_key, dd.EXACT_REASON, "Exact")
        exact = _decide(urls.docs, exact_drops, dd.EXACT_STAGE, "Exact")
        surviving_sigs = (
            {"keep": exact.docs | "SurvivorKey" >> beam.Map(lambda k: (k.key, None)), "sig": sigs}
            | "JoinSurvivorSigs" >> beam.CoGroupByKey()
            | "SurvivorSigs" >> beam.FlatMap(lambda kv: [(kv[0], s) for s in kv[1]["sig"]] if list(kv[1]["keep"]) else [])
        )
        near_drops = surviving_sigs | "NearDrops" >> _NearDrops(c)
        near = _decide(exact.docs, near_drops, dd.NEAR_STAGE, "Near")
        hot = _hot_keys(near.docs, c.max_docs_per_image)
        set_drops = (
            near.docs
            | "SetGroupKey" >> beam.ParDo(_ImageSetRankFn(), hot=AsList(hot))
            | "SetGroup" >> beam.GroupByKey()
            | "SetLosers" >> beam.FlatMap(_group_losers, dd.IMAGE_SET_REASON)
        )
        sets = _decide(near.docs, set_drops, dd.IMAGE_SET_STAGE, "Set")

        all_drops = (url_drops, exact_drops, near_drops, set_drops) | "AllDrops" >> beam.Flatten()
        kept = (
            {"doc": docs | "KeyByDoc" >> beam.Map(lambda d: (d.key, d)), "drop": all_drops}
            | "JoinDocuments" >> beam.CoGroupByKey()
            | "KeepUndropped" >> beam.FlatMap(_keep_undropped)
        )
        # Documents dropped in several stages? No: each stage only sees the previous one's survivors.
        hot_removed = kept | "RemoveHot" >> beam.ParDo(_RemoveHotFn(), hot=AsList(hot)).with_outputs(COUNTS, REJECTS, main="docs")
        counts = [in_doc["counts"], urls[COUNTS], exact[COUNTS], near[COUNTS], sets[COUNTS], hot_removed[COUNTS]]
        rejects = (
            [urls[REJECTS], exact[REJECTS], near[REJECTS], sets[REJECTS], hot_removed[REJECTS]]
            | "DocRejects" >> beam.Flatten()
            | "SampleRejects" >> SampleRejects(n)
        )
        return {
            "docs": hot_removed.docs,
            "counts": counts | "AllCounts" >> beam.Flatten(),
            "rejects": (in_doc["rejects"], rejects) | "AllRejects" >> beam.Flatten(),
        }

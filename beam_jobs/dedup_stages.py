"""Corpus-scale dedup's decisions as one Beam composite, `DedupDecisions`, over a PCollection of `Document`:

    images in a document -> URL -> exact text -> near text -> hot image keys -> image sets

The keys, signatures and decisions are `m3w_pipeline.filter.dedup`'s; this module groups and
joins by key. `DedupDecisions` returns a dict of PCollections:
    "docs"      : the documents after in-document image dedup (the only step that edits them here),
    "drops"     : (dropped doc key, (reason, kept doc key)) from the four corpus stages,
    "survivors" : the `DedupKeys` of the documents no stage dropped,
    "hot"       : the image URL and sha256 keys found in more than `max_docs_per_image` documents,
    "counts"    : `accounting.Count` elements per stage: in = kept + each drop reason,
    "rejects"   : every rejected document and image (`accounting.Reject`), for the build's sample.

The documents (image metadata, never bytes: beam_jobs.image_bytes) cross no dedup join: the
document-level decisions are made on `DedupKeys` (key, rank, URL/text/image keys: ~200 bytes)
and MinHash signatures, each stage's survivors feeding the next, and the build applies them in
its M3W shard join (`beam_jobs.outputs.write_deduped_m3w_shards`): each document meets the drops
in its shard, and the writer keeps the undropped ones, removes their hot images and checks that
enough remain. Hot images are counted after the text dedup, so re-captures of one page do not
make its images look like boilerplate; image sets are compared without them. Memory stays bounded
per worker: grouped values are small (ranks, keys, hashes) and streamed in two passes (Beam
iterables are re-iterable), hot image keys are counted with a lifted CombinePerKey, and no worker
holds a corpus-sized set. (The hot-image side input holds only keys found in more than
`max_docs_per_image` documents: at most refs / max_docs_per_image.)

Near-duplicate clusters are connected components computed by min-label propagation
(`dedup.spread_label`): every node of a candidate edge starts with its own rank, each round
takes the minimum over itself and its neighbours (one CoGroupByKey + one CombinePerKey), for
`cc_rounds` rounds. Buckets link members to their preferred member (stars), so components are
shallow and a few rounds converge; a component wider than `cc_rounds` hops keeps more than one
document, never none (the component's preferred document always keeps its own label). Nodes
whose label still changed in the last round are counted in the Beam metric
`m3w.dedup_text_near_cc/changed-in-last-round`. We chose propagation over gathering the pairs
for one global union-find because the number of near-duplicate pairs grows with the corpus (a
third of CC pages), which one worker's memory does not.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList, TaggedOutput

from beam_jobs.counting import REJECTS, CountedSteps, CountingFn
from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import DedupConfig
from m3w_pipeline.core.document import Document
from m3w_pipeline.filter import dedup as dd

SIGNATURES = "signatures"


# ----------------------------------------------------------------------------- per document


class _ImagesInDocumentFn(CountingFn):
    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance

    def step(self, doc: Document, tally: Tally) -> Iterator[Document]:
        yield dd.dedup_images_in_document(doc, self.max_distance, tally)


class _KeysFn(beam.DoFn):
    """Document -> DedupKeys (main) and (key, (rank, signature bytes)) under SIGNATURES, from one
    pass over its words; documents without words have no signature."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.hasher = dd.MinHasher(self.config)

    def process(self, doc: Document) -> Iterator[Any]:
        tokens = dd.document_words(doc)
        keys = dd.dedup_keys(doc, tokens)
        yield keys
        sig = self.hasher.signature(tokens)
        if sig is not None:
            yield TaggedOutput(SIGNATURES, (doc.key, (keys.rank, sig.tobytes())))


class _ImageSetRankFn(beam.DoFn):
    """DedupKeys -> (image-set key after hot images leave, rank). The hot-key side input is held as a
    frozenset, rebuilt only when the runner hands a new list."""

    def setup(self) -> None:
        self._source: Optional[list] = None
        self._hot: frozenset[str] = frozenset()

    def process(self, keys: dd.DedupKeys, hot: list) -> Iterator[tuple[str, dd.Rank]]:
        if hot is not self._source:  # the side input is materialised once per bundle at most
            self._source, self._hot = hot, frozenset(hot)
        ranked = keys.image_set_rank(self._hot)
        if ranked is not None:
            yield ranked


# ----------------------------------------------------------------------------- decisions


class _SurvivorsFn(CountingFn):
    """(doc key, {doc: [DedupKeys], drop: [(reason, kept key)]}) -> the DedupKeys that survive `stage`."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def step(self, element: tuple[str, dict[str, Iterable[Any]]], tally: Tally) -> Iterator[dd.DedupKeys]:
        _, grouped = element
        drops = list(grouped["drop"])
        for keys in grouped["doc"]:
            if dd.survives(keys, drops, self.stage, tally):
                yield keys


def _ranked(keys: dd.DedupKeys, key_fn: Callable[[dd.DedupKeys], Optional[str]]) -> Iterator[tuple[str, dd.Rank]]:
    k = key_fn(keys)
    if k is not None:
        yield k, keys.rank


def _losers(steps: CountedSteps, ranked: beam.PCollection, reason: str, label: str) -> beam.PCollection:
    """(group key, rank) -> (dropped doc key, (reason, kept doc key)) for all but each group's preferred."""
    return steps.group(ranked, f"{label}Group") | f"{label}Losers" >> beam.FlatMap(lambda kv: dd.group_losers(kv[1], reason))


def _survivors(steps: CountedSteps, keys: beam.PCollection, drops: beam.PCollection, stage: str, label: str) -> Any:
    """One stage's survivors, counted under it: its drop decisions joined to the small keys."""
    joined = steps.cogroup({"doc": keys | f"{label}KeyByDoc" >> beam.Map(lambda k: (k.key, k)), "drop": drops}, f"{label}Join")
    return steps(joined, f"{label}Apply", _SurvivorsFn(stage), REJECTS, main="keys")


def hot_image_keys(keys: beam.PCollection, limit: int) -> beam.PCollection:
    """DedupKeys -> the image URL and sha256 keys found in more than `limit` documents (counted once per document)."""
    return (
        keys
        | "ImageKeys" >> beam.FlatMap(lambda k: [(key, 1) for key in sorted(dd.image_keys(k.images))])
        | "DocsPerKey" >> beam.CombinePerKey(sum)
        | "Hot" >> beam.Filter(lambda kv: kv[1] > limit)
        | "HotKeys" >> beam.Keys()
    )


# ----------------------------------------------------------------------------- near-duplicate text


class _BandKeysFn(beam.DoFn):
    def __init__(self, config: DedupConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.hasher = dd.MinHasher(self.config)

    def process(self, element: tuple[str, tuple[dd.Rank, bytes]]) -> Iterator[tuple[str, dd.Rank]]:
        _, (rank, sig) = element
        for band_key in self.hasher.band_keys(np.frombuffer(sig, dtype=np.uint32)):
            yield band_key, rank


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
    diameter is <= rounds (see the module docstring). `steps` measures its joins (a build's dedup passes its own)."""

    def __init__(self, rounds: int, steps: Optional[CountedSteps] = None) -> None:
        super().__init__()
        self.rounds = max(1, rounds)
        self.steps = steps or CountedSteps()

    def expand(self, edges: beam.PCollection) -> beam.PCollection:
        adjacency = edges | "Adjacency" >> beam.FlatMap(_both_directions)
        labels = adjacency | "InitLabels" >> beam.Map(lambda kv: (kv[0], min(kv))) | "InitMin" >> beam.CombinePerKey(min)
        previous = labels
        for i in range(self.rounds):
            previous = labels
            labels = (
                self.steps.cogroup({"label": labels, "adj": adjacency}, f"NearRound{i}Join")
                | f"Round{i}Spread" >> beam.FlatMap(lambda kv: dd.spread_label(kv[0], kv[1]["label"], kv[1]["adj"]))
                | f"Round{i}Min" >> beam.CombinePerKey(min)
            )
        return (
            self.steps.cogroup({"before": previous, "after": labels}, "NearCompareLastRound")
            | "CountChanged" >> beam.ParDo(_CountChanged())
        )


class NearDuplicates(beam.PTransform):
    """PCollection[(doc key, (rank, signature bytes))] -> (dropped key, (near-duplicate-text, kept key)).

    signatures -> (band key, rank) -> GroupByKey per bucket -> (member, preferred member) pairs
    -> Distinct -> verified against the signatures (two joins by key, so only candidate pairs
    carry a signature) -> connected components -> all but each component's preferred document.
    `steps` measures its groupings (a build's dedup passes its own)."""

    def __init__(self, config: DedupConfig, steps: Optional[CountedSteps] = None) -> None:
        super().__init__()
        self.config = config
        self.steps = steps or CountedSteps()

    def expand(self, sigs: beam.PCollection) -> beam.PCollection:
        steps = self.steps
        band_keys = sigs | "BandKeys" >> beam.ParDo(_BandKeysFn(self.config))
        bucket_pairs = steps.group(band_keys, "NearBuckets") | "BucketPairs" >> beam.FlatMap(lambda kv: dd.bucket_pairs(kv[1]))
        pairs = steps.distinct(bucket_pairs, "NearDistinctPairs")
        with_member_sig = (
            steps.cogroup({"pair": pairs | "ByMember" >> beam.Map(lambda p: (p[0][1], p)), "sig": sigs}, "NearJoinMemberSig")
            | "AttachMemberSig" >> beam.FlatMap(_attach_member_signature)
        )
        edges = (
            steps.cogroup({"pair": with_member_sig, "sig": sigs}, "NearJoinRepSig")
            | "Verify" >> beam.FlatMap(_verify_against_rep, self.config.min_jaccard)
        )
        components = edges | "Components" >> ConnectedComponents(self.config.cc_rounds, steps)
        return components | "NearDrops" >> beam.FlatMap(lambda kv: dd.near_drop(*kv))


# ----------------------------------------------------------------------------- all stages


class DedupDecisions(beam.PTransform):
    """Every dedup decision, made on the small keys: the documents after in-document dedup, the
    document drops of the four corpus stages, the keys that survived them, and the hot image keys.
    The drops meet the documents in the build's M3W shard join (beam_jobs.outputs.write_deduped_m3w_shards),
    which also removes the hot images, so documents cross one shuffle, not two."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        super().__init__()
        self.config = config

    def expand(self, docs: beam.PCollection) -> dict[str, Any]:
        c, steps = self.config, CountedSteps()
        in_doc = steps(docs, "ImagesInDocument", _ImagesInDocumentFn(c.max_phash_distance), REJECTS, main="docs")
        keyed = in_doc.docs | "KeysAndSignatures" >> beam.ParDo(_KeysFn(c)).with_outputs(SIGNATURES, main="keys")
        keys, sigs = keyed.keys, keyed[SIGNATURES]

        url_drops = _losers(steps, keys | "UrlKey" >> beam.FlatMap(_ranked, lambda k: k.url_key), dd.URL_REASON, "Url")
        urls = _survivors(steps, keys, url_drops, dd.URL_STAGE, "Url")
        exact_drops = _losers(steps, urls.keys | "ExactKey" >> beam.FlatMap(_ranked, lambda k: k.text_key), dd.EXACT_REASON, "Exact")
        exact = _survivors(steps, urls.keys, exact_drops, dd.EXACT_STAGE, "Exact")
        surviving_sigs = (
            steps.cogroup({"keep": exact.keys | "SurvivorKey" >> beam.Map(lambda k: (k.key, None)), "sig": sigs}, "JoinSurvivorSigs")
            | "SurvivorSigs" >> beam.FlatMap(lambda kv: [(kv[0], s) for s in kv[1]["sig"]] if list(kv[1]["keep"]) else [])
        )
        near_drops = surviving_sigs | "NearDrops" >> NearDuplicates(c, steps)
        near = _survivors(steps, exact.keys, near_drops, dd.NEAR_STAGE, "Near")
        hot = hot_image_keys(near.keys, c.max_docs_per_image)
        set_ranks = near.keys | "SetKey" >> beam.ParDo(_ImageSetRankFn(), AsList(hot))
        set_drops = _losers(steps, set_ranks, dd.IMAGE_SET_REASON, "Set")
        sets = _survivors(steps, near.keys, set_drops, dd.IMAGE_SET_STAGE, "Set")
        # Each stage only sees the previous one's survivors, so a document is dropped at most once.
        return {
            "docs": in_doc.docs,
            "drops": (url_drops, exact_drops, near_drops, set_drops) | "AllDrops" >> beam.Flatten(),
            "survivors": sets.keys,
            "hot": hot,
            "counts": steps.counts,
            "rejects": [step[REJECTS] for step in (in_doc, urls, exact, near, sets)],
        }


"""Dedup: planted duplicates found exactly by the build's one path: `DedupDecisions` (the Beam
stages over the pure keys, signatures and decisions of m3w_pipeline/filter/dedup.py), applied by
the build's M3W shard join (`beam_jobs.outputs.write_deduped_m3w_shards`), whose shards are read
back by the real reader.

Near duplicates are planted at known shingle Jaccard: a base of N distinct-ish words and
copies whose last m words are replaced by new ones. With shingle size k, T = N - k + 1
shingles per text and m of them changed, J = (T - m) / (T + m); T = 741 gives
J = 0.95 (m = 19), 0.9 (m = 39) and 0.5 (m = 247) exactly (checked below).
"""
from __future__ import annotations

import hashlib
import pickle
import random
from collections import Counter
from dataclasses import replace
from typing import Optional

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that

from beam_jobs import dedup_stages as ds
from beam_jobs.counting import SHUFFLE_BYTES, SHUFFLE_ELEMENTS, SHUFFLE_STAGES, CountedSteps, SampleRejects
from beam_jobs.image_bytes import ImageShipment
from beam_jobs.outputs import write_deduped_m3w_shards
from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import BuildConfig, DedupConfig, ShardConfig
from m3w_pipeline.core.document import DocImage, Document, DocVideo, words
from m3w_pipeline.core.nodes import ImageRef, VideoRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.filter import dedup as dd
from m3w_pipeline.inspect.corpus import iter_m3w_documents, open_corpus
from m3w_pipeline.media.images import ProcessedImage

CONFIG = DedupConfig()
K = CONFIG.shingle_size
T = 741
N_WORDS = T + K - 1


# ----------------------------------------------------------------------------- builders


def image_bytes(sha: str) -> bytes:
    """The processed bytes of the image with this sha256 (they travel apart from the documents)."""
    return f"jpeg bytes of {sha}".encode()


def image(url: str, sha: Optional[str] = None, phash: Optional[str] = None, side: int = 200) -> DocImage:
    """A resolved image as dedup sees it: metadata, its bytes emptied (beam_jobs.image_bytes); a
    missing one without sha. Distinct sha256s get unrelated phashes."""
    ref = ImageRef(url)
    if sha is None:
        return DocImage(ref, "missing")
    phash = phash or hashlib.blake2b(sha.encode(), digest_size=8).hexdigest()
    processed = ProcessedImage(b"", "jpg", side, side, side, side, "JPEG", len(image_bytes(sha)), sha, phash)
    return DocImage(ref, "ok", processed)


def key_of(name: str) -> str:
    """A readable name as a document key: hex like the build's keys (shards are chosen from them),
    and sorted like the name, so "smallest key" ties break as the names read."""
    return name.encode().hex()


def name_of(key: str) -> str:
    return bytes.fromhex(key).decode()


def make_doc(name: str, text: str, url: Optional[str] = None, date: str = "2024-01-01T00:00:00Z", images: tuple = ()) -> Document:
    url = url or f"https://site.example/{name}"
    doc = Document(key_of(name), url, "site.example", None, "en", Provenance("f.warc.gz", 0, 0, f"<urn:{name}>", date))
    doc.texts.append(text)
    doc.images.append(None)
    for im in images:
        doc.texts.append(None)
        doc.images.append(im)
    return doc


def random_words(rng: random.Random, n: int, prefix: str) -> list[str]:
    return [f"{prefix}{rng.randrange(10**6):06d}" for _ in range(n)]


def edited(base: list[str], m: int, rng: random.Random, prefix: str) -> list[str]:
    return base[: len(base) - m] + random_words(rng, m, prefix)


def planted_corpus() -> tuple[list[Document], dict[str, float]]:
    """Family A: base + copies at J 0.95, 0.9, 0.5. Family B: an exact copy (case and
    punctuation differ). 30 unrelated documents. Dates make the newest member known."""
    rng = random.Random(3)
    base = random_words(rng, N_WORDS, "a")
    docs = [
        make_doc("a-base", " ".join(base), date="2024-03-01T00:00:00Z"),
        make_doc("a-095", " ".join(edited(base, 19, rng, "e")), date="2024-05-01T00:00:00Z"),  # newest of A
        make_doc("a-090", " ".join(edited(base, 39, rng, "f")), date="2024-02-01T00:00:00Z"),
        make_doc("a-050", " ".join(edited(base, 247, rng, "g")), date="2024-06-01T00:00:00Z"),
    ]
    b_words = random_words(rng, 300, "b")
    docs.append(make_doc("b-one", " ".join(b_words), date="2024-01-01T00:00:00Z"))
    docs.append(make_doc("b-two", ", ".join(w.upper() for w in b_words) + ".", date="2024-01-01T00:00:00Z"))  # tie: smallest key kept
    for i in range(30):
        docs.append(make_doc(f"u-{i:02d}", " ".join(random_words(rng, 200 + i, "u"))))
    texts = {name_of(d.key): d.texts[0] for d in docs}
    hasher = dd.MinHasher(CONFIG)
    jaccard = {k: shingle_jaccard(texts["a-base"], texts[k], hasher) for k in ("a-095", "a-090", "a-050")}
    return docs, jaccard


def shingle_jaccard(text_a: str, text_b: str, hasher: dd.MinHasher) -> float:
    """Exact Jaccard of the two texts' shingle sets: what MinHash estimates."""
    a, b = set(hasher.shingle_hashes(words(text_a)).tolist()), set(hasher.shingle_hashes(words(text_b)).tolist())
    return len(a & b) / len(a | b) if a | b else 0.0


def signature(doc: Document, hasher: dd.MinHasher) -> np.ndarray:
    return hasher.signature(dd.document_words(doc))


# Each cluster's newest member is kept; the others are dropped as near-duplicates of it.
NEAR_DROPS = {"a-base": "a-095", "a-090": "a-095", "b-two": "b-one"}


def named(drops) -> list[tuple[str, tuple[str, str]]]:
    """(dropped key, (reason, kept key)) decisions with the keys as names."""
    return [(name_of(dropped), (reason, name_of(kept))) for dropped, (reason, kept) in drops]


def url_corpus() -> list[Document]:
    rng = random.Random(5)
    mk = lambda key, url, date: make_doc(key, " ".join(random_words(rng, 50, "w")), url=url, date=date)  # noqa: E731
    return [
        mk("p-old", "https://News.example.com/story?id=1#top", "2023-01-01T00:00:00Z"),
        mk("p-new", "https://news.example.com:443/story?id=1", "2024-07-01T12:00:00Z"),
        mk("p-mid", "https://news.example.com/story?id=1", "2024-07-01T11:59:59.5Z"),
        mk("q-z", "https://other.example.org/a", "2024-01-01T00:00:00Z"),
        mk("q-a", "https://other.example.org/a", "2024-01-01T00:00:00Z"),  # same date: smallest key kept
        mk("r-only", "https://other.example.org/b", "2020-01-01T00:00:00Z"),
    ]


LOGO = "https://cdn.example.com/static/brand.png"  # not on the URL blocklist: hot-key removal must find it


def image_corpus() -> list[Document]:
    """15 pages share one logo (by URL); 12 share a banner re-hosted under different URLs (same
    sha256); 3 pages share a photo (below the limit); two pages have the same image set."""
    rng = random.Random(9)
    docs = []
    for i in range(15):
        ims = [image(LOGO, "logo-sha"), image(f"https://img.example.com/p{i}.jpg", f"photo-{i}")]
        if i < 12:
            ims.append(image(f"https://mirror{i}.example.net/banner.jpg", "banner-sha"))
        if i < 3:
            ims.append(image("https://img.example.com/shared.jpg", "shared-sha"))
        docs.append(make_doc(f"img-{i:02d}", " ".join(random_words(rng, 40, "i")), images=tuple(ims)))
    set_a = (image("https://x.example/1.jpg", "s1"), image("https://x.example/2.jpg", "s2"))
    set_b = (image("https://y.example/2.jpg", "s2"), image("https://y.example/1.jpg", "s1"))  # same sha256 set, other URLs and order
    docs.append(make_doc("set-old", "one text here", images=set_a, date="2022-01-01T00:00:00Z"))
    docs.append(make_doc("set-new", "another text", images=set_b, date="2023-01-01T00:00:00Z"))
    docs.append(make_doc("set-sub", "third text", images=set_a[:1], date="2024-01-01T00:00:00Z"))  # a subset: not a duplicate
    return docs


# ----------------------------------------------------------------------------- pure functions


def test_capture_time_sorts_like_the_instant():
    dates = ["", "20080430204825", "2023-12-31T23:59:59Z", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.5Z"]
    assert [dd.capture_time(d) for d in dates] == sorted(dd.capture_time(d) for d in dates)
    assert dd.capture_time("") == 0 and len({dd.capture_time(d) for d in dates}) == len(dates)


def test_planted_copies_have_the_intended_jaccard_and_minhash_estimates_it():
    docs, jaccard = planted_corpus()
    assert jaccard == pytest.approx({"a-095": 0.95, "a-090": 0.9, "a-050": 0.5}, abs=1e-9)
    hasher = dd.MinHasher(CONFIG)
    sig = {name_of(d.key): signature(d, hasher) for d in docs}
    for key, j in jaccard.items():
        # std of the estimate: sqrt(J (1 - J) / num_perm) <= 0.045
        assert abs(dd.estimated_jaccard(sig["a-base"], sig[key]) - j) < 0.12
    assert sig["a-base"].dtype == np.uint32 and sig["a-base"].shape == (CONFIG.num_perm,)
    # Same seed, same signature; another seed, another one.
    assert np.array_equal(signature(docs[0], dd.MinHasher(CONFIG)), sig["a-base"])
    assert not np.array_equal(signature(docs[0], dd.MinHasher(replace(CONFIG, seed=2))), sig["a-base"])


def test_lsh_s_curve_is_documented():
    b, r = CONFIG.bands, CONFIG.rows
    p = lambda s: 1 - (1 - s**r) ** b  # noqa: E731
    print(f"\nLSH {b} bands x {r} rows: midpoint {(1 / b) ** (1 / r):.3f}; "
          f"P(candidate) s=0.5 {p(0.5):.3f}, 0.8 {p(0.8):.3f}, 0.9 {p(0.9):.4f}, 0.95 {p(0.95):.5f}")
    assert p(0.9) > 0.999 and p(0.5) < 0.1 and CONFIG.min_jaccard == 0.8


def test_exact_text_key_ignores_case_punctuation_and_whitespace_only():
    docs, _ = planted_corpus()
    keys = {name_of(d.key): dd.dedup_keys(d, dd.document_words(d)).text_key for d in docs}
    assert keys["b-one"] == keys["b-two"] and len(set(keys.values())) == len(docs) - 1


def test_group_losers_keep_the_most_recent_capture_then_the_smallest_key():
    ranks = [dd.preference(d) for d in url_corpus()[:3]]  # one URL: old, new, mid-2024
    assert sorted(named(dd.group_losers(ranks, "duplicate-url"))) == [("p-mid", ("duplicate-url", "p-new")), ("p-old", ("duplicate-url", "p-new"))]
    tie = [dd.preference(d) for d in url_corpus()[3:5]]  # same date
    assert named(dd.group_losers(tie, "duplicate-url")) == [("q-z", ("duplicate-url", "q-a"))]


def test_images_in_a_document_later_exact_and_perceptual_repeats_dropped_and_videos_stay_in_place():
    doc = make_doc(
        "d",
        "intro",
        images=(
            image("https://a/1.jpg", "s1", "ffff000000000000"),
            image("https://a/2.jpg", "s1", "0000ffff00000000"),  # same bytes as 1
            image("https://a/3.jpg", "s3", "ffff000000000007"),  # phash 3 bits from 1
            image("https://a/4.jpg", "s4", "ffff0000000000ff"),  # 8 bits from 1: kept
            image("https://a/5.jpg"),  # missing: not compared
        ),
    )
    doc.texts.append("outro")
    doc.images.append(None)
    doc.videos.append(DocVideo(6, VideoRef(["https://a/v.mp4"])))  # before "outro"
    tally = Tally()
    out = dd.dedup_images_in_document(doc, CONFIG.max_phash_distance, tally)
    assert [im.ref.url for im in out.images if im] == ["https://a/1.jpg", "https://a/4.jpg", "https://a/5.jpg"]
    assert tally.counts == {
        ("images_in_document", "in"): 4,
        ("images_in_document", "kept"): 2,
        ("images_in_document", "duplicate-sha256"): 1,
        ("images_in_document", "duplicate-phash"): 1,
    }
    assert len(out.texts) == len(out.images) == 5  # 7 positions, 2 images gone
    assert all((t is None) != (i is None) for t, i in zip(out.texts, out.images))
    assert out.texts[out.videos[0].position] == "outro"
    assert [(r.reason, r.url) for r in tally.rejects] == [("duplicate-sha256", "https://a/2.jpg"), ("duplicate-phash", "https://a/3.jpg")]


def test_hot_images_are_removed_by_url_first_then_by_sha256():
    hot = {f"url:{LOGO}", "sha256:logo-sha", "sha256:banner-sha"}
    tally = Tally()
    edited_docs = [dd.remove_hot_images(d, hot, tally) for d in image_corpus()]
    urls = [im.ref.url for d in edited_docs for im in d.images if im]
    assert LOGO not in urls and not any("banner" in u for u in urls)
    assert urls.count("https://img.example.com/shared.jpg") == 3
    assert tally.counts == {("images_hot", "in"): 50, ("images_hot", "kept"): 23, ("images_hot", "hot-url"): 15, ("images_hot", "hot-sha256"): 12}


def test_image_set_key_ignores_urls_and_order_but_not_subsets():
    ids = {name_of(d.key): dd.image_ids(d) for d in image_corpus()}
    assert dd.image_set_key(ids["set-old"]) == dd.image_set_key(ids["set-new"]) != dd.image_set_key(ids["set-sub"])
    assert dd.image_set_key(()) is None  # documents without images are not duplicates of each other


# ----------------------------------------------------------------------------- Beam: the build's path

# 17 documents are written (the image corpus's survivors), over 4 shards, so drops must find their document's shard.
BUILD = BuildConfig(dedup=CONFIG, shards=ShardConfig(samples_per_shard=5))
IMAGE_PAGES = [f"img-{i:02d}" for i in range(15)] + ["set-new", "set-sub"]  # the survivors with an image left after hot removal


def _collect(pcoll: beam.PCollection, path, label: str) -> None:
    """Every element of `pcoll`, pickled to `path` as one list (the embedded runner runs in this process)."""
    def write(items):
        path.write_bytes(pickle.dumps(sorted(items, key=repr)))

    _ = pcoll | f"{label}List" >> beam.combiners.ToList() | f"{label}Write" >> beam.Map(write)


@pytest.fixture(scope="module")
def dedup_run(tmp_path_factory) -> dict:
    """One pipeline. The build's M3W dedup path over the three planted corpora together:
    `DedupDecisions`, then `write_deduped_m3w_shards`, where the documents meet the drops in the
    shard join, the writer removes the hot images and checks that enough remain, and the image
    bytes ship by sha256. Beside it, `NearDuplicates` on the planted signatures (default and
    stricter threshold). Returns each output as a list, and under "written" the documents read
    back from the shards by the real reader."""
    tmp = tmp_path_factory.mktemp("dedup")
    out, collected = tmp / "m3w", tmp / "collected"
    collected.mkdir()
    near_docs, _ = planted_corpus()
    everything = near_docs + url_corpus() + image_corpus()
    shas = sorted({im.image.sha256 for d in everything for im in d.images if im is not None and im.image is not None})
    hasher = dd.MinHasher(CONFIG)
    sigs = {d.key: (d.key, (dd.preference(d), signature(d, hasher).tobytes())) for d in near_docs}
    with beam.Pipeline(runner="FnApiRunner") as p:
        decided = p | "Docs" >> beam.Create(everything) | "Dedup" >> ds.DedupDecisions(CONFIG)
        steps, writer_rejects = CountedSteps(), []
        shipment = ImageShipment(steps, p | "ImageBytes" >> beam.Create([(sha, image_bytes(sha)) for sha in shas]))
        write_deduped_m3w_shards(decided, str(out), BUILD, shipment, steps, writer_rejects.append)
        shards = shipment.ship()["m3w"]
        rejects = [*decided["rejects"], *writer_rejects] | "AllRejects" >> beam.Flatten()
        for name in ("drops", "survivors", "hot"):
            _collect(decided[name], collected / name, name.title())
        _collect(shards, collected / "shards", "Shards")
        _collect([*decided["counts"], *steps.counts] | "AllCounts" >> beam.Flatten(), collected / "counts", "Counts")
        _collect(rejects, collected / "rejects", "Rejects")
        _collect(rejects | "Sample" >> SampleRejects(2), collected / "sample", "Sample")
        planted = p | "PlantedDocs" >> beam.Create(near_docs) | "Signatures" >> beam.Map(lambda d: sigs[d.key])
        _collect(planted | "Near" >> ds.NearDuplicates(CONFIG), collected / "near", "Near")
        _collect(planted | "Strict" >> ds.NearDuplicates(replace(CONFIG, min_jaccard=0.97)), collected / "strict", "Strict")
    run = {f.name: pickle.loads(f.read_bytes()) for f in collected.iterdir()}
    run["written"] = [doc for shard in open_corpus(str(out), kind="m3w").shards for doc in iter_m3w_documents(shard)]
    run["everything"] = [name_of(d.key) for d in everything]
    return run


def test_near_duplicate_clusters_are_exactly_the_planted_ones(dedup_run):
    """Family A keeps its newest member (J 0.95 and 0.9 join it, 0.5 does not); family B its smallest key."""
    assert dict(named(dedup_run["near"])) == {k: ("near-duplicate-text", kept) for k, kept in NEAR_DROPS.items()}


def test_near_dedup_with_a_stricter_threshold_changes_the_clusters(dedup_run):
    """The test can fail: a stricter min_jaccard splits family A."""
    assert dict(named(dedup_run["strict"])) == {"b-two": ("near-duplicate-text", "b-one")}


def test_a_logo_and_a_rehosted_banner_are_hot_a_photo_on_three_pages_is_not(dedup_run):
    assert sorted(dedup_run["hot"]) == sorted([f"url:{LOGO}", "sha256:logo-sha", "sha256:banner-sha"])


DROPS = {  # dropped -> (stage, reason, kept)
    "p-old": ("dedup_url", "duplicate-url", "p-new"),
    "p-mid": ("dedup_url", "duplicate-url", "p-new"),
    "q-z": ("dedup_url", "duplicate-url", "q-a"),
    "b-two": ("dedup_text_exact", "duplicate-text", "b-one"),
    "a-base": ("dedup_text_near", "near-duplicate-text", "a-095"),
    "a-090": ("dedup_text_near", "near-duplicate-text", "a-095"),
    "set-old": ("dedup_image_sets", "duplicate-image-set", "set-new"),
}


def test_dedup_drops_exactly_the_planted_duplicates_each_in_favour_of_the_right_document(dedup_run):
    """URL: the most recent capture, then the smallest key; exact text: case, punctuation and
    whitespace ignored; near text: the planted clusters (b-two already left as an exact copy);
    image sets: the most recent of two pages with the same images under other URLs. The drops the
    shard join applies, the rejects recorded for them and the surviving keys agree."""
    assert dict(named(dedup_run["drops"])) == {k: (reason, kept) for k, (_, reason, kept) in DROPS.items()}
    rejects = {(r.stage, r.reason, name_of(r.key), name_of(r.detail)) for r in dedup_run["rejects"] if r.stage.startswith("dedup_")}
    assert rejects == {(stage, reason, k, kept) for k, (stage, reason, kept) in DROPS.items()}
    survivors = [name_of(k.key) for k in dedup_run["survivors"]]
    assert sorted(survivors) == sorted(k for k in dedup_run["everything"] if k not in DROPS)


def test_the_shard_join_writes_the_survivors_that_keep_an_image_and_counts_the_rest(dedup_run):
    """Every survivor reaches the writer and no dropped document does: the ones with an image left
    after the hot ones leave are written (with their bytes, shipped by sha256), the others are
    post_dedup rejects."""
    written = sorted(name_of(d.key) for d in dedup_run["written"])
    assert written == IMAGE_PAGES
    assert len({d.shard for d in dedup_run["written"]}) > 1  # drops met their documents in more than one shard
    no_image = sorted(name_of(r.key) for r in dedup_run["rejects"] if (r.stage, r.reason) == ("post_dedup", "no-image"))
    assert sorted(written + no_image) == sorted(k for k in dedup_run["everything"] if k not in DROPS)
    stored = [(d.image_bytes(i), im["sha256"]) for d in dedup_run["written"] for i, im in enumerate(d.doc["images"]) if im]
    assert len(stored) == 21 and all(data == image_bytes(sha) for data, sha in stored)
    infos = dedup_run["shards"]
    assert sum(s["samples"] for s in infos) == len(IMAGE_PAGES) and sum(s["images"] for s in infos) == 21


def test_dedup_removes_the_logo_and_banner_from_every_page(dedup_run):
    hot = Counter((r.reason, r.url) for r in dedup_run["rejects"] if r.stage == "images_hot")
    assert hot == {("hot-url", LOGO): 15, **{("hot-sha256", f"https://mirror{i}.example.net/banner.jpg"): 1 for i in range(12)}}
    urls = [im["url"] for d in dedup_run["written"] for im in d.doc["images"] if im]
    assert LOGO not in urls and not any("banner" in u for u in urls)
    assert urls.count("https://img.example.com/shared.jpg") == 3


def test_each_dedup_stage_reads_what_the_previous_one_kept(dedup_run):
    """Each stage reads what the previous one kept, and in = kept + drops; every document after
    in-document dedup crosses the shard join, and so does every drop."""
    got: dict = {}
    shuffled: dict = {}  # the bytes entering each grouping (the manifest's shuffle_bytes)
    for c in dedup_run["counts"]:
        into = shuffled if c.stage in SHUFFLE_STAGES else got
        into[(c.stage, c.outcome)] = into.get((c.stage, c.outcome), 0) + c.n
    assert shuffled[(SHUFFLE_ELEMENTS, "ShardWithBytes_m3w/samples")] == 60 and shuffled[(SHUFFLE_BYTES, "ShardWithBytes_m3w/samples")] > 0
    assert shuffled[(SHUFFLE_ELEMENTS, "ShardWithBytes_m3w/drops")] == len(DROPS)
    expected = {
        ("dedup_url", "in"): 60, ("dedup_url", "kept"): 57, ("dedup_url", "duplicate-url"): 3,
        ("dedup_text_exact", "in"): 57, ("dedup_text_exact", "kept"): 56, ("dedup_text_exact", "duplicate-text"): 1,
        ("dedup_text_near", "in"): 56, ("dedup_text_near", "kept"): 54, ("dedup_text_near", "near-duplicate-text"): 2,
        ("dedup_image_sets", "in"): 54, ("dedup_image_sets", "kept"): 53, ("dedup_image_sets", "duplicate-image-set"): 1,
        ("images_in_document", "in"): 50, ("images_in_document", "kept"): 50,
        ("images_hot", "in"): 48, ("images_hot", "kept"): 21, ("images_hot", "hot-url"): 15, ("images_hot", "hot-sha256"): 12,
        ("post_dedup", "in"): 53, ("post_dedup", "kept"): 17, ("post_dedup", "no-image"): 36,
    }
    assert got == expected, sorted(set(got.items()) ^ set(expected.items()))


def test_the_reject_sample_keeps_the_smallest_keys_per_stage_and_reason(dedup_run):
    urls = sorted((name_of(r.key), name_of(r.detail)) for r in dedup_run["sample"] if r.stage == "dedup_url")
    assert urls == [("p-mid", "p-new"), ("p-old", "p-new")]  # 2 of 3: the smallest keys
    assert Counter((r.stage, r.reason) for r in dedup_run["sample"])[("images_hot", "hot-sha256")] == 2


def _check(expected):
    def matcher(actual):
        assert sorted(actual) == sorted(expected), (sorted(actual), sorted(expected))

    return matcher


def test_connected_components_in_beam_follow_chains_and_never_drop_a_whole_component():
    """Path a - z1 - z2 - z3 - b (a < b < z*): b reaches a in 4 hops. The initial label takes
    one hop and each round one more, so 3 rounds converge; 1 round leaves b a local minimum
    (an extra kept document), and a, the component's minimum, is never relabelled."""
    names = ["a", "z1", "z2", "z3", "b"]
    chain = [((0, names[i]), (0, names[i + 1])) for i in range(4)] + [((0, "x1"), (0, "x0"))]
    roots = lambda kv: kv[0] == kv[1]  # noqa: E731
    with beam.Pipeline(runner="FnApiRunner") as p:
        edges = p | beam.Create(chain)
        full = edges | "Enough" >> ds.ConnectedComponents(rounds=3)
        assert_that(full | "L1" >> beam.Map(lambda kv: (kv[0][1], kv[1][1])),
                    _check([(n, "a") for n in names] + [("x0", "x0"), ("x1", "x0")]), label="Converged")
        short = edges | "TooFew" >> ds.ConnectedComponents(rounds=1)
        assert_that(short | "R2" >> beam.Filter(roots) | "K2" >> beam.Map(lambda kv: kv[0][1]),
                    _check(["a", "b", "x0"]), label="LocalMinimumKept")

"""Deduplication as pure functions: keys, signatures and decisions the Beam stages reuse.

Every corpus-level decision keeps one document per group, the *preferred* one: the most
recent capture (`provenance.capture_date`), ties broken by the smallest document key
(`preference`). The Beam stages in `beam_jobs/dedup_stages.py` compute exactly what the
functions here compute on a list, so tests can compare the two.

Near-duplicate text (MinHash LSH, Broder 1997; Leskovec et al., *Mining of Massive
Datasets* ch. 3):
  1. shingles: word `shingle_size`-grams of the normalised text, hashed to 32 bits;
  2. signature: for each of `num_perm` seeded permutations of the 64-bit space,
     pi_i(x) = splitmix64(x XOR seed_i) (a bijection, seeds from numpy's PCG64 with `seed`),
     the minimum over the shingles, top 32 bits kept (numpy, chunked so memory stays
     bounded). Linear families (a x + b) mod p with small a are *not* min-wise: the minimum
     then tracks the smallest x and the Jaccard estimate is biased upwards;
  3. LSH: the signature cut into `bands` bands of `rows` values; documents sharing a band
     (same band index and band hash) are candidates. P(candidate) = 1 - (1 - s^rows)^bands,
     midpoint (1/bands)^(1/rows): 0.71 for 16 x 8, P = 0.95 at s = 0.8, 0.9998 at s = 0.9,
     0.06 at s = 0.5;
  4. each bucket links its members to its preferred member (a star, so a bucket of m
     documents gives m - 1 pairs, not m^2/2); a pair becomes an edge only if the signature
     estimate of its Jaccard is >= `min_jaccard` (0.8), which removes the S-curve's false
     positives;
  5. clusters are the connected components of the edges; the preferred document of each
     cluster is kept, the others are dropped as near-duplicates of it.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from m3w_pipeline.core.config import DedupConfig
from m3w_pipeline.core.document import Document
from m3w_pipeline.filter.filters import IN, KEPT, Reject, remove_positions
from m3w_pipeline.read.warc import normalize_url

# Stage names and drop reasons, as counted (stage, outcome) in the manifest.
URL_STAGE, URL_REASON = "dedup_url", "duplicate-url"
EXACT_STAGE, EXACT_REASON = "dedup_text_exact", "duplicate-text"
NEAR_STAGE, NEAR_REASON = "dedup_text_near", "near-duplicate-text"
IMAGE_SET_STAGE, IMAGE_SET_REASON = "dedup_image_sets", "duplicate-image-set"
IMAGES_IN_DOC_STAGE = "images_in_document"  # outcomes: kept, duplicate-sha256, duplicate-phash
HOT_IMAGES_STAGE = "images_hot"  # outcomes: kept, hot-url, hot-sha256

Rank = tuple[int, str]  # smaller is preferred: (-capture time, key)

_WORD = re.compile(r"\w+", re.UNICODE)
_DIGITS = re.compile(r"\d")
_CHUNK = 2048  # shingles per block when computing a signature


# ----------------------------------------------------------------------------- preference


def capture_time(capture_date: str) -> int:
    """'2024-05-18T01:23:45.5Z' -> 20240518012345500000: sortable, 0 when absent.

    WARC-Date is UTC by the spec; the digits in order, padded to microseconds, sort like the
    instants they name (also for WARC/0.17's '20080430204825').
    """
    digits = "".join(_DIGITS.findall(capture_date or ""))[:20]
    return int(digits.ljust(20, "0")) if digits else 0


def preference(doc: Document) -> Rank:
    """Sort key of a document within a duplicate group: most recent capture first, then smallest key."""
    return (-capture_time(doc.provenance.capture_date), doc.key)


# ----------------------------------------------------------------------------- group keys


def url_key(doc: Document) -> Optional[str]:
    return normalize_url(doc.url) if doc.url else None


def normalized_text(doc: Document) -> str:
    """Lower-cased words of the text nodes joined by single spaces: exact dedup ignores
    whitespace, punctuation and case, nothing else."""
    return " ".join(_WORD.findall("\n".join(t for t in doc.texts if t).lower()))


def text_key(doc: Document) -> Optional[str]:
    text = normalized_text(doc)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest() if text else None


def image_ids(doc: Document) -> tuple[tuple[str, Optional[str]], ...]:
    """(URL key, sha256 key or None when missing) per image, in page order."""
    return tuple(
        (f"url:{normalize_url(im.ref.url)}", f"sha256:{im.image.sha256}" if im.image is not None else None)
        for im in doc.images
        if im is not None
    )


def image_set_key_of(ids: Iterable[tuple[str, Optional[str]]]) -> Optional[str]:
    """Hash of the set of images (sha256 when resolved, URL when missing); None without images."""
    tokens = sorted({sha or url for url, sha in ids})
    if not tokens:
        return None
    return hashlib.blake2b("\n".join(tokens).encode("utf-8"), digest_size=16).hexdigest()


def image_set_key(doc: Document) -> Optional[str]:
    """Documents without images are not image-set duplicates of each other (None)."""
    return image_set_key_of(image_ids(doc))


@dataclass(frozen=True)
class DedupKeys:
    """What the corpus-level decisions need of a document: small, so it can cross shuffles."""

    key: str
    url: str  # the document URL (for reject samples)
    rank: Rank
    url_key: Optional[str]
    text_key: Optional[str]
    images: tuple[tuple[str, Optional[str]], ...]  # image_ids


def dedup_keys(doc: Document) -> DedupKeys:
    return DedupKeys(doc.key, doc.url, preference(doc), url_key(doc), text_key(doc), image_ids(doc))


def without_hot(ids: Iterable[tuple[str, Optional[str]]], hot: set[str] | frozenset[str]) -> list[tuple[str, Optional[str]]]:
    """The image ids `remove_hot_images` keeps."""
    return [(url, sha) for url, sha in ids if url not in hot and (sha is None or sha not in hot)]


def dedup_by_key(docs: Iterable[Document], key_fn: Callable[[Document], Optional[str]]) -> tuple[list[Document], dict[str, str]]:
    """Keep the preferred document per key_fn value. Returns (kept in input order, {dropped key: kept key})."""
    docs = list(docs)
    best: dict[str, Document] = {}
    for doc in docs:
        k = key_fn(doc)
        if k is not None and (k not in best or preference(doc) < preference(best[k])):
            best[k] = doc
    drops = {}
    for doc in docs:
        k = key_fn(doc)
        if k is not None and best[k].key != doc.key:
            drops[doc.key] = best[k].key
    return [d for d in docs if d.key not in drops], drops


def dedup_urls(docs: Iterable[Document]) -> tuple[list[Document], dict[str, str]]:
    """One document per normalised URL: the most recent capture."""
    return dedup_by_key(docs, url_key)


def dedup_exact_text(docs: Iterable[Document]) -> tuple[list[Document], dict[str, str]]:
    return dedup_by_key(docs, text_key)


def dedup_image_sets(docs: Iterable[Document]) -> tuple[list[Document], dict[str, str]]:
    return dedup_by_key(docs, image_set_key)


# ----------------------------------------------------------------------------- MinHash


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """Seeded MinHash: the same config gives the same signatures on every machine."""

    def __init__(self, config: DedupConfig = DedupConfig()) -> None:
        if config.bands * config.rows > config.num_perm:
            raise ValueError(f"bands * rows = {config.bands * config.rows} > num_perm = {config.num_perm}")
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.seeds = rng.integers(0, np.iinfo(np.uint64).max, size=config.num_perm, dtype=np.uint64, endpoint=True)[:, None]

    def shingle_hashes(self, text: str) -> np.ndarray:
        """Distinct 32-bit hashes of the word `shingle_size`-grams (the whole text if shorter)."""
        tokens = _WORD.findall(text.lower())
        if not tokens:
            return np.empty(0, dtype=np.uint64)
        vocab: dict[str, int] = {}
        ids = [vocab.setdefault(t, len(vocab)) for t in tokens]
        # crc32 per distinct word (C speed), spread to 64 bits; shingles are mixed below.
        crcs = np.fromiter(map(zlib.crc32, (w.encode("utf-8") for w in vocab)), dtype=np.uint64, count=len(vocab))
        word_hashes = _mix64(crcs + np.uint64(0x632BE59BD9B4E019))[np.asarray(ids)]
        k = min(self.config.shingle_size, len(tokens))
        count = len(tokens) - k + 1
        h = word_hashes[:count].copy()
        for j in range(1, k):
            h = _mix64(h * np.uint64(0x9E3779B97F4A7C15) + word_hashes[j : j + count])
        return np.unique(_mix64(h) >> np.uint64(32))

    def signature(self, text: str) -> Optional[np.ndarray]:
        """uint32[num_perm] MinHash signature; None for a text without words."""
        shingles = self.shingle_hashes(text)
        if shingles.size == 0:
            return None
        sig = np.full(self.config.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, shingles.size, _CHUNK):
            block = shingles[None, start : start + _CHUNK]
            values = _mix64(block ^ self.seeds)  # one pseudo-random permutation per row
            np.minimum(sig, values.min(axis=1), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)

    def band_keys(self, signature: np.ndarray) -> list[str]:
        """One LSH bucket key per band: band index and a hash of its rows."""
        r = self.config.rows
        return [
            f"{band:03d}:{hashlib.blake2b(signature[band * r : (band + 1) * r].tobytes(), digest_size=8).hexdigest()}"
            for band in range(self.config.bands)
        ]


def doc_signature(doc: Document, hasher: MinHasher) -> Optional[np.ndarray]:
    """Signature of the document's words (the same tokens as `normalized_text`)."""
    return hasher.signature("\n".join(t for t in doc.texts if t))


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal signature positions: an unbiased estimate of the shingle-set Jaccard."""
    return float(np.mean(a == b))


def shingle_jaccard(text_a: str, text_b: str, hasher: MinHasher) -> float:
    """Exact Jaccard of the two texts' shingle sets (for tests and calibration)."""
    a, b = set(hasher.shingle_hashes(text_a).tolist()), set(hasher.shingle_hashes(text_b).tolist())
    return len(a & b) / len(a | b) if a | b else 0.0


def bucket_pairs(members: Iterable[Rank]) -> Iterator[tuple[Rank, Rank]]:
    """A bucket's candidate pairs: (member, preferred member) for every other member.

    Two passes over `members` (Beam gives a re-iterable), so a huge bucket is streamed."""
    rep = min(members, default=None)
    if rep is None:
        return
    for member in members:
        if member != rep:
            yield member, rep


def candidate_pairs(signatures: dict[Rank, np.ndarray], hasher: MinHasher) -> set[tuple[Rank, Rank]]:
    buckets: dict[str, list[Rank]] = defaultdict(list)
    for rank, sig in signatures.items():
        for key in hasher.band_keys(sig):
            buckets[key].append(rank)
    return {pair for members in buckets.values() if len(members) > 1 for pair in bucket_pairs(members)}


def verified_edges(pairs: Iterable[tuple[Rank, Rank]], signatures: dict[Rank, np.ndarray], min_jaccard: float) -> list[tuple[Rank, Rank]]:
    return sorted(p for p in pairs if estimated_jaccard(signatures[p[0]], signatures[p[1]]) >= min_jaccard)


def connected_components(edges: Iterable[tuple[Rank, Rank]]) -> dict[Rank, Rank]:
    """Union-find: node -> smallest (preferred) node of its component, for nodes on an edge."""
    parent: dict[Rank, Rank] = {}

    def find(x: Rank) -> Rank:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return {node: find(node) for node in list(parent)}


def near_duplicate_clusters(docs: Iterable[Document], config: DedupConfig = DedupConfig()) -> list[list[str]]:
    """Clusters of near-duplicate documents (2+ members): keys, the kept one first, then by preference."""
    hasher = MinHasher(config)
    signatures = {}
    for doc in docs:
        sig = doc_signature(doc, hasher)
        if sig is not None:
            signatures[preference(doc)] = sig
    edges = verified_edges(candidate_pairs(signatures, hasher), signatures, config.min_jaccard)
    groups: dict[Rank, list[Rank]] = defaultdict(list)
    for node, root in connected_components(edges).items():
        groups[root].append(node)
    return sorted([[r[1] for r in sorted(members)] for members in groups.values()])


def dedup_near_text(docs: Iterable[Document], config: DedupConfig = DedupConfig()) -> tuple[list[Document], dict[str, str]]:
    """Keep the preferred document of each near-duplicate cluster. Returns (kept, {dropped key: kept key})."""
    docs = list(docs)
    drops = {key: cluster[0] for cluster in near_duplicate_clusters(docs, config) for key in cluster[1:]}
    return [d for d in docs if d.key not in drops], drops


# ----------------------------------------------------------------------------- images


def phash_distance(a: str, b: str) -> int:
    """Hamming distance of two hex perceptual hashes (64-bit imagehash.phash strings)."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


@dataclass
class ImageEdit:
    """A document after an image-level step, with its outcome counts and rejected images."""

    doc: Document
    counts: dict[tuple[str, str], int]
    rejects: list[Reject]


def _edit(doc: Document, stage: str, decisions: Sequence[tuple[int, Optional[str]]]) -> ImageEdit:
    counts: dict[tuple[str, str], int] = {}
    rejects = []
    for position, reason in decisions:
        for outcome in (IN, reason or KEPT):
            counts[(stage, outcome)] = counts.get((stage, outcome), 0) + 1
        if reason:
            image = doc.images[position]
            rejects.append(Reject(stage, reason, doc.key, image.ref.url if image else doc.url))
    dropped = {p for p, reason in decisions if reason}
    return ImageEdit(remove_positions(doc, dropped), counts, rejects)


def dedup_images_in_document(doc: Document, max_phash_distance: int) -> ImageEdit:
    """Drop later repeats of an image in one document: same sha256, or phash within the distance.

    Only resolved images have bytes to compare; missing ones are left alone (extraction
    already keeps one node per URL).
    """
    seen_sha: set[str] = set()
    kept_phash: list[str] = []
    decisions: list[tuple[int, Optional[str]]] = []
    for position, image in enumerate(doc.images):
        if image is None or image.image is None:
            continue
        reason = None
        if image.image.sha256 in seen_sha:
            reason = "duplicate-sha256"
        elif image.image.phash and any(phash_distance(image.image.phash, p) <= max_phash_distance for p in kept_phash):
            reason = "duplicate-phash"
        else:
            seen_sha.add(image.image.sha256)
            if image.image.phash:
                kept_phash.append(image.image.phash)
        decisions.append((position, reason))
    return _edit(doc, IMAGES_IN_DOC_STAGE, decisions)


def image_keys(doc: Document) -> set[str]:
    """The keys a document's images are counted under across the corpus, each once per document."""
    return image_keys_of(image_ids(doc))


def image_keys_of(ids: Iterable[tuple[str, Optional[str]]]) -> set[str]:
    return {k for pair in ids for k in pair if k is not None}


def hot_image_keys(docs: Iterable[Document], max_docs: int) -> set[str]:
    """Image URLs / sha256s found in more than `max_docs` documents."""
    counts: dict[str, int] = defaultdict(int)
    for doc in docs:
        for key in image_keys(doc):
            counts[key] += 1
    return {key for key, n in counts.items() if n > max_docs}


def remove_hot_images(doc: Document, hot: set[str] | frozenset[str]) -> ImageEdit:
    """Remove images whose URL (reason hot-url) or sha256 (hot-sha256) is in `hot`."""
    decisions: list[tuple[int, Optional[str]]] = []
    for position, image in enumerate(doc.images):
        if image is None:
            continue
        reason = None
        if f"url:{normalize_url(image.ref.url)}" in hot:
            reason = "hot-url"
        elif image.image is not None and f"sha256:{image.image.sha256}" in hot:
            reason = "hot-sha256"
        decisions.append((position, reason))
    return _edit(doc, HOT_IMAGES_STAGE, decisions)

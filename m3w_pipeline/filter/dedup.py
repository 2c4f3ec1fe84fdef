"""Deduplication as pure functions: the keys, signatures and decisions of the Beam `DedupDecisions` stage.

Every corpus-level decision keeps one document per group, the *preferred* one: the most
recent capture (`provenance.capture_date`), ties broken by the smallest document key
(`preference`). `beam_jobs/dedup_stages.py` only groups and joins by key; what is compared
and who wins is decided here.

Near-duplicate text (MinHash LSH, Broder 1997; Leskovec et al., *Mining of Massive
Datasets* ch. 3):
  1. shingles: word `shingle_size`-grams of the document's words (`document_words`), hashed to 32 bits;
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
  5. clusters are the connected components of the edges (min-label propagation,
     `spread_label`); the preferred document of each cluster is kept, the others are
     dropped as near-duplicates of it (`near_drop`).
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from m3w_pipeline.core.accounting import KEPT, Tally
from m3w_pipeline.core.config import DedupConfig
from m3w_pipeline.core.document import Document, remove_positions, words
from m3w_pipeline.core.web import normalize_url

# Stage names and drop reasons, as counted (stage, outcome) in the manifest.
URL_STAGE, URL_REASON = "dedup_url", "duplicate-url"
EXACT_STAGE, EXACT_REASON = "dedup_text_exact", "duplicate-text"
NEAR_STAGE, NEAR_REASON = "dedup_text_near", "near-duplicate-text"
IMAGE_SET_STAGE, IMAGE_SET_REASON = "dedup_image_sets", "duplicate-image-set"
IMAGES_IN_DOC_STAGE = "images_in_document"  # outcomes: kept, duplicate-sha256, duplicate-phash
HOT_IMAGES_STAGE = "images_hot"  # outcomes: kept, hot-url, hot-sha256

Rank = tuple[int, str]  # smaller is preferred: (-capture time, key)
ImageId = tuple[str, Optional[str]]  # (URL key, sha256 key or None when missing)
Drop = tuple[str, tuple[str, str]]  # (dropped doc key, (reason, kept doc key))

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


def document_words(doc: Document) -> list[str]:
    """The words of the text nodes (lower-cased): exact dedup and shingles ignore whitespace,
    punctuation and case, nothing else. Computed once per document by `dedup_keys`' caller."""
    return words("\n".join(t for t in doc.texts if t))


def text_key(tokens: Sequence[str]) -> Optional[str]:
    text = " ".join(tokens)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest() if text else None


def image_ids(doc: Document) -> tuple[ImageId, ...]:
    """(URL key, sha256 key or None when missing) per image, in page order."""
    return tuple(
        (f"url:{normalize_url(im.ref.url)}", f"sha256:{im.image.sha256}" if im.image is not None else None)
        for im in doc.images
        if im is not None
    )


def image_set_key(ids: Iterable[ImageId]) -> Optional[str]:
    """Hash of the set of images (sha256 when resolved, URL when missing); None without images:
    documents without images are not image-set duplicates of each other."""
    tokens = sorted({sha or url for url, sha in ids})
    if not tokens:
        return None
    return hashlib.blake2b("\n".join(tokens).encode("utf-8"), digest_size=16).hexdigest()


def image_keys(ids: Iterable[ImageId]) -> set[str]:
    """The keys a document's images are counted under across the corpus, each once per document."""
    return {k for pair in ids for k in pair if k is not None}


def without_hot(ids: Iterable[ImageId], hot: set[str] | frozenset[str]) -> list[ImageId]:
    """The image ids `remove_hot_images` keeps."""
    return [(url, sha) for url, sha in ids if url not in hot and (sha is None or sha not in hot)]


@dataclass(frozen=True)
class DedupKeys:
    """What the corpus-level decisions need of a document: small, so it can cross shuffles."""

    key: str
    url: str  # the document URL (for reject samples)
    rank: Rank
    url_key: Optional[str]
    text_key: Optional[str]
    images: tuple[ImageId, ...]

    def image_set_rank(self, hot: set[str] | frozenset[str]) -> Optional[tuple[str, Rank]]:
        """(image-set key once the hot images have left, rank), or None without images."""
        k = image_set_key(without_hot(self.images, hot))
        return None if k is None else (k, self.rank)


def dedup_keys(doc: Document, tokens: Sequence[str]) -> DedupKeys:
    """The keys of `doc`, whose words (`document_words`) are `tokens`."""
    return DedupKeys(doc.key, doc.url, preference(doc), normalize_url(doc.url) if doc.url else None, text_key(tokens), image_ids(doc))


# ----------------------------------------------------------------------------- decisions


def group_losers(ranks: Iterable[Rank], reason: str) -> Iterator[Drop]:
    """A group of documents sharing a key -> a drop for every one but the preferred.

    Two passes over `ranks` (Beam gives a re-iterable), so a huge group is streamed."""
    best = min(ranks)
    for rank in ranks:
        if rank != best:
            yield rank[1], (reason, best[1])


def survives(keys: DedupKeys, drops: Iterable[tuple[str, str]], stage: str, tally: Tally) -> bool:
    """Whether a document survives `stage`, given the (reason, kept key) drops decided for it;
    recorded in `tally` (a drop names the document kept in its place)."""
    decided = sorted(drops)
    if decided:
        reason, kept_key = decided[0]
        tally.drop(stage, reason, keys.key, keys.url, kept_key)
        return False
    tally.add(stage, KEPT)
    return True


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

    def shingle_hashes(self, tokens: Sequence[str]) -> np.ndarray:
        """Distinct 32-bit hashes of the word `shingle_size`-grams (the whole text if shorter)."""
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

    def signature(self, tokens: Sequence[str]) -> Optional[np.ndarray]:
        """uint32[num_perm] MinHash signature of a document's words; None without words."""
        shingles = self.shingle_hashes(tokens)
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


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal signature positions: an unbiased estimate of the shingle-set Jaccard."""
    return float(np.mean(a == b))


def bucket_pairs(members: Iterable[Rank]) -> Iterator[tuple[Rank, Rank]]:
    """A bucket's candidate pairs: (member, preferred member) for every other member.

    Two passes over `members` (Beam gives a re-iterable), so a huge bucket is streamed."""
    rep = min(members, default=None)
    if rep is None:
        return
    for member in members:
        if member != rep:
            yield member, rep


def spread_label(node: Rank, labels: Iterable[Rank], neighbours: Iterable[Rank]) -> Iterator[tuple[Rank, Rank]]:
    """One round of min-label propagation: a node sends its label (the smallest it holds, itself
    at first) to itself and to each neighbour; each node then keeps the smallest it receives."""
    label = min(labels, default=node)
    yield node, label
    for neighbour in neighbours:
        yield neighbour, label


def near_drop(node: Rank, label: Rank) -> Iterator[Drop]:
    """A node whose component label is another document is a near-duplicate of that document."""
    if label != node:
        yield node[1], (NEAR_REASON, label[1])


# ----------------------------------------------------------------------------- images


def phash_distance(a: str, b: str) -> int:
    """Hamming distance of two hex perceptual hashes (64-bit imagehash.phash strings)."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _apply(doc: Document, stage: str, decisions: Sequence[tuple[int, Optional[str]]], tally: Tally) -> Document:
    """`doc` without the images decided against; every decision recorded under `stage`."""
    for position, reason in decisions:
        if reason:
            tally.drop(stage, reason, doc.key, doc.images[position].ref.url)  # type: ignore[union-attr]  # decided images exist
        else:
            tally.add(stage, KEPT)
    return remove_positions(doc, {p for p, reason in decisions if reason})


def dedup_images_in_document(doc: Document, max_phash_distance: int, tally: Tally) -> Document:
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
    return _apply(doc, IMAGES_IN_DOC_STAGE, decisions, tally)


def remove_hot_images(doc: Document, hot: set[str] | frozenset[str], tally: Tally) -> Document:
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
    return _apply(doc, HOT_IMAGES_STAGE, decisions, tally)

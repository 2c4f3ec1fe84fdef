"""Text quality scores: small pure functions, one number each, so filters and the index agree.

Definitions follow the papers the thresholds come from:
  * Gopher (Rae et al. 2021, App. A): duplicate line/paragraph fractions by count and by
    characters; characters in the most frequent word 2/3/4-gram; characters covered by
    repeated word 5..10-grams.
  * BigScience ROOTS / OBELICS: character repetition ratio (top sqrt(#distinct) repeated
    char n-grams), word repetition ratio, special-character, stopword and flagged-word ratios.
Words are `core.document.words`: maximal runs of Unicode word characters, lower-cased; scripts written
without spaces (ja, zh, th) give long "words", so word-based ratios are only meaningful
for languages with a stopword list (the others score None and are not filtered on them).

`document_scores(doc, config)` computes every score once per document as a flat dict,
the row the Parquet index stores (column names and types: DOCUMENT_SCORE_COLUMNS).
"""
from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from importlib import resources
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from m3w_pipeline.core.config import FilterConfig
from m3w_pipeline.core.document import Document, words
from m3w_pipeline.extract.lang import identify_language, primary_subtag

_SPACE = re.compile(r"\s+", re.UNICODE)

Score = Union[float, int, str, None]

# Index columns `document_scores` fills: (name, Arrow type, nullable). None = not applicable
# (no stopword list for the language, text too short for the n-gram).
DOCUMENT_SCORE_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("lang_id", "string", False),  # identified language (ISO 639-1) or "und"
    ("lang_id_score", "float32", False),  # its probability
    ("dup_line_fraction", "float32", False),
    ("dup_para_fraction", "float32", False),
    ("dup_line_char_fraction", "float32", False),
    ("dup_para_char_fraction", "float32", False),
    ("top_2gram_char_fraction", "float32", False),
    ("top_3gram_char_fraction", "float32", False),
    ("top_4gram_char_fraction", "float32", False),
    ("dup_5gram_char_fraction", "float32", False),
    ("dup_10gram_char_fraction", "float32", False),
    ("char_repetition_ratio", "float32", False),
    ("word_repetition_ratio", "float32", False),
    ("stopword_ratio", "float32", True),
    ("flagged_word_ratio", "float32", False),
    ("punctuation_ratio", "float32", False),
    ("special_char_ratio", "float32", False),
)


# ----------------------------------------------------------------------------- word lists


def _read_list(relative: str) -> frozenset[str]:
    path = resources.files("m3w_pipeline").joinpath("data", *relative.split("/"))
    if not path.is_file():
        return frozenset()
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=None)
def stopwords(lang: Optional[str]) -> frozenset[str]:
    """The stopword list shipped for `lang` (primary subtag), empty when there is none."""
    code = primary_subtag(lang)
    return _read_list(f"stopwords/{code}.txt") if code and code.isalpha() else frozenset()


@lru_cache(maxsize=None)
def flagged_words(lang: Optional[str]) -> frozenset[str]:
    """Language-independent flagged words plus those of `lang`."""
    code = primary_subtag(lang)
    own = _read_list(f"flagged_words/{code}.txt") if code and code.isalpha() else frozenset()
    return _read_list("flagged_words/all.txt") | own


# ----------------------------------------------------------------------------- tokens


def lines_of(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- Gopher repetition


def duplicate_fractions(items: Sequence[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of chars in those repeats).

    Gopher counts every occurrence after the first: ["a", "a", "b"] -> (1/3, 1/3).
    """
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_count = dup_chars = 0
    for item in items:
        if item in seen:
            dup_count += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    total_chars = sum(len(item) for item in items)
    return dup_count / len(items), (dup_chars / total_chars if total_chars else 0.0)


def _ngrams(tokens: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every word n-gram in order (tuples made in C by zip over shifted copies)."""
    return zip(*(tokens[i:] for i in range(n)))


def top_ngram_char_fraction(tokens: Sequence[str], n: int) -> float:
    """Chars in all occurrences of the most frequent word n-gram / chars in all words.

    Only an n-gram seen at least twice counts (a text of distinct words scores 0).
    Ties between equally frequent n-grams take the longest.
    """
    total = sum(map(len, tokens))
    if len(tokens) < n or not total:
        return 0.0
    counts = Counter(_ngrams(tokens, n))
    freq = max(counts.values())
    if freq < 2:
        return 0.0
    chars = max(sum(len(t) for t in gram) for gram, f in counts.items() if f == freq)
    return min(1.0, freq * chars / total)


def duplicate_ngram_char_fraction(tokens: Sequence[str], n: int) -> float:
    """Chars of words covered by any later occurrence of a repeated word n-gram / chars in all words.

    Overlapping repeats cover each word once. "a b c a b c" with n=3 -> 3 of 6 words.
    """
    total = sum(map(len, tokens))
    if len(tokens) < n or not total:
        return 0.0
    covered = bytearray(len(tokens))
    seen: set[tuple[str, ...]] = set()
    for i, gram in enumerate(_ngrams(tokens, n)):
        if gram in seen:
            covered[i : i + n] = b"\x01" * n
        else:
            seen.add(gram)
    return sum(len(t) for t, c in zip(tokens, covered) if c) / total


# ----------------------------------------------------------------------------- BigScience / OBELICS


def char_repetition_ratio(text: str, n: int = 10) -> float:
    """Occurrences of the top-k repeated char n-grams / all char n-grams, k = floor(sqrt(#distinct)).

    As in BigScience's filtering code: n-grams seen once never count, so k is capped by
    the number of repeated ones. Whitespace runs are collapsed first.
    """
    text = _SPACE.sub(" ", text).strip()
    if len(text) < n:
        return 0.0
    if len(text) >= _PACK_FROM_CHARS:
        counts = _ngram_counts(text, n)
        repeated, distinct = int(np.count_nonzero(counts > 1)), len(counts)
        k = min(int(math.sqrt(distinct)), repeated)
        return int(np.sort(counts)[distinct - k :].sum()) / (len(text) - n + 1)
    freqs = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    repeated = sum(1 for f in freqs if f > 1)
    k = min(int(math.sqrt(len(freqs))), repeated)
    return sum(freqs[:k]) / sum(freqs)


_PACK_FROM_CHARS = 256  # below this, numpy's per-call overhead costs more than the Counter of slices


def _ngram_counts(text: str, n: int) -> np.ndarray:
    """How often each distinct char n-gram of `text` occurs (in no particular order), as a Counter of
    the slices would count them, in numpy: each character is replaced by its rank among the text's
    distinct characters (an injective map), an n-gram by its ranks packed into a few 64-bit keys
    (as many characters per key as fit), the keys folded into one by their dense ranks, so equal keys
    are exactly equal n-grams; sorting puts them side by side (a document: 0.87 -> ~0.48 ms, 5k chars)."""
    chars, ranks = np.unique(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32), return_inverse=True)
    bits = max(1, (len(chars) - 1).bit_length())
    per_key = 64 // bits
    ranks = ranks.astype(np.uint64)
    windows = len(text) - n + 1
    keys = []
    for start in range(0, n, per_key):
        key = np.zeros(windows, dtype=np.uint64)
        for j in range(start, min(n, start + per_key)):
            key <<= np.uint64(bits)
            key |= ranks[j : j + windows]
        keys.append(key)
    combined = keys[0]
    for key in keys[1:]:  # two keys' dense ranks (each < 2**32) packed into one exact key
        combined = (np.unique(combined, return_inverse=True)[1].astype(np.uint64) << np.uint64(32)) | np.unique(
            key, return_inverse=True
        )[1].astype(np.uint64)
    ordered = np.sort(combined)
    change = np.empty(windows + 1, dtype=bool)
    change[0] = change[-1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:-1])
    return np.diff(np.flatnonzero(change))


def word_repetition_ratio(tokens: Sequence[str], n: int = 5) -> float:
    """Occurrences of word n-grams that occur more than once / all word n-grams."""
    if len(tokens) < n or n < 1:
        return 0.0
    counts = Counter(_ngrams(tokens, n))
    return sum(f for f in counts.values() if f > 1) / (len(tokens) - n + 1)


def stopword_ratio(tokens: Sequence[str], lang: Optional[str]) -> Optional[float]:
    """Share of words on `lang`'s stopword list; None without a list (or without words)."""
    stop = stopwords(lang)
    if not stop or not tokens:
        return None
    return sum(1 for t in tokens if t in stop) / len(tokens)


def flagged_word_ratio(tokens: Sequence[str], lang: Optional[str]) -> float:
    if not tokens:
        return 0.0
    flagged = flagged_words(lang)
    if flagged.isdisjoint(tokens):  # nearly every text: one pass in C
        return 0.0
    return sum(1 for t in tokens if t in flagged) / len(tokens)


def _char_class(ch: str) -> int:
    """0 whitespace, 1 letter or combining mark (marks belong to letters: Devanagari, Thai
    vowels), 2 punctuation, 3 any other special character (digits, symbols, emoji)."""
    if ch.isspace():
        return 0
    if ch.isalpha():
        return 1
    cat = unicodedata.category(ch)[0]
    return 1 if cat == "M" else 2 if cat == "P" else 3


# ASCII text is classified in C: each byte mapped to its class digit, whitespace deleted.
_ASCII_CLASSES = bytes(48 + _char_class(chr(b)) if b < 128 else 0 for b in range(256))
_ASCII_SPACES = bytes(b for b in range(128) if chr(b).isspace())
_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")
_COUNT_DISTINCT_FROM = 32  # non-ASCII characters from which classifying distinct ones (Counter) is cheaper


def _char_classes(text: str) -> tuple[int, int, int]:
    """(non-space chars, punctuation chars, special chars). Called for every text node and every
    document: the ASCII characters are classified in C (bytes.translate), the others one per
    distinct character."""
    classes = text.encode("ascii", "ignore").translate(_ASCII_CLASSES, _ASCII_SPACES)
    non_space, punct = len(classes), classes.count(b"2")
    special = non_space - classes.count(b"1")
    if not text.isascii():
        rest = _ASCII_RUNS.sub("", text)  # usually a few quotes and accents; whole scripts (ja, ru) repeat characters
        for ch, count in (Counter(rest).items() if len(rest) > _COUNT_DISTINCT_FROM else zip(rest, itertools.repeat(1))):
            kind = _char_class(ch)
            if kind:
                non_space += count
                if kind >= 2:
                    special += count
                    punct += count if kind == 2 else 0
    return non_space, punct, special


def special_char_ratio(text: str) -> float:
    """Non-letter chars (digits, punctuation, symbols, emoji; not marks) / non-space chars."""
    non_space, _, special = _char_classes(text)
    return special / non_space if non_space else 0.0


# ----------------------------------------------------------------------------- documents


def text_scores(paragraphs: Sequence[str], lang: Optional[str], config: FilterConfig) -> dict[str, Score]:
    """Every repetition and ratio score of a text given as paragraphs (text nodes)."""
    text = "\n\n".join(paragraphs)
    tokens = words(text)
    line_dup, line_char_dup = duplicate_fractions(lines_of(text))
    para_dup, para_char_dup = duplicate_fractions([p.strip() for p in paragraphs if p.strip()])
    non_space, punct, special = _char_classes(text)
    return {
        "n_words": len(tokens),
        "dup_line_fraction": line_dup,
        "dup_para_fraction": para_dup,
        "dup_line_char_fraction": line_char_dup,
        "dup_para_char_fraction": para_char_dup,
        "top_2gram_char_fraction": top_ngram_char_fraction(tokens, 2),
        "top_3gram_char_fraction": top_ngram_char_fraction(tokens, 3),
        "top_4gram_char_fraction": top_ngram_char_fraction(tokens, 4),
        "dup_5gram_char_fraction": duplicate_ngram_char_fraction(tokens, 5),
        "dup_10gram_char_fraction": duplicate_ngram_char_fraction(tokens, 10),
        "char_repetition_ratio": char_repetition_ratio(text, config.char_repetition_n),
        "word_repetition_ratio": word_repetition_ratio(tokens, config.word_repetition_n),
        "stopword_ratio": stopword_ratio(tokens, lang),
        "flagged_word_ratio": flagged_word_ratio(tokens, lang),
        "punctuation_ratio": punct / non_space if non_space else 0.0,
        "special_char_ratio": special / non_space if non_space else 0.0,
    }


def document_scores(doc: Document, config: FilterConfig = FilterConfig()) -> dict[str, Score]:
    """One row of scores for the index: DOCUMENT_SCORE_COLUMNS plus `n_words` (already a column)."""
    paragraphs = [t for t in doc.texts if t]
    guess = identify_language("\n\n".join(paragraphs), config.lang_id_max_chars)
    scores: dict[str, Score] = {"lang_id": guess.lang, "lang_id_score": guess.score}
    scores.update(text_scores(paragraphs, guess.lang, config))
    return scores


class ScoreCache:
    """Scores of the last document asked for: every quality filter of one document shares one computation.

    Holds a reference to that document, so identity cannot be confused with a new object.
    One per DoFn instance (Beam runs an instance on one thread at a time).
    """

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self._doc: Optional[Document] = None
        self._scores: dict[str, Score] = {}

    def __call__(self, doc: Document) -> dict[str, Score]:
        if doc is not self._doc:
            self._scores = document_scores(doc, self.config)
            self._doc = doc
        return self._scores

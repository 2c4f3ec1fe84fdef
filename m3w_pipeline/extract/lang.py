"""Language identification with a model that ships inside its wheel (py3langid, BSD-3).

py3langid is langid.py (Lui & Baldwin 2012: naive Bayes over byte n-grams, 97
languages) with its model stored in the package (`py3langid/data/model.npz.xz`), so
workers need no download at run time. Probabilities are normalised (softmax with the
length temperature py3langid uses), so the score is comparable across documents.

Codes are ISO 639-1 as the model emits them. `primary_subtag` maps declared HTML
`lang` values and legacy or macro-language codes onto the same space, so a declared
`nb-NO` and a detected `no` agree (see LANGUAGE_EQUIVALENTS).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

UNKNOWN = "und"

# Codes that name the same language for our purposes -> the code the model emits.
# nb/nn: Norwegian Bokmål/Nynorsk; langid.py has one 'no' class (and an 'nn' class, which
# is folded in so a declared 'no' page identified as Nynorsk still agrees).
# iw/in/ji: pre-1989 codes for Hebrew/Indonesian/Yiddish. zh-*: one Chinese class.
LANGUAGE_EQUIVALENTS: dict[str, str] = {
    "nb": "no",
    "nn": "no",
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "jw": "jv",
    "fil": "tl",
    "zh-hans": "zh",
    "zh-hant": "zh",
}

_lock = threading.Lock()
_identifier = None
# The model's automaton is a trie of byte n-grams (with its failure moves folded in) at most this
# deep, so the state after any byte is the state reached from the root by the last this-many bytes
# (tests/extract/test_lang.py checks the depth of the pinned model).
MODEL_DEPTH = 6


@dataclass(frozen=True)
class LanguageGuess:
    lang: str  # ISO 639-1 code, or "und" for text without letters
    score: float  # probability of `lang`, in [0, 1]


def _get_identifier():
    """Load the shipped model once per process (about 0.3 s), thread-safely."""
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE

                _identifier = _identifier_class().from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def _identifier_class() -> type:
    """py3langid's identifier, its automaton walked over all bytes at once with numpy.

    py3langid walks the byte automaton in a Python loop (about 1 ms per 5,000 bytes, half of the
    language ID's time). Since the state after a byte depends only on the last MODEL_DEPTH bytes,
    MODEL_DEPTH vectorised steps give every position's state: the same features, counted in the
    same first-seen order, so the same scores to the bit (tests/extract/test_lang.py)."""
    import numpy as np
    from py3langid.langid import LanguageIdentifier

    class VectorisedIdentifier(LanguageIdentifier):
        __slots__ = ("_moves", "_row_offsets", "_outputs")

        def _visits(self, data: bytes) -> dict[int, int]:
            if not hasattr(self, "_moves"):
                self._moves = np.frombuffer(self.tk_nextmove, dtype=np.dtype(self.tk_nextmove.typecode)).astype(np.int64)
                self._row_offsets = np.asarray(self._rowbase, dtype=np.int64)
                self._outputs = np.asarray(self.tk_output, dtype=np.int64)
            letters = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
            states = np.zeros(len(letters), dtype=np.int64)
            for back in range(min(MODEL_DEPTH, len(letters)) - 1, -1, -1):  # position i reads byte i - back
                states[back:] = self._moves[self._row_offsets[states[back:]] + letters[: len(letters) - back]]
            features = self._outputs[states]
            features = features[features >= 0]
            kinds, first, counts = np.unique(features, return_index=True, return_counts=True)
            order = np.argsort(first, kind="stable")
            return dict(zip(kinds[order].tolist(), counts[order].tolist()))

        def _raw_score(self, text: bytes):  # py3langid's, with the walk above
            visits = self._visits(text)
            return self._sparse_score(visits, self.nb_ptc) if visits else super()._raw_score(text)

    return VectorisedIdentifier


def identify_language(text: str, max_chars: int = 10_000) -> LanguageGuess:
    """Most likely language of `text` (its first `max_chars` characters) and its probability."""
    sample = text[:max_chars] if max_chars > 0 else text
    if not any(ch.isalpha() for ch in sample):
        return LanguageGuess(UNKNOWN, 0.0)
    lang, score = _get_identifier().classify(sample)
    return LanguageGuess(canonical_language(lang), float(score))


def primary_subtag(tag: Optional[str]) -> Optional[str]:
    """'en-US' -> 'en', 'zh_Hant' -> 'zh', 'nb-NO' -> 'no'; None for empty or '?' tags."""
    if not tag:
        return None
    tag = tag.strip().lower().replace("_", "-")
    if not tag or tag in ("?", "x-default", UNKNOWN):
        return None
    if tag in LANGUAGE_EQUIVALENTS:
        return LANGUAGE_EQUIVALENTS[tag]
    return canonical_language(tag.split("-", 1)[0])


def canonical_language(code: str) -> str:
    return LANGUAGE_EQUIVALENTS.get(code, code)


def languages_match(declared: Optional[str], detected: Optional[str]) -> bool:
    """Whether a declared HTML lang and a detected code name the same language (primary subtag)."""
    a, b = primary_subtag(declared), primary_subtag(detected)
    return a is not None and a == b

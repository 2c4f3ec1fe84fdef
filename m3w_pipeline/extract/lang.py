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
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


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

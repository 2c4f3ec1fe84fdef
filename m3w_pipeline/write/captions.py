"""Caption text for image-text pairs and video-text samples: one cleaning, one set of checks.

Cleaning: NFC, control and zero-width characters removed, whitespace collapsed, wrapping
quotes removed, photo credits ("Photo: X", "(Foto: dpa)", "Illustration by X.") and figure
labels ("Figure 3:") stripped. A cleaned caption is then not a caption when it is a URL, a
file name (or the stem of the media's own file name), a placeholder ("image", "Logo",
"IMG_1234", "photo 2"), not language (mostly digits and symbols), too short or too long for
its kind, or (when `PairConfig.languages` is set) in another language.

Context captions: the text node right after the media, then the one right before it
(`context_order`), skipping the media's own figcaption text node. With
`context_requires_cue`, only sentences that point at the media count: two of {a media noun
(the caller's cues), a pointer ("this", "shows", "see"), a direction ("above", "below")}, or
a strong cue ("pictured"). A sentence after the media that only points forward ("below")
belongs to the next one, one before it that only points back ("above") to the previous one.
`context_scope` keeps the pointing sentences ("sentence") or the whole text node ("paragraph").
"""
from __future__ import annotations

import re
import unicodedata
from typing import Optional, Sequence
from urllib.parse import unquote, urlsplit

from m3w_pipeline.core.config import PairConfig
from m3w_pipeline.core.document import Document, count_words

_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028\u2029\u2060\ufeff]")
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u201e": "\u201c", "\u2018": "\u2019", "\u00ab": "\u00bb", "\u201d": "\u201d"}
_CREDIT_TAIL = re.compile(
    r"(?:^|(?<=[.;|])\s*|\s[-\u2013\u2014]\s*|\s*(?=\()|\s+(?=\u00a9))\(?\s*"
    r"(?:(?:photo(?:graph)?|image|picture|foto|bild|credit|source|quelle|fuente|illustration|courtesy)s?"
    r"(?:\s*:|\s+by\b|\s+credit\s*:?)|\u00a9|\(c\))"
    r"[^.()]{1,80}\)?\.?\s*$",
    re.IGNORECASE,
)
_FIGURE_LABEL = re.compile(r"^(?:fig(?:ure)?|abb(?:ildung)?|plate|image|photo)\.?\s*\d+[a-z]?\s*[:.)\u2013\u2014-]\s*", re.IGNORECASE)
_URLISH = re.compile(r"(?:[a-z][a-z0-9+.-]*:|www\.|//)\S+", re.IGNORECASE)
_MEDIA_EXT = r"(?:jpe?g|png|gif|webp|bmp|svg|tiff?|heic|avif|ico|mp4|m4v|webm|mov|ogv|avi|mkv)"
_FILENAME = re.compile(r"[\w\-.,()+~ ]*\." + _MEDIA_EXT, re.IGNORECASE)
_CAMERA = re.compile(r"(?:img|dsc[nf]?|pxl|mvimg|vid|pano|gopr|dji|sam|wp|p|image|photo|pic|scan|screenshot)[-_ ]?\d[\d_ .-]*", re.IGNORECASE)
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_NOT_ALNUM = re.compile(r"[\W_]+")


def clean_caption(text: Optional[str], config: PairConfig = PairConfig()) -> str:
    """One spelling of a caption: see the module doc. Empty when nothing is left."""
    if not text:
        return ""
    text = " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", text)).split())
    text = _strip_quotes(text)
    if config.strip_figure_labels:
        text = _FIGURE_LABEL.sub("", text)
    if config.strip_credits:
        stripped = _CREDIT_TAIL.sub("", text).strip()
        text = stripped if stripped else ""
    return _strip_quotes(text.strip(" \t-\u2013\u2014|:;,"))


def _strip_quotes(text: str) -> str:
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def caption_problem(
    text: str, min_words: int, max_words: int, config: PairConfig = PairConfig(), url: Optional[str] = None
) -> Optional[str]:
    """Why a cleaned caption is not a caption (url, filename, placeholder, not-language,
    too-short, too-long, language), or None when it is one."""
    if not text:
        return "empty"
    if _URLISH.fullmatch(text) or (" " not in text and "/" in text and "." in text):
        return "url"
    if _FILENAME.fullmatch(text) or (url is not None and _is_file_stem(text, url)):
        return "filename"
    if _CAMERA.fullmatch(text) or _only_placeholders(text, config):
        return "placeholder"
    if not _looks_like_language(text, config):
        return "not-language"
    words = count_words(text)
    if words < min_words:
        return "too-short"
    if words > max_words or len(text) > config.max_caption_chars:
        return "too-long"
    if config.languages and not _in_languages(text, config):
        return "language"
    return None


def _is_file_stem(text: str, url: str) -> bool:
    """Alt text that merely repeats the file name ("kumara4" for .../Kumara4.jpg)."""
    stem = unquote(urlsplit(url).path.rsplit("/", 1)[-1]).rsplit(".", 1)[0]
    return bool(stem) and _squash(text) == _squash(stem)


def _squash(text: str) -> str:
    """Lower case, letters and digits only: "Kumara_4" and "kumara 4" squash alike."""
    return _NOT_ALNUM.sub("", text.lower())


def _only_placeholders(text: str, config: PairConfig) -> bool:
    tokens = _LETTERS.findall(text.lower())
    return bool(tokens) and len(tokens) <= 3 and all(t in config.placeholder_words for t in tokens)


def _looks_like_language(text: str, config: PairConfig) -> bool:
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if not chars or letters / len(chars) < config.min_letter_ratio:
        return False
    tokens = text.split()
    wordlike = [t for t in tokens if sum(c.isalpha() for c in t) >= 2 and not any(c.isdigit() for c in t)]
    return len(wordlike) / len(tokens) >= config.min_word_token_ratio


def _in_languages(text: str, config: PairConfig) -> bool:
    from m3w_pipeline.extract.lang import identify_language, primary_subtag

    guess = identify_language(text)
    wanted = {primary_subtag(code) for code in config.languages}
    return guess.lang in wanted and guess.score >= config.min_language_score


def describing_text(
    text: str, direction: str, cues: Sequence[str], config: PairConfig, requires_cue: Optional[bool] = None
) -> Optional[str]:
    """The part of an adjacent text node that describes the media next to it, or None.

    `direction` says where the text stands relative to the media: "after" or "before".
    """
    requires_cue = config.context_requires_cue if requires_cue is None else requires_cue
    if not requires_cue:
        return text
    nouns, pointers, strong = set(cues), set(config.context_pointers), set(config.context_strong_cues)
    forward, backward = set(config.context_forward_cues), set(config.context_backward_cues)
    hits = []
    for sentence in _SENTENCE_END.split(text):
        words = {w.lower() for w in _WORD.findall(sentence)}
        kinds = sum(bool(words & group) for group in (nouns, pointers, forward | backward))
        if kinds < 2 and not words & strong:
            continue
        if direction == "after" and words & forward and not words & backward:
            continue
        if direction == "before" and words & backward and not words & forward:
            continue
        hits.append(sentence.strip())
    if not hits:
        return None
    return " ".join(hits) if config.context_scope == "sentence" else text


def _neighbour(doc: Document, index: int, step: int, skip: str) -> Optional[str]:
    """The text at `index` (moving by `step` past the media's own figcaption node), or None at an image."""
    while 0 <= index < len(doc.texts):
        text = doc.texts[index]
        if text is None:
            return None
        if skip and clean_caption(text) == skip:
            index += step
            continue
        return text
    return None


def context_caption(
    doc: Document, before: int, after: int, own_caption: Optional[str], cues: Sequence[str], config: PairConfig
) -> Optional[str]:
    """The first describing adjacent text (see the module doc); `before`/`after` index doc.texts."""
    skip = clean_caption(own_caption, config) if own_caption else ""
    for direction in config.context_order:
        index, step = (after, 1) if direction == "after" else (before, -1)
        text = _neighbour(doc, index, step, skip)
        if text:
            found = describing_text(text, direction, cues, config)
            if found:
                return found
    return None

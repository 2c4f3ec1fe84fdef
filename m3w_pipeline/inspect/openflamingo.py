"""What OpenFlamingo 2.0.1's MMC4 loader makes of an exported sample, counted before training.

The loader (open_flamingo/train/data.py, `preprocess_interleaved`) skips images of 10 KB or
less, keeps the first `--mmc4_max_num_images` (6) of the rest, puts `<|endofchunk|><image>`
before each image's matched text, joins the texts with spaces, appends `<|endofchunk|>` and EOS,
and truncates to 256 tokens. An `<image>` cut off by the truncation is never seen; a sample left
with no image is rejected. Nothing of this is reported by OpenFlamingo, so `export mmc4` counts
it here, with the same rules written out again (no code of theirs), and can cut documents into
windows that keep every image inside the token budget.

Token positions are exact with the training tokenizer's `tokenizer.json` (special tokens added
as OpenFlamingo adds them); without one they are UTF-8 bytes (each special token one), an upper
bound for byte-level BPE tokenizers (GPT-2, OPT, MPT, LLaMA with byte fallback), so a window
that fits in bytes fits in tokens too.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

IMAGE_TOKEN, CHUNK_END = "<image>", "<|endofchunk|>"
MAX_TOKENS = 256  # the loader's tokenizer(max_length=256, truncation=True)
MIN_KB = 10  # images with len(bytes) // 1000 <= 10 are skipped
MAX_IMAGES = 6  # --mmc4_max_num_images
_SPECIAL = re.compile(r"(<image>|<\|endofchunk\|>)")


def loader_text(texts: Sequence[str], image_texts: Sequence[int], eos: str) -> str:
    """The string OpenFlamingo tokenises: `<|endofchunk|><image>` before each image's text, texts
    joined by spaces, the first `<|endofchunk|>` removed, spaces next to the special tokens removed,
    then `<|endofchunk|>` + EOS."""
    parts = list(texts)
    for i in image_texts:
        parts[i] = f"{CHUNK_END}{IMAGE_TOKEN}{parts[i]}"
    text = " ".join(parts).replace(CHUNK_END, "", 1)
    text = text.replace(f" {CHUNK_END}", CHUNK_END).replace(f"{IMAGE_TOKEN} ", IMAGE_TOKEN).replace(f" {IMAGE_TOKEN}", IMAGE_TOKEN)
    return f"{text}{CHUNK_END}{eos}"


class TokenCounter:
    """Positions of the `<image>` tokens in `loader_text`, and its length, in tokens."""

    def __init__(self, tokenizer_dir: Optional[str] = None) -> None:
        self.tokenizer_dir = tokenizer_dir
        self._tok = None
        self.eos = "</s>"
        if tokenizer_dir is not None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
            self._tok.add_special_tokens([CHUNK_END, IMAGE_TOKEN])
            self._image_id = self._tok.token_to_id(IMAGE_TOKEN)
            self.eos = _eos_token(tokenizer_dir) or self.eos

    @property
    def name(self) -> str:
        return f"tokenizer.json in {self.tokenizer_dir}" if self._tok else "UTF-8 bytes (an upper bound for byte-level BPE)"

    def image_positions(self, text: str) -> tuple[list[int], int]:
        if self._tok is not None:
            ids = self._tok.encode(text).ids
            return [i for i, t in enumerate(ids) if t == self._image_id], len(ids)
        positions, n = [], 1  # one for a BOS token
        for piece in _SPECIAL.split(text.replace(self.eos, CHUNK_END)):
            if piece in (IMAGE_TOKEN, CHUNK_END):
                if piece == IMAGE_TOKEN:
                    positions.append(n)
                n += 1
            else:
                n += len(piece.encode("utf-8"))
        return positions, n


def _eos_token(tokenizer_dir: str) -> Optional[str]:
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


# ----------------------------------------------------------------------------- windows


def windows(
    texts: Sequence[str], image_at: dict[int, int], counter: TokenCounter, window_tokens: int, max_images: int
) -> tuple[list[list[int]], int]:
    """Split a document's texts (image_at: text index -> image index; an image goes before its text)
    into runs of consecutive texts where every image's `<image>` token and the token after it lie
    within `window_tokens`, with at most `max_images` images each. A run is closed when the next
    image would not fit; text before an image that cannot fit with it is dropped from the front.
    Returns (runs that hold an image, text nodes dropped)."""

    def fits(run: list[int]) -> bool:
        image_texts = [k for k, t in enumerate(run) if t in image_at]
        if len(image_texts) > max_images:
            return False
        positions, _ = counter.image_positions(loader_text([texts[t] for t in run], image_texts, counter.eos))
        return all(p + 1 < window_tokens for p in positions)

    runs: list[list[int]] = []
    run: list[int] = []
    dropped = 0
    for t in range(len(texts)):
        if t not in image_at or fits(run + [t]):
            run.append(t)
            continue
        if any(u in image_at for u in run):
            runs.append(run)
            run = [t]
        else:
            run.append(t)
        while not fits(run):  # only text before the image is left to give up
            run.pop(0)
            dropped += 1
    if any(u in image_at for u in run):
        runs.append(run)
    else:
        dropped += len(run)
    return runs, dropped


# ----------------------------------------------------------------------------- what the loader drops


@dataclass
class LoaderLosses:
    """Under OpenFlamingo's defaults (10 KB floor, 6 images, 256 tokens): samples the loader rejects,
    and images it never shows the model, by reason. `single_image` samples are kept half the time."""

    counter: str = ""
    samples: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> samples
    images: int = 0
    images_lost: Counter = field(default_factory=Counter)  # reason -> images
    text_tokens: int = 0  # tokens of all samples' text (special tokens included, <image> not)
    text_tokens_seen: int = 0  # of those, inside the window of samples that are trained on
    images_without_text: int = 0  # shown, but another image or the end follows: it conditions no text token
    single_image: int = 0

    def add(self, sample: dict[str, Any], image_sizes: Sequence[int], counter: TokenCounter) -> None:
        """`image_sizes`: bytes of each `image_info` entry."""
        self.samples += 1
        self.images += len(image_sizes)
        texts = sample["text_list"]
        shown: list[int] = []  # image_info indices the loader keeps, in order
        for i, size in enumerate(image_sizes):
            if size // 1000 <= MIN_KB:
                self.images_lost["under-10kb"] += 1
            elif len(shown) >= MAX_IMAGES:
                self.images_lost["past-max-images"] += 1
            else:
                shown.append(i)
        if not shown:
            self.rejected["all-images-under-10kb"] += 1
            self.text_tokens += counter.image_positions(loader_text(texts, [], counter.eos))[1]
            return
        matched = [sample["image_info"][i]["matched_text_index"] for i in shown]
        positions, n_tokens = counter.image_positions(loader_text(texts, matched, counter.eos))
        self.text_tokens += n_tokens - len(positions)
        inside = [p for p in positions if p < MAX_TOKENS]
        self.images_lost["past-window"] += len(positions) - len(inside)
        self.images_without_text += sum(1 for p, m in zip(positions, matched) if p < MAX_TOKENS and not texts[m].strip())
        if not inside:
            self.rejected["first-image-past-window"] += 1
            return
        if len(inside) == 1 and not texts[matched[0]].strip() and matched[0] == len(texts) - 1:
            self.rejected["only-image-is-last"] += 1  # the loader keeps it, but no text follows the image
            return
        self.single_image += len(inside) == 1
        self.text_tokens_seen += min(n_tokens, MAX_TOKENS) - len(inside)

    def to_json(self) -> dict[str, Any]:
        return {
            "token_count": self.counter,
            "samples": self.samples,
            "samples_never_trained_on": dict(sorted(self.rejected.items())),
            "samples_trainable": self.samples - sum(self.rejected.values()),
            "single_image_samples_kept_half_the_time": self.single_image,
            "images": self.images,
            "images_never_shown": dict(sorted((k, v) for k, v in self.images_lost.items() if v)),
            "images_shown_without_text_after": self.images_without_text,
            "text_tokens": self.text_tokens,
            "text_tokens_in_trained_windows": self.text_tokens_seen,
        }

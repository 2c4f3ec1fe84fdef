"""One raw webdataset sample -> token ids with `<image>`/`<|endofchunk|>` + media, and samples -> a batch.

Three sample kinds (the tar members of one key):

  m3w    KEY.json (aligned `texts`/`images`, schemas/m3w_document.schema.json) + KEY.N.jpg
  pairs  KEY.jpg|png|webp + KEY.txt (+ KEY.json), img2dataset layout (ALIGN, LTIP)
  video  KEY.json (`frames`) + KEY.txt + KEY.NNN.jpg frames, video2dataset layout (VTP)

Token layout (OpenFlamingo's): text before the first image, then for every image
`<image>` + its text, each image's text closed by `<|endofchunk|>` (the chunk ends where the
next `<image>` starts and at the end of the document); BOS first when the tokenizer uses one,
EOS last when it has one. Pairs and videos are one chunk: `<image>caption<|endofchunk|>`.
Text nodes are joined by "\n". Text is encoded as plain text: a literal "<image>" in a page
stays text and never creates a media position.

M3W truncation policy (per sequence, `SourceConfig.max_tokens`, `max_images`, `min_images`):
  1. images that are missing or do not decode are dropped (the latter counted in
     `corrupt_images`); their text stays;
  2. a window of `max_tokens` tokens is taken from the whole document's tokens, starting
       first_image  `lead_tokens` before the first `<image>` (default: captions follow images),
       head         at the document start,
       random       uniformly over the starts whose window holds an `<image>` with text after
                    it (Flamingo's "random subsequence", minus the windows that would be
                    skipped for having no image), seeded by (seed, epoch, key);
  3. the window is cut right before its (max_images+1)-th `<image>`, so the window never ends
     in the text of an image it dropped; an `<image>` that ends the window (no text) is
     dropped. (A window that starts inside a chunk, possible with head/random, begins with
     the end of a text whose image lies before it.)
  4. only images whose `<image>` survives are decoded; fewer than `min_images`: skipped.
Pair and video captions longer than the window are cut at `max_tokens`. With
`samples_per_sequence` k > 1, k consecutive pairs (clips) share one sequence,
`<image>a<|endofchunk|><image>b<|endofchunk|>...` (cut at `max_tokens` with rule 3): less padding,
and the few-shot prompt layout; each caption still attends only to its own image. A clip
shorter than `max_frames` keeps its own frame count (no repeated frames through the encoder).
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from model.flamingo import IGNORE_INDEX, text_labels
from model.image_prep import preprocess_image
from model.tokenizer import FlamingoTokenizer
from model.train.config import SourceConfig

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
EXIF_ORIENTATION = 0x0112


@dataclass
class ImageSpec:
    """What the vision encoder wants: square size, normalisation, and how to get to the square."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "crop"  # crop | pad

    @classmethod
    def for_encoder(cls, encoder: Any, resize: str = "crop") -> ImageSpec:
        return cls(int(encoder.image_size), tuple(encoder.image_mean), tuple(encoder.image_std), resize)


def decode_image(data: bytes, spec: ImageSpec) -> torch.Tensor:
    """Bytes -> (3, size, size) float32, normalised. JPEGs are decoded at reduced scale when
    much larger than needed (Pillow's draft mode: DCT scaling, far cheaper than a full decode).
    EXIF orientation is applied and transparency goes over white, as the corpus build does, so
    shards written by other tools read the same way."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (spec.size, spec.size))
        if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
            im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = im.convert("RGB")
    if spec.resize == "crop":  # shorter side to size, centre crop: the same as model.image_prep
        return preprocess_image(image, spec.size, spec.mean, spec.std)
    w, h = image.size  # pad: longer side to size, centred on a mean-coloured canvas (normalises to 0)
    scale = spec.size / max(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    red, green, blue = (round(m * 255) for m in spec.mean)
    canvas = Image.new("RGB", (spec.size, spec.size), (red, green, blue))
    canvas.paste(image, ((spec.size - image.width) // 2, (spec.size - image.height) // 2))
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    array = (array - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@dataclass
class Sample:
    ids: list[int]
    media: list[torch.Tensor]  # (T, C, H, W) each, in `<image>` order
    key: str
    corrupt_images: int = 0  # M3W images dropped because they did not decode


class SkipSample(Exception):
    """A well-formed sample that has nothing to train on under this source's limits."""


class SampleDecoder:
    """Raw tar sample -> `Sample` for one source kind (tokenisation, truncation, media prep).

    Text is encoded as plain text (`encode_text`) and the special ids are placed here, so a
    literal "<image>" in a page or caption stays text. A sequence is BOS (when the tokenizer uses
    one) + content + EOS (when it has one): one of each per sequence, also when pairs are packed,
    as in a few-shot prompt."""

    def __init__(self, cfg: SourceConfig, tokenizer: FlamingoTokenizer, image: ImageSpec) -> None:
        self.cfg, self.tok = cfg, tokenizer
        self.image = dataclasses.replace(image, resize=cfg.resize)
        self.special = tokenizer.special
        self.head = [self.special.bos] if self.special.bos is not None else []
        self.tail = [self.special.eos] if self.special.eos is not None else []

    def __call__(self, raw: dict[str, Any], rng: random.Random) -> Sample:
        """M3W: a finished sequence. Pairs and video: one `<image>caption<|endofchunk|>` chunk,
        made a sequence by `join` (alone or packed with the next ones)."""
        kind = self.cfg.kind
        if kind == "m3w":
            return self.m3w(raw, rng)
        if kind == "pairs":
            return self.pair(raw)
        if kind == "video":
            return self.video(raw)
        raise ValueError(f"unknown source kind {kind!r}")

    def _chunk(self, caption: str) -> list[int]:
        return [self.special.image] + self.tok.encode_text(caption.strip()) + [self.special.end_of_chunk]

    def pair(self, raw: dict[str, Any]) -> Sample:
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None or "txt" not in raw:
            raise ValueError("pair sample needs an image and a .txt caption")
        caption = raw["txt"].decode("utf-8")
        return Sample(self._chunk(caption), [decode_image(raw[ext], self.image)[None]], raw["__key__"])

    def video(self, raw: dict[str, Any]) -> Sample:
        meta = json.loads(raw["json"])
        files = [f["file"].lower() for f in meta.get("frames", [])] or sorted(
            k for k in raw if k.endswith(".jpg") and k.split(".")[0].isdigit())
        if not files:
            raise ValueError("video sample without frames")
        caption = raw["txt"].decode("utf-8") if "txt" in raw else meta["caption"]
        n = min(self.cfg.max_frames, len(files))  # evenly spaced slot midpoints; a short clip keeps all its frames
        frames = [decode_image(raw[files[int((i + 0.5) * len(files) / n)]], self.image) for i in range(n)]
        return Sample(self._chunk(caption), [torch.stack(frames)], raw["__key__"])

    def m3w(self, raw: dict[str, Any], rng: random.Random) -> Sample:
        doc = json.loads(raw["json"])
        if len(doc["texts"]) != len(doc["images"]):
            raise ValueError("texts and images are not aligned")
        rng_state = rng.getstate()
        broken: set[str] = set()
        while True:  # rule 1: an image that does not decode is dropped and the window chosen again
            ids, files = self._document_ids(doc, raw, broken)
            rng.setstate(rng_state)  # the window as if the broken images had never been there
            window, kept = self._window(ids, rng)
            if len(kept) < self.cfg.min_images:
                raise SkipSample("too few images")
            media = []
            for i in kept:
                try:
                    media.append(decode_image(raw[files[i]], self.image)[None])
                except Exception:  # noqa: BLE001 - counted in corrupt_images
                    broken.add(files[i])
                    break
            else:
                return Sample(self.head + window, media, raw["__key__"], len(broken))

    def _document_ids(self, doc: dict[str, Any], raw: dict[str, Any], broken: set[str]) -> tuple[list[int], list[str]]:
        """The whole document as content ids + EOS (no BOS: that starts the window), and the files
        of its `<image>`s in order. Consecutive text nodes are joined by newlines."""
        ids: list[int] = []
        files: list[str] = []
        run: list[str] = []
        for text, image in zip(doc["texts"], doc["images"]):
            if text is not None:
                run.append(text)
                continue
            name = (image or {}).get("file")
            if image and image.get("status") == "ok" and name and name.lower() in raw and name.lower() not in broken:
                if run:
                    ids += self.tok.encode_text("\n".join(run))
                    run = []
                ids += ([self.special.end_of_chunk] if files else []) + [self.special.image]
                files.append(name.lower())
        if run:
            ids += self.tok.encode_text("\n".join(run))
        return ids + ([self.special.end_of_chunk] if files else []) + self.tail, files

    def join(self, samples: Sequence[Sample]) -> Sample:
        """Pair/clip chunks -> one sequence (BOS, chunks, EOS), cut at max_tokens (media follow their tokens)."""
        ids = self.head + [t for s in samples for t in s.ids] + self.tail
        media = [m for s in samples for m in s.media]
        window, kept = self._cut(ids[: self.cfg.max_tokens], 0)
        return Sample(window, media[: len(kept)], samples[0].key)

    def _cut(self, window: list[int], first: int) -> tuple[list[int], list[int]]:
        """Rule 3: at most max_images `<image>`s, none ending the window; (ids, indices of kept media)."""
        image_id = self.special.image
        inside = [i for i, t in enumerate(window) if t == image_id]
        if len(inside) > self.cfg.max_images and self.cfg.kind == "m3w":
            window = window[: inside[self.cfg.max_images]]
            inside = inside[: self.cfg.max_images]
        if inside and inside[-1] == len(window) - 1:  # an image with no text after it
            window, inside = window[:-1], inside[:-1]
        return window, [first + k for k in range(len(inside))]

    def _window(self, ids: list[int], rng: random.Random) -> tuple[list[int], list[int]]:
        """Truncation steps 2-3 of the policy: (window ids, document indices of its images)."""
        cfg = self.cfg
        size = cfg.max_tokens - len(self.head)
        positions = [i for i, t in enumerate(ids) if t == self.special.image]
        if cfg.truncation == "head" or not positions:
            start = 0
        elif cfg.truncation == "first_image":
            start = max(0, positions[0] - cfg.lead_tokens)
        else:
            start = random_start(positions, len(ids), size, rng)
        first = sum(1 for p in positions if p < start)  # images before the window
        return self._cut(ids[start : start + size], first)


def random_start(positions: Sequence[int], n_ids: int, size: int, rng: random.Random) -> int:
    """Uniform over the window starts whose window holds an `<image>` with text after it (a
    uniform start over the whole document mostly misses the images of long pages); uniform over
    all starts when there is none."""
    last = max(0, n_ids - size)
    spans: list[list[int]] = []
    for p in positions:  # sorted, so the spans come sorted by their low end
        lo, hi = max(0, p - (size - 2)), min(p, last)
        if lo > hi:
            continue
        if spans and lo <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    if not spans:
        return rng.randint(0, last)
    r = rng.randrange(sum(hi - lo + 1 for lo, hi in spans))
    for lo, hi in spans:
        if r <= hi - lo:
            return lo + r
        r -= hi - lo + 1
    raise AssertionError("unreachable")


# --- batches -------------------------------------------------------------------------------


@dataclass
class Batch:
    """One source's collated batch; media holds only the real images/clips of the batch."""

    source: str
    input_ids: torch.Tensor  # (B, L), right-padded
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L), IGNORE_INDEX on `<image>`, padding
    media: torch.Tensor | list[torch.Tensor] | None  # (n, T, C, H, W), or a list when T differs
    media_batch_idx: torch.Tensor  # (n,)
    keys: list[str]
    stats: dict[str, int]  # tokens, pad, targets, media, frames, sequences
    state: dict[str, Any] = field(default_factory=dict)  # which worker made it, and where its reader stood (data.py)

    def to(self, device: torch.device | str) -> Batch:
        media = self.media
        if isinstance(media, torch.Tensor):
            media = media.to(device, non_blocking=True)
        elif media is not None:
            media = [m.to(device, non_blocking=True) for m in media]
        return dataclasses.replace(
            self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device), media=media, media_batch_idx=self.media_batch_idx.to(device))


def collate(samples: Sequence[Sample], tokenizer: FlamingoTokenizer, source: str = "") -> Batch:
    """Right-pad ids to the longest sequence; media flattened in (sequence, `<image>`) order."""
    special = tokenizer.special
    length = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), length), special.pad, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
        mask[row, : len(s.ids)] = 1
    labels = text_labels(ids, mask, special)
    flat = [m for s in samples for m in s.media]
    batch_idx = torch.tensor([row for row, s in enumerate(samples) for _ in s.media], dtype=torch.long)
    media: torch.Tensor | list[torch.Tensor] | None = None
    if flat:
        media = torch.stack(flat) if len({m.shape for m in flat}) == 1 else flat
    n_tokens = int(mask.sum())
    stats = {
        "sequences": len(samples), "tokens": n_tokens, "pad": ids.numel() - n_tokens,
        "targets": int((labels[:, 1:] != IGNORE_INDEX).sum()), "media": len(flat), "frames": sum(m.shape[0] for m in flat),
    }
    return Batch(source, ids, mask, labels, media, batch_idx, [s.key for s in samples], stats)

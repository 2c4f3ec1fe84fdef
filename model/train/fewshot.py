"""In-context learning, measured: fast binding on held-out lesson pages, and caption slots.

Fast binding (Frozen's fast concept binding, Tsimpoukelli et al., 2021): the sample crawl's
lesson pages (m3w_pipeline/sample/lesson.py) name two concepts (coloured shapes) with words
made up for that page, "<image>dax.". From a held-out page we build, for every image as the
query and k = 0, 1, 2, 4 shots, the prompt

    lead text, then k captioned images of each concept in shuffled order,  <image>___

and rank candidate words by the log-likelihood of "<word>.": the page's words plus
`distractors` words of other held-out pages. Chance is 1/#candidates; a model that only
copies some word of the context gets 1/#concepts; only one that binds words to what it sees
does better. 0 shots is the control: no context, no way to know the word.

Caption slots: for held-out image-text pairs ("Three red circles on a grey background"), the
colour, shape and count words are each replaced by every alternative seen in the held-out
captions, and the model's most likely caption is right or wrong for that slot: zero-shot
(`<image>caption`) and after `shots` captioned examples of other images.

Intervals are Wilson 95% intervals over queries (queries of one page share its words, so they
are a little optimistic).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from model.backbones import find_decoder_layers
from model.flamingo import Flamingo
from model.tokenizer import FlamingoTokenizer
from model.train.data import expand_shards, read_tar_samples
from model.train.samples import IMAGE_EXTS, ImageSpec, decode_image

LESSON_PATH = "/lessons/"  # m3w_pipeline/sample/lesson.py: how a lesson page's URL starts
_LESSON_CAPTION = re.compile(r"^([a-z]+)\.$")
_PAIR_CAPTION = re.compile(r"^(A single|[A-Z][a-z]+) ([a-z]+) ([a-z]+) on an? ([a-z]+) background$")
SLOTS = ("count", "colour", "shape")


@dataclass
class Lesson:
    """One held-out lesson page: the text before its first image, and its images with their words."""

    key: str
    lead: str
    images: list[torch.Tensor]  # (1, C, H, W) each, page order
    words: list[str]  # the word of each image


@dataclass
class Score:
    hits: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.hits / max(1, self.n)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval."""
        if self.n == 0:
            return 0.0, 1.0
        p, n = self.accuracy, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval()
        return {"accuracy": self.accuracy, "ci95": [low, high], "hits": self.hits, "n": self.n}


def read_lessons(urls: Sequence[str], spec: ImageSpec, max_lessons: int = 1000) -> list[Lesson]:
    """Lesson pages of built M3W shards (URL path under LESSON_PATH) whose every kept image is
    followed by its "<word>." caption."""
    lessons: list[Lesson] = []
    counters = {"corrupt_shards": 0}
    for url in expand_shards(list(urls)):
        for raw in read_tar_samples(url, counters):
            if "json" not in raw:
                continue
            doc = json.loads(raw["json"])
            if LESSON_PATH not in doc.get("url", ""):
                continue
            lead: list[str] = []
            images, words = [], []
            texts, nodes = doc["texts"], doc["images"]
            for i, (text, image) in enumerate(zip(texts, nodes)):
                if text is not None and not images:
                    lead.append(text)
                name = (image or {}).get("file")
                if image is None or image.get("status") != "ok" or not name or name.lower() not in raw:
                    continue
                match = _LESSON_CAPTION.match(texts[i + 1] or "") if i + 1 < len(texts) else None
                if match:
                    images.append(decode_image(raw[name.lower()], spec)[None])
                    words.append(match.group(1))
            if len(set(words)) >= 2:
                lessons.append(Lesson(raw["__key__"], "\n".join(lead), images, words))
            if len(lessons) >= max_lessons:
                return lessons
    return lessons


@torch.no_grad()
def score_continuations(model: Flamingo, prompts: list[list[int]], media: list[list[torch.Tensor]],
                        continuations: list[list[int]], batch_size: int = 32) -> list[float]:
    """Sum of log p(continuation | prompt, media) for each row (teacher forced, right padded)."""
    pad = model.special.pad
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = [p + c for p, c in zip(prompts[start : start + batch_size], continuations[start : start + batch_size])]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        row_media = media[start : start + batch_size]
        flat = [m for ms in row_media for m in ms]
        batch_idx = torch.tensor([r for r, ms in enumerate(row_media) for _ in ms], dtype=torch.long)
        logits = model(ids, mask, torch.cat(flat) if flat else None, batch_idx if flat else None).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        for r, (p, c) in enumerate(zip(prompts[start : start + batch_size], continuations[start : start + batch_size])):
            scores.append(float(logp[r, len(p) - 1 : len(p) - 1 + len(c)].sum()))
    return scores


def captioned_images(tokenizer: FlamingoTokenizer, words: Sequence[str]) -> list[int]:
    """`<image>word.<|endofchunk|><image>word.`...: lesson images with their words, as a lesson page reads."""
    special = tokenizer.special
    ids: list[int] = []
    for j, word in enumerate(words):
        ids += ([special.end_of_chunk] if j else []) + [special.image] + tokenizer.encode_text(f"{word}.")
    return ids


def binding_episodes(lessons: list[Lesson], shots: int, distractors: int, seed: int) -> list[dict[str, Any]]:
    """Every image of every lesson as a query once: `shots` other images of each of its page's
    concepts as context (shuffled), candidates = the page's words + `distractors` other pages' words."""
    rng = random.Random(f"binding:{seed}:{shots}")
    all_words = sorted({w for lesson in lessons for w in lesson.words})
    episodes = []
    for li, lesson in enumerate(lessons):
        page_words = sorted(set(lesson.words))
        for q, word in enumerate(lesson.words):
            context: list[int] = []
            for w in page_words:
                pool = [i for i, x in enumerate(lesson.words) if x == w and i != q]
                if len(pool) < shots:
                    break
                context += rng.sample(pool, shots)
            else:
                rng.shuffle(context)
                others = [w for w in all_words if w not in page_words]
                candidates = page_words + rng.sample(others, min(distractors, len(others)))
                episodes.append({"lesson": li, "query": q, "context": context, "candidates": candidates,
                                 "answer": candidates.index(word)})
    return episodes


def fast_binding(model: Flamingo, tokenizer: FlamingoTokenizer, lessons: list[Lesson], shot_counts: Sequence[int] = (0, 1, 2, 4),
                 distractors: int = 2, lead_tokens: int = 24, seed: int = 0) -> dict[str, Any]:
    """Accuracy of the made-up word for a query image at each number of shots (per concept)."""
    special = tokenizer.special
    results: dict[str, Any] = {"shots": {}, "lessons": len(lessons)}
    for shots in shot_counts:
        episodes = binding_episodes(lessons, shots, distractors, seed)
        prompts, media, conts = [], [], []
        for e in episodes:
            lesson = lessons[e["lesson"]]
            ids = tokenizer.encode_text(lesson.lead)[-lead_tokens:] if lesson.lead else []
            ids += captioned_images(tokenizer, [lesson.words[i] for i in e["context"]])
            ids += ([special.end_of_chunk] if e["context"] else []) + [special.image]
            images = [lesson.images[i] for i in e["context"]] + [lesson.images[e["query"]]]
            for c in e["candidates"]:
                prompts.append(ids)
                media.append(images)
                conts.append(tokenizer.encode_text(f"{c}."))
        scores = score_continuations(model, prompts, media, conts)
        hits, at = 0, 0
        for e in episodes:
            n = len(e["candidates"])
            best = max(range(n), key=lambda k: scores[at + k])
            hits += best == e["answer"]
            at += n
        results["shots"][shots] = Score(hits, len(episodes)).to_dict()
    concepts = min((len(set(lesson.words)) for lesson in lessons), default=2)
    results["candidates"] = concepts + distractors  # every page has as many other pages' words to draw from
    results["chance"] = 1.0 / results["candidates"]
    results["concepts_per_page"] = concepts
    return results


def concept_separation(model: Flamingo, tokenizer: FlamingoTokenizer, lessons: list[Lesson],
                       max_lessons: int = 20) -> dict[str, Any]:
    """Why a model binds or only copies: does cross-attention give each concept of a page a vector of
    its own? All `<image>` tokens embed alike (but for their position), so what the frozen LM's
    matching circuit can tell apart at them is what cross-attention added. Each page is read whole
    ("<image>word." per image); at the input of the first decoder layer after a cross-attention, its
    `<image>` states are centred over the page, and the mean cosine similarity is taken between images
    of the same concept and of the other concept. Measured on the demo: +0.70..+0.82 / -0.76..-0.86
    for models that bind (seeds 0-3), -0.08 / -0.10 for two that only copy. `spread` is the size of
    the varying part, as a share of each state's norm."""
    special = tokenizer.special
    layer_id = model.xattn_layer_ids[0]
    states: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        states.append((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach())

    hook = find_decoder_layers(model.lm)[layer_id].decoder_layer.register_forward_pre_hook(grab, with_kwargs=True)
    same: list[float] = []
    other: list[float] = []
    spread: list[float] = []
    try:
        for lesson in lessons[:max_lessons]:
            x = torch.tensor([captioned_images(tokenizer, lesson.words)])
            states.clear()
            with torch.no_grad():
                model(x, torch.ones_like(x), torch.cat(lesson.images))
            h = states[0][0, (x[0] == special.image).nonzero()[:, 0]].float()
            centred = h - h.mean(0)
            share = centred.norm(dim=-1) / h.norm(dim=-1)  # of each state, the part that varies over the page
            spread.append(float(share.mean()))
            centred = torch.where(share[:, None] > 1e-5, centred, 0.0)  # no variation: no direction (rounding)
            cos = F.normalize(centred, dim=-1) @ F.normalize(centred, dim=-1).T
            for a in range(len(lesson.words)):
                for b in range(a + 1, len(lesson.words)):
                    (same if lesson.words[a] == lesson.words[b] else other).append(float(cos[a, b]))
    finally:
        hook.remove()
    return {"same": sum(same) / max(1, len(same)), "other": sum(other) / max(1, len(other)),
            "spread": sum(spread) / max(1, len(spread)), "lessons": len(spread), "layer": layer_id}


def read_pairs(urls: Sequence[str], spec: ImageSpec, limit: int) -> list[tuple[torch.Tensor, str]]:
    """Held-out pairs whose caption has the sample crawl's "<count> <colour> <shape> on a <bg> background" form."""
    pairs: list[tuple[torch.Tensor, str]] = []
    counters = {"corrupt_shards": 0}
    for url in expand_shards(list(urls)):
        for raw in read_tar_samples(url, counters):
            ext = next((e for e in IMAGE_EXTS if e in raw), None)
            if ext is None or "txt" not in raw:
                continue
            caption = raw["txt"].decode("utf-8").strip()
            if _PAIR_CAPTION.match(caption):
                pairs.append((decode_image(raw[ext], spec)[None], caption))
            if len(pairs) >= limit:
                return pairs
    return pairs


def _slot_variants(caption: str, vocab: dict[str, set[str]]) -> dict[str, list[str]]:
    """For each slot: the caption with that slot's word replaced by each alternative (truth first).
    Shape alternatives keep the caption's number (plural nouns stay plural)."""
    m = _PAIR_CAPTION.match(caption)
    assert m is not None
    count, colour, shape, background = m.groups()
    plural = count != "A single"
    variants = {}
    for slot, value, options in (("count", count, {c for c in vocab["count"] if (c != "A single") == plural}),
                                 ("colour", colour, vocab["colour"]),
                                 ("shape", shape, {s for s in vocab["shape"] if s in vocab["plural" if plural else "singular"]})):
        alternatives = [value] + sorted(options - {value})
        parts = {"count": count, "colour": colour, "shape": shape}
        rows = []
        for alt in alternatives:
            parts[slot] = alt
            rows.append(f"{parts['count']} {parts['colour']} {parts['shape']} on a {background} background")
        variants[slot] = rows
    return variants


def caption_slots(model: Flamingo, tokenizer: FlamingoTokenizer, pairs: list[tuple[torch.Tensor, str]],
                  shots: int = 2, queries: int = 60) -> dict[str, Any]:
    """Per slot (count, colour, shape): how often the true word gives the most likely caption,
    zero-shot and after `shots` captioned examples (the pairs before the query ones)."""
    if len(pairs) < shots + 2:
        return {}
    vocab: dict[str, set[str]] = {"count": set(), "colour": set(), "shape": set(), "plural": set(), "singular": set()}
    for _, caption in pairs:
        m = _PAIR_CAPTION.match(caption)
        assert m is not None
        vocab["count"].add(m.group(1))
        vocab["colour"].add(m.group(2))
        vocab["shape"].add(m.group(3))
        vocab["singular" if m.group(1) == "A single" else "plural"].add(m.group(3))
    special = tokenizer.special
    examples, test = pairs[:shots], pairs[shots : shots + queries]
    out: dict[str, Any] = {"queries": len(test), "shots": shots}
    for setting, context in (("zero_shot", []), ("few_shot", examples)):
        prefix: list[int] = []
        for _, caption in context:
            prefix += [special.image] + tokenizer.encode_text(caption) + [special.end_of_chunk]
        prompts, media, conts, groups = [], [], [], []
        for image, caption in test:
            for slot, rows in _slot_variants(caption, vocab).items():
                groups.append((slot, len(rows)))
                for row in rows:
                    prompts.append(prefix + [special.image])
                    media.append([im for im, _ in context] + [image])
                    conts.append(tokenizer.encode_text(row) + [special.end_of_chunk])
        scores = score_continuations(model, prompts, media, conts)
        tally = {slot: [0, 0] for slot in SLOTS}
        at = 0
        for slot, n in groups:
            tally[slot][0] += int(max(range(n), key=lambda k: scores[at + k]) == 0)
            tally[slot][1] += 1
            at += n
        out[setting] = {slot: Score(h, n).to_dict() for slot, (h, n) in tally.items()}
    out["chance"] = {slot: _mean_chance(slot, test, vocab) for slot in SLOTS}
    return out


def _mean_chance(slot: str, test: list[tuple[torch.Tensor, str]], vocab: dict[str, set[str]]) -> float:
    sizes = [len(_slot_variants(caption, vocab)[slot]) for _, caption in test]
    return sum(1 / s for s in sizes) / max(1, len(sizes))


def format_table(binding: dict[str, Any], slots: dict[str, Any]) -> list[str]:
    """The demo's printed table."""
    lines = [f"fast binding: {binding['lessons']} held-out lesson pages, {binding.get('candidates', '?')} candidate words "
             f"({binding['concepts_per_page']} of the page + distractors): chance {binding['chance']:.0%}, "
             f"copying a word of the page {1 / binding['concepts_per_page']:.0%}"]
    lines.append("  shots/concept  accuracy  95% CI          queries")
    for shots, s in binding["shots"].items():
        lines.append(f"  {shots:>13}  {s['accuracy']:8.1%}  [{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}]  {s['n']:7d}")
    if "separation" in binding:
        sep = binding["separation"]
        lines.append(f"  <image> states after cross-attention (layer {sep['layer']}, {sep['lessons']} pages), cosine: same concept "
                     f"{sep['same']:+.2f}, other concept {sep['other']:+.2f} (binding separates them; copying does not)")
    if slots:
        lines.append(f"caption slots ({slots['queries']} held-out pairs; the true word ranked first among the alternatives):")
        lines.append(f"  slot    chance  zero-shot             {slots['shots']}-shot")
        for slot in SLOTS:
            z, f = slots["zero_shot"][slot], slots["few_shot"][slot]
            lines.append(f"  {slot:6s}  {slots['chance'][slot]:6.0%}  {z['accuracy']:5.0%} [{z['ci95'][0]:.0%}, {z['ci95'][1]:.0%}]"
                         f"    {f['accuracy']:5.0%} [{f['ci95'][0]:.0%}, {f['ci95'][1]:.0%}]")
    return lines

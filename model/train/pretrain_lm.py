"""Pre-train the small built-in LM on corpus text, then hand it to Flamingo frozen.

Why: Flamingo's recipe is a *pretrained* frozen LM; the gated cross-attention only learns to
inject what the images add. At toy scale that LM is the built-in byte-level decoder trained
for a minute on the text of our own shards (M3W documents' texts, pair and video captions).

Binding drills (`drill_rows`): each step also trains on a batch of its own of short windows of
synthetic in-context binding text, lines `<symbol><made-up word>.` where each drill pairs a few
symbols with made-up words, repeated in random order. A symbol is a marker byte (0x80-0xFF) whose
embedding is replaced by a random vector drawn afresh for every window, so the only way to predict
a repeated line's word is to find the earlier line whose vector matches and copy its word: an
induction circuit keyed on whatever vector stands at the symbol's place (with
`BuiltinLMConfig.smeared_keys`, one layer can do it). A large LM has learned such in-context copying
from web text; a toy LM trained for a minute on our corpus has not, and a frozen LM cannot learn it
later. With it, Flamingo's gated cross-attention only has to make each `<image>` carry a vector of
its own for what it shows (an `<image>` stands where a symbol stood, `<|endofchunk|>` where the
newline did) for the frozen LM to bind the sample crawl's lesson pages' words in context
(model/train/fewshot.py). Symbols are never targets (neither is `<image>`). Measured
(benchmarks/RESULTS.md, issue 15): the induction phase change comes for every seed tried with many
short drill windows per step (128 x 32 bytes) at lr 1e-3, and for few seeds or none with drills mixed
into the text batch, with 128-byte windows, at lr 3e-3, or without smeared keys.

Output: one safetensors file whose metadata holds the `BuiltinLMConfig` it was trained with;
`model.backbones.load_pretrained_lm` refuses a config that differs, so a Flamingo config cannot silently get
an LM of another shape. Text is read into memory (toy scale; `max_bytes` caps it).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from model.backbones import LM_WEIGHTS_FORMAT, BuiltinLM, save_pretrained_backbone
from model.config import BuiltinLMConfig
from model.tokenizer import ByteTokenizer
from model.train.data import expand_shards, read_tar_samples


def corpus_texts(urls: Sequence[str], max_bytes: int = 50_000_000) -> tuple[list[str], list[str]]:
    """(documents, captions): M3W documents' text nodes joined by newlines; pair and video captions."""
    docs: list[str] = []
    captions: list[str] = []
    total = 0
    counters = {"corrupt_shards": 0}
    for url in expand_shards(list(urls)):
        for sample in read_tar_samples(url, counters):
            try:
                if "txt" in sample:
                    text = sample["txt"].decode("utf-8").strip()
                    captions.append(text)
                elif "json" in sample:
                    text = "\n".join(t for t in json.loads(sample["json"]).get("texts", []) if t)
                    docs.append(text)
                else:
                    continue
            except (KeyError, ValueError, UnicodeDecodeError):
                continue
            total += len(text)
            if total >= max_bytes:
                return docs, captions
    return docs, captions


@dataclass
class PretrainResult:
    path: Path
    train_loss: float
    eval_loss: float | None
    steps: int
    seconds: float
    drills: dict[str, float] | None = None  # `drill_accuracy` on held-out drills, when drills were trained


def _stream(texts: Sequence[str], tok: ByteTokenizer) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        if text:
            ids.extend(tok.encode_text(text))  # a literal "<image>" in a page is text
            ids.append(ord("\n"))
    return torch.tensor(ids, dtype=torch.long)


DRILL_SYMBOLS = tuple(range(0x80, 0x100))
DRILL_WAYS = (2, 3)  # symbols (and words) per drill
DRILL_LINES = (8, 14)  # lines per drill
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def drill_stream(n_tokens: int, tok: ByteTokenizer, seed: int) -> torch.Tensor:
    """`n_tokens` of binding drills (see the module docstring), drills separated by a blank line."""
    rng = random.Random(f"binding-drills:{seed}")
    ids: list[int] = []
    while len(ids) < n_tokens:
        ways = rng.randint(*DRILL_WAYS)
        symbols = rng.sample(DRILL_SYMBOLS, ways)
        words: list[str] = []
        while len(words) < ways:
            word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))) + rng.choice(_CONSONANTS)
            if word not in words:
                words.append(word)
        for _ in range(rng.randint(*DRILL_LINES)):
            k = rng.randrange(ways)
            ids += [symbols[k], *tok.encode_text(f"{words[k]}.\n")]
        ids.append(ord("\n"))
    return torch.tensor(ids[:n_tokens], dtype=torch.long)


def drill_embeddings(lm: BuiltinLM, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Token embeddings of drill windows, where the symbol bytes get a random vector per (row, symbol)
    at the scale of the byte embeddings (see the module docstring)."""
    embeds = lm.get_input_embeddings()(ids)
    is_symbol = ids >= DRILL_SYMBOLS[0]
    if not is_symbol.any():
        return embeds
    scale = float(lm.get_input_embeddings().weight.detach().std())
    table = torch.randn(ids.shape[0], len(DRILL_SYMBOLS), embeds.shape[-1], generator=gen) * scale
    vectors = table[torch.arange(ids.shape[0])[:, None], (ids - DRILL_SYMBOLS[0]).clamp(min=0)]
    return torch.where(is_symbol[..., None], vectors, embeds)


def drill_accuracy(lm: BuiltinLM, seq_len: int, seed: int, windows: int = 32) -> dict[str, float]:
    """How the LM predicts a drill word's first letter where its symbol was seen before in the same
    drill (held-out drills, seed `seed`): `bound` = the letter of that symbol's word (binding),
    `copied` = the first letter of some word of the drill (copying from context without binding;
    1/ways of it is what picking either word gives). Symbols get their random vectors as in training."""
    tok = ByteTokenizer()
    data = drill_stream(windows * (seq_len + 1), tok, seed + 7919)
    x = data.view(windows, seq_len + 1)[:, :-1]
    gen = torch.Generator().manual_seed(seed)
    was_training = lm.training
    lm.eval()
    with torch.no_grad():
        pred = lm(inputs_embeds=drill_embeddings(lm, x, gen)).logits.argmax(-1)
    lm.train(was_training)
    bound = copied = n = 0
    for row, row_pred in zip(x.tolist(), pred.tolist()):
        words: dict[int, int] = {}  # symbol -> first letter of its word, in the current drill
        for p, t in enumerate(row[:-1]):
            if t == ord("\n") and p and row[p - 1] == ord("\n"):
                words = {}  # a blank line: a new drill
            elif t >= DRILL_SYMBOLS[0]:
                if t in words:
                    n += 1
                    bound += row_pred[p] == words[t]
                    copied += row_pred[p] in words.values()
                words[t] = row[p + 1]
    return {"bound": bound / max(1, n), "copied": copied / max(1, n), "queries": float(n)}


def _windows(pools: list[torch.Tensor], weights: list[float], batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Random windows of `length` + 1 tokens, each row's pool (documents, captions) drawn by weight."""
    choice = torch.multinomial(torch.tensor(weights, dtype=torch.float), batch, replacement=True, generator=gen)
    rows = []
    for k in choice.tolist():
        data = pools[k]
        start = int(torch.randint(0, len(data) - length - 1, (1,), generator=gen))
        rows.append(data[start : start + length + 1])
    return torch.stack(rows)


def _drill_loss(lm: BuiltinLM, data: torch.Tensor, rows: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Next-byte loss on `rows` random drill windows of `length` bytes (symbols are not targets)."""
    xy = _windows([data], [1.0], rows, length, gen)
    logits = lm(inputs_embeds=drill_embeddings(lm, xy[:, :-1], gen)).logits
    targets = xy[:, 1:].masked_fill(xy[:, 1:] >= DRILL_SYMBOLS[0], -100)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def _pools(urls: Sequence[str], tok: ByteTokenizer, caption_weight: float, length: int,
           seed: int) -> tuple[list[torch.Tensor], list[float]]:
    docs, captions = corpus_texts(urls)
    rng = random.Random(seed)
    rng.shuffle(docs)
    rng.shuffle(captions)
    pools, weights = [], []
    for texts, weight in ((docs, 1.0 - caption_weight), (captions, caption_weight)):
        data = _stream(texts, tok)
        if weight > 0 and len(data) > length + 1:
            pools.append(data)
            weights.append(weight)
    if not pools:
        raise ValueError(f"not enough text in {list(urls)} for windows of {length} tokens")
    return pools, weights


def pretrain_lm(train_urls: Sequence[str], out: str | Path, cfg: BuiltinLMConfig, *, steps: int = 300,
                batch_size: int = 16, seq_len: int = 128, lr: float = 3e-3, caption_weight: float = 0.5,
                drill_rows: int = 0, drill_seq_len: int = 32, eval_urls: Sequence[str] = (), seed: int = 0,
                log: bool = True) -> PretrainResult:
    """AdamW with warmup + cosine on random windows of the corpus text (byte tokens), `caption_weight`
    of them from the captions (short, but what Flamingo will write).

    With `drill_rows` > 0, each step adds a batch of its own of `drill_rows` binding-drill windows of
    `drill_seq_len` bytes (see the module docstring), the loss being the mean of the text and the
    drill losses. The built-in LM has learned absolute positions, so `seq_len` must cover the
    positions Flamingo will use (packed pairs, few-shot prompts, M3W windows): measured for the demo,
    64-byte windows model a lone caption better than 128-byte ones but break down past position 64,
    and random position offsets cost more than they give."""
    t0 = time.perf_counter()
    tok = ByteTokenizer()
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the LM's max_seq_len {cfg.max_seq_len}")
    if drill_rows < 0 or not 0 < drill_seq_len <= cfg.max_seq_len:
        raise ValueError(f"drill_rows {drill_rows} (>= 0) / drill_seq_len {drill_seq_len} (1..{cfg.max_seq_len}) are not valid")
    pools, weights = _pools(train_urls, tok, caption_weight, seq_len, seed)
    drill_data = drill_stream(max(200_000, 20 * drill_seq_len), tok, seed) if drill_rows else None
    eval_pools = _pools(eval_urls, tok, caption_weight, seq_len, seed) if eval_urls else None
    torch.manual_seed(seed)
    lm = BuiltinLM(cfg).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    gen = torch.Generator().manual_seed(seed)
    loss_ema, probe = None, None
    probe_windows = 32 * max(1, seq_len // drill_seq_len)  # as many held-out drill bytes as 32 text windows
    for step in range(steps):
        xy = _windows(pools, weights, batch_size, seq_len, gen)
        logits = lm(input_ids=xy[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        if drill_data is not None:
            loss = 0.5 * (loss + _drill_loss(lm, drill_data, drill_rows, drill_seq_len, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if log and (step % 100 == 0 or step == steps - 1):
            probe = drill_accuracy(lm, drill_seq_len, seed, probe_windows) if drill_rows else None
            shown = f"  drills: bound {probe['bound']:.0%}, copied {probe['copied']:.0%}" if probe else ""
            print(f"  lm step {step:4d}  loss {loss_ema:.3f}{shown}", flush=True)
    eval_loss = None
    if eval_pools is not None:
        lm.eval()
        with torch.no_grad():
            xy = _windows(*eval_pools, 64, seq_len, torch.Generator().manual_seed(seed + 1))
            eval_loss = float(F.cross_entropy(lm(input_ids=xy[:, :-1]).logits.flatten(0, 1), xy[:, 1:].flatten()))
    state = {k: v for k, v in lm.state_dict().items() if k != "lm_head.weight"}  # tied to tok_emb
    out = save_pretrained_backbone(state, out, LM_WEIGHTS_FORMAT, cfg, tokenizer=tok.name)
    if drill_rows and not (log and steps):  # the last log step probed the final weights already
        probe = drill_accuracy(lm, drill_seq_len, seed, probe_windows)
    return PretrainResult(out, float(loss_ema or 0.0), eval_loss, steps, time.perf_counter() - t0, probe)


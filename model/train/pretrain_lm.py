"""Pre-train the small built-in LM on corpus text, then hand it to Flamingo frozen.

Why: Flamingo's recipe is a *pretrained* frozen LM; the gated cross-attention only learns to
inject what the images add. At toy scale that LM is the built-in byte-level decoder trained
for a minute on the text of our own shards (M3W documents' texts, pair and video captions).

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


def _stream(texts: Sequence[str], tok: ByteTokenizer) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        if text:
            ids.extend(tok.encode_text(text))  # a literal "<image>" in a page is text
            ids.append(ord("\n"))
    return torch.tensor(ids, dtype=torch.long)


def _windows(pools: list[torch.Tensor], weights: list[float], batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Random windows; each row's pool drawn by weight (documents vs captions)."""
    choice = torch.multinomial(torch.tensor(weights, dtype=torch.float), batch, replacement=True, generator=gen)
    rows = []
    for k in choice.tolist():
        data = pools[k]
        start = int(torch.randint(0, len(data) - length - 1, (1,), generator=gen))
        rows.append(data[start : start + length + 1])
    return torch.stack(rows)


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
                eval_urls: Sequence[str] = (), seed: int = 0, log: bool = True) -> PretrainResult:
    """AdamW with warmup + cosine on random windows of the corpus text (byte tokens).

    A share `caption_weight` of the windows comes from the captions (short, but what Flamingo will
    write). The built-in LM has learned absolute positions, so `seq_len` must cover the positions
    Flamingo will use (packed pairs, few-shot prompts, M3W windows): measured for the demo, 64-byte
    windows model a lone caption better than 128-byte ones but break down past position 64, and
    random position offsets cost more than they give."""
    t0 = time.perf_counter()
    tok = ByteTokenizer()
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the LM's max_seq_len {cfg.max_seq_len}")
    pools, weights = _pools(train_urls, tok, caption_weight, seq_len, seed)
    eval_pools = _pools(eval_urls, tok, caption_weight, seq_len, seed) if eval_urls else None
    torch.manual_seed(seed)
    lm = BuiltinLM(cfg).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    gen = torch.Generator().manual_seed(seed)
    loss_ema = None
    for step in range(steps):
        xy = _windows(pools, weights, batch_size, seq_len, gen)
        logits = lm(input_ids=xy[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if log and (step % 100 == 0 or step == steps - 1):
            print(f"  lm step {step:4d}  loss {loss_ema:.3f}", flush=True)
    eval_loss = None
    if eval_pools is not None:
        lm.eval()
        with torch.no_grad():
            xy = _windows(*eval_pools, 64, seq_len, torch.Generator().manual_seed(seed + 1))
            eval_loss = float(F.cross_entropy(lm(input_ids=xy[:, :-1]).logits.flatten(0, 1), xy[:, 1:].flatten()))
    state = {k: v for k, v in lm.state_dict().items() if k != "lm_head.weight"}  # tied to tok_emb
    out = save_pretrained_backbone(state, out, LM_WEIGHTS_FORMAT, cfg, tokenizer=tok.name)
    return PretrainResult(out, float(loss_ema or 0.0), eval_loss, steps, time.perf_counter() - t0)


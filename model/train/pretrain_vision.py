"""Pre-train the small built-in ViT contrastively on the corpus's image-text pairs, then freeze it.

Why: Flamingo's vision encoder is contrastively pretrained (CLIP-style) on image-text pairs and
frozen; a random frozen ViT keeps the pixels' information but buries it, and the tiny demo has
minutes, not days, to dig it out. At toy scale: the built-in ViT (mean-pooled patch features +
a linear head) against a bag-of-words caption encoder, symmetric InfoNCE with a learned
temperature, on the ALIGN/LTIP pairs. Only the ViT is kept (Flamingo uses its patch features).

Output: one safetensors file whose metadata holds the `BuiltinViTConfig`; `model.backbones.load_pretrained_vision`
refuses any other config.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import VIT_WEIGHTS_FORMAT, BuiltinViT, save_pretrained_backbone
from model.config import BuiltinViTConfig
from model.image_prep import BUILTIN_MEAN, BUILTIN_STD
from model.train.data import expand_shards, read_tar_samples
from model.train.samples import IMAGE_EXTS, ImageSpec, decode_image

_WORD = re.compile(r"[a-z]+")


def load_pairs(urls: Sequence[str], spec: ImageSpec, max_pairs: int = 20000) -> tuple[torch.Tensor, list[str]]:
    """Every decodable (image, caption) pair of the shards: (N, 3, S, S) and the captions."""
    images, captions = [], []
    counters = {"corrupt_shards": 0}
    for url in expand_shards(list(urls)):
        for sample in read_tar_samples(url, counters):
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None or "txt" not in sample:
                continue
            try:
                images.append(decode_image(sample[ext], spec))
                captions.append(sample["txt"].decode("utf-8"))
            except Exception:  # noqa: BLE001 - a broken pair is skipped
                continue
            if len(images) >= max_pairs:
                return torch.stack(images), captions
    if not images:
        raise ValueError(f"no image-text pairs in {list(urls)}")
    return torch.stack(images), captions


class BagOfWords(nn.Module):
    """Caption encoder for contrastive pretraining: mean of word embeddings, then a projection."""

    def __init__(self, vocab: dict[str, int], dim: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.EmbeddingBag(len(vocab) + 1, dim, mode="mean")  # row 0: unknown words
        self.proj = nn.Linear(dim, dim)

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, offsets = [], []
        for caption in captions:
            offsets.append(len(ids))
            ids.extend(self.vocab.get(w, 0) for w in _WORD.findall(caption.lower()) or ["?"])
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids, offsets))


@dataclass
class VisionPretrainResult:
    path: Path
    train_loss: float
    heldout_accuracy: float | None  # image -> caption top-1 among a held-out batch
    steps: int
    seconds: float


def _retrieval_accuracy(vit: BuiltinViT, head: nn.Module, text: BagOfWords, images: torch.Tensor,
                        captions: list[str], batch: int = 64) -> float:
    """Top-1 image -> caption retrieval within held-out batches; a caption counts as right when it is
    the image's own or an identical one."""
    hits = total = 0
    with torch.no_grad():
        for start in range(0, len(captions), batch):
            im, caps = images[start : start + batch], captions[start : start + batch]
            if len(caps) < 2:
                continue
            a = F.normalize(head(vit(im).mean(1)), dim=-1)
            b = F.normalize(text(*text.tokenize(caps)), dim=-1)
            best = (a @ b.T).argmax(-1).tolist()
            norm = [" ".join(_WORD.findall(c.lower())) for c in caps]
            hits += sum(norm[i] == norm[j] for i, j in enumerate(best))
            total += len(caps)
    return hits / max(1, total)


def pretrain_vision(pair_urls: Sequence[str], out: str | Path, cfg: BuiltinViTConfig, *, steps: int = 300,
                    batch_size: int = 128, lr: float = 2e-3, resize: str = "pad", heldout_urls: Sequence[str] = (),
                    seed: int = 0, log: bool = True) -> VisionPretrainResult:
    t0 = time.perf_counter()
    spec = ImageSpec(cfg.image_size, BUILTIN_MEAN, BUILTIN_STD, resize)
    images, captions = load_pairs(pair_urls, spec)
    words = sorted({w for c in captions for w in _WORD.findall(c.lower())})
    torch.manual_seed(seed)
    vit = BuiltinViT(cfg).train()
    dim = cfg.dim
    head, text = nn.Linear(cfg.dim, dim), BagOfWords({w: i + 1 for i, w in enumerate(words)}, dim)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*vit.parameters(), *head.parameters(), *text.parameters(), log_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(seed)
    loss_ema = None
    for step in range(steps):
        idx = torch.randperm(len(captions), generator=gen)[: batch_size]
        a = F.normalize(head(vit(images[idx]).mean(1)), dim=-1)
        b = F.normalize(text(*text.tokenize([captions[i] for i in idx.tolist()])), dim=-1)
        logits = log_scale.exp().clamp(max=100) * a @ b.T
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if log and (step % 100 == 0 or step == steps - 1):
            print(f"  vit step {step:4d}  contrastive loss {loss_ema:.3f}", flush=True)
    vit.eval()
    accuracy = None
    if heldout_urls:
        held_images, held_captions = load_pairs(heldout_urls, spec)
        accuracy = _retrieval_accuracy(vit, head, text, held_images, held_captions)
    out = save_pretrained_backbone(vit.state_dict(), out, VIT_WEIGHTS_FORMAT, cfg, resize=resize)
    return VisionPretrainResult(out, float(loss_ema or 0.0), accuracy, steps, time.perf_counter() - t0)


"""Few-shot generation: `<image>caption<|endofchunk|><image>...` prompts, greedy or beam search.

Media are encoded once per call (vision encoder + resampler), before the first step; beams
and steps reuse those latents by index. The LM runs with its KV cache (use_cache=False
recomputes the whole prefix each step, a reference for tests). Generated tokens attend to
the last media of their prompt; `<image>` and the other added tokens except the stop tokens
are never generated. Prompts must be left-padded so every row ends with a real token.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from model.backbones import reorder_cache, repeat_cache
from model.flamingo import Flamingo, Media, MediaContext
from model.tokenizer import FlamingoTokenizer


def _allowed_logits(model: Flamingo, logits: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    banned = [i for i in range(model.special.n_base, model.special.vocab_size) if i not in stop_ids]
    return logits.index_fill(-1, torch.tensor(banned, device=logits.device, dtype=torch.long), float("-inf"))


class _Stepper:
    """Feeds generated tokens to the model, with or without the KV cache."""

    def __init__(self, model: Flamingo, ids: torch.Tensor, mask: torch.Tensor, ctx: MediaContext | None, use_cache: bool):
        self.model, self.prompt, self.mask, self.ctx, self.use_cache = model, ids, mask, ctx, use_cache
        logits, self.cache = model.decode(ids, mask, ctx, use_cache=use_cache)
        self.next_logits = logits[:, -1]

    def expand(self, k: int) -> None:
        """Beam search: the prompt is run once, then every row's state is copied k times
        (the media latents are shared by index, not copied)."""
        rows = torch.arange(self.prompt.shape[0], device=self.prompt.device).repeat_interleave(k)
        self.prompt, self.mask, self.next_logits = self.prompt[rows], self.mask[rows], self.next_logits[rows]
        if self.ctx is not None:
            self.ctx = self.model.context(self.ctx.latents, self.ctx.table[rows], self.ctx.token_local[rows])
        if self.use_cache:
            self.cache = repeat_cache(self.cache, k)

    def _ctx(self, n_tokens: int) -> MediaContext | None:
        if self.ctx is None:
            return None
        last = self.ctx.token_local[:, -1:]  # generated tokens keep attending to the prompt's last media
        local = last.expand(-1, n_tokens) if self.use_cache else torch.cat([self.ctx.token_local, last.expand(-1, n_tokens)], 1)
        return self.model.context(self.ctx.latents, self.ctx.table, local)

    def step(self, generated: torch.Tensor, reorder: torch.Tensor | None = None) -> torch.Tensor:
        """Append the last column of `generated` (all tokens so far, already in beam order); next logits."""
        if reorder is not None:
            self.prompt, self.mask = self.prompt[reorder], self.mask[reorder]
            if self.use_cache:
                self.cache = reorder_cache(self.cache, reorder)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        if self.use_cache:
            logits, self.cache = self.model.decode(generated[:, -1:], self.mask, self._ctx(1), self.cache, True)
        else:
            full = torch.cat([self.prompt, generated], dim=1)
            logits, _ = self.model.decode(full, self.mask, self._ctx(generated.shape[1]))
        self.next_logits = logits[:, -1]
        return self.next_logits


def _trim(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def generate(
    model: Flamingo,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    media: Media | None = None,
    media_batch_idx: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    stop_token_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """New tokens of each prompt, up to and including the first stop token (default `<|endofchunk|>`)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: every row's last token must be real")
    stop_ids = list(stop_token_ids) if stop_token_ids is not None else [model.special.end_of_chunk]
    latents = model.encode_media(media) if media is not None else None  # once, whatever num_beams
    ctx = model.prompt_context(input_ids, attention_mask, latents, media_batch_idx)
    if num_beams == 1:
        return _greedy(model, input_ids, attention_mask, ctx, max_new_tokens, use_cache, stop_ids)
    return _beam_search(model, input_ids, attention_mask, ctx, max_new_tokens, num_beams, length_penalty, use_cache, stop_ids)


def _greedy(model: Flamingo, ids: torch.Tensor, mask: torch.Tensor, ctx: MediaContext | None,
            max_new_tokens: int, use_cache: bool, stop_ids: list[int]) -> list[list[int]]:
    stepper = _Stepper(model, ids, mask, ctx, use_cache)
    stops = torch.tensor(stop_ids, device=ids.device)
    generated = ids.new_empty(ids.shape[0], 0)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    next_logits = stepper.next_logits
    for step in range(max_new_tokens):
        token = _allowed_logits(model, next_logits, stop_ids).argmax(-1)
        token = token.masked_fill(done, model.special.pad)  # finished rows idle; they never affect others
        generated = torch.cat([generated, token[:, None]], dim=1)
        done |= torch.isin(token, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        next_logits = stepper.step(generated)
    return [_trim(row, stop_ids) for row in generated.tolist()]


def _beam_search(model: Flamingo, ids: torch.Tensor, mask: torch.Tensor, ctx: MediaContext | None,
                 max_new_tokens: int, k: int, length_penalty: float, use_cache: bool,
                 stop_ids: list[int]) -> list[list[int]]:
    """Standard beam search with length-normalised finished hypotheses (score / length**penalty)."""
    b = ids.shape[0]
    stepper = _Stepper(model, ids, mask, ctx, use_cache)
    stepper.expand(k)
    scores = torch.full((b, k), float("-inf"), device=ids.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    generated = ids.new_empty(b * k, 0)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    next_logits = stepper.next_logits
    for step in range(max_new_tokens):
        logp = F.log_softmax(_allowed_logits(model, next_logits, stop_ids), dim=-1)
        vocab = logp.shape[-1]
        top_scores, top_idx = (scores.view(-1, 1) + logp).view(b, k * vocab).topk(2 * k, dim=-1)
        new_scores = torch.full((b, k), float("-inf"), device=ids.device)
        new_src = torch.arange(k, device=ids.device).repeat(b, 1)
        new_tok = torch.full((b, k), model.special.pad, dtype=torch.long, device=ids.device)
        for i in range(b):
            if done[i]:
                continue
            n = 0
            for rank, (s, flat) in enumerate(zip(top_scores[i].tolist(), top_idx[i].tolist())):
                src, tok = divmod(flat, vocab)
                if s == float("-inf"):
                    break
                if tok in stop_ids:
                    if rank < k:
                        hyp = generated[i * k + src].tolist() + [tok]
                        finished[i].append((s / len(hyp) ** length_penalty, hyp))
                    continue
                new_scores[i, n], new_src[i, n], new_tok[i, n] = s, src, tok
                n += 1
                if n == k:
                    break
            finished[i] = sorted(finished[i], key=lambda h: -h[0])[:k]
            best_running = float(new_scores[i, 0]) / (step + 1) ** length_penalty
            done[i] = len(finished[i]) == k and best_running <= finished[i][-1][0]
        reorder = (torch.arange(b, device=ids.device)[:, None] * k + new_src).view(-1)
        generated = torch.cat([generated[reorder], new_tok.view(-1, 1)], dim=1)
        scores = new_scores
        if all(done) or step == max_new_tokens - 1:
            break
        next_logits = stepper.step(generated, reorder)
    for i in range(b):
        if not done[i]:
            for j in range(k):
                if scores[i, j] > float("-inf"):
                    hyp = generated[i * k + j].tolist()
                    finished[i].append((float(scores[i, j]) / max(len(hyp), 1) ** length_penalty, hyp))
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


def prompt_media(images: Sequence[Sequence[torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-prompt lists of media tensors -> (flat media list, media_batch_idx)."""
    flat = [m for per_prompt in images for m in per_prompt]
    batch_idx = torch.tensor([i for i, per_prompt in enumerate(images) for _ in per_prompt], dtype=torch.long)
    return flat, batch_idx


def generate_text(
    model: Flamingo,
    tokenizer: FlamingoTokenizer,
    prompts: Sequence[str],
    images: Sequence[Sequence[torch.Tensor]],
    **kwargs: Any,
) -> list[str]:
    """Tokenise (left-padded), generate and decode; `images[i]` are prompt i's media in `<image>` order."""
    device = next(model.parameters()).device
    ids, mask = tokenizer.batch_encode(prompts, padding_side="left")
    flat, batch_idx = prompt_media(images)
    media = flat if flat else None
    out = generate(model, ids.to(device), mask.to(device), media, batch_idx.to(device) if flat else None, **kwargs)
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in out]

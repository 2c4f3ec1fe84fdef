"""Flamingo (Alayrac et al., 2022) on frozen backbones.

    media --frozen vision encoder--> patch features --Perceiver Resampler--> n_latents tokens per media
    text  --frozen LM, with a GATED XATTN-DENSE block before every N-th layer--> logits

Each text token cross-attends to the media that most recently precedes it (its own
`<image>` token included). The gates start at tanh(0) = 0, so an untrained model is
exactly the frozen LM.

Media input format (what `Flamingo.forward` takes):
    media            only the real media of the batch, no padding images:
                     a tensor (n_media, T, C, H, W) (T frames; images have T = 1), a tensor
                     (n_media, C, H, W) of images, or a list of (T_i, C, H, W) / (C, H, W)
                     tensors when images and videos of different lengths share a batch.
    media_batch_idx  (n_media,) long: the sequence each media belongs to; media of one
                     sequence are in the order of its `<image>` tokens. None: media are in
                     `<image>` order row by row.

Cross-attention cost: the default "routed" implementation groups the text tokens by the
media they attend to and processes them in blocks of `xattn.block_size` tokens against only
that media's latents, so a token pays for n_latents keys however many media its sequence
holds. The "dense" implementation (masked attention over all media of the sequence, as in
OpenFlamingo) is kept for the attend-all-previous-media option and as a reference; the routed
setting also uses it when no sequence holds more than one media (same cost, no gathers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.backbones import cache_argument, cache_length, find_decoder_layers, freeze, lm_dims, output_cache
from model.config import FlamingoConfig, ResamplerConfig, XAttnConfig
from model.tokenizer import SpecialTokens

IGNORE_INDEX = -100
Media = torch.Tensor | Sequence[torch.Tensor]


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads*d) -> (..., heads, n, d)"""
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(..., heads, n, d) -> (..., n, heads*d)"""
    return t.transpose(-3, -2).flatten(-2)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


# --- Perceiver Resampler -------------------------------------------------------------------


class PerceiverAttention(nn.Module):
    """Latents attend to [media features; latents] (the paper's concatenated keys/values)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor, media_mask: torch.Tensor | None) -> torch.Tensor:
        """media (n, S, D), latents (n, N, D), media_mask (n, S) True = real frame patch."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = split_heads(self.to_q(latents), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1))
        mask = None
        if media_mask is not None:  # latents are always visible, so no row is ever fully masked
            latent_ok = media_mask.new_ones(media_mask.shape[0], latents.shape[1])
            mask = torch.cat([media_mask, latent_ok], dim=1)[:, None, None, :]
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class PerceiverResampler(nn.Module):
    """Any number of patches x frames -> a fixed set of `n_latents` visual tokens per media."""

    def __init__(self, cfg: ResamplerConfig, media_dim: int) -> None:
        super().__init__()
        self.dim = cfg.dim or media_dim
        self.proj_in = nn.Linear(media_dim, self.dim) if self.dim != media_dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(cfg.n_latents, self.dim))
        self.time_emb = nn.Parameter(torch.randn(cfg.max_frames, self.dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(self.dim, cfg.heads, cfg.dim_head), feed_forward(self.dim, cfg.ff_mult)])
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(self.dim)

    def time_embeddings(self, n_frames: int) -> torch.Tensor:
        """(n_frames, dim): the learned ones, linearly interpolated when a video is longer than training's."""
        if n_frames <= self.time_emb.shape[0]:
            return self.time_emb[:n_frames]
        stretched = F.interpolate(self.time_emb.T[None], size=n_frames, mode="linear", align_corners=True)
        return stretched[0].T

    def clip_time_embeddings(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(n, T, dim): each clip's time embeddings for its own frame count (real frames first,
        padding rows zero), so a clip is encoded the same whatever it is batched with."""
        counts = frame_mask.sum(1).tolist()
        by_count = {c: self.time_embeddings(c) for c in set(counts)}
        return torch.stack([F.pad(by_count[c], (0, 0, 0, frame_mask.shape[1] - c)) for c in counts])

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (n, T, P, D_media), frame_mask (n, T) True = real frame, real frames first
        (clips padded to the longest) -> latents (n, n_latents, dim)."""
        n, t, p, _ = features.shape
        time = self.time_embeddings(t)[None] if frame_mask is None else self.clip_time_embeddings(frame_mask)
        x = (self.proj_in(features) + time[:, :, None, :]).flatten(1, 2)
        mask = None if frame_mask is None else frame_mask.repeat_interleave(p, dim=1)
        latents = self.latents.expand(n, -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents, mask)
            latents = latents + ff(latents)
        return self.norm(latents)


# --- which media each token sees ----------------------------------------------------------


def attended_media_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    media_token_id: int,
    n_previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, L) index, within its sequence, of the media each token attends to: the most recent
    `<image>` at or before it; -1 before the first one and on padding. `n_previous` (B,) counts
    media already seen in an earlier chunk (incremental decoding)."""
    index = (input_ids == media_token_id).long().cumsum(-1) - 1
    if n_previous is not None:
        index = index + n_previous[:, None]
    if attention_mask is not None:
        index = index.masked_fill(attention_mask[:, -input_ids.shape[1] :] == 0, -1)
    return index


def media_table(media_batch_idx: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B, M): flat index (into the media tensor) of each sequence's m-th media; -1 = none."""
    counts = torch.bincount(media_batch_idx, minlength=batch_size)
    width = int(counts.max()) if media_batch_idx.numel() else 0
    order = torch.argsort(media_batch_idx, stable=True)
    rows = media_batch_idx[order]
    slot = torch.arange(len(order), device=order.device) - (counts.cumsum(0) - counts)[rows]
    table = torch.full((batch_size, width), -1, dtype=torch.long, device=media_batch_idx.device)
    table[rows, slot] = order
    return table


@dataclass
class MediaRouting:
    """Tokens grouped by attended media, in blocks of `block_size` tokens that share one media."""

    token_pos: torch.Tensor  # (n,) flat (B*L) positions of tokens that attend to a media
    slot_index: torch.Tensor  # (n,) where each such token sits: block * block_size + slot
    block_media: torch.Tensor  # (n_blocks,) flat media index each block attends to
    n_blocks: int
    block_size: int


def route_tokens(token_media: torch.Tensor, n_media: int, block_size: int) -> MediaRouting:
    """Group tokens by media. Padding per media is < block_size slots, so the cost is
    (n_tokens + n_media * block_size) * n_latents instead of n_tokens * n_media * n_latents."""
    flat = token_media.reshape(-1)
    pos = (flat >= 0).nonzero().squeeze(1)
    media = flat[pos]
    order = torch.argsort(media, stable=True)
    pos, media = pos[order], media[order]
    counts = torch.bincount(media, minlength=n_media)
    rank = torch.arange(len(media), device=flat.device) - (counts.cumsum(0) - counts)[media]
    blocks_per_media = (counts + block_size - 1) // block_size
    first_block = blocks_per_media.cumsum(0) - blocks_per_media
    block_media = torch.repeat_interleave(torch.arange(n_media, device=flat.device), blocks_per_media)
    block = first_block[media] + rank // block_size
    return MediaRouting(
        token_pos=pos,
        slot_index=block * block_size + rank % block_size,
        block_media=block_media,
        n_blocks=len(block_media),
        block_size=block_size,
    )


@dataclass
class MediaContext:
    """What the cross-attention blocks see during one LM call."""

    latents: torch.Tensor  # (n_media, n_latents, dim): resampled media of the whole batch
    table: torch.Tensor  # (B, M) from `media_table`
    token_local: torch.Tensor  # (B, L) from `attended_media_index`
    routing: MediaRouting | None = None  # set for the routed implementation

    @property
    def token_media(self) -> torch.Tensor:
        """(B, L) flat media index each token attends to (-1 = none)."""
        if self.table.shape[1] == 0:
            return torch.full_like(self.token_local, -1)
        gathered = self.table.gather(1, self.token_local.clamp(0, self.table.shape[1] - 1))
        return torch.where(self.token_local >= 0, gathered, -1)


# --- GATED XATTN-DENSE --------------------------------------------------------------------


class MaskedCrossAttention(nn.Module):
    """Text queries attend to the latents of their media; tokens with no media get exactly 0."""

    def __init__(self, dim: int, media_dim: int, cfg: XAttnConfig) -> None:
        super().__init__()
        self.heads, self.routed, self.only_immediate = cfg.heads, cfg.implementation == "routed", cfg.only_attend_immediate_media
        inner = cfg.heads * cfg.dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(media_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: MediaContext) -> torch.Tensor:
        k, v = self.to_kv(media.latents).chunk(2, dim=-1)  # (n_media, n_latents, inner)
        if media.routing is not None and self.routed:
            return self._routed(x, k, v, media.routing)
        return self._dense(x, k, v, media)  # also the routed choice when no sequence has 2+ media: same cost

    def _routed(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: MediaRouting) -> torch.Tensor:
        b, n, d = x.shape
        out = x.new_zeros(b * n, d)
        if r.n_blocks == 0:
            return out.view(b, n, d)
        # index_select / index_copy: their backward passes are cheap gathers and scatters
        q_tok = self.to_q(self.norm(x.reshape(b * n, d).index_select(0, r.token_pos)))
        q = q_tok.new_zeros(r.n_blocks * r.block_size, q_tok.shape[-1]).index_copy(0, r.slot_index, q_tok)
        q = split_heads(q.view(r.n_blocks, r.block_size, -1), self.heads)
        k, v = (split_heads(t.index_select(0, r.block_media), self.heads) for t in (k, v))
        o = merge_heads(F.scaled_dot_product_attention(q, k, v)).reshape(r.n_blocks * r.block_size, -1)
        return out.index_copy(0, r.token_pos, self.to_out(o.index_select(0, r.slot_index))).view(b, n, d)

    def _dense(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, media: MediaContext) -> torch.Tensor:
        n_media_slots, n_latents = media.table.shape[1], k.shape[1]
        if n_media_slots == 0:
            return torch.zeros_like(x)
        slot_ids = torch.arange(n_media_slots, device=x.device)
        local = media.token_local[..., None]
        visible = (slot_ids == local) if self.only_immediate else (slot_ids <= local)
        visible = visible & (media.table >= 0)[:, None, :]  # (B, L, M)
        has_media = visible.any(-1, keepdim=True)
        # a fully masked row is NaN under SDPA: let it see everything, then zero it below
        mask = (visible | ~has_media).repeat_interleave(n_latents, dim=-1)[:, None]
        k, v = (split_heads(t[media.table.clamp(min=0)].flatten(1, 2), self.heads) for t in (k, v))
        q = split_heads(self.to_q(self.norm(x)), self.heads)
        o = self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
        return torch.where(has_media, o, torch.zeros_like(o))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(a) * xattn(x), then + tanh(b) * ffw(x); a = b = 0 at init keeps the LM intact."""

    def __init__(self, dim: int, media_dim: int, cfg: XAttnConfig) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, media_dim, cfg)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, cfg.ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: MediaContext | None) -> torch.Tensor:
        if media is not None:  # no media in the whole batch: the attention would add exactly 0
            x = x + self.attn_gate.tanh() * self.attn(x, media)
        return x + self.ff_gate.tanh() * self.ff(x)


class _MediaSlot:
    """Shared by the wrapped layers. Blocks run only while `active` (inside `Flamingo.decode`), so
    the wrapped LM called directly is still exactly the frozen LM; `value` None means text only."""

    active: bool = False
    value: MediaContext | None = None


class FlamingoLayer(nn.Module):
    """Wraps a frozen decoder layer: gated cross-attention first, then the original layer.

    With `activation_checkpointing` on, a training forward keeps only the layer's inputs and
    recomputes the pair (cross-attention + decoder layer) in backward. The recomputation runs
    after `Flamingo.decode` has cleared the slot, so the media context is passed in explicitly."""

    def __init__(self, decoder_layer: nn.Module, xattn: GatedCrossAttentionBlock, slot: _MediaSlot) -> None:
        super().__init__()
        self.decoder_layer = decoder_layer
        self.activation_checkpointing = False
        # not registered as a submodule: the block lives on Flamingo, so checkpoint keys do not depend on the LM's layout
        object.__setattr__(self, "xattn", xattn)
        object.__setattr__(self, "slot", slot)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.slot.active:
            return self.decoder_layer(*args, **kwargs)
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._cross_attend_then_decode, self.slot.value, *args, use_reentrant=False, **kwargs)
        return self._cross_attend_then_decode(self.slot.value, *args, **kwargs)

    def _cross_attend_then_decode(self, media: MediaContext | None, *args: Any, **kwargs: Any) -> Any:
        by_name = "hidden_states" in kwargs
        h = kwargs["hidden_states"] if by_name else args[0]
        h = self.xattn(h.to(self.xattn.attn_gate.dtype), media).to(h.dtype)
        if by_name:
            kwargs["hidden_states"] = h
        else:
            args = (h, *args[1:])
        return self.decoder_layer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "decoder_layer" or name.startswith("_"):
                raise
            return getattr(self.decoder_layer, name)  # e.g. HF's `layer.attention_type`


# --- loss -----------------------------------------------------------------------------------


def text_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, special: SpecialTokens) -> torch.Tensor:
    """Loss policy: every real text token is a target, `<|endofchunk|>` and EOS included (the
    model must learn where a caption ends); `<image>` is never a target (where media go is
    given by the data) and neither is padding. Ignored positions hold IGNORE_INDEX."""
    labels = input_ids.masked_fill(input_ids == special.image, IGNORE_INDEX)
    if special.pad >= special.n_base:  # an added pad token is never text; a base-vocab pad may double as EOS
        labels = labels.masked_fill(input_ids == special.pad, IGNORE_INDEX)
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return labels


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Cross-entropy of each position's prediction of the next token, over all target tokens of the
    batch: their mean, or their sum (the trainer normalises sums over a whole step itself). A
    sequence without targets contributes nothing; a batch without any gives 0 (not NaN), still
    differentiable."""
    logits, targets = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    valid = targets != IGNORE_INDEX  # ignored positions are never evaluated, so they cannot inject NaN
    total = F.cross_entropy(logits[valid].float(), targets[valid], reduction="sum")
    return total if reduction == "sum" else total / valid.sum().clamp(min=1)


# --- the model ------------------------------------------------------------------------------


@dataclass
class FlamingoOutput:
    logits: torch.Tensor  # (B, L, vocab_size): base vocabulary then the new tokens
    loss: torch.Tensor | None = None
    cache: Any = None


def flatten_media(media: Media) -> tuple[torch.Tensor, list[int]]:
    """All frames of all media as one (F, C, H, W) batch, and the frame count of each media."""
    if isinstance(media, torch.Tensor):
        if media.dim() == 4:
            return media, [1] * media.shape[0]
        if media.dim() == 5:
            return media.flatten(0, 1), [media.shape[1]] * media.shape[0]
        raise ValueError(f"media tensor must be (n, C, H, W) or (n, T, C, H, W), got {tuple(media.shape)}")
    items = [m if m.dim() == 4 else m[None] for m in media]
    if not items:
        raise ValueError("empty media list")
    return torch.cat(items), [m.shape[0] for m in items]


class Flamingo(nn.Module):
    """Frozen LM + frozen vision encoder + trainable resampler, gated cross-attention and new-token rows."""

    def __init__(self, config: FlamingoConfig, lm: nn.Module, vision: nn.Module, special: SpecialTokens) -> None:
        super().__init__()
        self.config, self.special = config, special
        self.lm, self.vision = freeze(lm), freeze(vision)
        embed_dim, hidden_dim, head_dim = lm_dims(lm)
        base_rows = lm.get_input_embeddings().weight.shape[0]
        if special.n_base > base_rows:
            raise ValueError(f"tokenizer base vocabulary ({special.n_base}) exceeds the LM's ({base_rows})")

        self.resampler = PerceiverResampler(config.resampler, vision.out_dim)
        layers = find_decoder_layers(lm)
        if any(isinstance(layer, FlamingoLayer) for layer in layers):
            raise ValueError("this language model is already wrapped by another Flamingo")
        self.xattn_layer_ids = [i for i in range(len(layers)) if (i + 1) % config.xattn.every_n_layers == 0]
        self.gated_xattn = nn.ModuleList(
            GatedCrossAttentionBlock(hidden_dim, self.resampler.dim, config.xattn) for _ in self.xattn_layer_ids
        )
        self._media = _MediaSlot()
        for i, block in zip(self.xattn_layer_ids, self.gated_xattn):
            layers[i] = FlamingoLayer(layers[i], block, self._media)

        # the new special tokens get their own trainable rows; the base vocabulary stays frozen
        self.new_token_embed = nn.Embedding(special.n_new, embed_dim)
        self.new_token_head = nn.Linear(head_dim, special.n_new, bias=False)
        with torch.no_grad():
            for new, base in ((self.new_token_embed.weight, lm.get_input_embeddings().weight),
                              (self.new_token_head.weight, lm.get_output_embeddings().weight)):
                base = base[: special.n_base].float()  # mean-init: new tokens start with ordinary logits
                new.copy_(base.mean(0) + torch.randn_like(new) * base.std(0))
        self._cache_kw = cache_argument(lm)
        self._head_input: torch.Tensor | None = None
        lm.get_output_embeddings().register_forward_pre_hook(self._capture_head_input)

    def _capture_head_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._head_input = args[0]  # the LM's final hidden state, for the new-token output rows

    def train(self, mode: bool = True) -> Flamingo:
        super().train(mode)
        self.lm.eval()
        self.vision.eval()
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def enable_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every wrapped LM layer (gated cross-attention + frozen layer) in backward
        instead of keeping its activations: less memory for one more forward of those layers."""
        for layer in find_decoder_layers(self.lm):
            if isinstance(layer, FlamingoLayer):
                layer.activation_checkpointing = enabled

    # media ---------------------------------------------------------------------------------

    def encode_media(self, media: Media) -> torch.Tensor:
        """Frozen vision encoder (no autograd graph) then the resampler -> (n_media, n_latents, dim)."""
        frames, counts = flatten_media(media)
        ref = next(self.vision.parameters())
        with torch.no_grad():
            features = self.vision(frames.to(ref.device, ref.dtype)).float()
        longest, n = max(counts), len(counts)
        if all(c == longest for c in counts):
            return self.resampler(features.view(n, longest, *features.shape[1:]))
        padded = features.new_zeros(n, longest, *features.shape[1:])
        frame_mask = torch.zeros(n, longest, dtype=torch.bool, device=features.device)
        for i, chunk in enumerate(features.split(counts)):
            padded[i, : len(chunk)], frame_mask[i, : len(chunk)] = chunk, True
        return self.resampler(padded, frame_mask)

    def context(self, latents: torch.Tensor, table: torch.Tensor, token_local: torch.Tensor) -> MediaContext:
        routing = None
        if self.config.xattn.implementation == "routed" and table.shape[1] > 1:
            token_media = MediaContext(latents, table, token_local).token_media
            routing = route_tokens(token_media, latents.shape[0], self.config.xattn.block_size)
        return MediaContext(latents, table, token_local, routing)

    def prompt_context(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        latents: torch.Tensor | None,
        media_batch_idx: torch.Tensor | None = None,
    ) -> MediaContext | None:
        """Check that each sequence has one media per `<image>` token and build the MediaContext."""
        is_media = input_ids == self.special.image
        if attention_mask is not None:
            is_media = is_media & attention_mask.bool()
        tokens_per_row = is_media.sum(-1)
        if latents is None or latents.shape[0] == 0:
            if tokens_per_row.any():
                raise ValueError("input has <image> tokens but no media was given")
            return None
        if media_batch_idx is None:
            media_batch_idx = torch.repeat_interleave(torch.arange(len(tokens_per_row), device=input_ids.device), tokens_per_row)
        media_batch_idx = media_batch_idx.to(input_ids.device)
        media_per_row = torch.bincount(media_batch_idx, minlength=input_ids.shape[0])
        if len(media_batch_idx) != latents.shape[0] or not torch.equal(media_per_row, tokens_per_row):
            raise ValueError(
                f"media per sequence {media_per_row.tolist()} != <image> tokens per sequence {tokens_per_row.tolist()}"
            )
        table = media_table(media_batch_idx, input_ids.shape[0])
        return self.context(latents, table, attended_media_index(input_ids, attention_mask, self.special.image))

    # text ----------------------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Frozen base rows merged with the trainable new-token rows at lookup time."""
        n_base = self.special.n_base
        is_new = input_ids >= n_base
        base = self.lm.get_input_embeddings()(input_ids.masked_fill(is_new, 0))
        new = self.new_token_embed((input_ids - n_base).clamp(min=0)).to(base.dtype)
        return torch.where(is_new[..., None], new, base)

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        media: MediaContext | None = None,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """One LM call. `attention_mask` covers cached + new tokens. Returns (float logits, cache)."""
        b, n = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, cache_length(cache) + n, dtype=torch.long, device=input_ids.device)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]  # left padding safe
        self._media.active, self._media.value = True, media
        try:
            out = self.lm(
                inputs_embeds=self.embed_tokens(input_ids),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{self._cache_kw: cache},
            )
            hidden = self._head_input
        finally:
            self._media.active, self._media.value, self._head_input = False, None, None
        base = out.logits[..., : self.special.n_base].float()
        logits = torch.cat([base, self.new_token_head(hidden.float())], dim=-1)
        return logits, (output_cache(out) if use_cache else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        media: Media | None = None,
        media_batch_idx: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> FlamingoOutput:
        """Teacher-forced forward; `labels` (e.g. from `text_labels`) adds the next-token loss."""
        latents = self.encode_media(media) if media is not None else None
        ctx = self.prompt_context(input_ids, attention_mask, latents, media_batch_idx)
        logits, _ = self.decode(input_ids, attention_mask, ctx)
        loss = next_token_loss(logits, labels) if labels is not None else None
        return FlamingoOutput(logits=logits, loss=loss)

"""Flamingo building blocks: media indexing, masked cross-attention, Perceiver Resampler."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from model.config import ResamplerConfig, XAttnConfig
from model.flamingo import (
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    MediaContext,
    PerceiverResampler,
    attended_media_index,
    media_table,
    route_tokens,
)

IMG, EOC, PAD, T = 256, 257, 258, ord("a")
DIM, MEDIA_DIM, N_LATENTS = 32, 24, 5


def test_attended_media_index_matches_hand_written_vector():
    # text <image> text <|endofchunk|> <image> text <pad>
    ids = torch.tensor([[T, IMG, T, EOC, IMG, T, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    assert attended_media_index(ids, mask, IMG).tolist() == [[-1, 0, 0, 0, 1, 1, -1]]


def test_attended_media_index_left_padding_and_continuation():
    ids = torch.tensor([[PAD, PAD, IMG, T], [IMG, T, IMG, T]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert attended_media_index(ids, mask, IMG).tolist() == [[-1, -1, 0, 0], [0, 0, 1, 1]]
    # a later chunk (cached decoding) continues the count: 2 media already seen, then one more
    chunk = torch.tensor([[T, IMG, T]])
    assert attended_media_index(chunk, None, IMG, n_previous=torch.tensor([2])).tolist() == [[1, 2, 2]]


def test_media_table_orders_media_per_sequence():
    # media 0 -> seq 1, media 1 -> seq 0, media 2 -> seq 1 ; seq 2 has none
    table = media_table(torch.tensor([1, 0, 1]), batch_size=3)
    assert table.tolist() == [[1, -1], [0, 2], [-1, -1]]


def test_route_tokens_groups_tokens_into_per_media_blocks():
    token_media = torch.tensor([[-1, 0, 0, 0, 1, 1, -1], [2, 2, 2, 2, 2, -1, -1]])
    r = route_tokens(token_media, n_media=3, block_size=2)
    flat = token_media.view(-1)
    assert sorted(r.token_pos.tolist()) == [p for p in range(14) if flat[p] >= 0]
    # every routed token sits in a block of its own media, slots unique
    assert torch.equal(r.block_media[r.slot_index // 2], flat[r.token_pos])
    assert len(set(r.slot_index.tolist())) == len(r.token_pos)  # one slot per token
    assert r.block_media.tolist() == [0, 0, 1, 2, 2, 2]  # ceil(3/2), ceil(2/2), ceil(5/2)


def _context(ids, mask, latents, batch_idx, block_size=3):
    table = media_table(batch_idx, ids.shape[0])
    ctx = MediaContext(latents, table, attended_media_index(ids, mask, IMG))
    ctx.routing = route_tokens(ctx.token_media, latents.shape[0], block_size)
    return ctx


def _batch():
    """Three rows: text before media + two media; left padding + one media; no media at all."""
    ids = torch.tensor([
        [T, T, IMG, T, T, EOC, IMG, T, T, T],
        [PAD, PAD, PAD, T, IMG, T, T, T, EOC, T],
        [T, T, T, T, T, T, T, T, T, T],
    ])
    mask = (ids != PAD).long()
    batch_idx = torch.tensor([0, 1, 0])  # media 0 and 2 belong to row 0 (in order), media 1 to row 1
    return ids, mask, batch_idx


def _naive_cross_attention(attn: MaskedCrossAttention, x, ctx, only_immediate: bool):
    """Token-by-token reference: softmax over the latents of the allowed media."""
    out = torch.zeros_like(x)
    heads = attn.heads
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            local = int(ctx.token_local[b, t])
            if local < 0:
                continue
            slots = [local] if only_immediate else list(range(local + 1))
            lat = torch.cat([ctx.latents[int(ctx.table[b, s])] for s in slots])
            k, v = attn.to_kv(lat).chunk(2, -1)
            q = attn.to_q(attn.norm(x[b, t]))
            qh, kh, vh = q.view(heads, -1), k.view(len(lat), heads, -1), v.view(len(lat), heads, -1)
            w = torch.einsum("hd,nhd->hn", qh, kh) / qh.shape[-1] ** 0.5
            o = torch.einsum("hn,nhd->hd", w.softmax(-1), vh).reshape(-1)
            out[b, t] = attn.to_out(o)
    return out


@pytest.mark.parametrize("implementation,only_immediate", [("routed", True), ("dense", True), ("dense", False)])
def test_masked_cross_attention_matches_token_by_token_reference(implementation, only_immediate):
    torch.manual_seed(0)
    cfg = XAttnConfig(heads=2, dim_head=8, implementation=implementation, only_attend_immediate_media=only_immediate)
    attn = MaskedCrossAttention(DIM, MEDIA_DIM, cfg)
    ids, mask, batch_idx = _batch()
    ctx = _context(ids, mask, torch.randn(3, N_LATENTS, MEDIA_DIM), batch_idx)
    x = torch.randn(3, ids.shape[1], DIM)
    out = attn(x, ctx)
    ref = _naive_cross_attention(attn, x, ctx, only_immediate)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("implementation", ["routed", "dense"])
def test_tokens_without_media_get_exactly_zero_and_no_nan(implementation):
    torch.manual_seed(0)
    attn = MaskedCrossAttention(DIM, MEDIA_DIM, XAttnConfig(heads=2, dim_head=8, implementation=implementation))
    ids, mask, batch_idx = _batch()
    ctx = _context(ids, mask, torch.randn(3, N_LATENTS, MEDIA_DIM), batch_idx)
    x = torch.randn(3, ids.shape[1], DIM, requires_grad=True)
    out = attn(x, ctx)
    no_media = ctx.token_local < 0
    assert no_media.sum() == 2 + (3 + 1) + 10  # pre-media text, left padding + pre-media text, the media-less row
    assert torch.equal(out[no_media], torch.zeros_like(out[no_media]))
    assert (out[~no_media].abs().sum(-1) > 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[2], torch.zeros_like(x.grad[2]))  # the media-less row is untouched


def test_gated_block_is_identity_at_init_and_not_after():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(DIM, MEDIA_DIM, XAttnConfig(heads=2, dim_head=8))
    ids, mask, batch_idx = _batch()
    ctx = _context(ids, mask, torch.randn(3, N_LATENTS, MEDIA_DIM), batch_idx)
    x = torch.randn(3, ids.shape[1], DIM)
    assert block.attn_gate.item() == 0.0 and block.ff_gate.item() == 0.0
    assert torch.equal(block(x, ctx), x)
    with torch.no_grad():
        block.attn_gate.fill_(0.5)
    assert not torch.equal(block(x, ctx), x)


def _attention_flops(monkeypatch, attn, x, ctx) -> int:
    """Multiply-adds of every SDPA call (QK^T and PV), counted from the shapes it receives."""
    total = []
    real = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        total.append(2 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    attn(x, ctx)
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    return sum(total)


@pytest.mark.parametrize("implementation,max_growth", [("routed", 1.3), ("dense", None)])
def test_cross_attention_cost_does_not_grow_with_media_count(monkeypatch, implementation, max_growth):
    """Same 64 text tokens with 1 or 8 media: the routed path pays n_latents keys per token either way."""
    torch.manual_seed(0)
    attn = MaskedCrossAttention(DIM, MEDIA_DIM, XAttnConfig(heads=2, dim_head=8, implementation=implementation, block_size=8))
    length, flops = 64, {}
    for n_media in (1, 8):
        ids = torch.full((1, length), T)
        ids[0, torch.arange(n_media) * (length // n_media)] = IMG
        ctx = _context(ids, None, torch.randn(n_media, 16, MEDIA_DIM), torch.zeros(n_media, dtype=torch.long), 8)
        flops[n_media] = _attention_flops(monkeypatch, attn, torch.randn(1, length, DIM), ctx)
    growth = flops[8] / flops[1]
    if max_growth is not None:
        assert growth <= max_growth
    else:  # the dense reference does grow with the number of media, which is why it is not the default
        assert growth >= 7.5


def test_resampler_shapes_and_time_embedding_interpolation():
    torch.manual_seed(0)
    cfg = ResamplerConfig(n_latents=N_LATENTS, depth=2, heads=2, dim_head=8, max_frames=8)
    resampler = PerceiverResampler(cfg, MEDIA_DIM)
    assert resampler(torch.randn(3, 1, 4, MEDIA_DIM)).shape == (3, N_LATENTS, MEDIA_DIM)
    learned = resampler.time_emb.detach()
    assert torch.equal(resampler.time_embeddings(8), learned)
    assert torch.equal(resampler.time_embeddings(1), learned[:1])
    stretched = resampler.time_embeddings(30)  # trained on 8 frames, evaluated on 30 (as in the paper)
    assert stretched.shape == (30, MEDIA_DIM)
    torch.testing.assert_close(stretched[0], learned[0])
    torch.testing.assert_close(stretched[-1], learned[-1])
    for frame in (5, 10, 17):  # align_corners: output frame i sits at learned position i * 7 / 29
        position = frame * 7 / 29
        left, frac = int(position), position - int(position)
        torch.testing.assert_close(stretched[frame], (1 - frac) * learned[left] + frac * learned[left + 1])
    assert resampler(torch.randn(2, 30, 4, MEDIA_DIM)).shape == (2, N_LATENTS, MEDIA_DIM)


def test_resampler_padding_frames_do_not_change_a_shorter_video():
    torch.manual_seed(0)
    resampler = PerceiverResampler(ResamplerConfig(n_latents=N_LATENTS, depth=2, heads=2, dim_head=8), MEDIA_DIM)
    short = torch.randn(1, 3, 4, MEDIA_DIM)
    alone = resampler(short)
    padded = torch.cat([short, torch.randn(1, 5, 4, MEDIA_DIM)], dim=1)  # 5 garbage frames, masked out
    mask = torch.tensor([[True] * 3 + [False] * 5])
    torch.testing.assert_close(resampler(padded, mask), alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(resampler(padded), alone)  # unmasked, the garbage frames would matter


def test_a_clip_is_resampled_the_same_alone_and_in_any_batch():
    """Each clip gets the time embeddings of its own frame count: batched with a clip longer than
    max_frames (whose embeddings are stretched) a short clip must not get slices of those."""
    torch.manual_seed(0)
    from model.config import tiny_config
    from model.factory import build_flamingo

    model, _ = build_flamingo(tiny_config(resampler=ResamplerConfig(n_latents=8, depth=1, heads=2, dim_head=16, max_frames=8)))
    clips = {t: torch.randn(t, 3, 16, 16) for t in (1, 4, 8, 30)}
    with torch.no_grad():
        alone = {t: model.encode_media([clip])[0] for t, clip in clips.items()}
        for batch in ([4, 30], [30, 4, 1], [8, 4], [1, 30, 8, 4]):
            out = model.encode_media([clips[t] for t in batch])
            for i, t in enumerate(batch):
                torch.testing.assert_close(out[i], alone[t], rtol=0, atol=1e-5, msg=f"{t} frames in {batch}")

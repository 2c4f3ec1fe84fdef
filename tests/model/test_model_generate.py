"""Generation: KV cache, batching, beam search, media encoded once, stopping at <|endofchunk|>."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from helpers.tiny_hf import make_tiny_lm
from model.config import XAttnConfig, tiny_config
from model.factory import build_flamingo
from model.generate import generate, generate_text, prompt_media

IMAGE = 16
NEW_TOKENS = 6
LM_NOISE = 0.3
PROMPTS = [
    "<image>a cat<|endofchunk|><image>",
    "<image>",
    "some text first <image>a dog on the grass<|endofchunk|><image>two<|endofchunk|><image>",
]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("gpt2"), "gpt2")


def _model(lm_path=None, **overrides):
    model, tok = build_flamingo(tiny_config(lm_path=lm_path, **overrides))
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.gated_xattn:  # open the gates so the images actually matter
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(1.0)
        for p in model.lm.parameters():  # a freshly initialised tiny LM just repeats one token: roughen it
            p.add_(torch.randn_like(p) * LM_NOISE)
    return model.eval(), tok


def _images():
    torch.manual_seed(2)
    return [[torch.randn(1, 3, IMAGE, IMAGE) for _ in range(p.count("<image>"))] for p in PROMPTS]


def _run(model, tok, prompts, images, **kwargs):
    ids, mask = tok.batch_encode(prompts, padding_side="left")
    media, batch_idx = prompt_media(images)
    return generate(model, ids, mask, media, batch_idx, max_new_tokens=NEW_TOKENS, stop_token_ids=[], **kwargs)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("backbone", ["builtin", "gpt2"])
def test_cached_generation_equals_uncached(gpt2_dir, backbone, num_beams):
    model, tok = _model(gpt2_dir if backbone == "gpt2" else None)
    images = _images()
    cached = _run(model, tok, PROMPTS, images, num_beams=num_beams, use_cache=True)
    uncached = _run(model, tok, PROMPTS, images, num_beams=num_beams, use_cache=False)
    assert cached == uncached
    assert all(len(row) == NEW_TOKENS for row in cached)  # nothing stopped early: a real comparison


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_per_sample(num_beams):
    model, tok = _model()
    images = _images()
    batched = _run(model, tok, PROMPTS, images, num_beams=num_beams)
    single = [_run(model, tok, [p], [im], num_beams=num_beams)[0] for p, im in zip(PROMPTS, images)]
    assert batched == single
    assert len({tuple(r) for r in batched}) > 1  # prompts differ, so should their continuations


def test_images_change_the_generation():
    model, tok = _model()
    images = _images()
    other = [[torch.randn(1, 3, IMAGE, IMAGE) for _ in im] for im in images]
    assert _run(model, tok, PROMPTS, images) != _run(model, tok, PROMPTS, other)


def test_beam_search_encodes_each_image_once():
    model, tok = _model()
    calls, frames = [], []

    def count(module, args, out):
        calls.append(1)
        frames.append(args[0].shape[0])

    model.vision.register_forward_hook(count)
    images = _images()
    out = _run(model, tok, PROMPTS, images, num_beams=4)
    n_images = sum(len(im) for im in images)
    assert len(out) == len(PROMPTS)
    assert len(calls) == 1 and frames == [n_images]  # not per beam, not per step


def test_generation_stops_at_the_stop_token():
    model, tok = _model()
    ids, mask = tok.batch_encode(PROMPTS[:1], padding_side="left")
    media, batch_idx = prompt_media(_images()[:1])
    free = generate(model, ids, mask, media, batch_idx, max_new_tokens=NEW_TOKENS, stop_token_ids=[])[0]
    stop_at = free[2]
    stopped = generate(model, ids, mask, media, batch_idx, max_new_tokens=NEW_TOKENS, stop_token_ids=[stop_at])[0]
    assert stopped == free[: free.index(stop_at) + 1]
    # the default stop token is <|endofchunk|>: make it the likeliest token and generation ends right there
    eoc = tok.special.end_of_chunk
    boost = torch.zeros(tok.special.n_new)
    boost[eoc - tok.special.n_base] = 1e4
    model.new_token_head.register_forward_hook(lambda m, a, out: out + boost)
    assert generate(model, ids, mask, media, batch_idx, max_new_tokens=NEW_TOKENS)[0] == [eoc]
    assert generate(model, ids, mask, media, batch_idx, max_new_tokens=NEW_TOKENS, num_beams=3)[0] == [eoc]
    assert generate_text(model, tok, PROMPTS[:1], _images()[:1]) == [""]  # special tokens are not printed


def test_never_generates_image_or_pad_tokens():
    model, tok = _model()
    with torch.no_grad():  # even when they are the most likely tokens
        model.new_token_head.weight.mul_(1e3)
    out = _run(model, tok, PROMPTS, _images())
    banned = {tok.special.image, tok.special.pad, tok.special.end_of_chunk}  # eoc is banned when not a stop token
    assert all(t not in banned for row in out for t in row)


def test_right_padded_prompts_are_rejected():
    model, tok = _model()
    ids, mask = tok.batch_encode(["<image>a", "<image>"], padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask, torch.randn(2, 1, 3, IMAGE, IMAGE))


def test_attend_to_all_previous_media_option_generates_consistently():
    xattn = XAttnConfig(heads=2, dim_head=16, only_attend_immediate_media=False, implementation="dense")
    model, tok = _model(xattn=xattn)
    images = _images()
    cached = _run(model, tok, PROMPTS, images, use_cache=True)
    assert cached == _run(model, tok, PROMPTS, images, use_cache=False)
    assert all(len(row) == NEW_TOKENS for row in cached)
    # beams go through the same per-sequence media table
    assert _run(model, tok, PROMPTS, images, num_beams=2) == _run(model, tok, PROMPTS, images, num_beams=2, use_cache=False)

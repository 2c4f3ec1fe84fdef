"""The whole model on tiny backbones: exactness at init, frozen parts, media formats, dtypes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from helpers.tiny_hf import make_tiny_clip, make_tiny_lm
from model.backbones import BuiltinLM, find_decoder_layers, load_language_model
from model.config import FlamingoConfig, ResamplerConfig, XAttnConfig, tiny_config
from model.factory import build_flamingo, build_tiny_flamingo
from model.flamingo import MaskedCrossAttention, text_labels

IMAGE = 16  # tiny_config's image size


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = {kind: make_tiny_lm(root / kind, kind) for kind in ("gpt2", "llama", "opt")}
    dirs["clip"] = make_tiny_clip(root / "clip", image_size=IMAGE)
    return dirs


def _prompt_batch(tokenizer):
    texts = ["a photo<image>a cat on a mat<|endofchunk|><image>a dog", "<image>two birds"]
    ids, mask = tokenizer.batch_encode(texts, padding_side="right")
    return ids, mask, torch.randn(3, 1, 3, IMAGE, IMAGE)


def _open_gates(model, value=0.5):
    with torch.no_grad():
        for block in model.gated_xattn:
            block.attn_gate.fill_(value)
            block.ff_gate.fill_(value)


def _reference_lm(model, hf_dir):
    """An independent, unwrapped copy of the frozen LM."""
    if hf_dir is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model.config.seed)
            return load_language_model(None, model.config.builtin_lm)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("kind", ["builtin", "gpt2", "llama", "opt"])
def test_zero_gates_give_exactly_the_frozen_lm_logits(hf_dirs, kind):
    hf_dir = None if kind == "builtin" else hf_dirs[kind]
    model, tok = build_flamingo(tiny_config(lm_path=hf_dir, vision_path=hf_dirs["clip"] if kind == "gpt2" else None))
    ref = _reference_lm(model, hf_dir)
    n_base = tok.special.n_base
    ids, mask, media = _prompt_batch(tok)
    with torch.no_grad():
        ours = model(ids, mask, media).logits
        # the same token embeddings and positions through the untouched LM: cross-attention adds exactly 0
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = ref(inputs_embeds=model.embed_tokens(ids), attention_mask=mask, position_ids=positions).logits
        assert torch.equal(ours[..., :n_base], expected[..., :n_base].float())
        # text made of base tokens only, given to the LM as plain input_ids
        text_ids = torch.tensor([tok.encode("a dog on the grass")])
        assert torch.equal(model(text_ids).logits[..., :n_base], ref(input_ids=text_ids).logits[..., :n_base].float())
        _open_gates(model)  # the equality above is not vacuous
        assert not torch.allclose(model(ids, mask, media).logits[..., :n_base], expected[..., :n_base].float())


def test_decoder_layers_are_wrapped_not_copied(hf_dirs):
    model, _ = build_flamingo(tiny_config(lm_path=hf_dirs["llama"], xattn=XAttnConfig(every_n_layers=2, heads=2, dim_head=16)))
    layers = find_decoder_layers(model.lm)
    assert [type(layer).__name__ for layer in layers] == ["LlamaDecoderLayer", "FlamingoLayer"]
    assert model.xattn_layer_ids == [1] and len(model.gated_xattn) == 1
    assert type(layers[1].decoder_layer).__name__ == "LlamaDecoderLayer"
    assert layers[1].self_attn is layers[1].decoder_layer.self_attn  # attributes pass through (HF reads some)


def test_opt_with_projected_embeddings_loads_trains_and_generates(hf_dirs):
    from model.generate import generate_text

    model, tok = build_flamingo(tiny_config(lm_path=hf_dirs["opt"]))
    assert model.new_token_embed.weight.shape[1] == 16 and model.gated_xattn[0].ff[0].normalized_shape == (32,)
    _open_gates(model)
    ids, mask, media = _prompt_batch(tok)
    out = model(ids, mask, media, labels=text_labels(ids, mask, tok.special))
    out.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert model.gated_xattn[0].attn.to_q.weight.grad.abs().sum() > 0
    texts = generate_text(model.eval(), tok, ["<image>a cat"], [[torch.randn(1, 3, IMAGE, IMAGE)]], max_new_tokens=3)
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_clip_features_are_patch_tokens(hf_dirs):
    model, _ = build_flamingo(tiny_config(vision_path=hf_dirs["clip"]))
    assert model.vision.image_size == IMAGE
    features = model.vision(torch.randn(2, 3, IMAGE, IMAGE))
    assert features.shape == (2, (IMAGE // 8) ** 2, 32)  # CLS dropped
    assert model.encode_media(torch.randn(2, 1, 3, IMAGE, IMAGE)).shape == (2, 8, 32)


@pytest.mark.parametrize("kind", ["builtin", "gpt2"])
def test_only_resampler_xattn_and_new_token_rows_get_gradients(hf_dirs, kind):
    hf_dir = None if kind == "builtin" else hf_dirs[kind]
    model, tok = build_flamingo(tiny_config(lm_path=hf_dir))
    model.train()
    _open_gates(model)  # with closed gates the resampler's gradient would be exactly zero
    vision_outputs = []
    model.vision.register_forward_hook(lambda m, a, out: vision_outputs.append(out))
    ids, mask, media = _prompt_batch(tok)
    model(ids, mask, media, labels=text_labels(ids, mask, tok.special)).loss.backward()

    assert not model.lm.training and not model.vision.training  # frozen backbones stay in eval mode
    assert vision_outputs[0].grad_fn is None and not vision_outputs[0].requires_grad  # ran without autograd
    for name, p in model.named_parameters():
        if name.startswith(("lm.", "vision.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert name.startswith(("resampler.", "gated_xattn.", "new_token_")), name
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.resampler.latents.grad.abs().sum() > 0
    assert all(b.attn.to_kv.weight.grad.abs().sum() > 0 for b in model.gated_xattn)
    rows = model.new_token_embed.weight.grad.abs().sum(-1)
    s = tok.special
    assert rows[s.image - s.n_base] > 0 and rows[s.end_of_chunk - s.n_base] > 0
    assert rows[s.pad - s.n_base] == 0  # padding influences nothing
    assert model.new_token_head.weight.grad.abs().sum() > 0


def test_no_nan_anywhere_with_sdpa_padding_and_media_less_rows():
    model, tok = build_tiny_flamingo()
    _open_gates(model, 1.0)
    outputs = []
    for module in model.modules():
        if isinstance(module, MaskedCrossAttention):
            module.register_forward_hook(lambda m, a, out: outputs.append(out))
    texts = ["words first <image>then a caption", "no media in this row at all", "<image>x"]
    ids, mask = tok.batch_encode(texts, padding_side="left")
    out = model(ids, mask, torch.randn(2, 1, 3, IMAGE, IMAGE), labels=text_labels(ids, mask, tok.special))
    out.loss.backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters().values())
    local = torch.cumsum((ids == tok.special.image) & mask.bool(), -1) - 1
    for xattn_out in outputs:
        assert torch.isfinite(xattn_out).all()
        assert torch.equal(xattn_out[local < 0], torch.zeros_like(xattn_out[local < 0]))


def test_mixed_images_and_8_frame_videos_forward_and_backward():
    model, tok = build_flamingo(tiny_config(resampler=ResamplerConfig(n_latents=8, depth=1, heads=2, dim_head=16, max_frames=8)))
    model.train()
    _open_gates(model)
    ids, mask = tok.batch_encode(["<image>a photo<|endofchunk|><image>a clip", "<image>a video <image>an image"])

    def frame(t):
        return torch.randn(t, 3, IMAGE, IMAGE)

    media = [frame(1), frame(8), frame(8), frame(1)]  # image, video | video, image
    out = model(ids, mask, media, torch.tensor([0, 0, 1, 1]), labels=text_labels(ids, mask, tok.special))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.resampler.time_emb.grad[1:].abs().sum() > 0  # later frames' time embeddings are used
    # a uniform batch may also come as one (n, T, C, H, W) tensor, and longer videos interpolate
    with torch.no_grad():
        assert model.encode_media(torch.randn(2, 30, 3, IMAGE, IMAGE)).shape == (2, 8, 32)


def test_media_count_must_match_image_tokens():
    model, tok = build_tiny_flamingo()
    ids, mask = tok.batch_encode(["<image>a<image>b"])
    with pytest.raises(ValueError, match="media per sequence"):
        model(ids, mask, torch.randn(1, 1, 3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match="no media"):
        model(ids, mask)


def test_bf16_backbones_train_with_fp32_trainable_parts():
    model, tok = build_flamingo(tiny_config(backbone_dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in model.lm.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.vision.parameters())
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters().values())
    _open_gates(model)
    ids, mask, media = _prompt_batch(tok)
    out = model(ids, mask, media, labels=text_labels(ids, mask, tok.special))
    out.loss.backward()
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    assert model.resampler.latents.grad.abs().sum() > 0


def test_builtin_lm_padding_rows_are_finite():
    lm = BuiltinLM(tiny_config().builtin_lm).eval()
    mask = torch.tensor([[0, 0, 1, 1]])
    logits = lm(input_ids=torch.tensor([[1, 2, 3, 4]]), attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    # the real tokens see only themselves: same as running them without the padding
    torch.testing.assert_close(logits[:, 2:], lm(input_ids=torch.tensor([[3, 4]])).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model, tok = build_flamingo(tiny_config(backbone_dtype="bfloat16"), device="cuda")
    ids, mask, media = _prompt_batch(tok)
    out = model(ids.cuda(), mask.cuda(), media.cuda(), labels=text_labels(ids, mask, tok.special).cuda())
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_text_only_row_is_the_same_alone_or_next_to_media():
    """The gated feed-forward applies to every token, with or without media in the batch."""
    model, tok = build_tiny_flamingo()
    _open_gates(model)
    ids, mask = tok.batch_encode(["plain text, no image", "<image>a caption"], padding_side="right")
    with torch.no_grad():
        together = model(ids, mask, torch.randn(1, 1, 3, IMAGE, IMAGE)).logits[0]
        alone = model(ids[:1], mask[:1]).logits[0]
        plain_lm = model.lm(input_ids=ids[:1]).logits[0]  # the wrapped LM outside Flamingo is the frozen LM
    torch.testing.assert_close(together, alone)
    assert not torch.allclose(alone[:, : tok.special.n_base], plain_lm)


def test_default_config_builds_a_working_model_and_round_trips_through_a_dict():
    config = FlamingoConfig()
    assert (config.resampler.n_latents, config.resampler.depth, config.resampler.max_frames) == (64, 6, 8)
    assert FlamingoConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"xattn: unknown keys \['every_n_layer'\]"):
        FlamingoConfig.from_dict({"xattn": {"every_n_layer": 2}})
    with pytest.raises(ValueError, match="routed"):
        FlamingoConfig(xattn=XAttnConfig(only_attend_immediate_media=False))
    model, tok = build_flamingo(config)
    assert len(model.gated_xattn) == config.builtin_lm.n_layers
    ids, mask = tok.batch_encode(["<image>a"])
    size = config.builtin_vision.image_size
    assert model(ids, mask, torch.randn(1, 1, 3, size, size)).logits.shape == (1, 2, tok.vocab_size)

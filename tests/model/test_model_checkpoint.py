"""Checkpoints (trainable-only safetensors + manifest, strict loading), image preprocessing, `m3w generate`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers.tiny_hf import make_tiny_lm
from m3w.model_cli import add_generate_arguments, build_prompt, run_generate
from model.checkpoint import MANIFEST, TRAINABLE, CheckpointError, load_checkpoint, save_checkpoint, save_tiny_checkpoint
from model.config import tiny_config
from model.factory import build_flamingo, build_tiny_flamingo
from model.generate import generate_text
from model.image_prep import CLIP_MEAN, CLIP_STD, preprocess_for, preprocess_image

IMAGE = 16


def _trained(model):
    """Move every trainable parameter away from its initial value, as training would."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _batch(tok):
    torch.manual_seed(3)
    ids, mask = tok.batch_encode(["<image>a cat<|endofchunk|><image>a dog", "<image>birds"])
    return ids, mask, torch.randn(3, 1, 3, IMAGE, IMAGE)


def test_save_then_load_round_trips_bit_exactly(tmp_path):
    model, tok = build_tiny_flamingo(seed=5)
    _trained(model)
    save_checkpoint(model, tok, tmp_path, extra={"step": 12})
    loaded, loaded_tok = load_checkpoint(tmp_path)
    assert loaded_tok.special == tok.special
    for name, p in model.state_dict().items():  # trainable and frozen built-in weights alike
        assert torch.equal(p, loaded.state_dict()[name]), name
    ids, mask, media = _batch(tok)
    with torch.no_grad():
        assert torch.equal(model(ids, mask, media).logits, loaded(ids, mask, media).logits)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["extra"] == {"step": 12}
    assert manifest["backbones"] == {"language_model": "builtin", "vision_encoder": "builtin", "tokenizer": "byte"}
    assert manifest["special_tokens"]["<image>"] == 256 and manifest["special_tokens"]["<|endofchunk|>"] == 257
    assert manifest["config"]["seed"] == 5


def test_checkpoint_holds_trainable_parameters_only(tmp_path):
    lm_dir = make_tiny_lm(tmp_path / "gpt2", "gpt2")
    model, tok = build_flamingo(tiny_config(lm_path=lm_dir))
    _trained(model)
    out = save_checkpoint(model, tok, tmp_path / "ckpt")
    stored = load_file(str(out / TRAINABLE))
    assert set(stored) == set(model.trainable_parameters())
    assert not any(k.startswith(("lm.", "vision.")) for k in stored)
    assert {p.name for p in out.iterdir()} == {MANIFEST, TRAINABLE, "builtin_vision.safetensors"}  # the HF LM stays where it is
    loaded, _ = load_checkpoint(out)
    ids, mask, media = _batch(tok)
    with torch.no_grad():
        assert torch.equal(model(ids, mask, media).logits, loaded(ids, mask, media).logits)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_bad_key(tmp_path, change):
    model, tok = build_tiny_flamingo()
    save_checkpoint(model, tok, tmp_path)
    state = load_file(str(tmp_path / TRAINABLE))
    key = "gated_xattn.1.attn.to_q.weight"
    if change == "missing":
        del state[key]
    elif change == "unexpected":
        key = "gated_xattn.9.extra"
        state[key] = torch.zeros(1)
    else:
        state[key] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / TRAINABLE))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_checkpoint(tmp_path)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_checkpoint(tmp_path)


def test_preprocess_image_resizes_crops_and_normalises():
    wide = Image.new("RGB", (48, 16))
    for x in range(48):  # red | green | blue thirds: the centre crop keeps only green
        for y in range(16):
            wide.putpixel((x, y), [(255, 0, 0), (0, 255, 0), (0, 0, 255)][x // 16])
    pixels = preprocess_image(wide, IMAGE)
    assert pixels.shape == (3, IMAGE, IMAGE) and pixels.dtype == torch.float32
    expected = [(0 - CLIP_MEAN[0]) / CLIP_STD[0], (1 - CLIP_MEAN[1]) / CLIP_STD[1], (0 - CLIP_MEAN[2]) / CLIP_STD[2]]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(pixels[channel], torch.full((IMAGE, IMAGE), value))
    big = preprocess_image(Image.new("RGBA", (100, 300), (255, 255, 255, 255)), 32, (0.5,) * 3, (0.5,) * 3)
    assert big.shape == (3, 32, 32) and torch.allclose(big, torch.ones_like(big))


def _write_images(tmp_path):
    paths = []
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 30), color).save(path)
        paths.append(str(path))
    return paths


def test_cli_prompt_items_keep_command_line_order():
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["--checkpoint", "D", "--image", "a.jpg", "a caption", "--image", "b.jpg"])
    assert args.prompt_items == [("image", "a.jpg"), ("text", "a caption"), ("image", "b.jpg")]
    assert build_prompt(args.prompt_items) == ("<image>a caption<|endofchunk|><image>", ["a.jpg", "b.jpg"])
    args = parser.parse_args(["--text", "intro", "--checkpoint", "D", "--image", "a.jpg", "A photo of"])
    assert build_prompt(args.prompt_items) == ("intro<|endofchunk|><image>A photo of", ["a.jpg"])


def test_run_generate_end_to_end_on_a_tiny_checkpoint(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    a, b = _write_images(tmp_path)
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    argv = ["--checkpoint", str(ckpt), "--image", a, "a red square", "--image", b,
            "--max-new-tokens", "5", "--num-beams", "2", "--device", "cpu"]
    assert run_generate(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    # what the CLI printed is what the checkpoint generates for that prompt and those images
    model, tok = load_checkpoint(ckpt)
    pixels = preprocess_for(model.vision, [a, b])
    expected = generate_text(model.eval(), tok, ["<image>a red square<|endofchunk|><image>"],
                             [[pixels[0][None], pixels[1][None]]], max_new_tokens=5, num_beams=2)[0]
    assert printed == expected.strip() + "\n"
    assert run_generate(parser.parse_args(["--checkpoint", str(ckpt), "--image", str(tmp_path / "nope.png")])) == 2
    assert run_generate(parser.parse_args(["--checkpoint", str(tmp_path), "--image", a])) == 2

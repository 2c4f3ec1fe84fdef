"""The Hugging Face path end to end (issue 15 item 3): a local causal LM and a CLIP vision tower (tiny,
random, from configs: tests/helpers/tiny_hf.py, nothing downloaded) through `m3w train` -> checkpoint
-> resume -> `m3w generate`. The pieces have their own tests (tests/model: forward, exactness at
init, checkpoint, generation, per LM family); this one checks they hold together in a run."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from test_data_shards import jpeg, tiny_corpus, tiny_train_dict

from helpers.tiny_hf import make_tiny_clip, make_tiny_lm
from model.checkpoint import BUILTIN_LM, BUILTIN_VISION, MANIFEST, load_checkpoint
from model.factory import build_flamingo
from model.generate import generate_text
from model.image_prep import preprocess_for
from model.train.config import TrainConfig
from model.train.loop import train

IMAGE = 16


def test_hf_backbones_train_checkpoint_resume_and_generate(tmp_path, capsys):
    from m3w.cli import main

    corpus = tiny_corpus(tmp_path / "data")
    model_cfg = {
        "lm_path": make_tiny_lm(tmp_path / "hf" / "llama", "llama"),
        "vision_path": make_tiny_clip(tmp_path / "hf" / "clip", image_size=IMAGE),
        "resampler": {"n_latents": 4, "depth": 1, "heads": 2, "dim_head": 16, "max_frames": 4},
        "xattn": {"heads": 2, "dim_head": 16, "block_size": 4},
    }

    def run(name: str, **run: object) -> dict:
        data = tiny_train_dict(tmp_path / name, corpus, steps=4, checkpoint_every=2, **run)
        data["model"] = model_cfg
        return data

    straight = train(TrainConfig.from_dict(run("straight")))
    first = train(TrainConfig.from_dict(run("split", stop_at=2)))
    resumed = train(TrainConfig.from_dict(run("split")))
    assert first.step == 2 and resumed.step == 4 and [s for s, _ in resumed.losses] == [3, 4]
    assert first.losses + resumed.losses == straight.losses  # bit for bit across the resume
    assert "resumed from" in capsys.readouterr().err

    ckpt = resumed.checkpoint
    assert ckpt is not None and ckpt.name == "step-00000004"
    assert not (ckpt / BUILTIN_LM).exists() and not (ckpt / BUILTIN_VISION).exists()  # HF weights stay where they are
    manifest = json.loads((ckpt / MANIFEST).read_text())
    assert manifest["backbones"]["language_model"] == model_cfg["lm_path"]
    assert manifest["backbones"]["vision_encoder"] == model_cfg["vision_path"]
    model, tok = load_checkpoint(ckpt)
    fresh, _ = build_flamingo(TrainConfig.from_dict(run("straight")).model)
    trained = model.trainable_parameters()
    assert any(not torch.equal(p, fresh.trainable_parameters()[n]) for n, p in trained.items())  # it trained
    for name, p in load_checkpoint(straight.checkpoint)[0].trainable_parameters().items():
        assert torch.equal(p, trained[name]), name

    image = tmp_path / "query.jpg"
    image.write_bytes(jpeg("red", "circle"))
    assert main(["generate", "--checkpoint", str(ckpt), "--image", str(image), "--max-new-tokens", "4",
                 "--num-beams", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    pixels = preprocess_for(model.vision, [str(image)])
    expected = generate_text(model.eval(), tok, ["<image>"], [[pixels[0][None]]], max_new_tokens=4, num_beams=2)[0]
    assert printed == expected.strip() + "\n"

"""The trainer end to end (model/train/loop.py), its pieces, LM pretraining and `m3w train`."""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_data_shards import TINY_MODEL, key_of, pair_members, tiny_corpus, tiny_train_dict, write_tar

from model.backbones import BuiltinLM, BuiltinViT, load_pretrained_lm, load_pretrained_vision
from model.config import BuiltinLMConfig, BuiltinViTConfig, FlamingoConfig
from model.factory import build_flamingo
from model.train.config import OptimConfig, SourceConfig, TrainConfig
from model.train.data import SourceLoader
from model.train.loop import train
from model.train.pretrain_lm import pretrain_lm
from model.train.pretrain_vision import pretrain_vision
from model.train.samples import ImageSpec
from model.train.step import Runtime, forward_loss_sum, lr_lambda, param_groups


def test_training_runs_logs_everything_and_survives_a_corrupt_source(tmp_path):
    corpus = tiny_corpus(tmp_path / "data")
    shutil.copy(tmp_path / "data" / "pairs" / "pairs-00001.tar", tmp_path / "data" / "pairs" / "pairs-00002.tar")
    (tmp_path / "data" / "pairs" / "pairs-00002.tar").write_bytes(b"\x00garbage" * 300)  # a broken tar
    write_tar(tmp_path / "data" / "pairs" / "pairs-00003.tar",  # a broken image among good pairs
              [pair_members(key_of("ok", i), "red", "square") for i in range(3)]
              + [[(f"{key_of('bad')}.jpg", b"\xff\xd8\xff broken"), (f"{key_of('bad')}.txt", b"a broken image")]])
    corpus["pairs"] = str(tmp_path / "data" / "pairs" / "pairs-{00000..00003}.tar")
    result = train(TrainConfig.from_dict(tiny_train_dict(tmp_path / "run", corpus, steps=8)))

    assert result.step == 8 and len(result.losses) == 8 and all(math.isfinite(v) for _, v in result.losses)
    assert result.counters["align"]["corrupt_shards"] >= 1 and result.counters["align"]["corrupt_samples"] >= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in steps] == list(range(1, 9)) and [r["step"] for r in evals] == [2, 4, 6, 8]
    last = steps[-1]
    assert last["tokens_per_s"] > 0 and last["images_per_s"] > 0 and last["lr"] > 0
    for r in steps:  # the step's wait on all loaders: at least the per-source waits (rounded to 1e-4)
        assert r["data_s"] > 0 and r["data_s"] >= sum(src["wait_s"] for src in r["sources"].values()) - 5e-4
    assert len(last["gates"]["attn"]) == len(last["gates"]["ff"]) == 2  # one block per LM layer
    assert any(abs(g) > 0 for g in last["gates"]["attn"])  # the gates left 0
    for name in ("m3w", "align", "vtp"):
        src = last["sources"][name]
        assert src["loss"] > 0 and src["tokens"] > 0 and src["media"] > 0 and 0 <= src["pad_frac"] < 1
        assert src["wait_s"] >= 0 and set(src["skipped"]) >= {"corrupt_samples", "corrupt_shards", "samples"}
    assert last["sources"]["vtp"]["frames"] == 2 * last["sources"]["vtp"]["media"]  # 2 frames per clip
    assert last["sources"]["align"]["skipped"]["corrupt_shards"] >= 1
    held = evals[-1]["eval"]["heldout"]
    assert held["blind_gap"] == pytest.approx(held["blind_loss"] - held["loss"]) and held["targets"] > 0


def test_a_failed_run_leaves_no_loader_process_behind(tmp_path):
    """The run's DataLoader processes end with it, also when it fails: here its checkpoint write."""
    data = tiny_train_dict(tmp_path / "run", tiny_corpus(tmp_path / "data"), steps=1)
    data["data"]["num_workers"] = 1
    data["eval"]["sets"] = []
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file where the checkpoint directory goes")
    before = set(multiprocessing.active_children())
    with pytest.raises(FileExistsError) as failed:  # holds the traceback, and with it the run's frames
        train(TrainConfig.from_dict(data))
    assert failed.traceback  # still alive here: only the run's own cleanup can have ended its loaders
    assert set(multiprocessing.active_children()) - before == set()


def test_only_real_media_go_through_the_vision_encoder_and_resampler(tmp_path):
    corpus = tiny_corpus(tmp_path)
    model, tok = build_flamingo(FlamingoConfig.from_dict(TINY_MODEL))
    seen = {"vision": 0, "resampler": 0}
    model.vision.register_forward_hook(lambda m, args, out: seen.__setitem__("vision", seen["vision"] + args[0].shape[0]))

    def real_frames(module, args, out):  # clips of different lengths come padded, with a frame mask
        mask = args[1] if len(args) > 1 and args[1] is not None else torch.ones(args[0].shape[:2])
        seen["resampler"] += int(mask.sum())

    model.resampler.register_forward_hook(real_frames)
    spec = ImageSpec.for_encoder(model.vision)
    for cfg in (SourceConfig(name="m", kind="m3w", urls=[corpus["m3w"]], batch_size=6, max_tokens=40, min_images=0),
                SourceConfig(name="v", kind="video", urls=[corpus["video"]], batch_size=3, max_frames=3)):
        batch = next(SourceLoader(cfg, tok, spec, seed=0))
        seen.update(vision=0, resampler=0)
        forward_loss_sum(model, batch, Runtime())
        assert seen["vision"] == batch.stats["frames"] == seen["resampler"]
        assert batch.stats["media"] == int((batch.input_ids == tok.special.image).sum())


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    corpus = tiny_corpus(tmp_path)
    grads = []
    for checkpointing in (False, True):
        model, tok = build_flamingo(FlamingoConfig.from_dict(TINY_MODEL))
        with torch.no_grad():
            for block in model.gated_xattn:
                block.attn_gate.fill_(0.5)
        model.enable_activation_checkpointing(checkpointing)
        batch = next(SourceLoader(SourceConfig(name="m", kind="m3w", urls=[corpus["m3w"]], batch_size=4, max_tokens=40),
                                  tok, ImageSpec.for_encoder(model.vision), seed=0))
        forward_loss_sum(model, batch, Runtime()).backward()
        grads.append({n: p.grad.clone() for n, p in model.trainable_parameters().items()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_weight_decay_groups_and_schedule():
    model, _ = build_flamingo(FlamingoConfig.from_dict(TINY_MODEL))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | plain == set(model.trainable_parameters()) and not decayed & plain
    assert {"gated_xattn.0.attn_gate", "gated_xattn.0.ff_gate", "resampler.latents", "resampler.time_emb",
            "new_token_embed.weight", "new_token_head.weight", "resampler.norm.weight"} <= plain
    assert "gated_xattn.0.attn.to_q.weight" in decayed and "resampler.layers.0.0.to_kv.weight" in decayed
    assert all(not n.endswith("bias") for n in decayed)
    f = lr_lambda(OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1), total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    g = lr_lambda(OptimConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.0), total_steps=100)
    assert g(50) == pytest.approx(0.5) and lr_lambda(OptimConfig(warmup_steps=1, schedule="constant"), 9)(5) == 1.0


def test_pretrained_lm_is_loaded_before_the_new_token_rows_and_stays_frozen(tmp_path):
    corpus = tiny_corpus(tmp_path)
    lm_cfg = BuiltinLMConfig(**TINY_MODEL["builtin_lm"])
    res = pretrain_lm([corpus["m3w"], corpus["pairs"]], tmp_path / "lm.safetensors", lm_cfg, steps=30,
                      batch_size=8, seq_len=32, eval_urls=[corpus["heldout"]], log=False)
    assert res.eval_loss is not None and res.eval_loss < math.log(256)  # learned something about the text
    data = tiny_train_dict(tmp_path / "run", corpus, steps=1, lm_weights=str(tmp_path / "lm.safetensors"))
    cfg = TrainConfig.from_dict(data)
    model, _ = build_flamingo(cfg.model, lm_weights=cfg.run.lm_weights)
    saved = load_file(str(tmp_path / "lm.safetensors"))
    lm_state = {k.replace(".decoder_layer", ""): v for k, v in model.lm.state_dict().items()}  # unwrap FlamingoLayer
    for name, tensor in saved.items():
        assert torch.equal(lm_state[name], tensor), name
    assert not any(p.requires_grad for p in model.lm.parameters())
    base = saved["tok_emb.weight"]  # new-token rows start near the mean of the *pretrained* embeddings
    assert (model.new_token_embed.weight.mean(0) - base.mean(0)).abs().max() < 3 * base.std(0).max()
    with pytest.raises(ValueError, match="trained with builtin_lm"):
        load_pretrained_lm(BuiltinLM(BuiltinLMConfig(dim=32, n_layers=3, n_heads=2, max_seq_len=128)),
                           tmp_path / "lm.safetensors")


def test_contrastive_vision_pretraining_learns_and_is_loaded_frozen(tmp_path):
    corpus = tiny_corpus(tmp_path)
    vit_cfg = BuiltinViTConfig(**TINY_MODEL["builtin_vision"])
    res = pretrain_vision([corpus["pairs"]], tmp_path / "vit.safetensors", vit_cfg, steps=40, batch_size=16,
                          heldout_urls=[corpus["heldout"]], log=False)
    assert res.heldout_accuracy is not None and res.heldout_accuracy >= 0.5  # chance: 1/8
    data = tiny_train_dict(tmp_path / "run", corpus, steps=1, vision_weights=str(tmp_path / "vit.safetensors"))
    cfg = TrainConfig.from_dict(data)
    model, _ = build_flamingo(cfg.model, vision_weights=cfg.run.vision_weights)
    for name, tensor in load_file(str(tmp_path / "vit.safetensors")).items():
        assert torch.equal(model.vision.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.vision.parameters())
    with pytest.raises(ValueError, match="trained with builtin_vision"):
        other = BuiltinViTConfig(image_size=16, patch_size=4, dim=32, depth=1, heads=2)
        load_pretrained_vision(BuiltinViT(other), tmp_path / "vit.safetensors")


def test_m3w_train_cli_yaml_and_errors(tmp_path, capsys):
    from m3w.cli import main

    corpus = tiny_corpus(tmp_path / "data")
    data = tiny_train_dict(tmp_path / "run", corpus, steps=5)
    data["eval"]["sets"] = []
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "run.steps=2"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt").is_file()
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "run.stepz=2"]) == 2
    assert "unknown keys ['stepz']" in capsys.readouterr().err
    data["data"]["sources"][0]["batch_size"] = 2  # resuming the run above with another data config
    (tmp_path / "c2.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(tmp_path / "c2.yaml")]) == 2
    assert "data differs" in capsys.readouterr().err


def test_bf16_autocast_and_activation_checkpointing_run(tmp_path):
    """The code path a GPU run takes (bf16 autocast), here on CPU autocast, with checkpointing on."""
    corpus = tiny_corpus(tmp_path / "data")
    data = tiny_train_dict(tmp_path / "run", corpus, steps=2, precision="bf16", activation_checkpointing=True)
    result = train(TrainConfig.from_dict(data))
    assert result.step == 2 and all(math.isfinite(v) for _, v in result.losses)
    assert all(math.isfinite(e["eval"]["heldout"]["blind_gap"]) for e in result.evals)

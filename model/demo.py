"""`m3w demo --workdir DIR`: the whole story on a CPU in a few minutes.

    sample crawl (our generator; captions describe the images: counts, colours, shapes)
      -> `m3w build` the corpora (M3W documents, ALIGN/LTIP image-text pairs, video-text pairs)
      -> pre-train the small built-in byte-level LM on the corpus text, then freeze it
      -> train Flamingo on the weighted mix (Flamingo's accumulate mode)
      -> on held-out generated documents (a second crawl, other seed): the blind gap
         (loss with the images zeroed minus normal loss), tanh(gates), a few-shot caption

A model that uses its images has a clearly positive blind gap; the gates start at exactly 0.
The corpora are built by the `m3w` CLI in subprocesses (the model package never imports Beam).
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from model.tokenizer import END_OF_CHUNK_TOKEN, IMAGE_TOKEN

HELDOUT_SEED_OFFSET = 1000
CORPUS_PREFIXES = ("m3w", "align", "ltip", "video")


def _m3w(*args: str) -> str:
    """Run the m3w CLI in a subprocess; return stdout, fail loudly with its stderr."""
    proc = subprocess.run([sys.executable, "-m", "m3w", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"m3w {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def find_shards(root: Path) -> dict[str, list[str]]:
    """Shards of each corpus under `root`, by file-name prefix (m3w-*, align-*, ltip-*, video-*)."""
    return {p: sorted(glob.glob(str(root / "**" / f"{p}-*.tar"), recursive=True)) for p in CORPUS_PREFIXES}


def build_corpora(crawl: Path, out: Path, samples_per_shard: int) -> dict[str, list[str]]:
    """`m3w build all`: M3W documents, ALIGN/LTIP pairs and video-text pairs from one read of the crawl."""
    _m3w("build", "all", "--input", str(crawl / "*.warc.gz"), "--output", str(out),
         "--samples-per-shard", str(samples_per_shard))
    return find_shards(out)


def demo_model() -> dict[str, Any]:
    """Tiny sizes: the whole demo must fit a few CPU minutes."""
    return {
        "seed": 0,
        "builtin_lm": {"dim": 128, "n_layers": 4, "n_heads": 4, "ff_mult": 4, "max_seq_len": 256},
        "builtin_vision": {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "heads": 4, "ff_mult": 2},
        "resampler": {"n_latents": 16, "depth": 2, "heads": 4, "dim_head": 16, "ff_mult": 2, "max_frames": 4},
        "xattn": {"every_n_layers": 1, "heads": 4, "dim_head": 32, "ff_mult": 2, "block_size": 16},
    }


def demo_config(workdir: Path, train: dict[str, list[str]], heldout: dict[str, list[str]], steps: int,
                lm_weights: Path, mode: str, threads: int, seed: int) -> dict[str, Any]:
    """Flamingo's weights (M3W 1.0, ALIGN 0.2, LTIP 0.2, VTP 0.03) over whatever corpora exist."""
    spec = {  # kind, weight, batch size, max tokens
        "m3w": ("m3w", 1.0, 8, 160), "align": ("pairs", 0.2, 16, 64), "ltip": ("pairs", 0.2, 16, 80),
        "video": ("video", 0.03, 4, 64),
    }
    sources = []
    for name, (kind, weight, batch, tokens) in spec.items():
        if train.get(name):
            sources.append({"name": name, "kind": kind, "urls": train[name], "weight": weight, "batch_size": batch,
                            "max_tokens": tokens, "max_images": 3, "max_frames": 4, "lead_tokens": 24,
                            "shuffle_buffer": 64})
    sets = []
    for name in ("m3w", "align"):
        if heldout.get(name):
            kind, _, batch, tokens = spec[name]
            sets.append({"name": f"heldout_{name}", "kind": kind, "urls": heldout[name], "batch_size": batch,
                         "max_tokens": tokens, "max_images": 3, "lead_tokens": 24, "batches": 6})
    return {
        "run": {"out_dir": str(workdir / "train"), "steps": steps, "seed": seed, "log_every": max(1, steps // 10),
                "checkpoint_every": 0, "resume": "never", "lm_weights": str(lm_weights), "threads": threads},
        "model": demo_model(),
        "optim": {"lr": 3e-3, "weight_decay": 0.05, "warmup_steps": max(1, steps // 15), "schedule": "cosine",
                  "min_lr_ratio": 0.1, "grad_clip": 1.0, "betas": [0.9, 0.98]},
        "data": {"mode": mode, "num_workers": 0, "seed": seed, "sources": sources},
        "eval": {"every": max(1, steps // 3), "sets": sets},
    }


def few_shot(checkpoint: Path, pair_shards: list[str], out: Path, n_shots: int = 2, n_queries: int = 3) -> list[dict[str, str]]:
    """Caption held-out images after `n_shots` captioned examples, greedy, from the saved checkpoint."""
    from model.checkpoint import load_checkpoint
    from model.data import ImageSpec, decode_image, read_tar_samples
    from model.generate import generate_text

    model, tokenizer = load_checkpoint(checkpoint)
    model.eval()
    spec = ImageSpec.for_encoder(model.vision)
    samples = []
    for url in pair_shards:
        samples.extend(read_tar_samples(url, {"corrupt_shards": 0}))
        if len(samples) >= n_shots + n_queries:
            break
    shots, queries = samples[:n_shots], samples[n_shots : n_shots + n_queries]
    out.mkdir(parents=True, exist_ok=True)
    prompt = "".join(IMAGE_TOKEN + s["txt"].decode() + END_OF_CHUNK_TOKEN for s in shots) + IMAGE_TOKEN
    results = []
    for i, q in enumerate(queries):
        media = [decode_image(s["jpg"], spec)[None] for s in shots + [q]]
        text = generate_text(model, tokenizer, [prompt], [media], max_new_tokens=60, num_beams=1)[0]
        (out / f"query-{i}.jpg").write_bytes(q["jpg"])
        results.append({"image": str(out / f"query-{i}.jpg"), "truth": q["txt"].decode(), "generated": text.strip()})
    for i, s in enumerate(shots):
        (out / f"shot-{i}.jpg").write_bytes(s["jpg"])
    return results


def run(args: argparse.Namespace) -> int:
    import torch

    from model.config import BuiltinLMConfig
    from model.pretrain_lm import pretrain_lm
    from model.train import train
    from model.train_config import TrainConfig, dump_toml

    if args.threads:
        torch.set_num_threads(args.threads)
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 1)
        t = now
        print(f"[{now - t0:6.1f}s] {name} done ({timings[name]}s)", flush=True)

    print(f"1. sample crawls: {args.pages} pages for training, {max(40, args.pages // 5)} held-out pages (seed "
          f"{args.seed + HELDOUT_SEED_OFFSET})", flush=True)
    _m3w("sample-crawl", str(work / "crawl"), "--pages", str(args.pages), "--seed", str(args.seed))
    _m3w("sample-crawl", str(work / "heldout-crawl"), "--pages", str(max(40, args.pages // 5)),
         "--seed", str(args.seed + HELDOUT_SEED_OFFSET))
    lap("crawl")

    print("2. build the corpora (m3w build)", flush=True)
    train_shards = build_corpora(work / "crawl", work / "corpus", 50)
    heldout_shards = build_corpora(work / "heldout-crawl", work / "heldout", 1000)
    for name, shards in train_shards.items():
        print(f"   {name:6s} {len(shards)} training shards, {len(heldout_shards[name])} held-out", flush=True)
    lap("build")

    print("3. pre-train the built-in LM on the corpus text (it is then frozen)", flush=True)
    cfg_dict = demo_config(work, train_shards, heldout_shards, args.steps, work / "lm" / "lm.safetensors",
                           args.mode, args.threads, args.seed)
    lm_cfg = BuiltinLMConfig(**cfg_dict["model"]["builtin_lm"])
    text_shards = [u for name in ("m3w", "align", "ltip", "video") for u in train_shards[name]]
    heldout_text = [u for name in ("m3w", "align") for u in heldout_shards[name]]
    lm = pretrain_lm(text_shards, work / "lm" / "lm.safetensors", lm_cfg, steps=args.lm_steps, batch_size=16,
                     seq_len=128, lr=3e-3, eval_urls=heldout_text, seed=args.seed)
    print(f"   LM loss: train {lm.train_loss:.3f}, held-out {lm.eval_loss:.3f} nats/byte", flush=True)
    lap("pretrain_lm")

    print(f"4. train Flamingo ({args.mode}): {', '.join(s['name'] for s in cfg_dict['data']['sources'])}", flush=True)
    (work / "train.toml").write_text(dump_toml(cfg_dict))
    result = train(TrainConfig.from_dict(cfg_dict))
    lap("train")

    print("5. few-shot captions of held-out images (greedy, 2 shots)", flush=True)
    assert result.checkpoint is not None
    shots = few_shot(result.checkpoint, heldout_shards["align"] or heldout_shards["ltip"], work / "fewshot")
    lap("generate")

    final = result.evals[-1] if result.evals else {"eval": {}}
    summary = {"timings_s": timings, "total_s": round(time.perf_counter() - t0, 1), "steps": result.step,
               "lm": {"train_loss": lm.train_loss, "heldout_loss": lm.eval_loss}, "eval": final["eval"],
               "evals": result.evals, "gates": result.gates, "few_shot": shots, "checkpoint": str(result.checkpoint),
               "config": str(work / "train.toml"), "skipped": result.counters}
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\n== result ==")
    for name, e in final["eval"].items():
        print(f"{name:15s} loss {e['loss']:.4f}  images zeroed {e['blind_loss']:.4f}  "
              f"blind gap {e['blind_gap']:+.4f} nats/token")
    print("tanh(attn gate) per layer: " + " ".join(f"{g:+.3f}" for g in result.gates["attn"]))
    print("tanh(ff gate)   per layer: " + " ".join(f"{g:+.3f}" for g in result.gates["ff"]))
    for s in shots:
        print(f"few-shot  truth: {s['truth']!r}\n          model: {s['generated']!r}")
    print(f"checkpoint {result.checkpoint}; try: m3w generate --checkpoint {result.checkpoint} "
          f"--image {work / 'fewshot' / 'shot-0.jpg'} '...' --image {work / 'fewshot' / 'query-0.jpg'}")
    print(f"total {summary['total_s']}s ({', '.join(f'{k} {v}s' for k, v in timings.items())})")
    return 0

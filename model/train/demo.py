"""`m3w demo --workdir DIR`: the whole story on a CPU in a few minutes.

    sample crawl (our generator; captions describe the images: counts, colours, shapes)
      -> `m3w build` the corpora (M3W documents, ALIGN/LTIP image-text pairs, video-text pairs)
      -> pre-train the frozen backbones at toy scale, the paper's recipe: the built-in byte-level LM
         on the corpus text, the built-in ViT contrastively on the image-text pairs
      -> train Flamingo on the weighted mix (Flamingo's accumulate mode and weights)
      -> on held-out generated documents (a second crawl, other seed): the blind gap
         (loss with the images zeroed minus normal loss), tanh(gates), few-shot captions, and
         in-context learning measured (model/train/fewshot.py): fast binding of made-up words on
         held-out lesson pages at 0, 1, 2 and 4 shots, and caption-slot accuracy zero- vs few-shot

A model that uses its images has a clearly positive blind gap; the gates start at exactly 0.
The frozen LM (smeared keys) learns in-context binding from drills during its pretraining
(pretrain_lm.py) and stays frozen, as in the paper; Flamingo's cross-attention then makes each
lesson image's `<image>` carry a vector the LM's circuit matches. The constants below are the
measured settings under which that happens (benchmarks/RESULTS.md, "Few-shot binding").
The corpora are built by the `m3w` CLI in subprocesses (the model package never imports Beam);
the training and the held-out corpora are generated and built concurrently.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from model.tokenizer import END_OF_CHUNK_TOKEN, IMAGE_TOKEN

HELDOUT_SEED_OFFSET = 1000
LESSONS_PER_PAGE = 2.0  # fast-binding lesson pages per ordinary page in the training crawl (measured: at 0.5,
# Flamingo copied either word of a page for 2 of 3 runs instead of binding it to the picture)
HELDOUT_LESSONS = 40  # lesson pages in the held-out crawl: 10 queries each per shot count
DRILL_ROWS, DRILL_SEQ_LEN = 128, 32  # binding drills per LM pretraining step, in a batch of their own, and their length
LM_LR = 1e-3  # measured: the drills' induction phase change comes for every seed at 1e-3, for some at 3e-3
FLAMINGO_LR = 1.5e-3  # measured: at 3e-3 or 6e-3 Flamingo copied either word of a lesson for some seeds instead of binding
LESSON_IMAGES = 10  # images of a lesson page (m3w_pipeline/sample/lesson.py): one M3W sequence holds them all
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


def samples_per_corpus(root: Path) -> dict[str, int]:
    """Samples in the shards of each corpus (m3w, align, ltip, video), from the build manifests (`m3w
    build` has already failed if their counts did not reconcile)."""
    counts = {p: 0 for p in CORPUS_PREFIXES}
    for path in sorted(root.glob("*/manifest.json")):
        for shard in json.loads(path.read_text())["shards"]:
            prefix = shard["name"].rsplit("-", 1)[0]
            counts[prefix] = counts.get(prefix, 0) + shard["samples"]
    return counts


def crawl_and_build(crawl: Path, out: Path, pages: int, lessons: int, seed: int, samples_per_shard: int) -> dict[str, list[str]]:
    """A generated sample crawl, then `m3w build all`: M3W documents, ALIGN/LTIP pairs and video-text
    pairs from one read of the crawl."""
    _m3w("sample-crawl", str(crawl), "--pages", str(pages), "--lessons", str(lessons), "--seed", str(seed))
    _m3w("build", "all", "--input", str(crawl / "*.warc.gz"), "--output", str(out),
         "--samples-per-shard", str(samples_per_shard))
    return find_shards(out)


def demo_model() -> dict[str, Any]:
    """Tiny sizes: the whole demo must fit a few CPU minutes."""
    return {
        "seed": 0,
        "builtin_lm": {"dim": 128, "n_layers": 4, "n_heads": 4, "ff_mult": 4, "max_seq_len": 256, "smeared_keys": True},
        "builtin_vision": {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "heads": 4, "ff_mult": 2},
        "resampler": {"n_latents": 16, "depth": 2, "heads": 4, "dim_head": 16, "ff_mult": 2, "max_frames": 4},
        "xattn": {"every_n_layers": 1, "heads": 4, "dim_head": 32, "ff_mult": 2, "block_size": 16},
    }


def demo_config(workdir: Path, train: dict[str, list[str]], heldout: dict[str, list[str]], steps: int,
                lm_weights: Path | None, vision_weights: Path | None, mode: str, threads: int, seed: int) -> dict[str, Any]:
    """Flamingo's weights (M3W 1.0, ALIGN 0.2, LTIP 0.2, VTP 0.03) over whatever corpora exist."""
    # kind, weight, sequences per batch, max tokens, samples per sequence (pairs/clips packed). The
    # LM is pretrained on 128-byte windows: no sequence goes beyond the positions it has learned.
    # An M3W sequence holds up to LESSON_IMAGES images (a whole lesson page), the others 3.
    spec = {
        "m3w": ("m3w", 1.0, 8, 128, 1), "align": ("pairs", 0.2, 6, 128, 3), "ltip": ("pairs", 0.2, 6, 128, 2),
        "video": ("video", 0.03, 2, 128, 2),
    }
    sources = []
    for name, (kind, weight, batch, tokens, pack) in spec.items():
        if train.get(name):
            sources.append({"name": name, "kind": kind, "urls": train[name], "weight": weight, "batch_size": batch,
                            "max_tokens": tokens, "samples_per_sequence": pack,
                            "max_images": LESSON_IMAGES if kind == "m3w" else 3, "max_frames": 4,
                            "lead_tokens": 24, "shuffle_buffer": 64, "resize": "pad"})
    sets = []
    for name, batch, tokens in (("m3w", 8, 128), ("align", 16, 64)):  # held-out pairs one per sequence
        if heldout.get(name):
            sets.append({"name": f"heldout_{name}", "kind": spec[name][0], "urls": heldout[name], "batch_size": batch,
                         "max_tokens": tokens, "max_images": 3, "lead_tokens": 24, "batches": 6, "resize": "pad"})
    return {
        "run": {"out_dir": str(workdir / "train"), "steps": steps, "seed": seed, "log_every": max(1, steps // 10),
                "checkpoint_every": 0, "resume": "never", "threads": threads,
                "lm_weights": str(lm_weights) if lm_weights else None,
                "vision_weights": str(vision_weights) if vision_weights else None},
        "model": demo_model(),
        "optim": {"lr": FLAMINGO_LR, "weight_decay": 0.05, "warmup_steps": max(1, steps // 15), "schedule": "cosine",
                  "min_lr_ratio": 0.1, "grad_clip": 1.0, "betas": [0.9, 0.98]},
        "data": {"mode": mode, "num_workers": 0, "seed": seed, "sources": sources},
        "eval": {"every": max(1, steps // 3), "sets": sets},
    }


def few_shot(checkpoint: Path, pair_shards: list[str], out: Path, n_shots: int = 2, n_queries: int = 3) -> list[dict[str, str]]:
    """Caption held-out images from the saved checkpoint (beam search): zero-shot (`<image>`) and
    after `n_shots` captioned examples (`<image>caption<|endofchunk|>... <image>`)."""
    from model.checkpoint import load_checkpoint
    from model.generate import generate_text
    from model.train.data import read_tar_samples
    from model.train.samples import IMAGE_EXTS, ImageSpec, decode_image

    model, tokenizer = load_checkpoint(checkpoint)
    model.eval()
    spec = ImageSpec.for_encoder(model.vision, resize="pad")  # as in training
    samples = []  # (image file suffix, image bytes, caption)
    for url in pair_shards:
        for s in read_tar_samples(url, {"corrupt_shards": 0}):
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            if ext and "txt" in s:
                samples.append((ext, s[ext], s["txt"].decode()))
        if len(samples) >= n_shots + n_queries:
            break
    shots, queries = samples[:n_shots], samples[n_shots : n_shots + n_queries]
    out.mkdir(parents=True, exist_ok=True)
    prompt = "".join(IMAGE_TOKEN + caption + END_OF_CHUNK_TOKEN for _, _, caption in shots) + IMAGE_TOKEN
    shot_media = [decode_image(data, spec)[None] for _, data, _ in shots]
    results = []
    for i, (ext, data, caption) in enumerate(queries):
        query = decode_image(data, spec)[None]
        zero, few = generate_text(model, tokenizer, [IMAGE_TOKEN, prompt], [[query], shot_media + [query]],
                                  max_new_tokens=60, num_beams=3)
        (out / f"query-{i}.{ext}").write_bytes(data)
        results.append({"image": str(out / f"query-{i}.{ext}"), "truth": caption,
                        "zero_shot": zero.strip(), "few_shot": few.strip()})
    for i, (ext, data, _) in enumerate(shots):
        (out / f"shot-{i}.{ext}").write_bytes(data)
    return results


def in_context(checkpoint: Path, m3w_shards: list[str], pair_shards: list[str]) -> dict[str, Any]:
    """Fast binding on the held-out lesson pages and caption-slot accuracy on held-out pairs."""
    from model.checkpoint import load_checkpoint
    from model.train.fewshot import caption_slots, concept_separation, fast_binding, read_lessons, read_pairs
    from model.train.samples import ImageSpec

    model, tokenizer = load_checkpoint(checkpoint)
    model.eval()
    spec = ImageSpec.for_encoder(model.vision, resize="pad")  # as in training
    lessons = read_lessons(m3w_shards, spec)
    binding = fast_binding(model, tokenizer, lessons)
    binding["separation"] = concept_separation(model, tokenizer, lessons)
    slots = caption_slots(model, tokenizer, read_pairs(pair_shards, spec, limit=62), shots=2)
    return {"binding": binding, "slots": slots}


def run(args: argparse.Namespace) -> int:
    import torch

    from model.config import BuiltinLMConfig, BuiltinViTConfig
    from model.train.config import TrainConfig, dump_toml
    from model.train.loop import train
    from model.train.pretrain_lm import pretrain_lm
    from model.train.pretrain_vision import pretrain_vision

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

    n_heldout = max(40, args.pages // 5)
    lessons, heldout_lessons = int(args.pages * LESSONS_PER_PAGE), min(HELDOUT_LESSONS, max(4, args.pages // 5))
    print(f"1-2. sample crawls ({args.pages} pages + {lessons} lesson pages; {n_heldout} + {heldout_lessons} held-out, "
          f"seed {args.seed + HELDOUT_SEED_OFFSET}) -> m3w build all (M3W, ALIGN, LTIP, video)", flush=True)
    with ThreadPoolExecutor(2) as pool:  # two Beam jobs side by side: each mostly keeps one core busy
        train_job = pool.submit(crawl_and_build, work / "crawl", work / "corpus", args.pages, lessons, args.seed, 50)
        heldout_job = pool.submit(crawl_and_build, work / "heldout-crawl", work / "heldout", n_heldout, heldout_lessons,
                                  args.seed + HELDOUT_SEED_OFFSET, 1000)
        train_shards, heldout_shards = train_job.result(), heldout_job.result()
    train_counts, heldout_counts = samples_per_corpus(work / "corpus"), samples_per_corpus(work / "heldout")
    for name, shards in train_shards.items():
        print(f"   {name:6s} {train_counts[name]:5d} samples in {len(shards)} shards; held out {heldout_counts[name]:4d}",
              flush=True)
    lap("crawl+build")

    print("3. pre-train the frozen backbones: the built-in LM on the corpus text, the built-in ViT "
          "contrastively on the image-text pairs", flush=True)
    cfg_dict = demo_config(work, train_shards, heldout_shards, args.steps, work / "lm" / "lm.safetensors",
                           work / "vit" / "vit.safetensors", args.mode, args.threads, args.seed)
    lm_cfg = BuiltinLMConfig(**cfg_dict["model"]["builtin_lm"])
    text_shards = [u for name in ("m3w", "align", "ltip", "video") for u in train_shards[name]]
    heldout_text = [u for name in ("m3w", "align") for u in heldout_shards[name]]
    lm = pretrain_lm(text_shards, work / "lm" / "lm.safetensors", lm_cfg, steps=args.lm_steps, batch_size=16,
                     seq_len=128, lr=LM_LR, caption_weight=0.6, drill_rows=DRILL_ROWS, drill_seq_len=DRILL_SEQ_LEN, eval_urls=heldout_text,
                     seed=args.seed)
    print(f"   LM loss: train {lm.train_loss:.3f}, held-out {lm.eval_loss:.3f} nats/byte", flush=True)
    vit_cfg = BuiltinViTConfig(**cfg_dict["model"]["builtin_vision"])
    vit = pretrain_vision(train_shards["align"] + train_shards["ltip"], work / "vit" / "vit.safetensors", vit_cfg,
                          steps=args.vit_steps, resize="pad", heldout_urls=heldout_shards["align"], seed=args.seed)
    print(f"   ViT: contrastive loss {vit.train_loss:.3f}, held-out image->caption top-1 {vit.heldout_accuracy:.0%} "
          f"(batches of 64)", flush=True)
    lap("pretrain")

    print(f"4. train Flamingo ({args.mode}): {', '.join(s['name'] for s in cfg_dict['data']['sources'])}", flush=True)
    (work / "train.toml").write_text(dump_toml(cfg_dict))
    shutil.rmtree(work / "train", ignore_errors=True)  # a rerun trains afresh (the builds are reused)
    result = train(TrainConfig.from_dict(cfg_dict))
    lap("train")

    print("5. in-context learning on held-out pages: fast binding at 0/1/2/4 shots, caption slots, captions", flush=True)
    assert result.checkpoint is not None
    learning = in_context(result.checkpoint, heldout_shards["m3w"], heldout_shards["align"] or heldout_shards["ltip"])
    shots = few_shot(result.checkpoint, heldout_shards["align"] or heldout_shards["ltip"], work / "fewshot")
    lap("few-shot")

    final = result.evals[-1] if result.evals else {"eval": {}}
    summary = {"corpora": {"train": train_counts, "heldout": heldout_counts}, "timings_s": timings,
               "total_s": round(time.perf_counter() - t0, 1), "steps": result.step,
               "lm": {"train_loss": lm.train_loss, "heldout_loss": lm.eval_loss},
               "vit": {"train_loss": vit.train_loss, "heldout_top1": vit.heldout_accuracy}, "eval": final["eval"],
               "evals": result.evals, "gates": result.gates, "few_shot": shots,
               "fast_binding": learning["binding"], "caption_slots": learning["slots"], "checkpoint": str(result.checkpoint),
               "config": str(work / "train.toml"), "skipped": result.counters}
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\n== result ==")
    for name, e in final["eval"].items():
        print(f"{name:15s} loss {e['loss']:.4f}  images zeroed {e['blind_loss']:.4f}  "
              f"blind gap {e['blind_gap']:+.4f} nats/token = {e['blind_gap_per_image']:+.2f} nats/image")
    print("tanh(attn gate) per layer: " + " ".join(f"{g:+.3f}" for g in result.gates["attn"]))
    print("tanh(ff gate)   per layer: " + " ".join(f"{g:+.3f}" for g in result.gates["ff"]))
    from model.train.fewshot import format_table

    print("\n".join(format_table(learning["binding"], learning["slots"])))
    print("captions of held-out images (beam search 3):")
    for s in shots:
        print(f"  truth {s['truth']!r}\n    zero-shot {s['zero_shot']!r}\n    2-shot    {s['few_shot']!r}")
    shot_file = next((work / "fewshot").glob("shot-0.*"), None)
    print(f"checkpoint {result.checkpoint}; try: m3w generate --checkpoint {result.checkpoint} "
          f"--image {shot_file} '...' --image {shots[0]['image']}")
    print(f"total {summary['total_s']}s ({', '.join(f'{k} {v}s' for k, v in timings.items())})")
    return 0

"""GPU train-step benchmark (issue 6): tokens/s, peak memory and model FLOPs utilisation (MFU) of
a larger Flamingo in bf16. One prepared script for a lent accelerator (the `device` tool):

    python benchmarks/bench_gpu.py --size large [--batch 8] [--seq 512] [--images 5] [--steps 20]
                                   [--precision bf16|fp32] [--checkpointing] [--peak-tflops X]

Model: built-in backbones (nothing to download) at sizes like the public ones: `large` is a
1.2B-parameter LM (2048 wide, 24 layers; OPT-1.3B's shape) and a ViT-L/14 at 224 px (1024 wide,
24 layers), a 6-layer Perceiver Resampler with 64 latents and a gated cross-attention block
before every 4th LM layer (OpenFlamingo-3B's layout). `tiny` runs on a CPU in seconds (tests).

Batches: synthetic, with the corpus's shape: `--batch` sequences of `--seq` byte tokens, each
holding `--images` `<image>` tokens followed by text, one real image per `<image>` (no padded
media). Step: the trainer's own pieces (`forward_loss_sum`, weight-decay groups, AdamW, clipping),
under bf16 autocast with `--precision bf16`.

FLOPs per step are counted by torch's FlopCounterMode on one step without activation
checkpointing (forward + backward; matmuls and attention), so recomputation is not counted as
model FLOPs. MFU = FLOPs per step / step time / the device's dense peak (`--peak-tflops`, or
looked up from the device name). Writes `$OUT/bench_gpu.json` when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import FlamingoConfig
from model.factory import build_flamingo
from model.flamingo import Flamingo
from model.train.samples import Sample, collate
from model.train.step import Runtime, forward_loss_sum, param_groups

SIZES: dict[str, dict[str, Any]] = {
    "large": {
        "builtin_lm": {"dim": 2048, "n_layers": 24, "n_heads": 32, "ff_mult": 4, "max_seq_len": 2048},
        "builtin_vision": {"image_size": 224, "patch_size": 14, "dim": 1024, "depth": 24, "heads": 16, "ff_mult": 4},
        "resampler": {"n_latents": 64, "depth": 6, "heads": 8, "dim_head": 64, "ff_mult": 4},
        "xattn": {"every_n_layers": 4, "heads": 8, "dim_head": 64, "ff_mult": 4, "block_size": 32},
    },
    "tiny": {
        "builtin_lm": {"dim": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 256},
        "builtin_vision": {"image_size": 16, "patch_size": 8, "dim": 32, "depth": 1, "heads": 2},
        "resampler": {"n_latents": 4, "depth": 1, "heads": 2, "dim_head": 16},
        "xattn": {"heads": 2, "dim_head": 16, "block_size": 4},
    },
}
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def synthetic_batch(model: Flamingo, batch: int, seq: int, images: int, seed: int = 0) -> Any:
    """`batch` sequences of `seq` tokens: `images` chunks of `<image>` + random bytes +
    `<|endofchunk|>`, one image tensor per `<image>`."""
    special, size = model.special, int(model.vision.image_size)
    gen = torch.Generator().manual_seed(seed)
    chunk = seq // images
    samples = []
    for row in range(batch):
        ids: list[int] = []
        for _ in range(images):
            text = torch.randint(32, 127, (chunk - 2,), generator=gen).tolist()
            ids += [special.image] + text + [special.end_of_chunk]
        media = [torch.randn(1, 3, size, size, generator=gen) for _ in range(images)]
        samples.append(Sample(ids[:seq], media, f"row{row}"))
    from model.tokenizer import ByteTokenizer

    return collate(samples, ByteTokenizer(), "synthetic")


def count_flops(model: Flamingo, batch: Any, rt: Runtime) -> int:
    """FLOPs of one forward + backward (the gradients are discarded)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward_loss_sum(model, batch, rt).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    model, _ = build_flamingo(FlamingoConfig.from_dict({"seed": 0, **SIZES[args.size]}))
    model.to(device)
    rt = Runtime(device, torch.bfloat16 if args.precision == "bf16" else None)
    batch = synthetic_batch(model, args.batch, args.seq, args.images).to(device)
    n_tokens, n_targets = batch.stats["tokens"], batch.stats["targets"]
    flops = count_flops(model, batch, rt)
    if args.checkpointing:
        model.enable_activation_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.999))

    def step() -> None:
        (forward_loss_sum(model, batch, rt) / n_targets).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    step_s = (time.perf_counter() - t0) / args.steps
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {
        "device": name, "size": args.size, "precision": args.precision, "checkpointing": args.checkpointing,
        "batch": args.batch, "seq": args.seq, "images_per_seq": args.images,
        "trainable_params": sum(p.numel() for p in params), "frozen_params": frozen,
        "step_s": step_s, "tokens_per_s": n_tokens / step_s, "images_per_s": batch.stats["media"] / step_s,
        "flops_per_step": flops, "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / peak if peak and args.precision == "bf16" else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="default: cuda when there is one; without, the script skips (`make bench` on a CPU)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the LM layers")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = parser.parse_args(argv)
    if args.device is None:
        print("bench_gpu: no CUDA device, skipped (check the script with --device cpu --size tiny)")
        return {}
    result = run(args)
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

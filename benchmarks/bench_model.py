"""Flamingo model benchmark: train-step throughput and cost vs images per sequence.

    python benchmarks/bench_model.py [--repeats N] [--device cpu|cuda]

Fixed config (built-in backbones, so no download): LM 4 layers x 128 wide, ViT 32px/8px
patches, resampler 64 latents, cross-attention before every LM layer; batch 8 x 256 tokens.
Every number is relative to a baseline measured in the same run:
  1. train step (forward + backward + AdamW on the trainable parts), 1 image per sequence,
     vs the frozen LM's own forward + backward on the same tokens;
  2. step time with 1, 2, 4, 8 images per sequence, routed (per-token media) vs the dense
     all-media cross-attention, each relative to its 1-image time;
  3. the cross-attention layer alone (forward + backward), same sweep, to isolate its scaling
     from the vision encoder/resampler work that more images legitimately add.
Prints markdown tables (pasted into benchmarks/RESULTS.md). On CPU, times are process CPU
seconds with one thread, so other load on a shared machine barely moves them.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import BuiltinLMConfig, BuiltinViTConfig, FlamingoConfig, ResamplerConfig, XAttnConfig
from model.factory import build_flamingo
from model.flamingo import Flamingo, MaskedCrossAttention, MediaContext, media_table, route_tokens, text_labels

BATCH, SEQ_LEN, IMAGE = 8, 256, 32
IMAGES_PER_SEQ = (1, 2, 4, 8)
WARMUP = 2

CONFIG = FlamingoConfig(
    builtin_lm=BuiltinLMConfig(dim=128, n_layers=4, n_heads=4, max_seq_len=SEQ_LEN),
    builtin_vision=BuiltinViTConfig(image_size=IMAGE, patch_size=8, dim=64, depth=1, heads=4),
    resampler=ResamplerConfig(n_latents=64, depth=2, heads=4, dim_head=32),
    xattn=XAttnConfig(every_n_layers=1, heads=4, dim_head=32, block_size=32),
)


def best_times(fns: dict[str, Callable[[], None]], repeats: int, device: str) -> dict[str, float]:
    """Best-of-`repeats` seconds per call, after warm-up. Calls are interleaved round-robin so
    that background load hits every variant alike; the minimum is the least disturbed run.
    On CPU the clock is this process's CPU time (with one thread, other jobs on a shared
    machine barely disturb it); on CUDA it is wall-clock time after synchronising."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(WARMUP + repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if round_ >= WARMUP:
                times[name].append(clock() - start)
    return {name: min(t) for name, t in times.items()}


def make_batch(model: Flamingo, images_per_seq: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.special.n_base, (BATCH, SEQ_LEN), generator=g)
    ids[:, torch.arange(images_per_seq) * (SEQ_LEN // images_per_seq)] = model.special.image
    mask = torch.ones_like(ids)
    media = torch.randn(BATCH * images_per_seq, 1, 3, IMAGE, IMAGE, generator=g)
    return ids.to(device), mask.to(device), media.to(device)


def train_step_fn(model: Flamingo, batch: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    ids, mask, media = batch
    labels = text_labels(ids, mask, model.special)
    opt = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(ids, mask, media, labels=labels).loss.backward()
        opt.step()

    return step


def lm_baseline_fn(model: Flamingo, batch: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """The frozen LM alone, forward + backward to its inputs (what Flamingo's backward must traverse)."""
    ids, mask, _ = batch
    embeds = model.lm.get_input_embeddings()(ids.clamp(max=model.special.n_base - 1)).detach().requires_grad_()

    def step() -> None:
        embeds.grad = None
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()

    return step


def xattn_layer_fn(implementation: str, images_per_seq: int, device: str) -> Callable[[], None]:
    cfg = dataclasses.replace(CONFIG.xattn, implementation=implementation)
    dim, n_latents = CONFIG.builtin_lm.dim, CONFIG.resampler.n_latents
    attn = MaskedCrossAttention(dim, CONFIG.builtin_vision.dim, cfg).to(device)
    ids = torch.zeros(BATCH, SEQ_LEN, dtype=torch.long)
    ids[:, torch.arange(images_per_seq) * (SEQ_LEN // images_per_seq)] = 1
    local = (ids.cumsum(-1) - 1).to(device)
    n_media = BATCH * images_per_seq
    table = media_table(torch.arange(BATCH).repeat_interleave(images_per_seq), BATCH).to(device)
    latents = torch.randn(n_media, n_latents, CONFIG.builtin_vision.dim, device=device)
    x = torch.randn(BATCH, SEQ_LEN, dim, device=device, requires_grad=True)

    def step() -> None:
        ctx = MediaContext(latents, table, local)  # routing is rebuilt each call, as in the model
        if implementation == "routed" and images_per_seq > 1:  # as Flamingo.context: 1 media/seq is dense already
            ctx.routing = route_tokens(ctx.token_media, n_media, cfg.block_size)
        attn(x, ctx).sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is least sensitive to other load)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, repeats = args.device, args.repeats
    models = {
        impl: build_flamingo(dataclasses.replace(CONFIG, xattn=dataclasses.replace(CONFIG.xattn, implementation=impl)), device)[0].train()
        for impl in ("routed", "dense")
    }
    print(f"# bench_model: {platform.machine()}, torch {torch.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}, batch {BATCH}x{SEQ_LEN}, best of {repeats}, "
          f"{'wall-clock' if device == 'cuda' else 'process CPU'} time\n")

    fns: dict[str, Callable[[], None]] = {}
    fns["lm"] = lm_baseline_fn(models["routed"], make_batch(models["routed"], 1, device))
    for k in IMAGES_PER_SEQ:
        for impl, model in models.items():
            fns[f"step-{impl}-{k}"] = train_step_fn(model, make_batch(model, k, device))
            fns[f"layer-{impl}-{k}"] = xattn_layer_fn(impl, k, device)
    t = best_times(fns, repeats, device)

    tokens = BATCH * SEQ_LEN
    t_lm, t_flamingo = t["lm"], t["step-routed-1"]
    print("| train step (1 image/seq) | s/step | tokens/s | vs frozen LM fwd+bwd |")
    print("|---|---|---|---|")
    print(f"| frozen LM fwd+bwd (baseline) | {t_lm:.4f} | {tokens / t_lm:,.0f} | 1.00x |")
    print(f"| Flamingo train step (routed xattn) | {t_flamingo:.4f} | {tokens / t_flamingo:,.0f} | {t_flamingo / t_lm:.2f}x |\n")

    for title, prefix in (("full train step", "step"), ("cross-attention layer fwd+bwd", "layer")):
        print(f"| {title}: images/seq | routed s | routed vs 1 img | dense s | dense vs 1 img | dense / routed |")
        print("|---|---|---|---|---|---|")
        for k in IMAGES_PER_SEQ:
            r, d = t[f"{prefix}-routed-{k}"], t[f"{prefix}-dense-{k}"]
            r1, d1 = t[f"{prefix}-routed-1"], t[f"{prefix}-dense-1"]
            print(f"| {k} | {r:.4f} | {r / r1:.2f}x | {d:.4f} | {d / d1:.2f}x | {d / r:.2f}x |")
        print()


if __name__ == "__main__":
    main()

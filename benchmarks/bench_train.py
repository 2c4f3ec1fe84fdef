"""Loader and trainer benchmark (issue 6).

    python benchmarks/bench_train.py [--pages N] [--repeats N] [--steps N]

Corpora: a generated sample crawl built with `m3w build all` into benchmarks/_work/train/ (reused
when present): real JPEGs (up to 512 px) as the pipeline writes them.

1. Loader samples/s per corpus (M3W documents, ALIGN pairs, video clips), over 1000 / 2000 / 200
   samples (passes repeat over the shards): our per-source loader (decode + resize to 32 px +
   normalise + tokenise + collate into batches of 16) in the training process (0 workers) and
   with 1 and 2 DataLoader workers (start-up included), against bare `webdataset` decoding of the
   same shards (`WebDataset(...).decode("pil")`: every image decoded at full size, nothing else).
   Wall-clock seconds, best of `--repeats` interleaved rounds.
2. Vision-encoder inputs per M3W batch: the real images we send vs padding every sequence to
   `max_images` (OpenFlamingo's layout).
3. Train-step throughput of the demo model (model/train/demo.py sizes) per mixing mode: `accumulate`
   (a batch of every source per step, Flamingo's weights) and `sample` (one source per step), with
   loading in the training process; steps/s, tokens/s and images/s (frames) over `--steps` steps.

Prints markdown tables (pasted into benchmarks/RESULTS.md, section "Loader and trainer (issue 6)").
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.tokenizer import ByteTokenizer
from model.train.config import SourceConfig, TrainConfig
from model.train.data import SourceLoader
from model.train.demo import demo_config, demo_model, find_shards
from model.train.samples import ImageSpec

WORK = ROOT / "benchmarks" / "_work" / "train"
SPEC = ImageSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def corpora(pages: int) -> dict[str, list[str]]:
    shards = find_shards(WORK / "corpus")
    if not shards["m3w"]:
        m3w = [sys.executable, "-m", "m3w"]
        subprocess.run(m3w + ["sample-crawl", str(WORK / "crawl"), "--pages", str(pages)], check=True,
                       capture_output=True)
        subprocess.run(m3w + ["build", "all", "--input", str(WORK / "crawl" / "*.warc.gz"), "--output",
                              str(WORK / "corpus"), "--samples-per-shard", "100"], check=True, capture_output=True)
        shards = find_shards(WORK / "corpus")
    return shards


def best_of(fns: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[float, int]]:
    """Best wall time of each function over interleaved rounds (background load hits all alike)."""
    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t0
            if name not in best or dt < best[name][0]:
                best[name] = (dt, n)
    return best


def bare_webdataset(urls: list[str], n_samples: int) -> int:
    """Passes over the shards until `n_samples` samples are decoded."""
    import webdataset as wds

    n = 0
    while n < n_samples:
        for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"):
            n += 1
            if n >= n_samples:
                break
    return n


def ours(cfg: SourceConfig, workers: int, n_samples: int) -> int:
    """Batches of the (endless, epoch after epoch) training stream until `n_samples` samples;
    worker start-up is included."""
    loader = SourceLoader(cfg, ByteTokenizer(), SPEC, seed=0, num_workers=workers)
    n = 0
    while n < n_samples:
        n += next(loader).stats["sequences"]
    loader.close()
    return n


def loader_table(shards: dict[str, list[str]], repeats: int) -> list[str]:
    kinds = {"m3w": ("m3w", 160, 1000), "align": ("pairs", 64, 2000), "video": ("video", 64, 200)}
    rows = ["| corpus | samples per run | bare webdataset `.decode(\"pil\")` | ours, 0 workers | ours, 1 worker | ours, 2 workers |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, (kind, tokens, n_samples) in kinds.items():
        if not shards[name]:
            continue
        cfg = SourceConfig(name=name, kind=kind, urls=shards[name], batch_size=16, max_tokens=tokens, max_images=3,
                           max_frames=4, min_images=0, shuffle_buffer=0, shuffle_shards=False)
        best = best_of({"bare": lambda: bare_webdataset(shards[name], n_samples),
                        **{f"w{w}": (lambda w=w: ours(cfg, w, n_samples)) for w in (0, 1, 2)}}, repeats)
        base = best["bare"][1] / best["bare"][0]
        cells = [f"{best['bare'][1] / best['bare'][0]:.0f}/s"]
        for w in (0, 1, 2):
            dt, n = best[f"w{w}"]
            cells.append(f"{n / dt:.0f}/s ({n / dt / base:.1f}x)")
        rows.append(f"| {name} ({kind}) | {best['bare'][1]} | " + " | ".join(cells) + " |")
    return rows


def padding_table(shards: dict[str, list[str]]) -> list[str]:
    cfg = SourceConfig(name="m3w", kind="m3w", urls=shards["m3w"], batch_size=8, max_tokens=160, max_images=3,
                       shuffle_buffer=0, shuffle_shards=False, min_images=1)
    real = padded = 0
    for batch in SourceLoader(cfg, ByteTokenizer(), SPEC, seed=0, infinite=False):
        real += batch.stats["media"]
        padded += batch.stats["sequences"] * cfg.max_images
    return ["| M3W batches (8 x 160 tokens, max 3 images) | images through the vision encoder |", "|---|---:|",
            f"| ours: real images only | {real} |",
            f"| padded to max_images per sequence | {padded} ({padded / max(1, real):.1f}x) |"]


def train_table(shards: dict[str, list[str]], steps: int) -> list[str]:
    from model.factory import build_flamingo
    from model.train.mixing import Mixer
    from model.train.step import Runtime, accumulate_gradients, lr_lambda, optimizer_step, param_groups

    rows = ["| mode | sources per step | step | steps/s | tokens/s | images/s |", "|---|---:|---:|---:|---:|---:|"]
    for mode in ("accumulate", "sample"):
        data = demo_config(WORK / "run", shards, {}, steps, None, None, mode, 0, 0)
        cfg = TrainConfig.from_dict(data)
        model, tok = build_flamingo(cfg.model)
        model.train()
        spec = ImageSpec.for_encoder(model.vision)
        loaders = {s.name: SourceLoader(s, tok, spec, seed=0) for s in cfg.data.sources}
        mixer = Mixer(loaders, {s.name: s.weight for s in cfg.data.sources}, mode, 0)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, steps))
        tokens = frames = 0
        parts = 0
        for i in range(steps + 3):
            if i == 3:
                t0, tokens, frames, parts = time.perf_counter(), 0, 0, 0
            plan = mixer.next_step()
            accumulate_gradients(model, plan, Runtime())
            optimizer_step(model, opt, 1.0)
            sched.step()
            parts += len(plan.parts)
            for _, _, batches in plan.parts:
                tokens += sum(b.stats["tokens"] for b in batches)
                frames += sum(b.stats["frames"] for b in batches)
        dt = time.perf_counter() - t0
        mixer.close()
        rows.append(f"| {mode} | {parts / steps:.1f} | {dt / steps * 1000:.0f} ms | {steps / dt:.2f} | "
                    f"{tokens / dt:.0f} | {frames / dt:.0f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shards = corpora(args.pages)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {demo_model()['builtin_lm']}")
    print("\n".join(["", "Loader (samples/s, wall clock, best of %d):" % args.repeats, ""] + loader_table(shards, args.repeats)))
    print("\n".join(["", "Vision-encoder inputs:", ""] + padding_table(shards)))
    print("\n".join(["", f"Train step, demo model, loading in the training process ({args.steps} steps after 3 warm-up):",
                     ""] + train_table(shards, args.steps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

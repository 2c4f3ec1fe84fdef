"""`m3w generate`: caption an image with a saved checkpoint, optionally after few-shot examples.

    m3w generate --checkpoint DIR --image a.jpg "a caption" --image b.jpg

The items build the prompt in order: each image becomes `<image>`, each text is followed by
`<|endofchunk|>`; the prompt ends with an open `<image>` (the last image) so the model
writes its caption. A text after the last image is left open as the caption's beginning.
Texts follow the `--image` they belong to; `--text` adds a text before any image.
The top-level CLI (m3w/cli.py) mounts these with `add_generate_arguments` / `run_generate`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

PROMPT_ITEMS = "prompt_items"


class _PromptItems(argparse.Action):
    """Collects `--image PATH [TEXT ...]` and `--text TEXT` in command-line order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, PROMPT_ITEMS, None) or [])
        values = [values] if isinstance(values, str) else list(values)
        if option_string == "--image":
            items.append(("image", values[0]))
            values = values[1:]
        items.extend(("text", v) for v in values)
        setattr(namespace, PROMPT_ITEMS, items)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (model.checkpoint)")
    parser.add_argument("--image", dest=PROMPT_ITEMS, action=_PromptItems, nargs="+", metavar=("PATH", "TEXT"),
                        help="an image, then the texts that follow it in the prompt")
    parser.add_argument("--text", dest=PROMPT_ITEMS, action=_PromptItems, metavar="TEXT",
                        help="a text placed before the first image")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate after the prompt")
    parser.add_argument("--num-beams", type=int, default=3, help="beam width (1: greedy)")
    parser.add_argument("--device", default="auto", help="torch device (default auto: cuda when available, else cpu)")


def build_prompt(items: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """(prompt text, image paths in order) from ("image", path) / ("text", text) items."""
    from model.tokenizer import END_OF_CHUNK_TOKEN, IMAGE_TOKEN

    parts: list[str] = []
    images: list[str] = []
    for i, (kind, value) in enumerate(items):
        if kind == "image":
            parts.append(IMAGE_TOKEN)
            images.append(value)
        else:
            is_last = i == len(items) - 1
            parts.append(value if is_last and images else value + END_OF_CHUNK_TOKEN)
    return "".join(parts), images


def run_generate(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.generate import generate_text
    from model.image_prep import preprocess_for

    items = getattr(args, PROMPT_ITEMS, None) or []
    prompt, image_paths = build_prompt(items)
    if not image_paths:
        print("m3w generate: give at least one --image", file=sys.stderr)
        return 2
    missing = [p for p in image_paths if not Path(p).is_file()]
    if missing:
        print(f"m3w generate: image not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model, tokenizer = load_checkpoint(args.checkpoint, device=device)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"m3w generate: cannot load {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    model.eval()
    pixels = preprocess_for(model.vision, image_paths)
    media = [p[None] for p in pixels]  # one single-frame media per image
    text = generate_text(model, tokenizer, [prompt], [media], max_new_tokens=args.max_new_tokens,
                         num_beams=args.num_beams)[0]
    print(text.strip())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m m3w.model_cli ...`), same arguments as `m3w generate`."""
    parser = argparse.ArgumentParser(prog="m3w generate", description=__doc__.split("\n\n")[0])
    add_generate_arguments(parser)
    return run_generate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


# --- m3w train / m3w demo ---------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config, TOML or YAML (model/train/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set run.steps=100 --set optim.lr=3e-4 (repeatable)")


def run_train(args: argparse.Namespace) -> int:
    """Train; under torchrun every process runs this (rank 0 logs and writes checkpoints)."""
    from model.checkpoint import CheckpointError
    from model.train.config import load_train_config
    from model.train.loop import train

    try:
        cfg = load_train_config(args.config, args.overrides)
    except (OSError, ValueError) as err:
        print(f"m3w train: bad config {args.config}: {err}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except CheckpointError as err:
        print(f"m3w train: {err}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if result.checkpoint is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, type=Path, help="everything is written here")
    parser.add_argument("--pages", type=int, default=300, help="pages in the generated sample crawl")
    parser.add_argument("--steps", type=int, default=900, help="Flamingo training steps")
    parser.add_argument("--lm-steps", type=int, default=900, help="built-in LM pretraining steps (text and binding drills)")
    parser.add_argument("--vit-steps", type=int, default=300, help="built-in ViT contrastive pretraining steps")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sample crawl, data order and initialisation")
    parser.add_argument("--mode", choices=["accumulate", "sample"], default="accumulate",
                        help="mixing: every source every step (Flamingo) or one source per step by weight")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def run_demo(args: argparse.Namespace) -> int:
    from model.train.demo import run

    return run(args)

"""Build a Flamingo model (and its tokenizer) from a `FlamingoConfig`."""

from __future__ import annotations

from pathlib import Path

import torch

from model.backbones import load_language_model, load_vision_encoder
from model.config import FlamingoConfig, tiny_config
from model.flamingo import Flamingo
from model.tokenizer import FlamingoTokenizer, load_tokenizer


def build_flamingo(config: FlamingoConfig, device: str | torch.device = "cpu") -> tuple[Flamingo, FlamingoTokenizer]:
    """Tokenizer, frozen backbones (local paths or built-in) and fresh trainable parts.

    Initialisation is seeded by `config.seed` without touching the caller's RNG state, so
    the built-in backbones of a config are always the same weights."""
    tokenizer = load_tokenizer(config.tokenizer_path or config.lm_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        lm = load_language_model(config.lm_path, config.builtin_lm, config.backbone_dtype)
        vision = load_vision_encoder(config.vision_path, config.builtin_vision, config.backbone_dtype)
        model = Flamingo(config, lm, vision, tokenizer.special)
    return model.to(device), tokenizer


def build_tiny_flamingo(seed: int = 0) -> tuple[Flamingo, FlamingoTokenizer]:
    """The built-in tiny model used by tests, the CLI demo and the trainer's smoke runs."""
    return build_flamingo(tiny_config(seed=seed))


def save_tiny_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny built-in model and save it as a checkpoint directory (see model.checkpoint)."""
    from model.checkpoint import save_checkpoint

    model, tokenizer = build_tiny_flamingo(seed)
    return save_checkpoint(model, tokenizer, directory)

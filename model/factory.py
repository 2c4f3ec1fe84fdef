"""Build a Flamingo model (and its tokenizer) from a `FlamingoConfig`."""

from __future__ import annotations

import torch

from model.backbones import load_language_model, load_vision_encoder
from model.config import FlamingoConfig, tiny_config
from model.flamingo import Flamingo
from model.tokenizer import FlamingoTokenizer, load_tokenizer


def build_flamingo(config: FlamingoConfig, device: str | torch.device = "cpu", *, lm_weights: str | None = None,
                   vision_weights: str | None = None) -> tuple[Flamingo, FlamingoTokenizer]:
    """Tokenizer, frozen backbones (local paths or built-in) and fresh trainable parts.

    `lm_weights` / `vision_weights`: pre-trained weights for the built-in backbones (the
    trainer's run.lm_weights / run.vision_weights), loaded before the new-token rows are
    initialised from the LM's embeddings. Initialisation is seeded by `config.seed` without
    touching the caller's RNG state, so the built-in backbones of a config are always the
    same weights."""
    tokenizer = load_tokenizer(config.tokenizer_path or config.lm_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        lm = load_language_model(config.lm_path, config.builtin_lm, config.backbone_dtype, lm_weights)
        vision = load_vision_encoder(config.vision_path, config.builtin_vision, config.backbone_dtype, vision_weights)
        model = Flamingo(config, lm, vision, tokenizer.special)
    return model.to(device), tokenizer


def build_tiny_flamingo(seed: int = 0) -> tuple[Flamingo, FlamingoTokenizer]:
    """The built-in tiny model used by tests, the CLI demo and the trainer's smoke runs."""
    return build_flamingo(tiny_config(seed=seed))

"""Typed configuration for the Flamingo model.

Every field has a working default: `FlamingoConfig()` builds a small model from the
built-in backbones (byte tokenizer, decoder LM, ViT), so tests and demos need no
downloads. Point `lm_path` / `vision_path` at local Hugging Face checkpoints for real
backbones. Paper values are used where the paper gives one (64 latents, depth-6
resampler, 8 training frames, gates initialised at 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from m3w_pipeline.core.typed_config import from_dict

BackboneDType = Literal["float32", "bfloat16", "float16"]
XAttnImplementation = Literal["routed", "dense"]


@dataclass
class BuiltinLMConfig:
    """Small GPT-style decoder used when no `lm_path` is given (tests, demos)."""

    vocab_size: int = 256  # must cover the byte tokenizer's base vocabulary
    dim: int = 64
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    max_seq_len: int = 1024
    # Each attention key mixes in the previous position's key (a learned weight per head; Olsson et
    # al., 2022, "smeared keys"), so one layer can find "the token after the earlier one like this"
    # (an induction circuit), which in-context binding needs. Off by default (a plain GPT). Measured
    # (dim 64, 2 layers; benchmarks/RESULTS.md, issue 15): one-drill rows of single-letter words go
    # from the copy-a-word plateau (50%) to 100% bound in 100 steps; pretrain_lm's drills in 32-byte
    # windows reach 99.6% after 1,500 steps in one run of four, never without it. Large pretrained
    # LMs (model.lm_path) have such circuits already.
    smeared_keys: bool = False


@dataclass
class BuiltinViTConfig:
    """Small ViT used when no `vision_path` is given (tests, demos)."""

    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    dim: int = 64
    depth: int = 2
    heads: int = 4
    ff_mult: int = 4


@dataclass
class ResamplerConfig:
    """Perceiver Resampler: a fixed number of latents summarise any number of patches/frames."""

    n_latents: int = 64
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    max_frames: int = 8  # learned time embeddings; longer videos interpolate them
    dim: int | None = None  # None: the vision encoder's width


@dataclass
class XAttnConfig:
    """GATED XATTN-DENSE blocks inserted into the frozen LM."""

    every_n_layers: int = 1  # a block before LM layers n-1, 2n-1, ... (OpenFlamingo's convention)
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    only_attend_immediate_media: bool = True  # False: attend to all previous media (masked dense path)
    implementation: XAttnImplementation = "routed"  # "dense": masked attention over all media of the sequence
    block_size: int = 32  # routed path: tokens of one media are processed in blocks of this many


@dataclass
class FlamingoConfig:
    """Everything needed to rebuild a model (stored in checkpoint manifests)."""

    lm_path: str | None = None  # local Hugging Face causal LM; None: built-in LM
    vision_path: str | None = None  # local Hugging Face CLIP vision model; None: built-in ViT
    tokenizer_path: str | None = None  # None: lm_path's tokenizer, or the byte tokenizer for the built-in LM
    backbone_dtype: BackboneDType = "float32"  # frozen backbones only; trainable parts stay float32
    seed: int = 0  # initialisation of the built-in backbones and the trainable parts
    builtin_lm: BuiltinLMConfig = field(default_factory=BuiltinLMConfig)
    builtin_vision: BuiltinViTConfig = field(default_factory=BuiltinViTConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    xattn: XAttnConfig = field(default_factory=XAttnConfig)

    def __post_init__(self) -> None:
        if self.xattn.every_n_layers < 1:
            raise ValueError("xattn.every_n_layers must be >= 1")
        if self.xattn.block_size < 1:
            raise ValueError("xattn.block_size must be >= 1")
        if self.xattn.implementation == "routed" and not self.xattn.only_attend_immediate_media:
            raise ValueError("the routed cross-attention needs only_attend_immediate_media=True; use 'dense'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlamingoConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo must not be silently ignored)."""
        return from_dict(cls, data)


def tiny_config(**overrides: Any) -> FlamingoConfig:
    """A model small enough for unit tests and the CLI demo (seconds on a CPU)."""
    cfg = FlamingoConfig(
        builtin_lm=BuiltinLMConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=256),
        builtin_vision=BuiltinViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2),
        resampler=ResamplerConfig(n_latents=8, depth=1, heads=2, dim_head=16, max_frames=4),
        xattn=XAttnConfig(every_n_layers=1, heads=2, dim_head=16, block_size=4),
    )
    return dataclasses.replace(cfg, **overrides)

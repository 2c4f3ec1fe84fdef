"""Flamingo in PyTorch: Perceiver Resampler, tanh-gated cross-attention, frozen backbones.

Main names are re-exported here; see model/flamingo.py for the architecture and the media
input format. Never imports apache_beam.
"""

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_tiny_checkpoint
from model.config import (
    BuiltinLMConfig,
    BuiltinViTConfig,
    FlamingoConfig,
    ResamplerConfig,
    XAttnConfig,
    tiny_config,
)
from model.factory import build_flamingo, build_tiny_flamingo
from model.flamingo import (
    IGNORE_INDEX,
    Flamingo,
    FlamingoOutput,
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    PerceiverResampler,
    attended_media_index,
    next_token_loss,
    text_labels,
)
from model.generate import generate, generate_text
from model.image_prep import preprocess_for, preprocess_image, preprocess_images
from model.tokenizer import (
    END_OF_CHUNK_TOKEN,
    IMAGE_TOKEN,
    ByteTokenizer,
    FlamingoTokenizer,
    HFTokenizer,
    SpecialTokens,
    load_tokenizer,
)

__all__ = [
    "BuiltinLMConfig", "BuiltinViTConfig", "ByteTokenizer", "CheckpointError", "END_OF_CHUNK_TOKEN",
    "Flamingo", "FlamingoConfig", "FlamingoOutput", "FlamingoTokenizer", "GatedCrossAttentionBlock",
    "HFTokenizer", "IGNORE_INDEX", "IMAGE_TOKEN", "MaskedCrossAttention", "PerceiverResampler",
    "ResamplerConfig", "SpecialTokens", "XAttnConfig", "attended_media_index", "build_flamingo",
    "build_tiny_flamingo", "generate", "generate_text", "load_checkpoint", "load_tokenizer",
    "next_token_loss", "preprocess_for", "preprocess_image", "preprocess_images", "save_checkpoint",
    "save_tiny_checkpoint", "text_labels", "tiny_config",
]

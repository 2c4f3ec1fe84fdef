"""Tiny random Hugging Face backbones written to a local directory, for tests and smoke runs.

Nothing is downloaded: configs are built in code, a byte-level BPE tokenizer is trained on a
few sentences, and everything is saved with `save_pretrained` so the "load from a local
path" code runs exactly as it would for a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

LMKind = Literal["gpt2", "llama", "opt"]
CORPUS = [
    "a photo of a cat on a mat",
    "a dog running on the grass",
    "two birds in the blue sky",
    "an image of a red car parked near the house",
]
TINY_WIDTH, TINY_LAYERS, TINY_HEADS, TINY_POSITIONS = 32, 2, 4, 256


def make_tiny_tokenizer(directory: str | Path, vocab_size: int = 300) -> str:
    """A byte-level BPE tokenizer (GPT-2 style, no pad token) saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok.save_pretrained(str(directory))
    return str(directory)


def make_tiny_lm(directory: str | Path, kind: LMKind = "gpt2", seed: int = 0) -> str:
    """A tiny random causal LM of the given family plus the tiny tokenizer, in one directory."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    path = make_tiny_tokenizer(directory)
    vocab = len(AutoTokenizer.from_pretrained(path))
    eos = 0  # "<|endoftext|>" is the first token the BPE trainer adds
    torch.manual_seed(seed)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(
            n_layer=TINY_LAYERS, n_embd=TINY_WIDTH, n_head=TINY_HEADS, n_positions=TINY_POSITIONS,
            vocab_size=vocab, bos_token_id=eos, eos_token_id=eos))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=TINY_LAYERS, hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH,
            num_attention_heads=TINY_HEADS, num_key_value_heads=TINY_HEADS // 2,
            max_position_embeddings=TINY_POSITIONS, vocab_size=vocab, bos_token_id=eos, eos_token_id=eos,
            pad_token_id=None))
    elif kind == "opt":  # word_embed_proj_dim != hidden_size: input/output widths differ from the layers' (like OPT-350m)
        model = OPTForCausalLM(OPTConfig(
            num_hidden_layers=TINY_LAYERS, hidden_size=TINY_WIDTH, ffn_dim=2 * TINY_WIDTH,
            num_attention_heads=TINY_HEADS, word_embed_proj_dim=TINY_WIDTH // 2,
            max_position_embeddings=TINY_POSITIONS, vocab_size=vocab, bos_token_id=eos, eos_token_id=eos,
            pad_token_id=eos))
    else:
        raise ValueError(f"unknown LM kind {kind!r}")
    model.save_pretrained(str(directory))
    return str(directory)


def make_tiny_clip(directory: str | Path, image_size: int = 16, patch_size: int = 8, seed: int = 0) -> str:
    """A tiny random CLIP vision tower saved with save_pretrained."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS, image_size=image_size, patch_size=patch_size))
    model.save_pretrained(str(directory))
    return str(directory)

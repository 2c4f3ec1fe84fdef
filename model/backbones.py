"""Frozen backbones: a causal language model and a vision encoder.

Hugging Face models are loaded from local paths and used as they are; Flamingo reaches
into them only through `find_decoder_layers` (to wrap every N-th layer) and the input /
output embeddings. The built-in `BuiltinLM` and `BuiltinViT` follow the same calling
convention so tests and demos run without any download.

Calling convention of a language model `lm`:
    lm(inputs_embeds=, attention_mask=(B, past+L), position_ids=(B, L), cache=, use_cache=)
    -> object with `.logits` and `.cache` (or `.past_key_values`)
plus `get_input_embeddings()`, `get_output_embeddings()` and `config.hidden_size`.

A vision encoder maps pixels (N, C, H, W) -> features (N, patches, out_dim) and exposes
`image_size`, `image_mean`, `image_std`, `out_dim`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from model.config import BuiltinLMConfig, BuiltinViTConfig
from model.image_prep import BUILTIN_MEAN, BUILTIN_STD, CLIP_MEAN, CLIP_STD

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def freeze(module: nn.Module) -> nn.Module:
    """No gradients for a backbone; eval mode so dropout never perturbs the frozen function."""
    module.requires_grad_(False)
    return module.eval()


# --- shared transformer pieces (pre-LN, attention through SDPA) -------------------------


class KVCache:
    """Per-layer key/value tensors for incremental decoding with the built-in LM."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get_seq_length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.layers):
            self.layers.append((k, v))
        else:
            pk, pv = self.layers[layer_idx]
            self.layers[layer_idx] = (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))
        return self.layers[layer_idx]

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Select batch rows in place (beam search), like Hugging Face caches."""
        self.layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.layers = [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in self.layers]


class SelfAttention(nn.Module):
    """Multi-head attention; `smeared_keys` (causal use only) mixes each key with the previous
    position's key, k'_t = w k_t + (1 - w) k_{t-1}, w = sigmoid(a learned scalar per head), so
    one layer can match "the token before this one" (Olsson et al., 2022, smeared keys)."""

    def __init__(self, dim: int, heads: int, smeared_keys: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.smear = nn.Parameter(torch.zeros(heads)) if smeared_keys else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        key_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # the cache holds raw keys: smearing needs the previous one
        if self.smear is not None:
            k = smear_keys(k, self.smear, key_valid)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def smear_keys(k: torch.Tensor, smear: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """k (B, H, S, D) -> w k_t + (1 - w) k_{t-1}; the first position and positions after padding
    (`key_valid` (B, S) False) mix with zeros, so a left-padded row equals the same row unpadded."""
    prev = torch.cat([torch.zeros_like(k[:, :, :1]), k[:, :, :-1]], dim=2)
    if key_valid is not None:
        prev_valid = torch.cat([torch.zeros_like(key_valid[:, :1]), key_valid[:, :-1]], dim=1)
        prev = prev * prev_valid[:, None, :, None].to(k.dtype)
    w = torch.sigmoid(smear).to(k.dtype)[None, :, None, None]
    return w * k + (1 - w) * prev


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int, smeared_keys: bool = False) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, smeared_keys)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None, layer_idx: int = 0,
        key_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, cache, layer_idx, key_valid)
        return x + self.mlp(self.ln2(x))


# --- built-in language model -------------------------------------------------------------


@dataclass
class LMOutput:
    logits: torch.Tensor
    cache: KVCache | None


def causal_padding_mask(attention_mask: torch.Tensor, n_query: int) -> torch.Tensor:
    """(B, 1, Lq, Lk) bool: causal and key-not-padding; each query always sees itself,
    so left-padding rows are never fully masked (a fully masked SDPA row is NaN)."""
    b, n_key = attention_mask.shape
    q_pos = torch.arange(n_key - n_query, n_key, device=attention_mask.device)[:, None]
    k_pos = torch.arange(n_key, device=attention_mask.device)[None, :]
    allowed = (k_pos <= q_pos)[None] & attention_mask.bool()[:, None, :]
    return (allowed | (k_pos == q_pos)[None])[:, None]


class BuiltinLM(nn.Module):
    """A small GPT-style decoder (learned positions, tied output head, smeared keys) for tests and demos."""

    def __init__(self, cfg: BuiltinLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.config = SimpleNamespace(hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers, vocab_size=cfg.vocab_size)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.ff_mult, cfg.smeared_keys) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
    ) -> LMOutput:
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        b, n, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(b, past + n, dtype=torch.long, device=x.device)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        if use_cache and cache is None:
            cache = KVCache()
        x = x + self.pos_emb(position_ids)
        mask = causal_padding_mask(attention_mask, n)
        key_valid = attention_mask.bool()
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache if use_cache else None, i, key_valid)
        return LMOutput(logits=self.lm_head(self.norm(x)), cache=cache if use_cache else None)


# --- built-in vision encoder ---------------------------------------------------------------


class BuiltinViT(nn.Module):
    """A small ViT: patch embedding, learned positions, pre-LN encoder blocks. Returns patch tokens."""

    image_mean = BUILTIN_MEAN
    image_std = BUILTIN_STD

    def __init__(self, cfg: BuiltinViTConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.cfg = cfg
        self.image_size, self.out_dim = cfg.image_size, cfg.dim
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(cfg.channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_emb = nn.Parameter(torch.randn(n_patches, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.ff_mult) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class CLIPVisionEncoder(nn.Module):
    """Hugging Face CLIP vision tower; features are the final-layer patch tokens (CLS dropped), as in OpenFlamingo."""

    def __init__(self, path: str, dtype: str = "float32") -> None:
        super().__init__()
        from transformers import CLIPVisionModel

        self.model = CLIPVisionModel.from_pretrained(
            path, local_files_only=True, attn_implementation="sdpa", **_dtype_kwarg(dtype)
        )
        cfg = self.model.config
        self.image_size, self.out_dim = int(cfg.image_size), int(cfg.hidden_size)
        self.image_mean, self.image_std = _preprocessor_stats(path)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 1:]


def _preprocessor_stats(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation from the checkpoint's preprocessor_config.json when present, else CLIP's."""
    cfg_file = Path(path) / "preprocessor_config.json"
    if cfg_file.is_file():
        data = json.loads(cfg_file.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return CLIP_MEAN, CLIP_STD


# --- pre-trained built-in weights -----------------------------------------------------------
# The built-in backbones are pre-trained at toy scale by model/train/pretrain_lm.py and
# pretrain_vision.py. One safetensors file each, whose metadata holds the format and the exact
# config the weights were trained with: a model config of another shape is refused, never
# silently given mismatched weights.

LM_WEIGHTS_FORMAT = "m3w-builtin-lm/1"
VIT_WEIGHTS_FORMAT = "m3w-builtin-vit/1"


def save_pretrained_backbone(state: dict[str, torch.Tensor], out: str | Path, fmt: str, cfg: Any, **metadata: str) -> Path:
    """Weights of a pre-trained built-in backbone, tagged with their format and config; written
    to a temporary name and renamed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": fmt, "config": json.dumps(dataclasses.asdict(cfg)), **metadata})
    tmp.replace(out)
    return out


def read_pretrained_backbone(path: str | Path, fmt: str, cfg: Any, section: str) -> dict[str, torch.Tensor]:
    """The state written by `save_pretrained_backbone`; a file of another format, or one trained with
    another config than `cfg` (the `section` of the model config), is refused with both named."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not a {fmt} file (format {meta.get('format')!r})")
    saved = json.loads(meta["config"])
    if saved != dataclasses.asdict(cfg):
        raise ValueError(f"{path}: trained with {section} {saved}, model config is {dataclasses.asdict(cfg)}")
    return load_file(str(path))


def load_pretrained_lm(lm: BuiltinLM, path: str | Path) -> None:
    """Load weights written by `pretrain_lm` into a built-in LM of exactly the same config (the
    file leaves out the output head: it is tied to the token embeddings)."""
    state = read_pretrained_backbone(path, LM_WEIGHTS_FORMAT, lm.cfg, "builtin_lm")
    state["lm_head.weight"] = state["tok_emb.weight"]
    lm.load_state_dict(state, strict=True)


def load_pretrained_vision(vit: BuiltinViT, path: str | Path) -> None:
    """Load weights written by `pretrain_vision` into a built-in ViT of exactly the same config."""
    vit.load_state_dict(read_pretrained_backbone(path, VIT_WEIGHTS_FORMAT, vit.cfg, "builtin_vision"), strict=True)


# --- loading and locating layers ------------------------------------------------------------


def load_language_model(path: str | None, builtin: BuiltinLMConfig, dtype: str = "float32",
                        weights: str | None = None) -> nn.Module:
    """A frozen causal LM: the built-in one (path None; pre-trained `weights` from `pretrain_lm`
    if given, else random) or any local Hugging Face causal LM."""
    if path is None:
        lm: nn.Module = BuiltinLM(builtin)
        if weights is not None:
            load_pretrained_lm(lm, weights)
    elif weights is not None:
        raise ValueError("run.lm_weights is for the built-in LM; with model.lm_path the weights come from there")
    else:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation="sdpa", **_dtype_kwarg(dtype)
        )
    return freeze(lm.to(DTYPES[dtype]))


def load_vision_encoder(path: str | None, builtin: BuiltinViTConfig, dtype: str = "float32",
                        weights: str | None = None) -> nn.Module:
    """A frozen vision encoder: the built-in ViT (path None; pre-trained `weights` from
    `pretrain_vision` if given, else random) or a local Hugging Face CLIP vision model."""
    if path is None:
        vision: nn.Module = BuiltinViT(builtin)
        if weights is not None:
            load_pretrained_vision(vision, weights)
    elif weights is not None:
        raise ValueError("run.vision_weights is for the built-in ViT; with model.vision_path the weights come from there")
    else:
        vision = CLIPVisionEncoder(path, dtype)
    return freeze(vision.to(DTYPES[dtype]))


def _dtype_kwarg(dtype: str) -> dict[str, torch.dtype]:
    """Load weights directly in the backbone dtype (`dtype=` since transformers 4.56, `torch_dtype=` before)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": DTYPES[dtype]}


def find_decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The ModuleList holding the LM's decoder layers, found generically:
    a list of `num_hidden_layers` same-typed modules (the one with most parameters)."""
    cfg = getattr(lm, "config", None)
    n_layers = next((getattr(cfg, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(cfg, k)), None)
    candidates = [
        m
        for m in lm.modules()
        if isinstance(m, nn.ModuleList)
        and len(m) > 0
        and (n_layers is None or len(m) == n_layers)
        and len({type(getattr(layer, "decoder_layer", layer)) for layer in m}) == 1  # see through FlamingoLayer
    ]
    if not candidates:
        raise ValueError(f"no decoder-layer ModuleList found in {type(lm).__name__}")
    return max(candidates, key=lambda m: (len(m), sum(p.numel() for p in m.parameters())))


def lm_dims(lm: nn.Module) -> tuple[int, int, int]:
    """(input-embedding width, decoder-layer width, output-head input width). They differ for e.g. OPT-350m."""
    embed = lm.get_input_embeddings().weight.shape[1]
    hidden = int(getattr(lm.config, "hidden_size", embed))
    head = lm.get_output_embeddings().weight.shape[1]
    return embed, hidden, head


def cache_argument(lm: nn.Module) -> str:
    """Name of the LM's cache keyword (`cache` in recent transformers, `past_key_values` before)."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (Hugging Face Cache, `KVCache`, or a legacy tuple cache)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])


def output_cache(output: Any) -> Any:
    return getattr(output, "cache", None) if hasattr(output, "cache") else getattr(output, "past_key_values", None)


def reorder_cache(cache: Any, index: torch.Tensor) -> Any:
    """Select batch rows of a KV cache (beam search); Hugging Face caches and `KVCache` reorder in place."""
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(index)
        return cache
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)  # legacy tuple caches


def repeat_cache(cache: Any, repeats: int) -> Any:
    """Repeat every batch row of a KV cache `repeats` times (prompt run once, then one copy per beam)."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(repeats)
        return cache
    return tuple(tuple(t.repeat_interleave(repeats, 0) for t in layer) for layer in cache)

"""Checkpoints: the trainable parameters only, as safetensors, plus a JSON manifest.

A checkpoint directory holds
    manifest.json           format, model config, backbone identifiers, special-token ids, trainable keys
    trainable.safetensors   resampler, gated cross-attention blocks, new-token rows
    builtin_lm.safetensors / builtin_vision.safetensors
                            only for built-in backbones, whose random frozen weights exist nowhere else;
                            Hugging Face backbones are re-read from their local paths.
Loading is strict: a missing, unexpected or mis-shaped key is an error that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from model.config import FlamingoConfig
from model.factory import build_flamingo, build_tiny_flamingo
from model.flamingo import Flamingo
from model.tokenizer import FlamingoTokenizer

FORMAT = "m3w-flamingo"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINABLE = "trainable.safetensors"
BUILTIN_LM = "builtin_lm.safetensors"
BUILTIN_VISION = "builtin_vision.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model it is loaded into."""


def save_checkpoint(
    model: Flamingo, tokenizer: FlamingoTokenizer, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write a checkpoint directory; `extra` (e.g. the trainer's step) goes into the manifest."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    trainable = {name: p.detach().cpu().contiguous() for name, p in model.trainable_parameters().items()}
    save_file(trainable, str(out / TRAINABLE), metadata={"format": FORMAT})
    if cfg.lm_path is None:
        save_model(model.lm, str(out / BUILTIN_LM))
    if cfg.vision_path is None:
        save_model(model.vision, str(out / BUILTIN_VISION))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "backbones": {
            "language_model": cfg.lm_path or "builtin",
            "vision_encoder": cfg.vision_path or "builtin",
            "tokenizer": tokenizer.name,
        },
        "special_tokens": _special_dict(tokenizer),
        "trainable_keys": sorted(trainable),
        "extra": extra or {},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a Flamingo checkpoint directory")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format {manifest.get('format')!r} v{manifest.get('format_version')}")
    return manifest


def load_trainable_state(model: Flamingo, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the trainable parameters; any key mismatch is an error naming the keys."""
    params = model.trainable_parameters()
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"trainable state mismatch: missing keys {missing}, unexpected keys {unexpected}")
    wrong_shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(p.shape)}" for k, p in params.items() if state[k].shape != p.shape]
    if wrong_shape:
        raise CheckpointError(f"shape mismatch: {wrong_shape}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def load_checkpoint(
    directory: str | Path,
    device: str | torch.device = "cpu",
    lm_path: str | None = None,
    vision_path: str | None = None,
    tokenizer_path: str | None = None,
) -> tuple[Flamingo, FlamingoTokenizer]:
    """Rebuild the model from the manifest and load its weights strictly. The *_path arguments
    override where Hugging Face backbones live (e.g. on another machine)."""
    src = Path(directory)
    manifest = read_manifest(src)
    data = manifest["config"]
    for key, value in (("lm_path", lm_path), ("vision_path", vision_path), ("tokenizer_path", tokenizer_path)):
        if value is not None:
            data[key] = value
    config = FlamingoConfig.from_dict(data)
    model, tokenizer = build_flamingo(config)
    expected, actual = manifest["special_tokens"], _special_dict(tokenizer)
    if expected != actual:
        raise CheckpointError(f"tokenizer special tokens {actual} differ from the checkpoint's {expected}")
    for module, name, builtin in ((model.lm, BUILTIN_LM, config.lm_path is None),
                                  (model.vision, BUILTIN_VISION, config.vision_path is None)):
        if builtin:
            try:
                load_model(module, str(src / name), strict=True)
            except (RuntimeError, FileNotFoundError) as err:
                raise CheckpointError(f"{src / name}: {err}") from err
    load_trainable_state(model, load_file(str(src / TRAINABLE)))
    return model.to(device), tokenizer


def save_tiny_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny built-in model and save it as a checkpoint directory (tests, the CLI demo)."""
    model, tokenizer = build_tiny_flamingo(seed)
    return save_checkpoint(model, tokenizer, directory)


def _special_dict(tokenizer: FlamingoTokenizer) -> dict[str, Any]:
    s = tokenizer.special
    return {"n_base": s.n_base, "vocab_size": s.vocab_size, "<image>": s.image,
            "<|endofchunk|>": s.end_of_chunk, "pad": s.pad, "eos": s.eos}
